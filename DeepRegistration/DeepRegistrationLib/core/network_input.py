"""An image prepared as a network's input: resampled to the model's grid and its intensities scaled.

The learned methods, their training and the synthetic training data all prepare images this way, so a model
sees its inputs prepared the same way at training and at registration time (the scaling is stated in its
metadata).
"""
from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

from .image import Grid, Image
from .warp import warp


#: Percentiles matched by :func:`matched_histogram`.
MATCH_POINTS = 32


def normalize_intensity(array: np.ndarray) -> np.ndarray:
    """Map the 1st..99th percentile of ``array`` to [0, 1] and clip."""
    lo, hi = np.percentile(array, [1.0, 99.0])
    return np.clip((array - lo) / max(hi - lo, 1e-6), 0.0, 1.0).astype(np.float32)


def matched_histogram(moving: np.ndarray, fixed: np.ndarray, points: int = MATCH_POINTS) -> np.ndarray:
    """``moving`` (normalized to [0, 1], on ``fixed``'s grid) with its intensities mapped onto ``fixed``'s: the
    piecewise-linear map that takes ``points`` evenly spaced percentiles of one onto the other's, both read over
    the voxels where both images are above their lowest level (inside both fields of view and off the darkest
    background). Each image is normalized by its own percentiles; where the fields of view differ or the contrast
    curves do (another scanner, a gamma), the normalizations differ, and a network or an intensity-difference
    similarity would bend the deformation to make up for it. SimpleITK's histogram matching has no mask: over
    every voxel it counts background of different extent in each image, above the mean intensity it leaves dark
    tissue mismatched (both measured worse, see docs/lab/instance-optimization.md)."""
    both = (moving > 0) & (fixed > 0)
    if not both.any():
        return moving
    levels = np.linspace(0.0, 100.0, points)
    out = np.interp(moving, np.percentile(moving[both], levels), np.percentile(fixed[both], levels))
    return np.where(moving > 0, out, 0.0).astype(np.float32)


def resample_to(image: Image, grid: Grid, fixed_to_image=None) -> Image:
    """``image`` on ``grid`` (linear), Gaussian-smoothed first (σ = half the new spacing) where coarser;
    ``image`` itself (as float32) when it already lies on ``grid`` and no transform is given."""
    if fixed_to_image is None and grid.same_as(image.grid):
        return image.with_array(image.array.astype(np.float32, copy=False))
    sigma_vox = [0.5 * g / s if g > 1.5 * s else 0.0
                 for g, s in zip(reversed(grid.spacing.tolist()), reversed(image.grid.spacing.tolist()))]
    source = image.with_array(gaussian_filter(image.array.astype(np.float32), sigma_vox)) if any(sigma_vox) else image
    return warp(source, grid, fixed_to_image)
