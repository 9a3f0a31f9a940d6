"""Jacobian determinant of a displacement field in physical units, and folding statistics."""
from __future__ import annotations

import numpy as np

from .transforms import DisplacementField


def jacobian_determinant(field: DisplacementField) -> np.ndarray:
    """det(I + ∂u/∂x) at every voxel, x in LPS mm; z-first array like the field.

    Derivatives are central differences along the index axes (one-sided at the borders),
    mapped to physical axes through the grid's direction and spacing (chain rule).
    """
    u = field.displacement_mm.astype(np.float64)
    # d u / d index, index order (i, j, k) = array axes (2, 1, 0)
    du_dindex = np.stack([np.gradient(u, axis=ax) for ax in (2, 1, 0)], axis=-1)  # (..., 3 comp, 3 idx)
    index_from_physical = np.linalg.inv(field.grid.direction @ np.diag(field.grid.spacing))
    du_dx = du_dindex @ index_from_physical
    return np.linalg.det(du_dx + np.eye(3)).astype(np.float32)


def jacobian_statistics(det: np.ndarray, mask: np.ndarray = None) -> dict:
    """% folding voxels (det <= 0), mean/min/max/std of the Jacobian determinant."""
    values = det[mask] if mask is not None else det.reshape(-1)
    return {
        "folding_percent": float(100.0 * np.mean(values <= 0)),
        "folding_voxels": int(np.sum(values <= 0)),
        "jacobian_mean": float(np.mean(values)),
        "jacobian_min": float(np.min(values)),
        "jacobian_max": float(np.max(values)),
        "jacobian_std": float(np.std(values)),
    }
