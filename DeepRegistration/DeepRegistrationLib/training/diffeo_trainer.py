"""Patch-wise unsupervised training of the momentum U-Net (thesis §3.3, §4.4).

Loss (eq. 3.2) on a patch pair (I₁ fixed, I₂ moving), with v = K⁻¹ * m, φ = exp(v), φ⁻¹ = exp(−v):

    E = w·⟨v, m⟩ + ½ ε(I₁∘φ⁻¹, I₂) + ½ ε(I₂∘φ, I₁)

⟨v, m⟩ is taken as the mean over voxels of Σ_c v_c m_c (the thesis' L² product on the patch grid,
divided by the voxel count so that w does not depend on the patch size). ε is a *dissimilarity*
``similarity(a, b, mask) -> scalar`` (larger = less similar): MSE, the normalized MSE x²/(a² + x²)
with a = 0.2 (eq. 3.5), local NCC, or any callable with that signature (e.g. a learned metric).
Voxels whose warped position leaves the patch are masked out (Fig. 3.5).

Patches of 48³ voxels, batches of 12, drawn from 4 volume pairs at a time in random order (§4.4).
Regularization warm-up: the weight starts at ``warmup_factor``·w for ``warmup_steps`` steps (the
thesis had to start MSE training with a lower regularization and raise it after one epoch).

Pairs come from a pairs CSV (both images resampled to the model spacing on the fixed image's grid,
then random "subject" deformations and intensity changes as augmentation unless switched off) or from
a template (``--synthetic``: the SPM avg152 T1, or SPM's single-subject T1; the bundled model was trained
on the first and then fine-tuned on the second): each image of a pair is the template under its
own random diffeomorphism (data.synthetic.smooth_random_field), and the pair one appearance: a gamma
drawn per pair, changed by at most ±5 % per image, plus each image's own noise (``pair_jitter``). A
gamma drawn independently per image (0.8-1.25) made intensity, not anatomy, the main difference the
unimodal loss saw: at perfect alignment such pairs scored a normalized MSE of up to 0.14, more than
misaligned pairs (0.05-0.13). Validation pairs use seeds no training pair uses.

With the subject corpus (``from_corpus``, :mod:`..data.corpus_pairs`), training pairs are synthetic subjects of
the corpus' train split and validation pairs (model selection) synthetic subjects of its validation split; the
test split is left to the deformable evaluation.

Model selection: the validation loss is measured after every epoch (and, when fine-tuning, of the initial
weights); the model file keeps the weights with the lowest one (``training.selected``).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..core.errors import InputError
from ..core.image import Image
from ..core.settings import Settings
from ..core.warp import warp
from ..data import sources
from ..data.corpus_pairs import CorpusPairs, isotropic_grid
from ..data.synthetic import intensity_jitter, smooth_random_field
from ..deformable import lddmm
from ..deformable.diffeo_registration import lddmm_parameters, load_momentum_net
from ..deformable.patchwise import MODEL_KIND, NORMALIZATION
from ..core.network_input import normalize_intensity, resample_to
from ..core.spatial_transformer import inside_fraction_mask, warp_voxels
from ..metrics.similarity import local_ncc, mse, normalized_mse
from ..models.model_file import save_model
from ..networks.momentum_unet import MomentumUNet, MomentumUNetConfig
from .common import (StepLoop, batch_per_rank, checkpoint_path, descend, distributed, emit_done, prepared_pairs,
                     provenance, restore_torch_rng_state, restore_training, resume_checkpoint, save_training,
                     seeded_network, torch_rng_state)

CHECKPOINT_NAME = "diffeo_last.pt"
PAIR_GAMMA = (0.8, 1.25)
IMAGE_GAMMA_CHANGE = 0.05


SIMILARITIES = {"mse": mse, "nmse": normalized_mse, "lncc": local_ncc}


@dataclass
class DiffeoTraining(Settings):
    """Training settings; defaults are the thesis' values (§4.4) where it gives them."""

    config: MomentumUNetConfig = field(default_factory=MomentumUNetConfig)
    similarity: str = "nmse"
    reg_weight: float = 1e-4
    alpha: float = lddmm.ALPHA
    gamma: float = lddmm.GAMMA
    padding: int = lddmm.PADDING
    steps: int = lddmm.STEPS
    patch_size: int = 48
    batch_size: int = 12
    volumes_at_once: int = 4
    patches_per_volume: int = 12
    spacing_mm: float = 2.0
    learning_rate: float = 1e-4
    epochs: int = 12
    groups_per_epoch: int = 4
    warmup_steps: int = 0
    warmup_factor: float = 0.1
    validation_pairs: int = 2
    deform_max_mm: float = 4.0
    deform_spacing_mm: float = 24.0
    subject_pool: int = 0
    augment: bool = True
    features: str = ""
    init_model: str = ""
    corpus: str = ""
    seed: int = 0

    def reg_weight_at(self, step: int) -> float:
        return self.reg_weight * (self.warmup_factor if step < self.warmup_steps else 1.0)

    @property
    def batches_per_group(self) -> int:
        return math.ceil(self.volumes_at_once * self.patches_per_volume / self.batch_size)


