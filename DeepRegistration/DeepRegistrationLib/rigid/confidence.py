"""A confidence for a rigid or affine result: the metric's curvature at the optimum, the pose uncertainty it
implies, and flags for a likely failure.

At the optimum θ* (the 6 Euler parameters, or the 12 affine ones, in Powell's scaling, :mod:`.powell`:
rotations and matrix entries as arc lengths at ``rotation_radius_mm``, translations in mm, so every coordinate
is in mm), the objective the method maximized is evaluated on a central finite-difference stencil of step h
(θ*, θ* ± h eᵢ, θ* ± h eᵢ ± h eⱼ: 73 poses, 289 for the affine) and
a quadratic f(θ*+δ) ≈ f₀ + gᵀδ + ½ δᵀHδ is fitted by least squares. Its noise level σ combines

* σ_fit, the residual of that fit (what is not quadratic at the scale h: interpolation ripple, a second mode),
* σ_sampling, the spread of f(θ*+δ) − f(θ*) over the axial stencil poses when the objective is rebuilt with
  other sample seeds (other NMI points, other CNN patch centres), where the method samples.

The poses whose metric lies within the noise of the optimum, ½ δᵀ(−H)δ ≤ σ, form an ellipsoid with
covariance Σ = σ (−H)⁻¹ (an indifference region, as a likelihood's would be for a log-likelihood).
The reported uncertainties are the RMS displacement it implies over the fixed foreground,
``uncertainty_mm`` = (mean_x tr(J(x) Σ J(x)ᵀ))^½ with J(x) = ∂T(x)/∂θ, and for a rigid result the RMS
rotation angle, ``uncertainty_deg``.

A result is flagged (``flagged``, ``reasons``, :func:`judge`) when

* the fitted quadratic rises, within h of the result, by more than ``max_rise`` σ: the result is not a local
  maximum (a saddle, stopped at a search bound or before convergence). A rise within the noise is no evidence;
* σ_fit is large against the curvature's drop over the stencil: a noisy or multi-modal response;
* the implied uncertainty exceeds ``max_uncertainty_mm``;
* (rigid results) a coarse rotation search (:mod:`.initialization`) finds a pose far from the result whose coarse
  NMI, after refinement, exceeds the result's refined there: the result is a wrong local optimum. An affine
  stage starts from a rigid one, whose confidence holds this check.

The thresholds are calibrated on the corpus's validation subjects (``benchmarks/accuracy/rigid_evaluation.py
--split validation``, then ``--calibrate``); the figures reported come from its test subjects.
"""
from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch

from ..core.image import Image
from ..core.transforms import AffineTransform, LinearTransform, RigidTransform
from .initialization import CoarseNMI, SearchSettings, foreground_sample, search
from .powell import maximize_rigid


@dataclass
class ConfidenceSettings:
    #: finite-difference step h in Powell units (mm; rotations as arc length at ``rotation_radius_mm``)
    step_mm: float = 2.0
    rotation_radius_mm: float = 80.0
    #: extra sample seeds for σ_sampling (objectives that sample)
    noise_seeds: int = 2
    # The three thresholds below are calibrated on the corpus's validation subjects (36 nmi results, 15 failures;
    # docs/lab/rigid_confidence_validation.json, NMI with its off-centre sample points):
    # python benchmarks/accuracy/rigid_evaluation.py --split validation --cases 3 --ants-cases 0 --json v.json
    # python benchmarks/accuracy/rigid_evaluation.py --calibrate v.json   (the uncalibrated 2 mm / 0.5 / 2σ
    # flagged 48 % of the good validation results)
    #: flag when the implied RMS displacement exceeds this (mm)
    max_uncertainty_mm: float = 7.89
    #: flag when σ_fit exceeds this fraction of the quadratic's mean drop over the stencil's axial poses
    max_misfit: float = 0.49
    #: flag when the fitted metric rises by more than this many σ within h of the result
    max_rise: float = 3.02
    #: a distant pose: RMS displacement over the fixed foreground beyond this (mm)
    distant_mm: float = 10.0
    #: ... flags when its refined coarse NMI exceeds the result's by more than this
    coarse_margin: float = 0.002


def stencil(n: int, h: float) -> np.ndarray:
    """The central finite-difference stencil in n dimensions: 0, ±h eᵢ, ±h eᵢ ± h eⱼ (i < j)."""
    rows = [np.zeros(n)]
    eye = np.eye(n) * h
    rows += [s * eye[i] for i in range(n) for s in (1, -1)]
    rows += [a * eye[i] + b * eye[j] for i, j in itertools.combinations(range(n), 2) for a in (1, -1) for b in (1, -1)]
    return np.array(rows)


