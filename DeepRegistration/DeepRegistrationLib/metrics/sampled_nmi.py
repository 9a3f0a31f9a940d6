"""NMI (Studholme) between fixed intensities at sample points x and the moving image read at T(x).

The evaluation the rigid and affine NMI registrations optimize and the quality report reads. The fixed side
is computed once: the points, their values and their histogram bins. Each evaluation maps the points into
the moving grid's ``grid_sample`` coordinates with one matrix product, reads the moving image there, bins
the values and counts the joint histogram with one ``bincount``. Each image is binned over its own range,
fixed over the sample, moving over the whole moving image, both fixed up front, so the bins do not move
with the transform. Only points that land inside the moving image count.

With ``linear=True`` (partial-volume binning) each sample adds bilinear weights to the four bins around it,
so a small change of the transform changes the value smoothly, which Powell's line searches need;
``linear=False`` is standard (nearest-bin) binning, used for reporting.
"""
from __future__ import annotations

import numpy as np
import torch

from ..core.grid_sampling import grid_sample
from ..core.image import Image
from ..core.transforms import LinearTransform
from ..core.warp import (physical_points_at, physical_to_normalized, sample_at_points, sample_voxel_indices,
                         subsample_indices)

#: Fewest points inside the moving image for which NMI is computed; below it the value is 1 (no information).
MIN_POINTS = 64
#: A point is inside the moving image when its ``grid_sample`` coordinates are within ±INSIDE.
INSIDE = 1.0 + 1e-6


def _bins(values: torch.Tensor, lo: float, hi: float, bins: int) -> torch.Tensor:
    """Continuous bin coordinates in [0, bins - 1] of ``values`` binned over [lo, hi]."""
    return ((values - lo) * ((bins - 1) / max(hi - lo, 1e-12))).clamp_(0, bins - 1)


def _split(coordinate: torch.Tensor, bins: int, linear: bool) -> tuple:
    """(lower bin, weight of the upper bin) of continuous bin coordinates; nearest bin and weight 0 if not linear.
    Bins are int32 (half the memory traffic of int64 for the index arithmetic and ``bincount``)."""
    if not linear:
        return coordinate.round().int(), torch.zeros_like(coordinate)
    lower = coordinate.floor().clamp_(0, bins - 2)
    return lower.int(), coordinate - lower


def _entropy(p: torch.Tensor) -> torch.Tensor:
    return -torch.special.xlogy(p, p).sum()