def diffeo_loss(momentum: torch.Tensor, fixed: torch.Tensor, moving: torch.Tensor, settings: DiffeoTraining,
                similarity: Callable, reg_weight: float) -> tuple:
    """Eq. 3.2 on a batch of patches; returns (E, {"reg", "sim_forward", "sim_inverse"}) with floats."""
    spacing = [settings.spacing_mm] * 3
    v_mm = lddmm.smooth(momentum, spacing, settings.alpha, settings.gamma, settings.padding)
    u, u_inv = lddmm.forward_and_inverse(lddmm.velocity_to_voxels(v_mm, spacing), settings.steps)
    moving_warped = warp_voxels(moving, u, padding_mode="zeros")          # I₂∘φ on the fixed patch
    fixed_warped = warp_voxels(fixed, u_inv, padding_mode="zeros")        # I₁∘φ⁻¹ on the moving patch
    sim_forward = similarity(moving_warped, fixed, inside_fraction_mask(u))
    sim_inverse = similarity(fixed_warped, moving, inside_fraction_mask(u_inv))
    reg = (v_mm * momentum).sum(dim=1).mean()
    total = reg_weight * reg + 0.5 * sim_inverse + 0.5 * sim_forward
    return total, {"reg": float(reg.detach()), "sim_forward": float(sim_forward.detach()),
                   "sim_inverse": float(sim_inverse.detach())}


TEMPLATES = {                      # --synthetic: (name, loader); ICBM 2009a stays the test template
    "spm-avg152-t1": ("SPM avg152 T1", lambda: sources.spm_avg152("T1")),
    "spm-single-subject-t1": ("SPM single-subject T1 (Colin27)", sources.spm_single_subject_t1),
}


