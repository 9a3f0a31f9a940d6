"""Image similarity measures on tensors: NMI (Studholme), MI, MSE, MAE, NCC.

All take two equally shaped tensors of intensities (and an optional boolean mask) and return
a scalar tensor. Histogram measures bin each image over its own range into ``bins`` bins; with
``linear=True`` (partial-volume binning) a small change of a transform changes the value smoothly,
which Powell's line searches need; ``linear=False`` is the standard hard binning used for reporting.
"""
from __future__ import annotations

import torch


def _select(a: torch.Tensor, b: torch.Tensor, mask):
    a, b = a.reshape(-1), b.reshape(-1)
    if mask is not None:
        m = mask.reshape(-1)
        a, b = a[m], b[m]
    return a, b


def joint_histogram(a: torch.Tensor, b: torch.Tensor, bins: int = 64, mask=None, linear: bool = False) -> torch.Tensor:
    """Joint probability table (bins x bins); each image scaled to its own range."""
    a, b = _select(a, b, mask)
    a, b = a.double(), b.double()

    def to_bins(x):
        lo, hi = x.min(), x.max()
        return (x - lo) / torch.clamp(hi - lo, min=1e-12) * (bins - 1)

    fa, fb = to_bins(a), to_bins(b)
    hist = torch.zeros(bins * bins, dtype=torch.float64, device=a.device)
    if not linear:
        hist.index_add_(0, fa.round().long() * bins + fb.round().long(), torch.ones_like(fa))
        return hist.reshape(bins, bins) / torch.clamp(hist.sum(), min=1e-12)
    ia, ib = fa.floor().clamp(0, bins - 2).long(), fb.floor().clamp(0, bins - 2).long()
    wa, wb = fa - ia, fb - ib
    for da, w_a in ((0, 1 - wa), (1, wa)):
        for db, w_b in ((0, 1 - wb), (1, wb)):
            hist.index_add_(0, (ia + da) * bins + (ib + db), w_a * w_b)
    return hist.reshape(bins, bins) / torch.clamp(hist.sum(), min=1e-12)


def _entropy(p: torch.Tensor) -> torch.Tensor:
    p = p[p > 0]
    return -(p * p.log()).sum()


def entropies(a, b, bins=64, mask=None, linear=False):
    """H(A), H(B), H(A, B) in nats."""
    p = joint_histogram(a, b, bins, mask, linear)
    return _entropy(p.sum(1)), _entropy(p.sum(0)), _entropy(p)


def nmi(a, b, bins: int = 64, mask=None, linear: bool = False) -> torch.Tensor:
    """Studholme's normalized mutual information (H(A) + H(B)) / H(A, B), in [1, 2]."""
    ha, hb, hab = entropies(a, b, bins, mask, linear)
    return (ha + hb) / hab


def mutual_information(a, b, bins: int = 64, mask=None, linear: bool = False) -> torch.Tensor:
    """MI = H(A) + H(B) - H(A, B), nats."""
    ha, hb, hab = entropies(a, b, bins, mask, linear)
    return ha + hb - hab


def mse(a, b, mask=None) -> torch.Tensor:
    a, b = _select(a, b, mask)
    return ((a - b) ** 2).mean()


def mae(a, b, mask=None) -> torch.Tensor:
    a, b = _select(a, b, mask)
    return (a - b).abs().mean()


def ncc(a, b, mask=None) -> torch.Tensor:
    """Global normalized cross-correlation in [-1, 1]."""
    a, b = _select(a, b, mask)
    a, b = a - a.mean(), b - b.mean()
    return (a * b).sum() / torch.clamp(a.norm() * b.norm(), min=1e-12)
