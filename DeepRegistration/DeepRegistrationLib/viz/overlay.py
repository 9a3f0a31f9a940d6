"""Before/after pictures: checkerboards of fixed and moving on three orthogonal slices."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core.image import Image
from .figure import gray, pyplot, save_figure


def orthogonal_slices(array: np.ndarray) -> list:
    """Axial, coronal and sagittal middle slices of a z-first array (each flipped for display)."""
    z, y, x = (s // 2 for s in array.shape)
    return [array[z], array[:, y, :], array[:, :, x]]


def checkerboard(a: np.ndarray, b: np.ndarray, tiles: int = 8) -> np.ndarray:
    ny, nx = a.shape
    yy, xx = np.meshgrid(np.arange(ny) * tiles // max(ny, 1), np.arange(nx) * tiles // max(nx, 1), indexing="ij")
    return np.where((yy + xx) % 2 == 0, a, b)


def save_checkerboard_figure(fixed: Image, before: Image, after: Image, path, title: str = "") -> Path:
    """Three orthogonal checkerboards of fixed vs moving, before and after registration (PNG)."""
    plt = pyplot()
    f, b, a = (gray(im.array) for im in (fixed, before, after))
    aspect = [fixed.grid.spacing[1] / fixed.grid.spacing[0], fixed.grid.spacing[2] / fixed.grid.spacing[0],
              fixed.grid.spacing[2] / fixed.grid.spacing[1]]
    fig, axes = plt.subplots(2, 3, figsize=(10, 6.5))
    for row, (moving, label) in enumerate(((b, "before"), (a, "after"))):
        for col, (fs, ms, name) in enumerate(zip(orthogonal_slices(f), orthogonal_slices(moving),
                                                 ("axial", "coronal", "sagittal"))):
            ax = axes[row, col]
            ax.imshow(checkerboard(fs, ms), cmap="gray", origin="lower", aspect=aspect[col])
            ax.set_title(f"{label}: {name}", fontsize=9)
            ax.axis("off")
    fig.suptitle(title or "checkerboard of fixed and moving", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)