class PairSource:
    """Volume pairs on the model spacing, normalized to [0, 1]; ``group(rng)`` gives the next volumes."""

    def __init__(self, pairs: list, settings: DiffeoTraining, description: str, synthesize: bool,
                 split: str = "the pairs of the CSV"):
        self.pairs, self.settings, self.description, self.synthesize = pairs, settings, description, synthesize
        self.split = split
        self.pool = []
        self.corpus = None

    @classmethod
    def from_corpus(cls, settings: DiffeoTraining, mode: str, split: str) -> "PairSource":
        """Synthetic subject pairs of one split of the subject corpus at the model spacing (subjects smaller
        than the training patch left out)."""
        corpus = CorpusPairs(split, mode, isotropic_grid(settings.spacing_mm), min_size_vox=settings.patch_size)
        source = cls([], settings, corpus.description, True, f"corpus {split} split")
        source.corpus = corpus
        return source

    @classmethod
    def from_template(cls, settings: DiffeoTraining, template: str = "spm-avg152-t1") -> "PairSource":
        """Subjects made from one template of :data:`TEMPLATES` by random diffeomorphisms."""
        if template not in TEMPLATES:
            raise InputError(f"unknown training template {template!r}: choose one of {', '.join(TEMPLATES)}")
        name, load = TEMPLATES[template]
        t1 = load()
        grid = t1.grid.with_spacing([settings.spacing_mm] * 3)
        base = resample_to(t1, grid)
        base = base.with_array(normalize_intensity(base.array))
        description = (f"{name} ({settings.spacing_mm:g} mm) subjects: random diffeomorphisms (B-spline velocity, "
                       f"control spacing {settings.deform_spacing_mm} mm, |c| <= {settings.deform_max_mm} mm), one "
                       "gamma 0.8-1.25 per pair (±5 % per image), 1 % noise")
        return cls([(base, base)], settings, description, True,
                   f"subjects made from the {name} template; ICBM 2009a subjects kept for testing")

    @classmethod
    def from_csv(cls, path, settings: DiffeoTraining) -> "PairSource":
        def grid_of(fixed: Image, row: dict):
            grid = fixed.grid.with_spacing([settings.spacing_mm] * 3)
            if min(grid.size) < settings.patch_size:
                raise InputError(f"{row['fixed']}: at {settings.spacing_mm} mm the image is {grid.size} voxels, "
                                 f"smaller than the {settings.patch_size}³ training patch")
            return grid

        return cls(prepared_pairs(path, grid_of), settings, f"pairs of {path}", settings.augment)

    def _deformed(self, image: Image, rng: np.random.Generator) -> Image:
        s = self.settings
        return warp(image, image.grid, smooth_random_field(image.grid, rng, s.deform_max_mm, s.deform_spacing_mm))

    def _pooled(self, index: int, rng: np.random.Generator) -> Image:
        """With ``subject_pool`` > 0 subjects are deformations drawn once (seeded) and reused across pairs."""
        while len(self.pool) <= index:
            k = len(self.pool)
            fixed, _ = self.pairs[k % len(self.pairs)]
            self.pool.append(self._deformed(fixed, np.random.default_rng([self.settings.seed, 7, k])))
        return self.pool[index]

    def pair(self, rng: np.random.Generator, fresh: bool = False) -> tuple:
        """A (fixed, moving) pair of arrays; ``fresh`` draws new subjects even when a pool is used (validation)."""
        if self.corpus is not None:
            return self.corpus.pair(rng)
        fixed, moving = self.pairs[int(rng.integers(len(self.pairs)))]
        if not self.synthesize:
            return fixed.array, moving.array
        n = self.settings.subject_pool
        if n > 1 and not fresh:
            i, j = rng.choice(n, 2, replace=False)
            fixed, moving = self._pooled(int(i), rng), self._pooled(int(j), rng)
        else:
            fixed, moving = self._deformed(fixed, rng), self._deformed(moving, rng)
        return pair_jitter(fixed, moving, rng)

    def group(self, rng: np.random.Generator) -> list:
        return [self.pair(rng) for _ in range(self.settings.volumes_at_once)]


def pair_jitter(fixed: Image, moving: Image, rng: np.random.Generator) -> tuple:
    """Both images of a pair in one random appearance (gamma), each with a small own change and noise."""
    gamma = rng.uniform(*PAIR_GAMMA)
    own = lambda image: intensity_jitter(image, rng, (gamma * (1 - IMAGE_GAMMA_CHANGE),  # noqa: E731
                                                      gamma * (1 + IMAGE_GAMMA_CHANGE))).array
    return own(fixed), own(moving)


def random_patches(volumes: list, settings: DiffeoTraining, rng: np.random.Generator) -> tuple:
    """``patches_per_volume`` random 48³ patch pairs from each volume pair, shuffled: (N, 1, p, p, p) × 2."""
    p = settings.patch_size
    fixed, moving = [], []
    for f, m in volumes:
        for _ in range(settings.patches_per_volume):
            z, y, x = (int(rng.integers(0, n - p + 1)) for n in f.shape)
            fixed.append(f[z:z + p, y:y + p, x:x + p])
            moving.append(m[z:z + p, y:y + p, x:x + p])
    order = rng.permutation(len(fixed))
    stack = lambda arrays: torch.as_tensor(np.stack([arrays[i] for i in order]))[:, None].float()  # noqa: E731
    return stack(fixed), stack(moving)


