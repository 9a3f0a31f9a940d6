"""A start that survives large misalignment: centre of mass, principal moments and a coarse rotation search.

Rigid methods refine a pose locally (Powell within a search region), so they need a start within some
20° and 20 mm of the answer. When no initial transform is given, :func:`starting_pose` makes one
(``--param init=...``):

* ``none``: the identity about the fixed image's centre (the images' headers are trusted);
* ``center``: the translation that brings the fixed foreground's centre of mass onto the moving one's;
* ``moments``: centres of mass and principal axes of the foreground intensity distributions
  (the image moments of ITK's ``CenteredTransformInitializer`` MOMENTS mode); a principal axis has no
  sign, so the four proper rotations that map axes to axes (sign flips with determinant +1) are scored
  and the best kept;
* ``search``: the moments candidates, the identity, and a set of rotations covering SO(3)
  (a super-Fibonacci spiral, Alexa 2022, CVPR) about the centres of mass, each scored by NMI at a
  coarse level; the best few are refined there by Powell and the best refined pose is the start.

Foreground: voxels above the Otsu threshold of the coarse image; the moments are weighted by intensity.
All scoring is NMI on both images resampled to about ``spacing_mm`` (anti-aliased), whatever the
method's own metric, so the start costs the same for every method.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
import torch

from ..core.image import Image
from ..core.transforms import RigidTransform
from ..core.warp import warp
from ..metrics.sampled_nmi import SampledNMI
from .powell import PowellSettings, initial_rigid, maximize_rigid
from .pyramid import downsample

INIT_CHOICES = ("search", "moments", "center", "none")


@dataclass
class SearchSettings:
    #: spacing (mm) of the coarse level the candidates are scored at
    spacing_mm: float = 8.0
    #: rotations sampled over SO(3) (300: a sample within about 30° of any rotation)
    rotations: int = 300
    #: candidates refined by Powell at the coarse level
    keep: int = 3
    bins: int = 32
    max_points: int = 5000
    refine_evaluations: int = 200

    def powell(self) -> PowellSettings:
        """The refinement at the coarse level: coarse steps, bounded to ±0.5 rad and ±40 mm."""
        return PowellSettings(max_evaluations=self.refine_evaluations, initial_step_mm=self.spacing_mm, xtol=0.5,
                              ftol=1e-4, max_rotation_rad=0.5, max_translation_mm=40.0)


@dataclass
class Moments:
    """Centre of mass (mm) and principal axes (columns, by decreasing variance) of a foreground."""

    centre: np.ndarray
    axes: np.ndarray
    variances: np.ndarray


def coarse(image: Image, spacing_mm: float) -> Image:
    """``image`` anti-aliased and resampled so its finest spacing is about ``spacing_mm``."""
    return downsample(image, max(1.0, spacing_mm / float(np.min(image.grid.spacing))))


def foreground(image: Image, mask: Image = None) -> np.ndarray:
    """Boolean foreground of ``image``: the mask (resampled onto its grid) where given, else above Otsu."""
    if mask is not None:
        return warp(mask, image.grid, None, mode="nearest").array > 0
    otsu = sitk.OtsuThresholdImageFilter()
    otsu.SetInsideValue(0)
    otsu.SetOutsideValue(1)
    otsu.Execute(sitk.Cast(image.to_sitk(), sitk.sitkFloat32))
    return image.array > otsu.GetThreshold()


def moments(image: Image, mask: Image = None) -> Moments:
    """Intensity-weighted centre of mass and principal axes of the foreground (LPS mm)."""
    fg = foreground(image, mask)
    if fg.sum() < 10:
        fg = image.array > image.array.min()
    k, j, i = np.nonzero(fg)
    points = image.grid.index_to_physical(np.stack([i, j, k], axis=1).astype(np.float64))
    w = np.clip(image.array[fg].astype(np.float64), 0, None) + 1e-12
    w = w / w.sum()
    centre = w @ points
    d = points - centre
    cov = (d * w[:, None]).T @ d
    variances, axes = np.linalg.eigh(cov)
    order = np.argsort(variances)[::-1]
    return Moments(centre, axes[:, order], variances[order])


def rigid_about(rotation: np.ndarray, fixed_centre: np.ndarray, moving_centre: np.ndarray,
                centre_mm: np.ndarray) -> RigidTransform:
    """T(x) = R (x - c_f) + c_m, as an Euler transform about ``centre_mm``."""
    m = np.eye(4)
    m[:3, :3] = rotation
    m[:3, 3] = moving_centre - rotation @ fixed_centre
    return RigidTransform.from_matrix4(m, centre_mm)


def moments_rotations(fixed: Moments, moving: Moments) -> list:
    """The four proper rotations R = E_m S E_fᵀ mapping the fixed principal axes onto the moving ones."""
    out = []
    for signs in ((1, 1, 1), (1, -1, -1), (-1, 1, -1), (-1, -1, 1)):
        r = moving.axes @ np.diag(signs) @ fixed.axes.T
        if np.linalg.det(r) < 0:
            r = moving.axes @ np.diag(signs) @ np.diag((1, 1, -1)) @ fixed.axes.T
        out.append(r)
    return out


def super_fibonacci_rotations(n: int) -> np.ndarray:
    """``n`` rotation matrices spread uniformly over SO(3) (super-Fibonacci spiral, Alexa 2022, Alg. 1)."""
    phi, psi = np.sqrt(2.0), 1.533751168755204288118041
    s = np.arange(n) + 0.5
    r, big_r = np.sqrt(s / n), np.sqrt(1.0 - s / n)
    alpha, beta = 2 * np.pi * s / phi, 2 * np.pi * s / psi
    w, x, y, z = r * np.sin(alpha), r * np.cos(alpha), big_r * np.sin(beta), big_r * np.cos(beta)
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
        np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
        np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
    ], axis=1)


class CoarseNMI:
    """NMI of the two images at a coarse level, for any fixed->moving rigid transform."""

    def __init__(self, fixed: Image, moving: Image, settings: SearchSettings, device, fixed_mask=None):
        self.fixed, self.moving = coarse(fixed, settings.spacing_mm), coarse(moving, settings.spacing_mm)
        indices = None if fixed_mask is None else torch.nonzero(
            torch.as_tensor(foreground(self.fixed, fixed_mask)).reshape(-1)).squeeze(1)
        self.objective = SampledNMI.on_grid(self.fixed, self.moving, settings.bins, settings.max_points, 0, device,
                                            indices=indices)

    def __call__(self, transform: RigidTransform) -> float:
        return self.objective(transform)


def search(fixed: Image, moving: Image, start: RigidTransform, device="cpu", settings: SearchSettings = None,
           fixed_mask: Image = None, moving_mask: Image = None, mode: str = "search") -> tuple:
    """The best start by ``mode`` (see the module docstring); returns (RigidTransform, report dict)."""
    settings = settings or SearchSettings()
    t0 = time.perf_counter()
    score = CoarseNMI(fixed, moving, settings, device, fixed_mask)
    fm, mm = moments(score.fixed, fixed_mask), moments(score.moving, moving_mask)
    centre = start.center_mm
    if mode == "center":
        best = rigid_about(start.rotation_matrix(), fm.centre, mm.centre, centre)
        return best, {"init": mode, "translation_mm": best.translation_mm.tolist(),
                      "seconds": time.perf_counter() - t0}
    candidates = [rigid_about(r, fm.centre, mm.centre, centre) for r in moments_rotations(fm, mm)]
    if mode == "search":
        candidates += [start, rigid_about(start.rotation_matrix(), fm.centre, mm.centre, centre)]
        candidates += [rigid_about(r, fm.centre, mm.centre, centre) for r in super_fibonacci_rotations(settings.rotations)]
    values = np.array([score(c) for c in candidates])
    order = np.argsort(values)[::-1]
    if mode == "moments":
        best = candidates[order[0]]
        return best, {"init": mode, "candidates": len(candidates), "coarse_nmi": float(values[order[0]]),
                      "seconds": time.perf_counter() - t0}
    refined = []
    for i in _distinct(candidates, order, settings.keep, score.fixed):
        pose, info = maximize_rigid(score, candidates[i], settings.powell())
        refined.append((info["metric_after"], float(values[i]), pose))
    refined.sort(key=lambda r: r[0], reverse=True)
    best = refined[0][2]
    return best, {"init": mode, "candidates": len(candidates), "coarse_spacing_mm": settings.spacing_mm,
                  "refined": [{"coarse_nmi_before": b, "coarse_nmi_after": a, "parameters": p.parameters.tolist(),
                               "center_mm": p.center_mm.tolist()} for a, b, p in refined],
                  "coarse_nmi": refined[0][0], "seconds": time.perf_counter() - t0}


def _distinct(candidates: list, order: np.ndarray, keep: int, image: Image, min_mm: float = 15.0) -> list:
    """Indices of the ``keep`` best candidates, skipping one within ``min_mm`` (RMS over the image's
    foreground) of a candidate already kept: the refinement should explore different poses."""
    points = foreground_sample(image)
    kept = []
    for i in order:
        mapped = candidates[i].transform_points(points)
        if all(np.sqrt(np.mean(np.sum((mapped - candidates[j].transform_points(points)) ** 2, -1))) > min_mm
               for j in kept):
            kept.append(i)
        if len(kept) == keep:
            break
    return kept


def foreground_sample(image: Image, n: int = 500, seed: int = 0) -> np.ndarray:
    """``n`` foreground points (LPS mm) of ``image``, drawn with a fixed seed."""
    k, j, i = np.nonzero(foreground(image))
    idx = np.random.default_rng(seed).permutation(len(i))[:n]
    return image.grid.index_to_physical(np.stack([i[idx], j[idx], k[idx]], axis=1).astype(np.float64))


def starting_pose(fixed: Image, moving: Image, ctx) -> tuple:
    """The start of a rigid method: the given initial transform, else one made by ``ctx.options['init']``.

    Returns (RigidTransform about the fixed centre, report entries)."""
    start = initial_rigid(ctx.initial_transform, fixed)
    mode = ctx.options.get("init", "none")
    if ctx.initial_given or mode == "none":
        return start, {"init": "given" if ctx.initial_given else "none"}
    ctx.progress(0.0, f"initialization ({mode})")
    with torch.no_grad():
        pose, info = search(fixed, moving, start, ctx.device, fixed_mask=ctx.fixed_mask, moving_mask=ctx.moving_mask,
                            mode=mode)
    return pose, {"initialization": info}
