"""Checks on inputs, each with a clear and specific message."""
from __future__ import annotations

import numpy as np

from .errors import InputError
from .image import Image


def check_volume(image: Image, name: str = "image") -> None:
    """A registrable volume: 3D, scalar, non-empty, finite, not constant."""
    if image.grid.ndim != 3:
        raise InputError(f"{name} is {image.grid.ndim}D (size {image.grid.size}); a 3D volume is needed")
    if image.is_vector:
        raise InputError(f"{name} has {image.array.shape[-1]} components per voxel; a scalar volume is needed")
    if image.array.size == 0 or min(image.grid.size) < 1:
        raise InputError(f"{name} is empty (size {image.grid.size})")
    if min(image.grid.size) < 4:
        raise InputError(f"{name} is too small to register (size {image.grid.size}; at least 4 voxels per axis)")
    bad = ~np.isfinite(image.array)
    if bad.any():
        raise InputError(f"{name} has {int(bad.sum())} NaN or infinite voxels; clean them before registering")
    if float(image.array.max()) == float(image.array.min()):
        raise InputError(f"{name} is constant (every voxel is {float(image.array.min())}); nothing to register")
    if np.any(image.grid.spacing <= 0):
        raise InputError(f"{name} has non-positive spacing {image.grid.spacing.tolist()}")
    if abs(np.linalg.det(image.grid.direction)) < 1e-6:
        raise InputError(f"{name} has a singular direction matrix")


def check_overlap(fixed: Image, moving: Image, fixed_to_moving=None) -> None:
    """The physical boxes of fixed (mapped by the transform) and moving must intersect."""
    corners = fixed.grid.corners_physical()
    if fixed_to_moving is not None:
        corners = fixed_to_moving.transform_points(corners)
    fmin, fmax = corners.min(axis=0), corners.max(axis=0)
    mmin, mmax = moving.grid.bounding_box_physical()
    if np.any(fmax < mmin) or np.any(mmax < fmin):
        raise InputError(
            "the fixed and moving images do not overlap in physical space "
            f"(fixed spans {np.round(fmin, 1).tolist()}..{np.round(fmax, 1).tolist()} mm, "
            f"moving spans {np.round(mmin, 1).tolist()}..{np.round(mmax, 1).tolist()} mm, LPS); "
            "check their origins or give an initial transform"
        )
