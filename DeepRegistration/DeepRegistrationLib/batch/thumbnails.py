"""The three QA thumbnails of a pair, on the axial slice through its worst Jacobian determinant.

For a deformable result the slice is the one with the most folding voxels (det J <= 0) where any fold,
else the one holding the smallest det J within the fixed image's foreground (voxels above its 20th
intensity percentile: the image's border, where nothing is to be seen, is not chosen for a smaller
value there); for a rigid result (det J = 1 everywhere) it is the middle slice. Drawn with the ``viz`` functions:
a checkerboard of the fixed and the registered moving image, the Jacobian overlay with its legend, and
the deformation grid over the registered image.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core.image import Image
from ..viz.deformation_grid import in_plane_displacement_vox, plot_deformation_grid
from ..viz.jacobian_overlay import plot_jacobian_overlay
from ..viz.figure import gray
from ..viz.overlay import checkerboard

SIZE_IN = 2.6
DPI = 80


def worst_slice(fixed: Image, jacobian: Image = None) -> int:
    """Axial (z) index of the worst Jacobian (see the module docstring), else the middle slice."""
    if jacobian is None:
        return fixed.array.shape[0] // 2
    det = jacobian.array
    folds = (det <= 0).sum(axis=(1, 2))
    if folds.any():
        return int(np.argmax(folds))
    foreground = fixed.array > np.percentile(fixed.array, 20)
    if not foreground.any():
        foreground = np.ones_like(det, dtype=bool)
    return int(np.unravel_index(int(np.argmin(np.where(foreground, det, np.inf))), det.shape)[0])


def _figure(title: str, legend: bool = False):
    """A figure with one image axes in fixed place (no layout pass: thumbnails are many), the title above,
    and with ``legend`` a colour-bar axes on the right; returns (figure, axes, colour-bar axes or None)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(SIZE_IN * (1.25 if legend else 1.0), SIZE_IN))
    width = 0.74 if legend else 0.96
    ax = fig.add_axes([0.02, 0.02, width, 0.86])
    cax = fig.add_axes([0.80, 0.12, 0.035, 0.66]) if legend else None
    fig.text(0.5, 0.94, title, ha="center", va="center", fontsize=7)
    return fig, ax, cax


def _save(fig, path: Path) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=DPI)
    return path.name


def save_thumbnails(result, folder) -> dict:
    """Write ``checkerboard.png``, ``jacobian.png`` (deformable results) and ``grid.png`` into ``folder``;
    returns {kind: file name} and the slice under ``slice_z``."""
    folder = Path(folder)
    fixed, warped, jac = result.fixed, result.warped, result.jacobian
    z = worst_slice(fixed, jac)
    where = f"axial slice {z}" + (f", det J min {float(jac.array[z].min()):.2f}" if jac is not None else "")
    written = {"slice_z": z}

    fig, ax, _ = _figure(f"checkerboard, {where}")
    ax.imshow(checkerboard(gray(fixed.array[z]), gray(warped.array[z])), cmap="gray", origin="lower")
    ax.axis("off")
    written["checkerboard"] = _save(fig, folder / "checkerboard.png")

    if jac is not None:
        fig, ax, cax = _figure(f"det J, {where}", legend=True)
        plot_jacobian_overlay(ax, fixed.array[z], jac.array[z], colorbar_axes=cax)
        written["jacobian"] = _save(fig, folder / "jacobian.png")

    fig, ax, _ = _figure(f"deformation grid, {where}")
    u_rows, u_cols = in_plane_displacement_vox(result.transform, fixed.grid, 0, z)
    plot_deformation_grid(ax, gray(warped.array[z]), u_rows, u_cols, spacing_vox=max(2, fixed.grid.size[0] // 16))
    written["grid"] = _save(fig, folder / "grid.png")
    return written
