"""Where the rigid and affine metrics read the images: one step shared by NMI, the learned CNN metric and
DeepSim-rigid.

Each image's *foreground* is its mask (``--fixed-mask``, ``--moving-mask``), resampled by nearest neighbour
onto the grid the metric works on, or, without a mask, the metric's automatic region: the automatic head
foreground for the patch metrics (the learned metric samples anatomy, Sedghi et al. §2.1; DeepSim-rigid
averages its features there), the whole image for NMI (:func:`whole_image`). A histogram metric needs the
head's outline against the air: restricted to the heads, NMI rewarded wrong poses on real heads against
their gradient magnitude (validation subjects: 67 mm where the whole image gives 1.5 mm), and ITK's metrics
sample the whole fixed image too. A stage of a registration samples only the fixed foreground points that
its *start* pose maps into the moving foreground (for NMI without masks: into the moving image's grid). A point whose counterpart lies outside the moving anatomy (another field of view, anatomy cut
off at the grid border, a region the user masked out) carries no information on the alignment; ITK's
metrics leave out points outside the moving mask in the same way. The region is chosen once per stage,
so the objective stays deterministic and continuous in the transform.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from ..core.errors import InputError
from ..core.image import Grid, Image
from ..core.warp import physical_points_at, sample_at_points, subsample_indices, warp

FOREGROUND_DEFAULT = "automatic: Gaussian (4 mm) smoothed image > 0.15 x its 99th percentile, holes filled"


def automatic_foreground(image: Image) -> np.ndarray:
    """Head/foreground mask (z-first bool array): smoothed intensity above 15 % of its 99th percentile."""
    smooth = ndimage.gaussian_filter(image.array.astype(np.float32), (4.0 / image.grid.spacing)[::-1])
    mask = ndimage.binary_fill_holes(smooth > 0.15 * np.percentile(smooth, 99))
    if mask.sum() == 0:
        raise InputError("the automatic foreground mask is empty; give a mask")
    return mask


def foreground(image: Image, mask: Image = None) -> np.ndarray:
    """The foreground of ``image`` on its own grid (z-first bool): ``mask`` resampled there, else automatic."""
    if mask is None:
        return automatic_foreground(image)
    fg = warp(mask, image.grid, mode="nearest").array > 0
    if fg.sum() == 0:
        raise InputError("the foreground mask is empty at the metric's resolution (or does not cover the image)")
    return fg


def whole_image(image: Image, mask: Image = None) -> np.ndarray:
    """The mask's foreground where given, else every voxel: NMI's region (see the module doc)."""
    return foreground(image, mask) if mask is not None else np.ones(image.array.shape, bool)


def in_foreground(fg: torch.Tensor, grid: Grid, points: torch.Tensor) -> torch.Tensor:
    """Whether each LPS point (N, 3) lies in a voxel of ``fg`` ((1, nz, ny, nx), nearest; outside the grid: no)."""
    return sample_at_points(fg, grid, points, mode="nearest")[0] > 0.5


def in_both_foregrounds(points: torch.Tensor, moving_fg: torch.Tensor, moving_grid: Grid, start) -> torch.Tensor:
    """Which fixed foreground ``points`` (N, 3) the start pose maps into the moving foreground ``moving_fg``."""
    return in_foreground(moving_fg, moving_grid, start.transform_points_torch(points))


def region_indices(fixed: Image, fixed_fg: np.ndarray, moving: Image, moving_fg: np.ndarray, start,
                   device="cpu") -> torch.Tensor:
    """Flat indices (z-first) of the fixed voxels in the region: fixed foreground, mapped by ``start`` into the
    moving foreground. An empty region is refused: the anatomy does not overlap at the start pose."""
    idx = torch.as_tensor(np.flatnonzero(fixed_fg.reshape(-1)), device=device)
    moving_tensor = torch.as_tensor(moving_fg, dtype=torch.float32, device=device)[None]
    keep = in_both_foregrounds(physical_points_at(fixed.grid, idx), moving_tensor, moving.grid, start)
    if not bool(keep.any()):
        raise InputError("no point of the fixed foreground maps into the moving foreground at the start pose; "
                         "the images' anatomy does not overlap there (check the initial transform and the masks)")
    return idx[keep]


def region_points(fixed: Image, fixed_fg: np.ndarray, moving: Image, moving_fg: np.ndarray, start, max_points: int,
                  seed: int, jitter_voxels: float, device="cpu") -> torch.Tensor:
    """At most ``max_points`` LPS points (N, 3) of the region (:func:`region_indices`), drawn with ``seed``, each
    moved off its voxel centre by ``jitter_voxels`` (:func:`~..core.warp.physical_points_at`); a point moved out
    of the region (out of the fixed foreground, or mapped by ``start`` out of the moving one) is left out."""
    indices = subsample_indices(region_indices(fixed, fixed_fg, moving, moving_fg, start, device), max_points, seed)
    points = physical_points_at(fixed.grid, indices, jitter_voxels=jitter_voxels, seed=seed)
    fixed_tensor, moving_tensor = (torch.as_tensor(fg, dtype=torch.float32, device=device)[None]
                                   for fg in (fixed_fg, moving_fg))
    keep = in_foreground(fixed_tensor, fixed.grid, points) & in_both_foregrounds(points, moving_tensor, moving.grid,
                                                                                  start)
    return points[keep]
