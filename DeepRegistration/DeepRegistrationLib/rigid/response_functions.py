"""Response functions (Sedghi et al. 2018, §3 and Fig. 2): a metric as a function of one rigid parameter.

Around a pose T₀ (fixed->moving), each of tx, ty, tz (mm) and rx, ry, rz (degrees) is varied alone
and the metric is evaluated over a fixed set of patches (64 by default, as in the paper) drawn once
in the fixed foreground with a fixed seed:

* ``cnn``: Σₙ of the network's log-likelihood ratio (eq. 2), one curve per stage of a metric set,
  patches at the stage's spacing and size;
* ``nmi``: normalized mutual information of the pooled samples of the patches (60 bins);
* ``ncc``: Σₙ of each patch pair's normalized cross-correlation.

NMI and NCC read the patches at ``spacing_mm`` (default: the fixed image's finest spacing), 17³.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..core.errors import InputError
from ..core.image import Image
from ..core.transforms import RigidTransform
from ..metrics.similarity import nmi
from ..rigid.metric_patches import prepare_level
from .cnn_metric import CNNMetricObjective, PatchObjective, load_metric_set

PARAMETERS = ("tx", "ty", "tz", "rx", "ry", "rz")
UNITS = {"tx": "mm", "ty": "mm", "tz": "mm", "rx": "deg", "ry": "deg", "rz": "deg"}


@dataclass
class ResponseMetric:
    label: str
    evaluate: Callable[[RigidTransform], float]


def perturbed(pose: RigidTransform, parameter: str, offset: float) -> RigidTransform:
    """``pose`` with ``offset`` added to one parameter (mm for t*, degrees for r*)."""
    i = PARAMETERS.index(parameter)
    angles, translation = pose.angles_rad.copy(), pose.translation_mm.copy()
    if i < 3:
        translation[i] += offset
    else:
        angles[i - 3] += np.radians(offset)
    return RigidTransform(angles, translation, pose.center_mm)


class PooledNMI(PatchObjective):
    def __init__(self, *args, bins: int = 60):
        super().__init__(*args)
        self.bins = bins

    def __call__(self, transform) -> float:
        with torch.no_grad():
            return float(nmi(self.fixed_patches, self.moving_patches(transform), self.bins))


class PatchNCC(PatchObjective):
    def __call__(self, transform) -> float:
        with torch.no_grad():
            a = self.fixed_patches.flatten(1)
            b = self.moving_patches(transform).flatten(1)
            a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
            return float(((a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp(min=1e-8)).sum())


def build_metrics(spec: str, fixed: Image, moving: Image, patches: int = 64, seed: int = 0, device="cpu",
                  spacing_mm: float = None, fixed_mask: Image = None) -> list:
    """``nmi``, ``ncc`` or ``cnn:MODEL`` (a bundled name or file; one metric per stage)."""
    if spec.startswith("cnn:"):
        out = []
        for stage in load_metric_set(spec[4:], device):
            f = prepare_level(fixed, stage.spacing_mm, device, fixed_mask)
            m = prepare_level(moving, stage.spacing_mm, device)
            out.append(ResponseMetric(stage.label, CNNMetricObjective(stage, f, m, patches, seed)))
        return out
    if spec not in ("nmi", "ncc"):
        raise InputError(f"unknown metric {spec!r}: use nmi, ncc or cnn:MODEL")
    spacing = float(spacing_mm or fixed.grid.spacing.min())
    f = prepare_level(fixed, spacing, device, fixed_mask)
    m = prepare_level(moving, spacing, device)
    if spec == "nmi":
        return [ResponseMetric("NMI (60 bins)", PooledNMI(f, m, 17, spacing, patches, seed))]
    return [ResponseMetric("NCC (sum over patches)", PatchNCC(f, m, 17, spacing, patches, seed))]


def response_functions(metrics: list, pose: RigidTransform, translation_range_mm: float = 20.0,
                       rotation_range_deg: float = 15.0, steps: int = 41, parameters=PARAMETERS) -> list:
    """Rows {metric, parameter, unit, offset, value} for offsets in [-range, range] around ``pose``."""
    if steps < 2:
        raise InputError("a response function needs at least 2 steps")
    rows = []
    for metric in metrics:
        for p in parameters:
            span = translation_range_mm if UNITS[p] == "mm" else rotation_range_deg
            for offset in np.linspace(-span, span, steps):
                rows.append({"metric": metric.label, "parameter": p, "unit": UNITS[p], "offset": float(offset),
                             "value": float(metric.evaluate(perturbed(pose, p, float(offset))))})
    return rows


def peak_offsets(rows: list) -> dict:
    """{(metric, parameter): offset of the maximum}."""
    best = {}
    for r in rows:
        key = (r["metric"], r["parameter"])
        if key not in best or r["value"] > best[key][1]:
            best[key] = (r["offset"], r["value"])
    return {k: v[0] for k, v in best.items()}


def write_response_csv(rows: list, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["metric", "parameter", "unit", "offset", "value"])
        w.writeheader()
        w.writerows(rows)
    return path


def nmi_and_cnn_panels(fixed: Image, moving: Image, pose: RigidTransform, model: str, device="cpu",
                       patches: int = 64, steps: int = 31) -> list:
    """Side-by-side panels [(title, rows)] of NMI and of every stage of a CNN metric set around ``pose``."""
    nmi_rows = response_functions(build_metrics("nmi", fixed, moving, patches, device=device), pose, steps=steps)
    cnn_rows = response_functions(build_metrics(f"cnn:{model}", fixed, moving, patches, device=device), pose,
                                  steps=steps)
    return [("NMI (60 bins)", nmi_rows), (f"CNN metric {model}", cnn_rows)]
