"""Rigid and affine registration by Powell's method (SciPy), coarse to fine.

The rigid search is over the 6 Euler parameters, the affine one over the 12 parameters of ITK's
``AffineTransform`` (the matrix A row by row, then the translation), both about the fixed image's centre.
Rotation angles and matrix entries are optimized multiplied by ``rotation_radius_mm``, so that a unit
step in any parameter moves points by about a millimetre, which keeps Powell's line searches balanced.
Optionally the search is bounded to a region around the starting pose (±``max_rotation_rad`` per angle,
or per matrix entry, ±``max_translation_mm`` per axis): the NMI methods use this, because without
bounds a line search on a coarse pyramid level can jump to a far, flipped pose where NMI has a spurious
maximum.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
from scipy.optimize import minimize

from ..core.errors import InputError
from ..core.image import Image
from ..core.progress import Progress
from ..core.transforms import AffineTransform, LinearTransform, RigidTransform


@dataclass
class PowellSettings:
    rotation_radius_mm: float = 80.0
    xtol: float = 0.05
    ftol: float = 1e-5
    max_evaluations: int = 600
    initial_step_mm: float = 4.0
    max_rotation_rad: Optional[float] = None
    max_translation_mm: Optional[float] = None


def maximize(objective: Callable, initial: np.ndarray, to_transform: Callable, scale: np.ndarray,
             settings: PowellSettings, half_width: np.ndarray = None, progress: Progress = None,
             stage: str = "") -> tuple:
    """Maximize ``objective(to_transform(p))`` over parameters p from ``initial`` with Powell, on p * ``scale``,
    within ±``half_width`` (scaled units) of the start if given; returns (best transform, info dict)."""
    evaluations = {"n": 0}

    def cost(x):
        evaluations["n"] += 1
        if progress is not None and evaluations["n"] % 10 == 0:
            progress(min(evaluations["n"] / settings.max_evaluations, 1.0), stage)
        return -float(objective(to_transform(x / scale)))

    x0 = np.asarray(initial, dtype=np.float64) * scale
    start_value = -cost(x0)
    bounds = None if half_width is None else list(zip(x0 - half_width, x0 + half_width))
    result = minimize(cost, x0, method="Powell", bounds=bounds,
                      options={"xtol": settings.xtol, "ftol": settings.ftol, "maxfev": settings.max_evaluations,
                               "direc": np.eye(len(x0)) * settings.initial_step_mm})
    info = {"stage": stage, "metric_before": start_value, "metric_after": float(-result.fun),
            "evaluations": int(result.nfev), "iterations": int(result.nit)}
    if progress is not None:
        progress(1.0, stage)
    return to_transform(result.x / scale), info


def _scale_and_bounds(settings: PowellSettings, linear: int) -> tuple:
    """Powell units of ``linear`` rotation-like parameters then 3 translations: (scale, half-widths of the
    search box, or None without bounds). A rotation-like step of 1 moves a point at ``rotation_radius_mm``
    by about 1 mm."""
    scale = np.array([settings.rotation_radius_mm] * linear + [1.0] * 3)
    if settings.max_rotation_rad is None or settings.max_translation_mm is None:
        return scale, None
    return scale, np.array([settings.max_rotation_rad * settings.rotation_radius_mm] * linear +
                           [settings.max_translation_mm] * 3)


def maximize_rigid(objective: Callable[[RigidTransform], float], initial: RigidTransform,
                   settings: PowellSettings = None, progress: Progress = None, stage: str = "") -> tuple:
    """Maximize ``objective(T)`` over T's 6 Euler parameters with Powell; returns (best T, info dict)."""
    settings = settings or PowellSettings()
    scale, half_width = _scale_and_bounds(settings, 3)
    center = initial.center_mm
    return maximize(objective, initial.parameters, lambda p: RigidTransform.from_parameters(p, center), scale,
                    settings, half_width, progress, stage)


def maximize_affine(objective: Callable[[AffineTransform], float], initial: AffineTransform, center_mm,
                    settings: PowellSettings = None, progress: Progress = None, stage: str = "") -> tuple:
    """Maximize ``objective(T)`` over T's 12 affine parameters about ``center_mm`` with Powell (matrix entries
    scaled like rotations: a step of 1 moves a point at ``rotation_radius_mm`` by about 1 mm)."""
    settings = settings or PowellSettings()
    scale, half_width = _scale_and_bounds(settings, 9)
    return maximize(objective, initial.parameters(center_mm),
                    lambda p: AffineTransform.from_parameters(p, center_mm), scale, settings, half_width,
                    progress, stage)


def initial_rigid(initial, fixed: Image) -> RigidTransform:
    """The starting pose of a rigid method as a rigid transform about the fixed image's centre."""
    if not isinstance(initial, LinearTransform):
        raise InputError("rigid methods need a linear initial transform")
    return RigidTransform.from_matrix4(initial.matrix4(), fixed.grid.center_physical())


def initial_affine(initial) -> AffineTransform:
    """The starting pose of an affine method (any linear transform) as an affine transform."""
    if not isinstance(initial, LinearTransform):
        raise InputError("affine methods need a linear initial transform")
    return AffineTransform(initial.matrix4())
