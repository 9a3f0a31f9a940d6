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
    index_from_physical = np.linalg.inv(field.grid.voxel_to_mm).astype(np.float32)
    out = np.empty(u.shape[:3], np.float32)
    for z0 in range(0, nz, slab):
        z1 = min(z0 + slab, nz)
        h0, h1 = max(z0 - 1, 0), min(z1 + 1, nz)
        part = u[h0:h1].astype(np.float32)
        inner = slice(z0 - h0, z0 - h0 + (z1 - z0))
        # d u / d index, index order (i, j, k) = array axes (2, 1, 0); z uses the halo; each (..., 3 components)
        du_dindex = [(np.gradient(part, axis=ax) if part.shape[ax] > 1 else np.zeros_like(part))[inner]
                     for ax in (2, 1, 0)]
        # column p of I + du/dx: e_p + sum_d du/dindex_d * (dindex_d / dx_p)
        columns = [sum(g * index_from_physical[d, p] for d, g in enumerate(du_dindex)) for p in range(3)]
        for p in range(3):
            columns[p][..., p] += 1.0
        out[z0:z1] = _det3(*columns)
    return out


def _det3(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """det [a b c] for stacks of column vectors (..., 3): the scalar triple product a · (b × c)."""
    return (a[..., 0] * (b[..., 1] * c[..., 2] - b[..., 2] * c[..., 1])
            - a[..., 1] * (b[..., 0] * c[..., 2] - b[..., 2] * c[..., 0])
            + a[..., 2] * (b[..., 0] * c[..., 1] - b[..., 1] * c[..., 0]))


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
