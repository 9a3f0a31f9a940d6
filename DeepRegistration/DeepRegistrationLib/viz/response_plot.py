"""Response-function figures (Sedghi et al. 2018, Fig. 2): several metrics and stages on one figure."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..rigid.response_functions import PARAMETERS, UNITS
from .figure import pyplot, save_figure


def save_response_plot(rows: list, path, title: str = "", normalize: bool = True, panels: list = None) -> Path:
    """One panel per rigid parameter, one curve per metric. With ``normalize`` each metric is scaled to
    [0, 1] over all its values (so metrics with different units share an axis, and the relative
    sharpness of a metric across parameters is kept). ``panels`` puts several groups of rows side by
    side: a list of (panel title, rows)."""
    plt = pyplot()
    groups = panels or [(title, rows)]
    params = [p for p in PARAMETERS if any(r["parameter"] == p for _, g in groups for r in g)]
    fig = plt.figure(figsize=(2.6 * len(params), 2.9 * len(groups)), layout="constrained")
    rows_of_axes = fig.subfigures(len(groups), 1, squeeze=False)[:, 0]
    for (gtitle, grows), subfig in zip(groups, rows_of_axes):
        axes = subfig.subplots(1, len(params), squeeze=False)[0]
        if gtitle:
            subfig.suptitle(gtitle, fontsize=9)
        for metric in dict.fromkeys(r["metric"] for r in grows):
            vals = np.array([r["value"] for r in grows if r["metric"] == metric])
            lo, hi = vals.min(), vals.max()
            for ax, p in zip(axes, params):
                pts = sorted((r["offset"], r["value"]) for r in grows if r["metric"] == metric and r["parameter"] == p)
                if not pts:
                    continue
                x, y = np.array(pts).T
                ax.plot(x, (y - lo) / max(hi - lo, 1e-12) if normalize else y, label=metric)
        for pi, (ax, p) in enumerate(zip(axes, params)):
            ax.axvline(0.0, color="0.6", lw=0.8, ls="--")
            ax.set_xlabel(f"{p} ({UNITS[p]})", fontsize=8)
            ax.tick_params(labelsize=7)
            if pi == 0:
                ax.set_ylabel(("normalized " if normalize else "") + "metric", fontsize=8)
        if len(set(r["metric"] for r in grows)) > 1:
            axes[-1].legend(fontsize=6, loc="lower right")
    if title and panels:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)
