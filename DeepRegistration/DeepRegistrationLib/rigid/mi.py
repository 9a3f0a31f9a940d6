"""Rigid multimodal registration with normalized mutual information (Studholme), Powell, multi-resolution.

The baseline of Sedghi et al. (NMI, 60 bins). The metric is evaluated in torch on the chosen
device: fixed sample points are mapped by the candidate transform and the moving image is read
there with ``grid_sample``; only points that land inside the moving image count.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from ..core.image import Image
from ..core.progress import Progress
from ..core.transforms import RigidTransform
from ..core.warp import inside_mask, physical_points_at, sample_at_points, sample_voxel_indices, warp
from ..metrics.similarity import nmi
from .powell import PowellSettings, maximize_rigid
from .pyramid import downsample


@dataclass
class MISettings:
    bins: int = 60
    levels: tuple = (4, 2, 1)
    max_points: int = 60000
    seed: int = 0
    #: Powell bounded to ±0.5 rad and ±50 mm around the start (see rigid/powell.py).
    powell: PowellSettings = field(default_factory=lambda: PowellSettings(max_rotation_rad=0.5,
                                                                          max_translation_mm=50.0))


class NMIObjective:
    """NMI between fixed samples and the moving image read at T(x) for a fixed set of points x."""

    def __init__(self, fixed: Image, moving: Image, bins: int, max_points: int, seed: int, device, fixed_mask=None,
                 linear_binning: bool = True):
        self.device = torch.device(device)
        idx = sample_voxel_indices(fixed.grid, max_points, seed,
                                   None if fixed_mask is None else fixed_mask > 0, self.device)
        self.points = physical_points_at(fixed.grid, idx)
        self.fixed_values = torch.as_tensor(fixed.array, device=self.device, dtype=torch.float32).reshape(-1)[idx]
        self.moving = moving
        self.moving_volume = torch.as_tensor(moving.array, device=self.device, dtype=torch.float32)[None]
        self.bins = bins
        self.linear_binning = linear_binning

    def __call__(self, transform: RigidTransform) -> float:
        with torch.no_grad():
            return self.at_points(transform.transform_points_torch(self.points))

    def at_points(self, mapped: torch.Tensor, inside: torch.Tensor = None) -> float:
        """NMI with the moving image read at ``mapped``, the images of ``self.points`` under some transform
        (``inside``: which of them lie within the moving image, if already known)."""
        with torch.no_grad():
            if inside is None:
                inside = inside_mask(self.moving.grid, mapped)
            if int(inside.sum()) < 64:
                return 1.0
            sampled = sample_at_points(self.moving_volume, self.moving.grid, mapped)[0]
            return float(nmi(self.fixed_values, sampled, self.bins, mask=inside, linear=self.linear_binning))


def register_nmi(fixed: Image, moving: Image, initial: RigidTransform, device, settings: MISettings = None,
                 progress: Progress = None, fixed_mask: Image = None) -> tuple:
    """Coarse-to-fine NMI maximization; returns (fixed->moving RigidTransform, list of per-level infos)."""
    progress = progress or Progress()
    settings = settings or MISettings()
    transform, infos = initial, []
    for n, factor in enumerate(settings.levels):
        f, m = downsample(fixed, factor), downsample(moving, factor)
        mask = None
        if fixed_mask is not None:
            mask = warp(fixed_mask, f.grid, None, mode="nearest").array
        objective = NMIObjective(f, m, settings.bins, settings.max_points, settings.seed, device, mask)
        t0 = time.perf_counter()
        stage = f"NMI level {n + 1}/{len(settings.levels)} (x{factor})"
        transform, info = maximize_rigid(objective, transform, settings.powell,
                                         progress.sub(n / len(settings.levels), (n + 1) / len(settings.levels)), stage)
        info["seconds"] = time.perf_counter() - t0
        infos.append(info)
    return transform, infos

