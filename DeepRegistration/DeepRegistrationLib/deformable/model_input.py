"""What the learned deformable methods share: input preparation and their outputs in mm.

Resampling to the model's grid and intensity scaling are shared by the diffeomorphic, DIRNet and
DeepSim methods and their training, so a model sees its inputs prepared the same way at training and
at registration time (the scaling is stated in its metadata).
"""
from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

from ..core.image import Grid, Image
from ..core.transforms import LinearTransform
from ..core.warp import warp


def normalize_intensity(array: np.ndarray) -> np.ndarray:
    """Map the 1st..99th percentile of ``array`` to [0, 1] and clip."""
    lo, hi = np.percentile(array, [1.0, 99.0])
    return np.clip((array - lo) / max(hi - lo, 1e-6), 0.0, 1.0).astype(np.float32)


def resample_to(image: Image, grid: Grid, fixed_to_image=None) -> Image:
    """``image`` on ``grid`` (linear), Gaussian-smoothed first (σ = half the new spacing) where coarser;
    ``image`` itself (as float32) when it already lies on ``grid`` and no transform is given."""
    if fixed_to_image is None and grid.same_as(image.grid):
        return image.with_array(image.array.astype(np.float32, copy=False))
    sigma_vox = [0.5 * g / s if g > 1.5 * s else 0.0
                 for g, s in zip(reversed(grid.spacing.tolist()), reversed(image.grid.spacing.tolist()))]
    source = image.with_array(gaussian_filter(image.array.astype(np.float32), sigma_vox)) if any(sigma_vox) else image
    return warp(source, grid, fixed_to_image)


def initial_or_none(transform):
    """The initial transform, or None where it is the identity (nothing to resample through)."""
    identity = isinstance(transform, LinearTransform) and np.allclose(transform.matrix4(), np.eye(4), atol=1e-9)
    return None if identity else transform


def voxels_to_mm(u_vox: np.ndarray, grid: Grid) -> np.ndarray:
    """Displacements (..., 3) in x-first voxel units of ``grid`` to LPS millimetres."""
    return (u_vox @ (grid.direction @ np.diag(grid.spacing)).T).astype(np.float32)


def in_plane(u2: np.ndarray) -> np.ndarray:
    """2D slice-wise displacements (..., 2) as 3D ones with no displacement along the third axis."""
    return np.concatenate([u2, np.zeros(u2.shape[:-1] + (1,), np.float32)], axis=-1)