def fit_quadratic(deltas: np.ndarray, values: np.ndarray) -> tuple:
    """Least-squares f(δ) ≈ f₀ + gᵀδ + ½ δᵀHδ; returns (f₀, g, H, residual std)."""
    n = deltas.shape[1]
    pairs = [(i, j) for i in range(n) for j in range(i, n)]
    design = np.hstack([np.ones((len(deltas), 1)), deltas,
                        np.stack([deltas[:, i] * deltas[:, j] * (0.5 if i == j else 1.0) for i, j in pairs], 1)])
    coef, *_ = np.linalg.lstsq(design, values, rcond=None)
    h = np.zeros((n, n))
    for k, (i, j) in enumerate(pairs):
        h[i, j] = h[j, i] = coef[1 + n + k]
    residual = values - design @ coef
    dof = max(len(values) - design.shape[1], 1)
    return float(coef[0]), coef[1:1 + n], h, float(np.sqrt(residual @ residual / dof))


@dataclass
class Parameterization:
    """A linear transform as a point x of Powell's scaled parameters (see :mod:`.powell`)."""

    x0: np.ndarray
    transform: Callable[[np.ndarray], LinearTransform]
    names: tuple

    @classmethod
    def of(cls, optimum: LinearTransform, settings: "ConfidenceSettings",
           center_mm: np.ndarray = None) -> "Parameterization":
        r = settings.rotation_radius_mm
        if isinstance(optimum, RigidTransform):
            scale = np.array([r] * 3 + [1.0] * 3)
            return cls(optimum.parameters * scale,
                       lambda x: RigidTransform.from_parameters(x / scale, optimum.center_mm),
                       ("rx", "ry", "rz", "tx", "ty", "tz"))
        if not isinstance(optimum, AffineTransform):
            raise TypeError(f"no confidence for a {type(optimum).__name__}")
        scale = np.array([r] * 9 + [1.0] * 3)
        return cls(optimum.parameters(center_mm) * scale, lambda x: AffineTransform.from_parameters(x / scale,
                                                                                                  center_mm),
                   tuple(f"a{i}{j}" for i in range(1, 4) for j in range(1, 4)) + ("tx", "ty", "tz"))

    def jacobian(self, points: np.ndarray, eps: float = 1e-3) -> np.ndarray:
        """∂T(x)/∂θ at x0 for the scaled parameters θ, (N, 3, n), by central differences."""
        out = np.empty((len(points), 3, len(self.x0)))
        for k in range(len(self.x0)):
            d = np.zeros(len(self.x0))
            d[k] = eps
            out[:, :, k] = (self.transform(self.x0 + d).transform_points(points)
                            - self.transform(self.x0 - d).transform_points(points)) / (2 * eps)
        return out


def rms_distance(a: RigidTransform, b: RigidTransform, points: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.sum((a.transform_points(points) - b.transform_points(points)) ** 2, -1))))


