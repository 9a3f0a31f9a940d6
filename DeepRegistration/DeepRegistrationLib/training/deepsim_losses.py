"""The losses of DeepSim's registration training (Czolbe et al. 2021, eq. 1) and its baselines, 2D and 3D.

    L(I, J, Φ) = D(I∘Φ, J) + λ R(Φ),   R = diffusion regularizer ‖∇u‖²

with I the moving image, J the fixed one, Φ = id + u predicted by the registration U-Net and I∘Φ from
the spatial transformer. D is one of:

- ``deepsim``: 1 − DeepSim(I∘Φ, J) (eq. 2, :mod:`metrics.deepsim_similarity`, frozen feature extractor);
- ``mse``: mean squared intensity difference;
- ``ncc``: 1 − mean local squared NCC in 9-voxel windows (VoxelMorph's patch-wise NCC, which the
  paper's NCC baseline refers to [5]);
- ``ncc_sup``: ``ncc`` plus ``sup_weight`` × the soft Dice loss of the warped one-hot label maps
  (VoxelMorph's auxiliary segmentation supervision, the paper's NCC_sup).

R is the mean over voxels of Σ_d Σ_c (∂u_c/∂x_d)² by forward differences, u in voxels.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..core.spatial_transformer import warp_voxels

SIMILARITIES = ("deepsim", "mse", "ncc", "ncc_sup")
NCC_WINDOW = 9


def diffusion(u: torch.Tensor) -> torch.Tensor:
    """‖∇u‖²: mean over voxels of the squared forward differences of every component along every axis."""
    total = u.new_zeros(())
    for axis in range(2, u.dim()):
        total = total + torch.diff(u, dim=axis).pow(2).mean() * u.shape[1]
    return total


def mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).pow(2).mean()


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


def local_ncc(a: torch.Tensor, b: torch.Tensor, window: int = NCC_WINDOW) -> torch.Tensor:
    """1 − mean over voxels of the squared NCC in ``window``-wide neighbourhoods (2D or 3D batches)."""
    ma, mb = box_mean(a, window), box_mean(b, window)
    cov = box_mean(a * b, window) - ma * mb
    va = (box_mean(a * a, window) - ma * ma).clamp(min=0)
    vb = (box_mean(b * b, window) - mb * mb).clamp(min=0)
    return 1.0 - (cov * cov / (va * vb + 1e-5)).mean()


def one_hot(labels: torch.Tensor, classes: int) -> torch.Tensor:
    """(B, *shape) integer labels -> (B, classes, *shape) floats."""
    return F.one_hot(labels.clamp(0, classes - 1), classes).movedim(-1, 1).float()


def soft_dice_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """1 − mean over the foreground classes (channel 0 = background left out) of the soft Dice."""
    dims = tuple(range(2, a.dim()))
    inter = (a[:, 1:] * b[:, 1:]).sum(dims)
    denom = a[:, 1:].sum(dims) + b[:, 1:].sum(dims)
    return 1.0 - (2.0 * inter / denom.clamp(min=1e-6)).mean()


def dice_scores(moving_labels: torch.Tensor, fixed_labels: torch.Tensor, u: torch.Tensor, classes: int) -> torch.Tensor:
    """Per pair, the mean Dice over the foreground classes present of the nearest-neighbour warped labels (B,)."""
    warped = warp_voxels(moving_labels[:, None].float(), u, mode="nearest")[:, 0].round().long()
    scores = []
    for w, f in zip(warped, fixed_labels):
        per_class = []
        for c in range(1, classes):
            x, y = w == c, f == c
            denom = x.sum() + y.sum()
            if denom > 0:
                per_class.append(2.0 * (x & y).sum().float() / denom.float())
        scores.append(torch.stack(per_class).mean() if per_class else u.new_tensor(float("nan")))
    return torch.stack(scores)


class RegistrationLoss:
    """Eq. 1 for one similarity: ``loss(u, moving, fixed, moving_labels, fixed_labels) -> (L, parts)``."""

    def __init__(self, similarity: str, lam: float, deepsim=None, classes: int = 4, sup_weight: float = 1.0):
        if similarity not in SIMILARITIES:
            raise ValueError(f"similarity {similarity!r}: choose one of {', '.join(SIMILARITIES)}")
        if similarity == "deepsim" and deepsim is None:
            raise ValueError("the deepsim similarity needs a trained feature extractor")
        self.similarity, self.lam, self.deepsim = similarity, float(lam), deepsim
        self.classes, self.sup_weight = classes, sup_weight

    def dissimilarity(self, warped, fixed, u, moving_labels=None, fixed_labels=None) -> torch.Tensor:
        if self.similarity == "deepsim":
            return self.deepsim.loss(warped, fixed)
        if self.similarity == "mse":
            return mse(warped, fixed)
        d = local_ncc(warped, fixed)
        if self.similarity == "ncc_sup":
            warped_labels = warp_voxels(one_hot(moving_labels, self.classes), u)
            d = d + self.sup_weight * soft_dice_loss(warped_labels, one_hot(fixed_labels, self.classes))
        return d

    def __call__(self, u, moving, fixed, moving_labels=None, fixed_labels=None) -> tuple:
        warped = warp_voxels(moving, u)
        d = self.dissimilarity(warped, fixed, u, moving_labels, fixed_labels)
        r = diffusion(u)
        return d + self.lam * r, {"similarity": float(d.detach()), "regularizer": float(r.detach())}
