"""Jacobian determinant of a displacement field in physical units, and folding statistics."""
from __future__ import annotations

import numpy as np

from .transforms import DisplacementField


def jacobian_determinant(field: DisplacementField, slab: int = 32) -> np.ndarray:
    """det(I + ∂u/∂x) at every voxel, x in LPS mm; z-first array like the field.

    Derivatives are central differences along the index axes (one-sided at the borders),
    mapped to physical axes through the grid's direction and spacing (chain rule). Computed in
    z-slabs (with a one-voxel halo) so memory stays bounded on large volumes.
    """
    u = field.displacement_mm
    nz = u.shape[0]
    index_from_physical = np.linalg.inv(field.grid.direction @ np.diag(field.grid.spacing)).astype(np.float32)
    out = np.empty(u.shape[:3], np.float32)
    for z0 in range(0, nz, slab):
        z1 = min(z0 + slab, nz)
        h0, h1 = max(z0 - 1, 0), min(z1 + 1, nz)
        part = u[h0:h1].astype(np.float32)
        # d u / d index, index order (i, j, k) = array axes (2, 1, 0); z uses the halo
        grads = [np.gradient(part, axis=ax) if part.shape[ax] > 1 else np.zeros_like(part) for ax in (2, 1, 0)]
        du_dindex = np.stack(grads, axis=-1)[z0 - h0:z0 - h0 + (z1 - z0)]  # (..., 3 comp, 3 idx)
        du_dx = du_dindex @ index_from_physical
        out[z0:z1] = np.linalg.det(du_dx + np.eye(3, dtype=np.float32))
    return out


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
