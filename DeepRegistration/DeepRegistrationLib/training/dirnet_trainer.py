"""Training DIRNet end to end by unsupervised NCC optimization (de Vos et al. 2017, §2 and §4).

The loss is the negative normalized cross-correlation between the fixed image and the warped moving
image (mean over the pairs of a mini-batch of 32), optimized with Adam. Pairs come from a pairs CSV
(images resampled to the model grid; 2D models take random slices along the third axis) or, for the
bundled models, from the SPM avg152 T1 template: each image of a pair is the template under its own
random smooth deformation (cubic B-spline, ``deform_spacing_mm``, |c| <= ``deform_max_mm``) with a
random gamma and noise, so every pair is a new "subject" pair. With the subject corpus (``from_corpus``,
:mod:`..data.corpus_pairs`), a pool of synthetic subject pairs of the train split is drawn once (seeded) on
the model grid, then augmented as above; validation pairs come from a pool of the validation split.

Checkpoints are written atomically every ``checkpoint_every`` steps and on SIGTERM/Ctrl-C, and a run
resumes from the latest one. Under ``torchrun`` each rank draws its own pairs (batch / world size) and
DDP averages the gradients; only rank 0 writes and reports.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..core.settings import Settings
from ..data import sources
from ..data.corpus_pairs import CorpusPairs
from ..core.bspline import bspline_displacement
from ..deformable.dirnet_registration import MODEL_KIND, NORMALIZATION, model_grid
from ..core.network_input import normalize_intensity, resample_to
from ..core.spatial_transformer import warp_voxels
from ..metrics.similarity import ncc
from ..models.model_file import save_model
from ..networks.dirnet_regressor import DIRNet, DIRNetConfig
from .common import (StepLoop, batch_per_rank, checkpoint_path, descend, distributed, emit_done, prepared_pairs,
                     provenance, save_training, start_training, validation_generator)

CHECKPOINT_NAME = "dirnet_last.pt"


@dataclass
class DIRNetTraining(Settings):
    """Training settings; defaults are the paper's where it gives them (batch 32, Adam, NCC)."""

    config: DIRNetConfig = field(default_factory=DIRNetConfig)
    size_xyz: tuple = (96, 112)
    spacing_mm: tuple = (2.0, 2.0)
    batch_size: int = 32
    learning_rate: float = 1e-3
    epochs: int = 100
    steps_per_epoch: int = 100
    checkpoint_every: int = 50
    validation_pairs: int = 32
    deform_max_mm: float = 4.0
    deform_spacing_mm: float = 24.0
    augment: bool = True
    corpus: str = ""
    corpus_pairs: int = 16
    seed: int = 0


