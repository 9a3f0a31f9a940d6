"""Rigid registration by Powell's method (SciPy) over the 6 Euler parameters, coarse to fine.

Rotations are optimized as arc lengths at ``rotation_radius_mm`` so that a unit step in any
parameter moves points by about a millimetre, which keeps Powell's line searches balanced.
Optionally the search is bounded to a region around the starting pose (±``max_rotation_rad`` per
angle, ±``max_translation_mm`` per axis): the NMI method uses this, because without bounds a line
search on a coarse pyramid level can jump to a far, flipped pose where NMI has a spurious maximum.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
from scipy.optimize import minimize

from ..core.errors import InputError
from ..core.image import Image
from ..core.progress import Progress
from ..core.transforms import LinearTransform, RigidTransform


@dataclass
class PowellSettings:
    rotation_radius_mm: float = 80.0
    xtol: float = 0.05
    ftol: float = 1e-5
    max_evaluations: int = 600
    initial_step_mm: float = 4.0
    max_rotation_rad: Optional[float] = None
    max_translation_mm: Optional[float] = None


def maximize_rigid(objective: Callable[[RigidTransform], float], initial: RigidTransform,
                   settings: PowellSettings = None, progress: Progress = None, stage: str = "") -> tuple:
    """Maximize ``objective(T)`` over T's parameters with Powell; returns (best T, info dict)."""
    settings = settings or PowellSettings()
    scale = np.array([settings.rotation_radius_mm] * 3 + [1.0] * 3)
    center = initial.center_mm
    evaluations = {"n": 0}

    def cost(x):
        evaluations["n"] += 1
        if progress is not None and evaluations["n"] % 10 == 0:
            progress(min(evaluations["n"] / settings.max_evaluations, 1.0), stage)
        return -float(objective(RigidTransform.from_parameters(x / scale, center)))

    x0 = initial.parameters * scale
    start_value = -cost(x0)
    bounds = None
    if settings.max_rotation_rad is not None and settings.max_translation_mm is not None:
        half_width = np.array([settings.max_rotation_rad * settings.rotation_radius_mm] * 3 +
                              [settings.max_translation_mm] * 3)
        bounds = list(zip(x0 - half_width, x0 + half_width))
    result = minimize(cost, x0, method="Powell", bounds=bounds,
                      options={"xtol": settings.xtol, "ftol": settings.ftol, "maxfev": settings.max_evaluations,
                               "direc": np.eye(6) * settings.initial_step_mm})
    best = RigidTransform.from_parameters(result.x / scale, center)
    info = {"stage": stage, "metric_before": start_value, "metric_after": float(-result.fun),
            "evaluations": int(result.nfev), "iterations": int(result.nit)}
    if progress is not None:
        progress(1.0, stage)
    return best, info


def initial_rigid(initial, fixed: Image) -> RigidTransform:
    """The starting pose of a rigid method as a rigid transform about the fixed image's centre."""
    if not isinstance(initial, LinearTransform):
        raise InputError("rigid methods need a linear initial transform")
    return RigidTransform.from_matrix4(initial.matrix4(), fixed.grid.center_physical())
