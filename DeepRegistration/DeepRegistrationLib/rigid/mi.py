"""Rigid and affine multimodal registration with normalized mutual information (Studholme), Powell,
multi-resolution.

The baseline of Sedghi et al. (NMI, 60 bins). At each pyramid level the fixed sample points are drawn
once, with a fixed seed and off the voxel centres (``JITTER_VOXELS``), from the sampling region
(:mod:`.sampling_region`: the fixed foreground that the level's start pose maps into the moving
foreground); the metric is evaluated in torch on the chosen
device (:class:`~..metrics.sampled_nmi.SampledNMI`): the points are mapped by the candidate transform
and the moving image is read there with ``grid_sample``; only points that land inside the moving image
count.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

from ..core.image import Image
from ..core.progress import Progress
from ..core.transforms import LinearTransform
from ..metrics.sampled_nmi import SampledNMI
from .powell import PowellSettings, maximize_affine, maximize_rigid
from .pyramid import downsample
from .sampling_region import region_points, whole_image

#: Fixed sample points are drawn off the voxel centres (normal offsets, σ = this many voxels per axis), as ITK's
#: random sampling draws them (σ = 1/3 voxel there). On points at voxel centres, interpolation smooths the moving
#: image least where the two grids align, and the optimum leans towards such poses. Chosen on the validation
#: subjects (docs/lab/rigid.md): 0.5 and 1/3 voxel both cut the error, 0.5 slightly more.
JITTER_VOXELS = 0.5


@dataclass
class MISettings:
    bins: int = 60
    levels: tuple = (4, 2, 1)
    max_points: int = 60000
    seed: int = 0
    #: Powell bounded to ±0.5 rad (or ±0.5 per matrix entry) and ±50 mm around the start (see rigid/powell.py).
    powell: PowellSettings = field(default_factory=lambda: PowellSettings(max_rotation_rad=0.5,
                                                                          max_translation_mm=50.0))


def level_objective(fixed: Image, moving: Image, start: LinearTransform, settings: MISettings, device,
                    fixed_mask: Image, moving_mask: Image, max_points: int) -> SampledNMI:
    """NMI at one level: at most ``max_points`` points of the sampling region at ``start`` (linear binning): the
    fixed image (or mask) mapped into the moving image (or mask)."""
    points = region_points(fixed, whole_image(fixed, fixed_mask), moving, whole_image(moving, moving_mask), start,
                           max_points, settings.seed, JITTER_VOXELS, device)
    return SampledNMI.reading_fixed_at(fixed, points, moving, settings.bins)


def level_powell(settings: MISettings, factor: float) -> PowellSettings:
    """Powell at the level ``factor``: tolerances relative to the finest level's (``xtol`` times the ratio of
    the spacings, ``ftol`` times its square), the search region relative to the first level's (its full
    size there, shrunk with the spacing below), so that coarse levels do not spend evaluations on precision
    the next level refines and fine levels do not search where the coarse ones have excluded."""
    p = settings.powell
    coarser, finer = factor / settings.levels[-1], factor / settings.levels[0]
    region = {} if p.max_rotation_rad is None or p.max_translation_mm is None else {
        "max_rotation_rad": p.max_rotation_rad * finer, "max_translation_mm": p.max_translation_mm * finer}
    return replace(p, xtol=p.xtol * coarser, ftol=p.ftol * coarser ** 2, **region)


def register_nmi(fixed: Image, moving: Image, initial: LinearTransform, device, settings: MISettings = None,
                 progress: Progress = None, fixed_mask: Image = None, moving_mask: Image = None,
                 affine: bool = False) -> tuple:
    """Coarse-to-fine NMI maximization over the 6 rigid parameters (``initial`` a RigidTransform) or the 12
    affine ones (``affine=True``, about the fixed image's centre); returns (fixed->moving transform, list of
    per-level infos)."""
    progress = progress or Progress()
    settings = settings or MISettings()
    transform, infos = initial, []
    center = fixed.grid.center_physical()
    for n, factor in enumerate(settings.levels):
        f, m = downsample(fixed, factor), downsample(moving, factor)
        objective = level_objective(f, m, transform, settings, device, fixed_mask, moving_mask,
                                    int(settings.max_points * settings.levels[-1] / factor))
        powell = level_powell(settings, factor)
        t0 = time.perf_counter()
        stage = f"NMI{' affine' if affine else ''} level {n + 1}/{len(settings.levels)} (x{factor})"
        sub = progress.sub(n / len(settings.levels), (n + 1) / len(settings.levels))
        if affine:
            transform, info = maximize_affine(objective, transform, center, powell, sub, stage)
        else:
            transform, info = maximize_rigid(objective, transform, powell, sub, stage)
        info["seconds"] = time.perf_counter() - t0
        info["sample_points"] = int(objective.points.shape[0])
        infos.append(info)
    return transform, infos