def assess(objective: Callable[[LinearTransform], float], optimum: LinearTransform, points_mm: np.ndarray,
           settings: ConfidenceSettings = None, reseeded: Optional[Callable[[int], Callable]] = None,
           center_mm: np.ndarray = None) -> dict:
    """Curvature, uncertainty and local flags of ``objective`` (maximized) at ``optimum`` (see the module doc).

    ``points_mm``: fixed foreground points; ``reseeded(seed)``: the objective rebuilt with another sample seed;
    ``center_mm``: the centre of an affine optimum's parameters.
    """
    s = settings or ConfidenceSettings()
    pose = Parameterization.of(optimum, s, center_mm)
    n = len(pose.x0)

    def at(obj, delta):
        return float(obj(pose.transform(pose.x0 + delta)))

    deltas = stencil(n, s.step_mm)
    values = np.array([at(objective, d) for d in deltas])
    f0, g, hess, sigma_fit = fit_quadratic(deltas, values)
    sigma_sampling = 0.0
    if reseeded is not None and s.noise_seeds > 0:
        axial = deltas[:2 * n + 1]
        base = values[1:2 * n + 1] - values[0]
        spread = []
        for seed in range(1, s.noise_seeds + 1):
            other = reseeded(seed)
            v = np.array([at(other, d) for d in axial])
            spread.append((v[1:] - v[0]) - base)
        sigma_sampling = float(np.sqrt(np.mean(np.square(spread)) / 2))
    sigma = float(np.hypot(sigma_fit, sigma_sampling))

    curvature, directions = np.linalg.eigh(-hess)
    floor = max(sigma, 1e-12) / (10 * s.step_mm) ** 2
    clipped = np.maximum(curvature, floor)
    inverse = directions @ np.diag(1 / clipped) @ directions.T
    covariance = sigma * inverse
    rise, rise_direction = _largest_rise(g, hess, s.step_mm)
    drop = 0.5 * s.step_mm ** 2 * float(np.mean(np.abs(curvature)))
    jac = pose.jacobian(points_mm)
    per_point = np.einsum("nik,kl,nil->n", jac, covariance, jac)
    rigid = isinstance(optimum, RigidTransform)
    features = {"uncertainty_mm": float(np.sqrt(max(per_point.mean(), 0.0))),
                "uncertainty_deg": float(np.degrees(np.sqrt(max(np.trace(covariance[:3, :3]), 0.0))
                                                    / s.rotation_radius_mm)) if rigid else None,
                "metric_at_optimum": f0, "noise_fit": sigma_fit, "noise_sampling": sigma_sampling,
                "curvature_eigenvalues": curvature.tolist(), "misfit": sigma_fit / max(drop, 1e-12),
                "rise_sigma": rise / max(sigma, 1e-12), "rise_direction": _direction_name(rise_direction, pose.names),
                "step_mm": s.step_mm,
                "evaluations": len(deltas) + (2 * n + 1) * (s.noise_seeds if reseeded is not None else 0)}
    features["reasons"] = judge(features, s)
    features["flagged"] = bool(features["reasons"])
    return features


def _largest_rise(g: np.ndarray, hess: np.ndarray, h: float) -> tuple:
    """The largest rise of the fitted quadratic gᵀδ + ½ δᵀHδ over ‖δ‖ = h, along ±(g and H's eigenvectors)."""
    candidates = [v for v in np.linalg.eigh(hess)[1].T] + ([g / np.linalg.norm(g)] if np.linalg.norm(g) > 0 else [])
    best = (0.0, candidates[0])
    for v in candidates:
        for d in (h * v, -h * v):
            value = float(g @ d + 0.5 * d @ hess @ d)
            if value > best[0]:
                best = (value, d / h)
    return best


def judge(features: dict, settings: ConfidenceSettings = None) -> list:
    """The reasons to flag a result, from :func:`assess`'s features (re-run with other thresholds to calibrate)."""
    s = settings or ConfidenceSettings()
    reasons = []
    if features["rise_sigma"] > s.max_rise:
        reasons.append(f"not a local maximum: the metric rises by {features['rise_sigma']:.1f}σ within "
                       f"{features['step_mm']:g} mm along {features['rise_direction']} (stopped at a search bound "
                       "or before convergence)")
    if features["misfit"] > s.max_misfit:
        reasons.append(f"noisy or multi-modal response (misfit {features['misfit']:.2f} of the curvature's drop)")
    if features["uncertainty_mm"] > s.max_uncertainty_mm:
        reasons.append(f"uncertainty {features['uncertainty_mm']:.1f} mm exceeds {s.max_uncertainty_mm:g} mm")
    check = features.get("coarse_check")
    if check and check["search_distance_mm"] > s.distant_mm \
            and check["coarse_nmi_search"] - check["coarse_nmi_result"] > s.coarse_margin:
        reasons.append(f"a pose {check['search_distance_mm']:.0f} mm away scores higher at the coarse level "
                       f"(NMI {check['coarse_nmi_search']:.4f} > {check['coarse_nmi_result']:.4f}): "
                       "likely a wrong local optimum")
    return reasons


def _direction_name(v: np.ndarray, names: tuple) -> str:
    k = int(np.argmax(np.abs(v)))
    return f"{names[k]} ({abs(v[k]):.0%} of the direction)"


def coarse_check(fixed: Image, moving: Image, result: RigidTransform, device="cpu", fixed_mask: Image = None,
                 moving_mask: Image = None, searched: dict = None) -> dict:
    """The best pose of a coarse rotation search against the result, both refined alike at the coarse level
    (:func:`judge` flags a distant pose that scores higher).

    ``searched``: the report of the initialization's search, when one ran (its candidates are reused)."""
    ss = SearchSettings()
    t0 = time.perf_counter()
    with torch.no_grad():
        if searched is None or not searched.get("refined"):
            _, searched = search(fixed, moving, result, device, ss, fixed_mask, moving_mask, "search")
        top = searched["refined"][0]
        best = RigidTransform.from_parameters(top["parameters"], top["center_mm"])
        score = CoarseNMI(fixed, moving, ss, device, fixed_mask)
        local, local_info = maximize_rigid(score, result, ss.powell())
        best_value = max(score(best), top["coarse_nmi_after"])
    distance = rms_distance(best, local, foreground_sample(score.fixed))
    return {"coarse_nmi_result": local_info["metric_after"], "coarse_nmi_search": best_value,
            "search_distance_mm": distance, "seconds": time.perf_counter() - t0}


