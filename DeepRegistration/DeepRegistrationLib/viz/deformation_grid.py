"""Morphed grid lines over a warped image (as DeepSim's Fig. 3) for visual QA of deformations."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core.image import Grid, Image
from ..core.transforms import DisplacementField
from .figure import pyplot, save_figure


def _axis_pairs(axis: int):
    """For a slicing axis of a z-first volume, the (row, col) array axes and their x-first field components."""
    return {0: ((1, 2), (1, 0)), 1: ((0, 2), (2, 0)), 2: ((0, 1), (2, 1))}[axis]


def in_plane_displacement_vox(transform, grid: Grid, axis: int, index: int) -> tuple:
    """(row, column) components, in voxels of ``grid``, of T(x) - x over the slice ``index`` along the
    z-first array ``axis`` of ``grid``: what :func:`plot_deformation_grid` draws for that slice.

    Only the slice's voxel centres are mapped, so this is cheap for any transform on a large grid.
    """
    shape = list(grid.shape)
    shape[axis] = 1
    kji = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).reshape(-1, 3)
    kji[:, axis] = index
    ijk = kji[:, ::-1].astype(np.float64)
    points = grid.index_to_physical(ijk)
    u_mm = transform.transform_points(points) - points
    index_from_physical = np.linalg.inv(grid.voxel_to_mm)
    u_vox = (u_mm @ index_from_physical.T).reshape(*[n for d, n in enumerate(shape) if d != axis], 3)
    _, (comp_r, comp_c) = _axis_pairs(axis)
    return u_vox[..., comp_r], u_vox[..., comp_c]


def plot_deformation_grid(ax, warped_slice: np.ndarray, u_rows_vox: np.ndarray, u_cols_vox: np.ndarray,
                          spacing_vox: int = 6, color: str = "#ffcc00") -> None:
    """Draw grid lines (every ``spacing_vox``) displaced by the in-plane field, over the warped slice.

    A grid line through the fixed-space row r is drawn at the moving-space positions r + u(r, c):
    the picture shows where each fixed-space grid point samples the moving image.
    """
    ax.imshow(warped_slice, cmap="gray", origin="lower")
    rows, cols = np.meshgrid(np.arange(warped_slice.shape[0]), np.arange(warped_slice.shape[1]), indexing="ij")
    pr, pc = rows + u_rows_vox, cols + u_cols_vox
    for r in range(0, warped_slice.shape[0], spacing_vox):
        ax.plot(pc[r, :], pr[r, :], color=color, linewidth=0.6)
    for c in range(0, warped_slice.shape[1], spacing_vox):
        ax.plot(pc[:, c], pr[:, c], color=color, linewidth=0.6)
    ax.set_xlim(0, warped_slice.shape[1] - 1)
    ax.set_ylim(0, warped_slice.shape[0] - 1)
    ax.axis("off")


def save_deformation_grid_figure(warped: Image, field: DisplacementField, path, title: str = "",
                                 spacing_vox: int = 6) -> Path:
    """Three orthogonal middle slices of ``warped`` with the field's morphed grid lines (PNG)."""
    plt = pyplot()
    if not field.grid.same_as(warped.grid):
        field = DisplacementField.from_transform(field, warped.grid)
    index_from_physical = np.linalg.inv(field.grid.voxel_to_mm)
    u_vox = field.displacement_mm @ index_from_physical.T  # x-first index displacement
    fig, axes = plt.subplots(1, 3, figsize=(11, 4))
    for axis, ax, name in zip(range(3), axes, ("axial", "coronal", "sagittal")):
        mid = warped.array.shape[axis] // 2
        (_, _), (comp_r, comp_c) = _axis_pairs(axis)
        sl = np.take(warped.array, mid, axis=axis)
        ur = np.take(u_vox[..., comp_r], mid, axis=axis)
        uc = np.take(u_vox[..., comp_c], mid, axis=axis)
        plot_deformation_grid(ax, sl, ur, uc, spacing_vox)
        ax.set_title(name, fontsize=9)
    fig.suptitle(title or "deformation grid over the warped image", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)