def ncc_loss(warped: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
    """L_NCC = −mean over the pairs of the global NCC of each pair."""
    return -torch.stack([ncc(w, f) for w, f in zip(warped, fixed)]).mean()


def random_deformation(shape, count: int, spacing_mm, settings: DIRNetTraining, generator) -> torch.Tensor:
    """Random smooth displacements (count, ndim, *shape) in voxels: uniform cubic B-spline coefficients."""
    spacing = np.asarray(spacing_mm, dtype=np.float64)
    shape_xyz = list(reversed(shape))
    ctrl_xyz = [max(2, int(math.ceil((n - 1) * s / settings.deform_spacing_mm)) + 1) for n, s in zip(shape_xyz, spacing)]
    c = (torch.rand(count, len(shape), *reversed(ctrl_xyz), generator=generator) * 2 - 1) * settings.deform_max_mm
    c = c / torch.as_tensor(spacing, dtype=c.dtype).view(1, -1, *[1] * len(shape))
    step = [(n - 1) / (k - 1) for n, k in zip(shape_xyz, ctrl_xyz)]
    return bspline_displacement(c, shape, 3, first=[0.0] * len(shape), step=step)


def new_subjects(images: torch.Tensor, settings: DIRNetTraining, generator) -> torch.Tensor:
    """Each image (B, 1, *shape) under its own random deformation, gamma in [0.8, 1.25] and 1 % noise."""
    u = random_deformation(images.shape[2:], images.shape[0], settings.spacing_mm, settings, generator)
    out = warp_voxels(images, u, padding_mode="zeros").clamp(0, 1)
    view = [-1] + [1] * (images.dim() - 1)
    gamma = torch.exp(torch.empty(images.shape[0]).uniform_(math.log(0.8), math.log(1.25), generator=generator))
    noise = torch.randn(out.shape, generator=generator) * 0.01
    return (out ** gamma.view(view) + noise).clamp(0, None)


class VolumePairs:
    """Pairs of volumes on the model grid; ``sample`` draws a batch (B, 1, *model shape) of fixed and moving.

    A 2D model gets slices along the third axis, chosen among those whose fixed slice has content.
    """

    def __init__(self, pairs: list, settings: DIRNetTraining, description: str):
        self.pairs, self.settings, self.description = pairs, settings, description
        self.corpus = None
        self.ndim = settings.config.ndim
        self.slices = []
        for f, _ in pairs:
            if self.ndim == 2:
                content = (f > 0.1).mean(axis=(1, 2))
                self.slices.append(np.flatnonzero(content > 0.5 * content.max()))

    @classmethod
    def from_template(cls, settings: DIRNetTraining) -> "VolumePairs":
        t1 = sources.spm_avg152("T1")
        grid = model_grid(t1.grid, settings.size_xyz, settings.spacing_mm)
        a = normalize_intensity(resample_to(t1, grid).array)
        return cls([(a, a)], settings, "SPM avg152 T1 (2 mm) under random deformations, gamma and noise")

    @classmethod
    def from_corpus(cls, settings: DIRNetTraining, split: str, count: int) -> "VolumePairs":
        """``count`` synthetic subject pairs (seeds [seed, k]) of one split of the subject corpus, on model grids
        centred on their sources."""
        corpus = CorpusPairs(split, settings.corpus, lambda g: model_grid(g, settings.size_xyz, settings.spacing_mm))
        pairs = [corpus.pair(np.random.default_rng([settings.seed, k])) for k in range(count)]
        data = cls([(normalize_intensity(f), normalize_intensity(m)) for f, m in pairs], settings,
                   f"{count} pairs of the {corpus.description}")
        data.corpus = corpus
        return data

    @classmethod
    def from_csv(cls, path, settings: DIRNetTraining) -> "VolumePairs":
        pairs = prepared_pairs(path, lambda fixed, _: model_grid(fixed.grid, settings.size_xyz, settings.spacing_mm))
        return cls([(f.array, m.array) for f, m in pairs], settings, f"pairs of {path}")

    def sample(self, count: int, generator):
        fixed, moving = [], []
        for _ in range(count):
            i = int(torch.randint(len(self.pairs), (1,), generator=generator))
            f, m = self.pairs[i]
            if self.ndim == 2:
                z = int(self.slices[i][int(torch.randint(len(self.slices[i]), (1,), generator=generator))])
                f, m = f[z], m[z]
            fixed.append(torch.as_tensor(f)[None])
            moving.append(torch.as_tensor(m)[None])
        fixed, moving = torch.stack(fixed), torch.stack(moving)
        if self.settings.augment:
            fixed, moving = new_subjects(fixed, self.settings, generator), new_subjects(moving, self.settings, generator)
        return fixed, moving


def model_metadata(settings: DIRNetTraining, training: dict) -> dict:
    return {
        "kind": MODEL_KIND,
        "architecture": {"name": "DIRNet (de Vos et al. 2017)", "config": settings.config.to_dict()},
        "patch_size": list(settings.size_xyz), "spacing_mm": list(settings.spacing_mm),
        "intensity_normalization": NORMALIZATION, "training": training,
    }


def train(settings: DIRNetTraining, data: VolumePairs, out, checkpoint_dir=None, resume: bool = False,
          device: str = "auto", progress_json: bool = False, command: str = "", validation: VolumePairs = None) -> Path:
    """Train and write the model file ``out``; returns its path. Validation pairs come from ``validation``
    (default: ``data``, drawn with a seed of their own)."""
    validation = validation if validation is not None else data
    out = Path(out)
    ckpt_path = checkpoint_path(out, checkpoint_dir, CHECKPOINT_NAME)
    with distributed(device) as dist:
        per_rank = batch_per_rank(settings.batch_size, dist)
        net, optimizer, model, step, history, generator = start_training(
            dist, settings, lambda: DIRNet(settings.config), ckpt_path, resume)
        val_fixed, val_moving = validation.sample(settings.validation_pairs, validation_generator(settings.seed))
        total = settings.epochs * settings.steps_per_epoch

        def step_fn(_step):
            fixed, moving = data.sample(per_rank, generator)
            fixed, moving = fixed.to(dist.device), moving.to(dist.device)
            model.train()
            warped, _, _ = model(fixed, moving)
            loss = ncc_loss(warped, fixed)
            return descend(optimizer, loss)

        def save(at_step):
            save_training(dist, ckpt_path, net, optimizer, at_step, history, settings)

        t0 = time.perf_counter()
        step = StepLoop(dist, "train-dirnet", total, progress_json, save).run(
            step_fn, lambda: {"val_loss": validation_loss(net, val_fixed, val_moving, dist.device)}, step, total, 0,
            settings.steps_per_epoch, settings.checkpoint_every, history)
        seconds = time.perf_counter() - t0
        if dist.is_main:
            training = {"command": command, "data": data.description, "steps": step, "batch_size": settings.batch_size,
                        "optimizer": f"Adam, lr {settings.learning_rate}", "loss": "negative NCC",
                        "seconds_this_run": round(seconds, 1), "processes": dist.world_size,
                        "final_val_loss": history[-1]["val_loss"] if history else None,
                        "history": history, "settings": settings.to_dict(),
                        "split": data.description if data.corpus is not None
                        else "trained on the SPM avg152 T1 template only; ICBM 2009a kept for testing"
                        if "SPM avg152" in data.description else "the pairs of the CSV",
                        "validation": validation.description, **provenance(data.corpus, validation.corpus)}
            save_model(out, net.state_dict(), model_metadata(settings, training))
            emit_done(progress_json, settings, step, history[-1]["loss"] if history else float("nan"), out)
        dist.barrier()
    return out


@torch.no_grad()
def validation_loss(net: DIRNet, fixed: torch.Tensor, moving: torch.Tensor, device) -> float:
    """NCC loss of the network in eval mode on fixed validation pairs."""
    net.eval()
    warped, _, _ = net(fixed.to(device), moving.to(device))
    net.train()
    return float(ncc_loss(warped, fixed.to(device)))
