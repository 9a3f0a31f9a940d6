"""Preparing images for a deformable network: resampling to the model's grid and intensity scaling.

Shared by the diffeomorphic and DIRNet methods and their training, so a model sees its inputs
prepared the same way at training and at registration time (the scaling is stated in its metadata).
"""
from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

from ..core.image import Grid, Image
from ..core.warp import warp


def normalize_intensity(array: np.ndarray) -> np.ndarray:
    """Map the 1st..99th percentile of ``array`` to [0, 1] and clip."""
    lo, hi = np.percentile(array, [1.0, 99.0])
    return np.clip((array - lo) / max(hi - lo, 1e-6), 0.0, 1.0).astype(np.float32)


def resample_to(image: Image, grid: Grid, fixed_to_image=None) -> Image:
    """``image`` on ``grid`` (linear), Gaussian-smoothed first (σ = half the new spacing) where coarser."""
    sigma_vox = [0.5 * g / s if g > 1.5 * s else 0.0
                 for g, s in zip(reversed(grid.spacing.tolist()), reversed(image.grid.spacing.tolist()))]
    source = image.with_array(gaussian_filter(image.array.astype(np.float32), sigma_vox)) if any(sigma_vox) else image
    return warp(source, grid, fixed_to_image)
