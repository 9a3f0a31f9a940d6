"""Gaussian image pyramid for coarse-to-fine registration."""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from ..core.image import Image


def downsample(image: Image, factor: float) -> Image:
    """Smooth with a Gaussian of σ = factor/2 voxels (anti-aliasing), resample at ``factor`` × spacing."""
    if factor <= 1:
        return image
    itk = sitk.Cast(image.to_sitk(), sitk.sitkFloat32)
    sigma = [0.5 * factor * s for s in image.grid.spacing]
    smooth = sitk.SmoothingRecursiveGaussian(itk, sigma)
    grid = image.grid.with_spacing(image.grid.spacing * factor)
    ref = Image(np.zeros(grid.shape, np.float32), grid).to_sitk()
    out = sitk.Resample(smooth, ref, sitk.Transform(), sitk.sitkLinear, 0.0)
    return Image(sitk.GetArrayFromImage(out).astype(np.float32), grid)