def confidence(objective: Callable, optimum: LinearTransform, fixed: Image, moving: Image, device="cpu",
               fixed_mask: Image = None, moving_mask: Image = None, reseeded: Callable = None,
               settings: ConfidenceSettings = None, global_check: bool = True, searched: dict = None) -> dict:
    """The ``confidence`` report entry of a rigid or affine result (affine parameters about the fixed image's
    centre): :func:`assess` plus, for a rigid one with ``global_check``, :func:`coarse_check`."""
    t0 = time.perf_counter()
    s = settings or ConfidenceSettings()
    points = foreground_sample(fixed, n=2000)
    with torch.no_grad():
        out = assess(objective, optimum, points, s, reseeded, fixed.grid.center_physical())
    if global_check and isinstance(optimum, RigidTransform):
        out["coarse_check"] = coarse_check(fixed, moving, optimum, device, fixed_mask, moving_mask, searched)
        out["reasons"] = judge(out, s)
        out["flagged"] = bool(out["reasons"])
    out["seconds"] = time.perf_counter() - t0
    return out


def summary(conf: dict) -> str:
    """One console line."""
    line = f"confidence: ±{conf['uncertainty_mm']:.2f} mm" + (
        f", ±{conf['uncertainty_deg']:.2f}°" if conf["uncertainty_deg"] is not None else "")
    if conf["flagged"]:
        return line + " — FLAGGED, likely failure: " + "; ".join(conf["reasons"])
    return line + " (not flagged)"


def nmi_confidence(fixed: Image, moving: Image, transform: LinearTransform, settings, ctx, searched=None) -> dict:
    """:func:`confidence` of an ``nmi`` or ``nmi-affine`` result: the objective of its finest level
    (``rigid/mi.py``), rebuilt."""
    from dataclasses import replace
    from .mi import level_objective
    from .pyramid import downsample
    f, m = downsample(fixed, settings.levels[-1]), downsample(moving, settings.levels[-1])

    def objective(seed):
        return level_objective(f, m, transform, replace(settings, seed=settings.seed + seed), ctx.device,
                               ctx.fixed_mask, ctx.moving_mask, settings.max_points)

    return confidence(objective(0), transform, fixed, moving, ctx.device, ctx.fixed_mask, ctx.moving_mask, objective,
                      searched=searched)


def cnn_confidence(fixed: Image, moving: Image, transform: RigidTransform, stages: list, settings, ctx,
                   searched=None) -> dict:
    """:func:`confidence` of a ``learned-metric`` result: eq. 2 with the last stage's network, its patch centres
    drawn (as in ``rigid/cnn_metric.py``) where the result maps the fixed foreground into the moving one."""
    from .cnn_metric import CNNMetricObjective
    from .metric_patches import prepare_level
    from .sampling_region import in_both_foregrounds
    stage = stages[-1]
    f = prepare_level(fixed, stage.spacing_mm, ctx.device, ctx.fixed_mask)
    m = prepare_level(moving, stage.spacing_mm, ctx.device, ctx.moving_mask)
    candidates = f.foreground_points[in_both_foregrounds(f.foreground_points, m.foreground, m.grid, transform)]

    def objective(seed):
        return CNNMetricObjective(stage, f, m, settings.patches, settings.seed + seed, candidates)

    return confidence(objective(0), transform, fixed, moving, ctx.device, ctx.fixed_mask, ctx.moving_mask, objective,
                      searched=searched)


def deepsim_confidence(fixed: Image, moving: Image, transform: RigidTransform, deepsim, ctx, searched=None) -> dict:
    """:func:`confidence` of a ``deepsim-rigid`` result (its objective samples nothing: σ is the fit's residual)."""
    from .deepsim_objective import deepsim_rigid_objective
    return confidence(deepsim_rigid_objective(fixed, moving, deepsim, ctx.device), transform, fixed, moving,
                      ctx.device, ctx.fixed_mask, ctx.moving_mask, searched=searched)
