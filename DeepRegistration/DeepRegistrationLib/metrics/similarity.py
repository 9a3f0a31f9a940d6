"""Image similarity measures and the losses built on them, on tensors: the one module of them.

- Histogram measures (rigid registration and reports): NMI (Studholme), MI. Each image is binned over
  its own range into ``bins`` bins; with ``linear=True`` (partial-volume binning) a small change of a
  transform changes the value smoothly, which Powell's line searches need; ``linear=False`` is the
  standard hard binning used for reporting.
- Intensity measures: MAE, global NCC, and the dissimilarities the learned deformable methods train and
  optimize with: MSE, the normalized MSE of the thesis (eq. 3.5), and local NCC (VoxelMorph's form).
- The diffusion regularizer ‖∇u‖² of DeepSim's loss (Czolbe et al. 2021, eq. 1).

All take two equally shaped tensors and an optional mask: for the histogram measures, MAE and NCC a
boolean selection; for MSE, normalized MSE and local NCC a mask of weights in [0, 1] broadcastable to
the images (a boolean one counts as 0/1). The dissimilarities take batches (B, C, *shape), 2D or 3D.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

#: a of the normalized MSE x²/(a² + x²) (thesis eq. 3.5), intensities normalized to [0, 1]
NMSE_A = 0.2
#: window (voxels per side) of the local NCC
NCC_WINDOW = 9


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


def ncc(a, b, mask=None) -> torch.Tensor:
    """Global normalized cross-correlation in [-1, 1]."""
    a, b = _select(a, b, mask)
    a, b = a - a.mean(), b - b.mean()
    return (a * b).sum() / torch.clamp(a.norm() * b.norm(), min=1e-12)


def masked_mean(values: torch.Tensor, mask=None) -> torch.Tensor:
    """Mean of ``values`` weighted by ``mask`` (broadcast to ``values``; None: the plain mean)."""
    if mask is None:
        return values.mean()
    mask = mask.to(values.dtype).expand_as(values)
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


def mse(a: torch.Tensor, b: torch.Tensor, mask=None) -> torch.Tensor:
    """Mean squared difference over the voxels where ``mask`` is 1."""
    return masked_mean((a - b) ** 2, mask)


def normalized_mse(a: torch.Tensor, b: torch.Tensor, mask=None, scale: float = NMSE_A) -> torch.Tensor:
    """Thesis eq. 3.5: mean of x²/(a² + x²), x = a − b, a = 0.2 (intensities normalized to [0, 1])."""
    x2 = (a - b) ** 2
    return masked_mean(x2 / (scale ** 2 + x2), mask)


def box_mean(x: torch.Tensor, window: int = NCC_WINDOW) -> torch.Tensor:
    """Mean over ``window``-wide neighbourhoods (cut at the border), as separable 1D box filters per axis."""
    ndim = x.dim() - 2
    conv = F.conv2d if ndim == 2 else F.conv3d
    pad = window // 2
    y, count = x, torch.ones_like(x[:1, :1])
    for axis in range(ndim):
        shape = [1] * ndim
        shape[axis] = window
        padding = [0] * ndim
        padding[axis] = pad
        kernel = torch.ones(1, 1, *shape, dtype=x.dtype, device=x.device)
        y = conv(y.reshape(-1, 1, *y.shape[2:]), kernel, padding=padding).reshape(y.shape)
        count = conv(count, kernel, padding=padding)
    return y / count


def local_ncc(a: torch.Tensor, b: torch.Tensor, mask=None, window: int = NCC_WINDOW) -> torch.Tensor:
    """1 − mean over voxels of the squared NCC in ``window``-wide neighbourhoods (VoxelMorph's form).

    With a mask both images are zero outside it and the mean runs over the masked voxels.
    """
    if mask is not None:
        a, b = a * mask, b * mask
    ma, mb = box_mean(a, window), box_mean(b, window)
    cov = box_mean(a * b, window) - ma * mb
    va = (box_mean(a * a, window) - ma * ma).clamp(min=0)
    vb = (box_mean(b * b, window) - mb * mb).clamp(min=0)
    return 1.0 - masked_mean(cov * cov / (va * vb + 1e-5), mask)


def diffusion(u: torch.Tensor) -> torch.Tensor:
    """‖∇u‖²: mean over voxels of the squared forward differences of every component along every axis."""
    total = u.new_zeros(())
    for axis in range(2, u.dim()):
        total = total + torch.diff(u, dim=axis).pow(2).mean() * u.shape[1]
    return total