def model_metadata(settings: DiffeoTraining, training: dict) -> dict:
    return {
        "kind": MODEL_KIND,
        "architecture": {"name": "momentum U-Net with dilated convolutions (thesis Fig. 3.4)",
                         "config": settings.config.to_dict()},
        "patch_size": [settings.patch_size] * 3, "spacing_mm": [settings.spacing_mm] * 3,
        "intensity_normalization": NORMALIZATION,
        "lddmm": {"alpha": settings.alpha, "gamma": settings.gamma, "padding": settings.padding,
                  "steps": settings.steps},
        "training": training,
    }


def resolve_similarity(similarity) -> Callable:
    if callable(similarity):
        return similarity
    if similarity not in SIMILARITIES:
        raise InputError(f"unknown similarity {similarity!r}: choose one of {', '.join(SIMILARITIES)}")
    return SIMILARITIES[similarity]


def train(settings: DiffeoTraining, data: PairSource, out, checkpoint_dir=None, resume: bool = False,
          device: str = "auto", progress_json: bool = False, command: str = "", similarity=None,
          validation: PairSource = None) -> Path:
    """Train and write the model file ``out``. ``similarity`` overrides ``settings.similarity`` with a callable;
    validation pairs come from ``validation`` (default: new pairs of ``data``)."""
    validation = validation if validation is not None else data
    sim = resolve_similarity(similarity if similarity is not None else settings.similarity)
    out = Path(out)
    ckpt_path = checkpoint_path(out, checkpoint_dir, CHECKPOINT_NAME)
    with distributed(device) as dist:
        per_rank = batch_per_rank(settings.batch_size, dist)
        net, optimizer = seeded_network(lambda: MomentumUNet(settings.config), settings.seed, settings.learning_rate,
                                        dist)
        initial = initial_weights(net, settings) if settings.init_model else None
        ckpt = resume_checkpoint(resume, ckpt_path, settings.to_dict())
        step, history = restore_training(ckpt, net, optimizer)
        if "torch_rng" in ckpt:
            restore_torch_rng_state(ckpt["torch_rng"], dist.device)
        model = dist.wrap(net)
        val_rng = np.random.default_rng([settings.seed, 10 ** 6])
        val_fixed, val_moving = random_patches(
            [validation.pair(val_rng, fresh=True) for _ in range(settings.validation_pairs)], settings, val_rng)
        identity_val = validation_loss(zero_momentum, val_fixed, val_moving, settings, sim, dist.device)
        net.eval()
        initial_val = validation_loss(net, val_fixed, val_moving, settings, sim, dist.device) if initial else None
        best = ckpt.get("best") or {"val_loss": initial_val if initial_val is not None else math.inf, "step": 0,
                                    "model": {k: v.clone() for k, v in net.state_dict().items()}}
        steps_per_epoch = settings.groups_per_epoch * settings.batches_per_group
        total = settings.epochs * steps_per_epoch
        group = {}

        def step_fn(at_step):
            # §4.4: the patches of batches_per_group batches come from one group of volume pairs, drawn per group
            index, b = divmod(at_step, settings.batches_per_group)
            if group.get("index") != index:
                rng = np.random.default_rng([settings.seed, dist.rank, index])
                group.update(index=index, patches=random_patches(data.group(rng), settings, rng))
            lo = b * settings.batch_size + dist.rank * per_rank
            fixed, moving = (p[lo:lo + per_rank].to(dist.device) for p in group["patches"])
            model.train()
            loss, _ = diffeo_loss(model(fixed, moving), fixed, moving, settings, sim, settings.reg_weight_at(at_step))
            return descend(optimizer, loss)

        def validate():
            net.eval()
            val = validation_loss(net, val_fixed, val_moving, settings, sim, dist.device)
            if val < best["val_loss"]:   # model selection: the lowest validation loss seen, the start included
                best.update(val_loss=val, step=(len(history) + 1) * steps_per_epoch,
                            model={k: v.detach().clone() for k, v in net.state_dict().items()})
            return {"val_loss": val, "identity_val_loss": identity_val}

        def save(at_step):
            save_training(dist, ckpt_path, net, optimizer, at_step, history, settings, best=best,
                          torch_rng=torch_rng_state(dist.device))

        t0 = time.perf_counter()
        step = StepLoop(dist, "train-diffeo", total, progress_json, save).run(
            step_fn, validate, step, total, 0, steps_per_epoch, steps_per_epoch, history)
        seconds = time.perf_counter() - t0
        if dist.is_main:
            training = {"command": command, "data": data.description, "steps": step,
                        "batch_size": settings.batch_size, "optimizer": f"Adam, lr {settings.learning_rate}",
                        "loss": f"eq. 3.2, w = {settings.reg_weight}, similarity "
                                f"{settings.similarity if similarity is None else getattr(sim, '__name__', 'custom')}",
                        "seconds_this_run": round(seconds, 1), "processes": dist.world_size,
                        "final_val_loss": history[-1]["val_loss"] if history else None,
                        "identity_val_loss": identity_val, "initial_val_loss": initial_val,
                        "selected": {"step": best["step"], "val_loss": best["val_loss"],
                                     "rule": "lowest validation loss of the epochs (step 0: the initial weights)"},
                        "initialized_from": initial,
                        "history": history, "settings": settings.to_dict(),
                        "split": data.split, "validation": validation.description,
                        **provenance(data.corpus, validation.corpus)}
            save_model(out, best["model"], model_metadata(settings, training))
            emit_done(progress_json, settings, step, history[-1]["loss"] if history else float("nan"), out)
        dist.barrier()
    return out


