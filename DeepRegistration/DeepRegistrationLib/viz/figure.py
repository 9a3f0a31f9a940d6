"""What the figures share: matplotlib without a display, an image's gray scale, and saving a figure."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (no display needed; matplotlib is imported only when drawing)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def gray(a: np.ndarray) -> np.ndarray:
    """Intensities scaled for display: the 1st..99th percentile to [0, 1], clipped."""
    lo, hi = np.percentile(a, [1, 99])
    return np.clip((a - lo) / max(hi - lo, 1e-12), 0, 1)


def save_figure(fig, path, dpi: int = 90) -> Path:
    """Write ``fig`` as a PNG (its folder created) and close it; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)
    return path
