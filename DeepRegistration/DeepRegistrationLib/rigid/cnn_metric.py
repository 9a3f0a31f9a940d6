"""Rigid registration with a learned CNN metric (Sedghi et al. 2018, eq. 2) and metric-set files.

F(θ) = Σₙ M(u(pₙ), v(T_θ(pₙ))): n patch centres are drawn once per stage, with a fixed seed so F is
deterministic, among the fixed foreground points that the stage's start pose maps into the moving
foreground (§2.1's "sampling with restriction to the anatomy", in both images); the fixed patches are
read once, the moving patches are read with ``grid_sample`` at the T_θ-mapped patch point grids; M is
the network's log-likelihood ratio. F is maximized with Powell over the 6 rigid parameters, one metric
stage after the other (coarse to fine), within a search region around each stage's start pose
(:class:`SearchRegion`).

A *metric set* is one model file holding every stage of a multi-stage training (F1 ... Fk): state
dict keys ``stage{k}.<param>`` and metadata ``stages`` (one entry per stage: level, spacing, patch
size, dither variance, architecture). Several files given together are used one after the other.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..core.errors import InputError
from ..core.grid_sampling import grid_sample
from ..core.image import Image
from ..core.progress import Progress
from ..core.transforms import RigidTransform
from ..core.warp import physical_to_normalized
from ..models.model_file import build_checked, load_model, save_model
from ..networks.metric_cnn import MetricCNN
from ..rigid.metric_patches import LevelVolume, patch_offsets, prepare_level, rigid_torch
from .powell import PowellSettings, maximize_rigid

KIND = "cnn-metric"


@dataclass
class MetricStage:
    """One trained metric F(l, σ²): its network and the resolution its patches are read at."""

    network: MetricCNN
    spacing_mm: float
    patch_size: int
    info: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.info.get("label", f"F(l={self.info.get('level')}, σ²={self.info.get('dither_variance_mm2')})")


def save_metric_set(path, networks: list, stage_infos: list, metadata: dict) -> Path:
    """Write the stages trained so far as one model file (see the module docstring)."""
    state = {}
    for k, net in enumerate(networks, start=1):
        state.update({f"stage{k}.{name}": t for name, t in net.state_dict().items()})
    last = stage_infos[-1]
    meta = {**metadata, "kind": KIND, "architecture": last["architecture"], "patch_size": last["patch_size"],
            "spacing_mm": last["spacing_mm"], "stages": stage_infos}
    return save_model(path, state, meta)


def load_metric_set(name_or_path, device="cpu") -> list:
    """The stages of a metric-set file, as :class:`MetricStage` s; wrong files are refused with InputError."""
    state, meta = load_model(name_or_path, KIND)
    stages_meta = meta.get("stages")
    if not isinstance(stages_meta, list) or not stages_meta:
        raise InputError(f"{name_or_path}: a cnn-metric file must list its stages in the metadata")
    stages = []
    for k, info in enumerate(stages_meta, start=1):
        for key in ("architecture", "patch_size", "spacing_mm", "level", "dither_variance_mm2"):
            if key not in info:
                raise InputError(f"{name_or_path}: stage {k} metadata lacks {key!r}")
        prefix = f"stage{k}."
        sub = {n[len(prefix):]: t for n, t in state.items() if n.startswith(prefix)}
        net = build_checked(MetricCNN(info["architecture"]), sub, f"{name_or_path} stage {k}").to(device)
        label = f"{Path(str(name_or_path)).stem} F{k}(l={info['level']:g}, σ²={info['dither_variance_mm2']:g})"
        stages.append(MetricStage(net, float(info["spacing_mm"]), int(info["patch_size"]), {**info, "label": label}))
    unused = [n for n in state if not any(n.startswith(f"stage{k}.") for k in range(1, len(stages) + 1))]
    if unused:
        raise InputError(f"{name_or_path}: weights {unused[:3]} belong to no listed stage")
    return stages


def load_metric_models(names, device="cpu") -> list:
    """Stages of every given model (bundled names or paths), in the order given."""
    stages = []
    for name in names:
        stages += load_metric_set(name, device)
    return stages


def normalized_affine(grid, device) -> tuple:
    """(N, n0) with grid_sample coordinates = N x + n0 for LPS points x (from core.warp's conversion)."""
    basis = torch.cat([torch.zeros(1, 3), torch.eye(3)]).double()
    mapped = physical_to_normalized(grid, basis)
    return (mapped[1:] - mapped[0]).T.float().to(device), mapped[0].float().to(device)


class PatchObjective:
    """Fixed patches at n centres drawn once (fixed seed) from ``candidates``; moving patches read at T(p).

    ``candidates`` (N, 3) mm defaults to the fixed foreground points.

    A patch point is p = c + o (centre c, offset o), so T(p) = (A c + b) + A o: the mapped point grids
    are the mapped centres plus the rotated offsets, composed with the moving grid's normalization.
    """

    def __init__(self, fixed: LevelVolume, moving: LevelVolume, patch_size: int, spacing_mm: float,
                 n_patches: int, seed: int, candidates: torch.Tensor = None):
        self.fixed, self.moving = fixed, moving
        self.device = fixed.volume.device
        self.patch_size = patch_size
        g = torch.Generator().manual_seed(seed)
        fg = fixed.foreground_points if candidates is None else candidates
        idx = torch.randperm(fg.shape[0], generator=g)[:n_patches].to(self.device)
        self.centres = fg[idx]
        self.offsets = patch_offsets(patch_size, spacing_mm).to(self.device)
        self.normalization = normalized_affine(moving.grid, self.device)
        self.fixed_patches = self._read(fixed.volume, normalized_affine(fixed.grid, self.device),
                                        torch.eye(3, device=self.device), torch.zeros(3, device=self.device))

    def _read(self, volume: torch.Tensor, normalization: tuple, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        n, n0 = normalization
        na = n @ a
        coords = (self.centres @ na.T + (n @ b + n0))[:, None, :] + (self.offsets @ na.T)[None]
        p = self.patch_size
        out = grid_sample(volume[None], coords.reshape(1, 1, 1, -1, 3))
        return out.reshape(-1, p, p, p)

    def moving_patches(self, transform) -> torch.Tensor:
        a, b = rigid_torch(transform, self.device)
        return self._read(self.moving.volume, self.normalization, a, b)

    def pairs(self, transform) -> torch.Tensor:
        """(n, 2, P, P, P): the fixed patches and the moving patches under ``transform``."""
        return torch.stack([self.fixed_patches, self.moving_patches(transform)], dim=1)


class CNNMetricObjective(PatchObjective):
    """F(θ) = Σₙ M(u(pₙ), v(T_θ(pₙ))) (eq. 2), M the log-likelihood ratio of the stage's network."""

    def __init__(self, stage: MetricStage, fixed: LevelVolume, moving: LevelVolume, n_patches: int, seed: int,
                 candidates: torch.Tensor = None, batch: int = 256):
        super().__init__(fixed, moving, stage.patch_size, stage.spacing_mm, n_patches, seed, candidates)
        self.network = stage.network.eval()
        self.batch = batch

    def __call__(self, transform) -> float:
        with torch.no_grad():
            pairs = self.pairs(transform)
            chunks = range(0, len(pairs), self.batch)
            return float(sum(self.network.score(pairs[i:i + self.batch]).sum() for i in chunks))


class SearchRegion:
    """Keeps Powell within ±``translation_mm`` and ±``rotation_rad`` of a stage's start pose.

    Outside, F is lowered by ``penalty`` per mm of excess (rotation excess as arc length at the
    optimizer's rotation radius). The learned metric has only seen patch pairs inside the anatomy,
    so far outside the images its value means nothing; this bounds the line searches there.
    """

    def __init__(self, objective, start: RigidTransform, translation_mm: float, rotation_rad: float,
                 radius_mm: float, penalty: float = 1e4):
        self.objective, self.start = objective, start
        self.t, self.r, self.radius, self.penalty = translation_mm, rotation_rad, radius_mm, penalty
        self.start_value = None

    def excess_mm(self, transform: RigidTransform) -> float:
        dt = np.abs(transform.translation_mm - self.start.translation_mm) - self.t
        dr = (np.abs(transform.angles_rad - self.start.angles_rad) - self.r) * self.radius
        return float(np.clip(dt, 0, None).sum() + np.clip(dr, 0, None).sum())

    def __call__(self, transform: RigidTransform) -> float:
        excess = self.excess_mm(transform)
        if excess > 0:
            if self.start_value is None:
                self.start_value = float(self.objective(self.start))
            return self.start_value - self.penalty * excess
        return self.objective(transform)


@dataclass
class CNNSettings:
    patches: int = 128
    seed: int = 0
    powell: PowellSettings = field(default_factory=lambda: PowellSettings(max_evaluations=300))
    search_translation_mm: float = 30.0
    search_rotation_rad: float = 0.35


def centres_in_both_foregrounds(fixed: LevelVolume, moving: LevelVolume, transform: RigidTransform) -> torch.Tensor:
    """The fixed foreground points that ``transform`` maps into the moving foreground.

    Patches whose counterpart lies outside the moving anatomy (another field of view, anatomy cut off
    at the grid border) carry no information on the alignment, and the network never learned to
    score them: they are left out, as ITK metrics leave out points outside the moving mask.
    """
    points = fixed.foreground_points
    return points[moving.in_foreground(transform.transform_points_torch(points))]


def register_cnn(fixed: Image, moving: Image, stages: list, initial: RigidTransform, device,
                 settings: CNNSettings = None, progress: Progress = None, fixed_mask: Image = None,
                 moving_mask: Image = None) -> tuple:
    """Maximize eq. 2 stage after stage; returns (fixed->moving RigidTransform, per-stage infos).

    Each stage reads both images at its own spacing (anti-aliased, normalized as in training), so
    inputs of any spacing work; the transform stays in the images' physical space. The masks (default:
    automatic foregrounds) restrict the patch centres (:func:`centres_in_both_foregrounds` at the
    stage's start pose).
    """
    settings = settings or CNNSettings()
    progress = progress or Progress()
    transform, infos = initial, []
    for n, stage in enumerate(stages):
        f = prepare_level(fixed, stage.spacing_mm, device, fixed_mask)
        m = prepare_level(moving, stage.spacing_mm, device, moving_mask)
        candidates = centres_in_both_foregrounds(f, m, transform)
        if candidates.shape[0] == 0:
            raise InputError(f"CNN metric stage {n + 1} ({stage.label}): no point of the fixed foreground maps into "
                             "the moving foreground at the stage's start pose; the images' anatomy does not overlap "
                             "there (check the initial transform and the masks)")
        objective = SearchRegion(CNNMetricObjective(stage, f, m, settings.patches, settings.seed, candidates),
                                 transform, settings.search_translation_mm, settings.search_rotation_rad,
                                 settings.powell.rotation_radius_mm)
        t0 = time.perf_counter()
        transform, info = maximize_rigid(objective, transform, settings.powell,
                                         progress.sub(n / len(stages), (n + 1) / len(stages)),
                                         f"CNN metric stage {n + 1}/{len(stages)}: {stage.label}")
        info["seconds"] = time.perf_counter() - t0
        info["candidate_centres"] = int(candidates.shape[0])
        infos.append(info)
    return transform, infos
