"""Patch pairs for the learned metric (Sedghi et al. 2018, §2.1), sampled on the fly with ``grid_sample``.

Volumes are brought to a resampling *level*: Gaussian anti-aliasing with σ = spacing/2 (proportional
to the downsampling factor l), resampling at the level's spacing (axes that are already coarser are
left as they are), and intensities mapped to [0, 1].
A patch is a P³ grid of points spaced like the level, centred on a physical point c, axis-aligned in
LPS. For a pair (u, v) with the current fixed->moving estimate T:

* positive: u(c + S o) and v(T(c + S o) + d), d ~ N(0, σ² I) mm, m dithers d per location c;
* negative: u(c + S o) and v(T(c + S o) - T(c) + c'), c' a moving foreground point with
  ‖c' - T(c)‖ ≥ the minimum distance;

S is one of the 48 axis-aligned symmetries of the cube (rotations and flips), the same for both
patches of a pair. Every patch is read by ``grid_sample`` on the volumes' device, so a training
stage of a million pairs never sits in memory.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

from ..core.errors import InputError
from ..core.image import Grid, Image
from ..core.warp import sample_at_points, warp

INTENSITY_NORMALIZATION = "linear map of [min, 99.5th percentile] to [0, 1], clipped, after anti-aliasing"
FOREGROUND_DEFAULT = "automatic: Gaussian (4 mm) smoothed image > 0.15 x its 99th percentile, holes filled"


def anti_aliased_resample(image: Image, spacing_mm: float) -> Image:
    """Gaussian σ = spacing/2 mm on every axis that is coarsened (σ ∝ level, §2.1), then linear resampling.

    Axes already at or coarser than ``spacing_mm`` keep their spacing: patches are read at physical
    points by trilinear interpolation, so upsampling a volume first would only cost time and memory.
    """
    target = np.maximum(float(spacing_mm), image.grid.spacing)
    coarsen = target > image.grid.spacing * 1.0001
    array = image.array.astype(np.float32)
    if not coarsen.any():
        return image.with_array(array)
    sigma_mm = np.where(coarsen, 0.5 * target, 0.0)
    array = ndimage.gaussian_filter(array, (sigma_mm / image.grid.spacing)[::-1], mode="nearest")
    return warp(image.with_array(array), image.grid.with_spacing(target))


def normalize_intensity(image: Image) -> Image:
    """Intensities to [0, 1] (§2.1): [min, 99.5th percentile] -> [0, 1], clipped."""
    a = image.array.astype(np.float32)
    lo, hi = float(a.min()), float(np.percentile(a, 99.5))
    if hi <= lo:
        raise InputError("the image is constant after resampling; it cannot be normalized to [0, 1]")
    return image.with_array(np.clip((a - lo) / (hi - lo), 0.0, 1.0).astype(np.float32))


def automatic_foreground(image: Image) -> np.ndarray:
    """Head/foreground mask (z-first bool array): smoothed intensity above 15 % of its 99th percentile."""
    smooth = ndimage.gaussian_filter(image.array.astype(np.float32), (4.0 / image.grid.spacing)[::-1])
    mask = ndimage.binary_fill_holes(smooth > 0.15 * np.percentile(smooth, 99))
    if mask.sum() == 0:
        raise InputError("the automatic foreground mask is empty; give a mask")
    return mask


@dataclass
class LevelVolume:
    """One image at a level: normalized volume, foreground mask (both (1, nz, ny, nx)), foreground points (N, 3) mm."""

    image: Image
    volume: torch.Tensor
    foreground: torch.Tensor
    foreground_points: torch.Tensor

    @property
    def grid(self) -> Grid:
        return self.image.grid

    def in_foreground(self, points: torch.Tensor) -> torch.Tensor:
        """Whether each LPS point (N, 3) lies in a foreground voxel (nearest voxel; outside the grid: no)."""
        return sample_at_points(self.foreground, self.grid, points, mode="nearest")[0] > 0.5


def prepare_level(image: Image, spacing_mm: float, device="cpu", mask: Image = None) -> LevelVolume:
    """Anti-alias, resample to ``spacing_mm``, normalize; foreground from ``mask`` or automatic."""
    level = normalize_intensity(anti_aliased_resample(image, spacing_mm))
    if mask is None:
        fg = automatic_foreground(level)
    else:
        fg = warp(mask, level.grid, mode="nearest").array > 0
        if fg.sum() == 0:
            raise InputError("the foreground mask is empty at the metric's resolution")
    device = torch.device(device)
    points = torch.as_tensor(level.grid.index_to_physical(np.argwhere(fg)[:, ::-1]), dtype=torch.float32)
    return LevelVolume(level, torch.as_tensor(level.array, device=device)[None],
                       torch.as_tensor(fg, dtype=torch.float32, device=device)[None], points.to(device))


def patch_offsets(patch_size: int, spacing_mm: float) -> torch.Tensor:
    """Offsets (P³, 3) mm of a patch's points from its centre, x-first vectors, z-first point order."""
    r = (torch.arange(patch_size, dtype=torch.float32) - (patch_size - 1) / 2.0) * float(spacing_mm)
    k, j, i = torch.meshgrid(r, r, r, indexing="ij")
    return torch.stack([i, j, k], dim=-1).reshape(-1, 3)


def cube_symmetries() -> torch.Tensor:
    """The 48 axis-aligned symmetries of the cube (signed permutation matrices), identity first."""
    mats = []
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1.0, -1.0), repeat=3):
            m = torch.zeros(3, 3)
            for row, (col, s) in enumerate(zip(perm, signs)):
                m[row, col] = s
            mats.append(m)
    return torch.stack(mats)


