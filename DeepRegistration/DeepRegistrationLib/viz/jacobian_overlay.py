"""The Jacobian determinant over an anatomical slice, with a legend: where a deformation compresses
(det J < 1, blue), expands (det J > 1, red) and folds (det J <= 0, green), as Slicer's Jacobian volume
shows it (a diverging table centred on 1 over [0, 2], folding in green)."""
from __future__ import annotations

import numpy as np

from .figure import gray

#: det J shown over [0, 2], centred on 1 (no change in volume)
DET_RANGE = (0.0, 2.0)
FOLDING_COLOR = (0.0, 1.0, 0.0, 1.0)


def plot_jacobian_overlay(ax, background: np.ndarray, det: np.ndarray, alpha: float = 0.6, colorbar_axes=None):
    """Draw ``det`` (2D) over the gray ``background`` slice on ``ax``: a blue-white-red map over [0, 2]
    and det J <= 0 in opaque green; the legend (a colour bar naming the three) goes into
    ``colorbar_axes`` when given, else beside ``ax``."""
    from matplotlib.colors import ListedColormap

    ax.imshow(gray(background), cmap="gray", origin="lower")
    shown = ax.imshow(np.ma.masked_where(det <= 0, det), cmap="bwr", vmin=DET_RANGE[0], vmax=DET_RANGE[1],
                      alpha=alpha, origin="lower")
    folded = det <= 0
    if folded.any():
        ax.imshow(np.ma.masked_where(~folded, folded.astype(np.float32)), cmap=ListedColormap([FOLDING_COLOR]),
                  vmin=0, vmax=1, origin="lower", interpolation="nearest")
    ax.axis("off")
    if colorbar_axes is not None:
        bar = ax.figure.colorbar(shown, cax=colorbar_axes, ticks=[0, 1, 2])
    else:
        bar = ax.figure.colorbar(shown, ax=ax, fraction=0.046, pad=0.03, ticks=[0, 1, 2])
    bar.ax.tick_params(labelsize=6)
    bar.set_label("det J (green: folding, ≤ 0)", fontsize=6, labelpad=1)
    return shown