class SampledNMI:
    """NMI between the fixed values at ``points`` (N, 3) mm and the moving image read at their images."""

    def __init__(self, points: torch.Tensor, fixed_values: torch.Tensor, moving: Image, bins: int,
                 linear: bool = True):
        self.points = points
        self.device = points.device
        self.bins, self.linear = bins, linear
        self.moving = moving
        self.moving_volume = torch.as_tensor(moving.array, device=self.device, dtype=torch.float32)[None, None]
        self.moving_range = float(moving.array.min()), float(moving.array.max())
        f = fixed_values.to(torch.float32)
        fixed_bin, fixed_weight = _split(_bins(f, float(f.min()), float(f.max()), bins), bins, linear)
        self._fixed_index = fixed_bin * bins
        # linear binning: the four corners of each sample's bin square (lower/upper fixed bin x lower/upper
        # moving bin, before the moving bin is added) and the fixed weights of the lower and upper fixed bin
        corners = torch.tensor([0, 1, bins, bins + 1], device=self.device, dtype=torch.int32)[:, None]
        self._corner_index = self._fixed_index[None] + corners
        self._fixed_weights = torch.stack((1 - fixed_weight, fixed_weight))[:, None]
        m = np.linalg.inv(moving.grid.index_to_physical_matrix())
        scale = 2.0 / np.maximum(np.asarray(moving.grid.size, dtype=np.float64) - 1, 1)
        self._normalize = (scale[:, None] * m[:3, :3], scale * m[:3, 3] - 1.0)

    @classmethod
    def on_grid(cls, fixed: Image, moving: Image, bins: int, max_points: int, seed: int, device,
                linear: bool = True, indices: torch.Tensor = None) -> "SampledNMI":
        """At most ``max_points`` fixed voxels drawn with ``seed``: among ``indices`` (flat, z-first) if given,
        else among all voxels of the fixed grid."""
        device = torch.device(device)
        if indices is None:
            indices = sample_voxel_indices(fixed.grid, max_points, seed, device=device)
        indices = subsample_indices(indices, max_points, seed).to(device)
        values = torch.as_tensor(fixed.array, device=device, dtype=torch.float32).reshape(-1)[indices]
        return cls(physical_points_at(fixed.grid, indices), values, moving, bins, linear)

    @classmethod
    def reading_fixed_at(cls, fixed: Image, points: torch.Tensor, moving: Image, bins: int,
                         linear: bool = True) -> "SampledNMI":
        """At the fixed ``points`` (N, 3) mm, anywhere in the fixed grid: the fixed image is read there by
        linear interpolation."""
        volume = torch.as_tensor(fixed.array, device=points.device, dtype=torch.float32)[None]
        return cls(points, sample_at_points(volume, fixed.grid, points)[0], moving, bins, linear)

    def coordinates(self, transform: LinearTransform) -> torch.Tensor:
        """``grid_sample`` coordinates in the moving image of T(points), as one matrix product."""
        a, b = self._normalize
        m = transform.matrix4()
        na = torch.as_tensor(a @ m[:3, :3], dtype=torch.float32, device=self.device)
        nb = torch.as_tensor(a @ m[:3, 3] + b, dtype=torch.float32, device=self.device)
        return torch.mm(self.points, na.T).add_(nb)              # (faster than addmm for 3 columns)

    def __call__(self, transform) -> float:
        """NMI under ``transform`` (fixed -> moving); a linear one is composed with the moving grid's normalization."""
        with torch.no_grad():
            if not isinstance(transform, LinearTransform):
                return self.at_points(transform.transform_points_torch(self.points.to(torch.float64)))
            return self.from_coordinates(self.coordinates(transform))

    def at_points(self, mapped: torch.Tensor) -> float:
        """NMI with the moving image read at ``mapped`` (N, 3) mm, the images of ``points`` under some transform."""
        with torch.no_grad():
            return self.from_coordinates(physical_to_normalized(self.moving.grid, mapped.to(torch.float64))
                                         .to(torch.float32))

    def from_coordinates(self, coords: torch.Tensor) -> float:
        lowest, highest = torch.aminmax(coords)
        if max(-float(lowest), float(highest)) <= INSIDE:
            weights = None                                      # every point inside: the usual case, one pass
        else:
            inside = coords.abs().amax(dim=-1) <= INSIDE
            weights = inside.to(coords.dtype)
        if (coords.shape[0] if weights is None else int(weights.sum())) < MIN_POINTS:
            return 1.0
        values = grid_sample(self.moving_volume, coords.reshape(1, 1, 1, -1, 3)).reshape(-1)
        return float(self.nmi(values, weights))

    def nmi(self, moving_values: torch.Tensor, weights: torch.Tensor = None) -> torch.Tensor:
        """(H(A) + H(B)) / H(A, B) of the joint histogram of the fixed values and ``moving_values``, each
        sample counted with its weight (0 or 1: inside the moving image or not; None: all 1)."""
        n = self.bins
        lo, hi = self.moving_range
        moving_bin, moving_weight = _split(_bins(moving_values, lo, hi, n), n, self.linear)
        if self.linear:
            if weights is None:
                moving_weights = torch.stack((1 - moving_weight, moving_weight))
            else:
                v1 = weights * moving_weight
                moving_weights = torch.stack((weights - v1, v1))    # weights are 0 or 1: weights - v1 = weights (1 - w)
            hist = torch.bincount((self._corner_index + moving_bin).view(-1),
                                  (self._fixed_weights * moving_weights).view(-1), minlength=n * n)
        else:
            hist = torch.bincount(self._fixed_index + moving_bin, weights, minlength=n * n)
        p = (hist.to(torch.float64) / hist.sum().clamp(min=1e-12)).view(n, n)
        return (_entropy(p.sum(1)) + _entropy(p.sum(0))) / _entropy(p)