def initial_weights(net: MomentumUNet, settings: DiffeoTraining) -> dict:
    """Load ``settings.init_model`` into ``net`` (fine-tuning); returns its provenance for the new metadata.

    The file must be a diffeo model of the same architecture, spacing and LDDMM parameters, else the
    weights would be trained for another transformation model.
    """
    source, meta = load_momentum_net(settings.init_model)
    wanted = {"architecture": settings.config.to_dict(), "spacing_mm": [settings.spacing_mm] * 3,
              "lddmm": {"alpha": settings.alpha, "gamma": settings.gamma, "padding": settings.padding,
                        "steps": settings.steps}}
    found = {"architecture": meta["architecture"]["config"], "spacing_mm": [float(s) for s in meta["spacing_mm"]],
             "lddmm": lddmm_parameters(meta)}
    for key, value in wanted.items():
        if found[key] != value:
            raise InputError(f"--init-model {settings.init_model}: its {key} {found[key]} differs from this "
                             f"training's {value}")
    net.load_state_dict(source.state_dict())
    previous = meta["training"]
    return {"model": str(settings.init_model), "created": meta.get("created"), "command": previous.get("command"),
            "code_commit": previous.get("code_commit"), "steps": previous.get("steps"),
            "final_val_loss": previous.get("final_val_loss"), "data": previous.get("data"),
            "initialized_from": previous.get("initialized_from")}


def zero_momentum(fixed: torch.Tensor, moving: torch.Tensor) -> torch.Tensor:
    """The identity transform's momentum: the baseline a trained network must beat."""
    return fixed.new_zeros(fixed.shape[0], 3, *fixed.shape[2:])


@torch.no_grad()
def validation_loss(predict: Callable, fixed: torch.Tensor, moving: torch.Tensor, settings: DiffeoTraining,
                    similarity: Callable, device) -> float:
    """Eq. 3.2 (full regularization weight) of the momenta ``predict(f, m)`` on the fixed validation patches."""
    losses = []
    for lo in range(0, fixed.shape[0], settings.batch_size):
        f, m = fixed[lo:lo + settings.batch_size].to(device), moving[lo:lo + settings.batch_size].to(device)
        losses.append(float(diffeo_loss(predict(f, m), f, m, settings, similarity, settings.reg_weight)[0]) * f.shape[0])
    return sum(losses) / fixed.shape[0]