def rigid_torch(transform, device, dtype=torch.float32):
    """(A, b) of a linear fixed->moving transform, as tensors: T(x) = x A^T + b."""
    m = torch.as_tensor(transform.matrix4(), dtype=dtype, device=device)
    return m[:3, :3], m[:3, 3]


@dataclass
class SamplerSettings:
    """§2.1 sampling: patch size, dither variance σ² (mm²), m dithers per location, minimum negative distance."""

    patch_size: int = 17
    spacing_mm: float = 1.0
    dither_variance_mm2: float = 0.0
    dithers_per_location: int = 1
    min_negative_distance_mm: float = 20.0
    symmetrize: bool = True


class PatchPairSampler:
    """Draws labelled patch pairs (N, 2, P, P, P) from (fixed, moving) level volumes and their transforms."""

    def __init__(self, settings: SamplerSettings, device="cpu"):
        self.s = settings
        self.device = torch.device(device)
        self.offsets = patch_offsets(settings.patch_size, settings.spacing_mm).to(self.device)
        self.symmetries = cube_symmetries().to(self.device)

    def _offsets(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """(n, P³, 3) patch offsets, each under a random cube symmetry (identity without symmetrization)."""
        if not self.s.symmetrize:
            return self.offsets.expand(n, -1, -1)
        k = torch.randint(0, len(self.symmetries), (n,), generator=generator).to(self.device)
        return torch.einsum("pj,nij->npi", self.offsets, self.symmetries[k])

    def _centres(self, volume: LevelVolume, n: int, generator: torch.Generator) -> torch.Tensor:
        """n foreground points, each moved uniformly within its voxel."""
        idx = torch.randint(0, volume.foreground_points.shape[0], (n,), generator=generator).to(self.device)
        jitter = (torch.rand(n, 3, generator=generator) - 0.5).to(self.device) * float(self.s.spacing_mm)
        return volume.foreground_points[idx] + jitter

    def _patches(self, volume: LevelVolume, points: torch.Tensor) -> torch.Tensor:
        p = self.s.patch_size
        return sample_at_points(volume.volume, volume.grid, points)[0].reshape(-1, p, p, p)

    def positives(self, fixed: LevelVolume, moving: LevelVolume, transform, locations: int,
                  generator: torch.Generator) -> torch.Tensor:
        """``locations`` x m positive pairs; the moving patch is dithered, v(x) -> v(x + d)."""
        m = self.s.dithers_per_location
        centres = self._centres(fixed, locations, generator).repeat_interleave(m, dim=0)
        fixed_pts = centres[:, None, :] + self._offsets(centres.shape[0], generator)
        a, b = rigid_torch(transform, self.device)
        dither = torch.randn(centres.shape[0], 3, generator=generator).to(self.device)
        moving_pts = fixed_pts @ a.T + b + (dither * float(np.sqrt(self.s.dither_variance_mm2)))[:, None, :]
        return torch.stack([self._patches(fixed, fixed_pts), self._patches(moving, moving_pts)], dim=1)

    def negative_centres(self, mapped: torch.Tensor, moving: LevelVolume, generator: torch.Generator) -> torch.Tensor:
        """For each mapped centre T(c), a moving foreground point at least the minimum distance away."""
        out = torch.empty_like(mapped)
        todo = torch.arange(mapped.shape[0], device=self.device)
        for _ in range(100):
            cand = self._centres(moving, todo.shape[0], generator)
            ok = (cand - mapped[todo]).norm(dim=-1) >= self.s.min_negative_distance_mm
            out[todo[ok]] = cand[ok]
            todo = todo[~ok]
            if todo.numel() == 0:
                return out
        raise InputError(f"cannot find moving foreground points {self.s.min_negative_distance_mm} mm away from "
                         "the fixed patch centres; lower the minimum negative distance")

    def negatives(self, fixed: LevelVolume, moving: LevelVolume, transform, count: int,
                  generator: torch.Generator) -> torch.Tensor:
        """``count`` non-corresponding pairs, the moving patch centred at a distant foreground point."""
        centres = self._centres(fixed, count, generator)
        fixed_pts = centres[:, None, :] + self._offsets(count, generator)
        a, b = rigid_torch(transform, self.device)
        mapped = centres @ a.T + b
        shift = self.negative_centres(mapped, moving, generator) - mapped
        moving_pts = fixed_pts @ a.T + b + shift[:, None, :]
        return torch.stack([self._patches(fixed, fixed_pts), self._patches(moving, moving_pts)], dim=1)

    def balanced_batch(self, pairs: list, transforms: list, count: int, generator: torch.Generator) -> tuple:
        """About ``count`` pairs, half positive (label 1) and half negative (0), over the given pairs, shuffled.

        ``pairs`` are (fixed, moving) LevelVolumes; each location picks a pair at random.
        """
        m = self.s.dithers_per_location
        locations = max(1, int(round(count / 2 / m)))
        which = torch.randint(0, len(pairs), (locations,), generator=generator)
        patches, labels = [], []
        for i in torch.unique(which).tolist():
            n_loc = int((which == i).sum())
            fixed, moving = pairs[i]
            pos = self.positives(fixed, moving, transforms[i], n_loc, generator)
            neg = self.negatives(fixed, moving, transforms[i], pos.shape[0], generator)
            patches += [pos, neg]
            labels += [torch.ones(pos.shape[0], dtype=torch.long), torch.zeros(neg.shape[0], dtype=torch.long)]
        x, y = torch.cat(patches), torch.cat(labels).to(self.device)
        order = torch.randperm(x.shape[0], generator=generator).to(self.device)
        return x[order], y[order]
