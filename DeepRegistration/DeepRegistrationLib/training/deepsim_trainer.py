"""Training DeepSim's two stages (Czolbe et al. 2021, §2–3 and Fig. 1), 2D and 3D.

Stage 1 (:func:`train_features`): a U-Net is trained on segmentation (cross-entropy over the label
classes, Adam); inputs get Gaussian noise of a random level in [0, ``noise_std``] as augmentation, so
the features become noise-invariant as the paper expects of a segmentation model. The trained network
is then frozen and serves as DeepSim's feature extractor.

Stage 2 (:func:`train_registration`): a registration U-Net with a spatial transformer is trained on
eq. 1 (:mod:`.deepsim_losses`) with D = 1 − DeepSim, or with the baselines MSE, NCC and NCC_sup trained
the same way. λ is tuned on validation data: for every candidate in ``lambdas`` a network is trained
from the same initialisation and the one with the highest mean validation Dice (warped label maps) is
kept; the search is recorded in the model's metadata.

Both stages write atomic checkpoints every ``checkpoint_every`` steps and on SIGTERM/Ctrl-C, and resume
from the latest (stage 2 keeps every λ candidate's state, so a resume with more epochs continues each). Under ``torchrun`` each rank draws
its own batches (batch / world size) and DDP averages the gradients; only rank 0 writes and reports.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..core.errors import InputError
from ..core.settings import Settings
from ..deformable.deepsim_registration import MODEL_KIND, NORMALIZATION
from ..metrics.deepsim_similarity import FEATURE_MODEL_KIND, load_deepsim
from ..models.model_file import save_model
from ..networks.deepsim_unet import FeatureExtractorUNet, RegistrationUNet, feature_config, registration_config
from .common import (StepLoop, atomic_save, batch_per_rank, checkpoint_path, descend, distributed, emit_done,
                     emit_progress, provenance, restore_training, resume_checkpoint, save_training, seeded_network,
                     start_training, step_generator, training_state, validation_generator)
from .deepsim_data import VolumeSet
from .deepsim_losses import SIMILARITIES, RegistrationLoss, dice_scores
from ..data.corpus import TISSUE_CLASSES

FEATURES_CHECKPOINT = "deepsim_features_last.pt"
REGISTRATION_CHECKPOINT = "deepsim_last.pt"
#: λ of eq. 1 for each similarity when none is given (scaled to each D's range; tune with several)
DEFAULT_LAMBDA = {"deepsim": 1.0, "mse": 0.02, "ncc": 1.0, "ncc_sup": 1.0}
FEATURE_LAYERS = "outputs of the encoder blocks, one per resolution level (finest first, bottleneck last)"


@dataclass
class FeatureTraining(Settings):
    """Stage 1 settings (the paper gives none; these are ours, chosen for minutes on a CPU)."""

    ndim: int = 3
    channels: tuple = (8, 16, 32)
    classes: tuple = TISSUE_CLASSES
    size_xyz: tuple = (40, 48, 40)
    spacing_mm: tuple = (4.0, 4.0, 4.0)
    batch_size: int = 4
    learning_rate: float = 1e-3
    noise_std: float = 0.1
    epochs: int = 10
    steps_per_epoch: int = 20
    checkpoint_every: int = 20
    validation_batch: int = 8
    seed: int = 0


@dataclass
class RegistrationTraining(Settings):
    """Stage 2 settings; λ is tuned over ``lambdas`` on the validation pairs (the paper's protocol)."""

    ndim: int = 3
    channels: tuple = (8, 16, 16, 32)
    similarity: str = "deepsim"
    lambdas: tuple = (1.0,)
    size_xyz: tuple = (40, 48, 40)
    spacing_mm: tuple = (4.0, 4.0, 4.0)
    batch_size: int = 4
    learning_rate: float = 1e-3
    sup_weight: float = 1.0
    classes: int = len(TISSUE_CLASSES)
    epochs: int = 10
    steps_per_epoch: int = 20
    checkpoint_every: int = 20
    validation_pairs: int = 8
    features: str = ""
    seed: int = 0


def _check_geometry(ndim: int, size_xyz, spacing_mm, divisor: int) -> None:
    if len(size_xyz) != ndim or len(spacing_mm) != ndim:
        raise InputError(f"a {ndim}D model needs {ndim} sizes and spacings, got {list(size_xyz)} and {list(spacing_mm)}")
    if any(s % divisor for s in size_xyz):
        raise InputError(f"training size {list(size_xyz)}: every side must be a multiple of {divisor} "
                         f"(one halving per U-Net level)")


def _add_noise(images: torch.Tensor, max_std: float, generator) -> torch.Tensor:
    """Gaussian noise with a random σ in [0, max_std] per image (augmentation)."""
    sigma = torch.rand(images.shape[0], generator=generator) * max_std
    return images + torch.randn(images.shape, generator=generator) * sigma.view(-1, *[1] * (images.dim() - 1))


def _segmentation_dice(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean Dice over the foreground classes present, of the arg-max segmentation."""
    pred = logits.argmax(dim=1)
    scores = []
    for c in range(1, logits.shape[1]):
        x, y = pred == c, labels == c
        denom = int(x.sum() + y.sum())
        if denom:
            scores.append(2.0 * float((x & y).sum()) / denom)
    return float(np.mean(scores)) if scores else float("nan")


def feature_metadata(settings: FeatureTraining, training: dict) -> dict:
    return {
        "kind": FEATURE_MODEL_KIND,
        "architecture": {"name": "DeepSim feature extractor: segmentation U-Net (Czolbe et al. 2021, Fig. 1)",
                         "config": feature_config(settings.ndim, len(settings.classes), settings.channels).to_dict()},
        "patch_size": list(settings.size_xyz), "spacing_mm": list(settings.spacing_mm),
        "intensity_normalization": NORMALIZATION, "classes": list(settings.classes),
        "deepsim_layers": FEATURE_LAYERS, "training": training,
    }


def train_features(settings: FeatureTraining, data: VolumeSet, validation: VolumeSet, out, checkpoint_dir=None,
                   resume: bool = False, device: str = "auto", progress_json: bool = False, command: str = "") -> Path:
    """Stage 1: train the segmentation U-Net and write the feature-extractor model file ``out``."""
    config = feature_config(settings.ndim, len(settings.classes), settings.channels)
    _check_geometry(settings.ndim, settings.size_xyz, settings.spacing_mm, config.divisor)
    if not data.has_labels or not validation.has_labels:
        raise InputError("train-deepsim-features trains on segmentation: every image needs a label map "
                         "(fixed_labels and moving_labels columns)")
    out = Path(out)
    ckpt_path = checkpoint_path(out, checkpoint_dir, FEATURES_CHECKPOINT)
    with distributed(device) as dist:
        per_rank = batch_per_rank(settings.batch_size, dist)
        net, optimizer, model, step, history, generator = start_training(
            dist, settings, lambda: FeatureExtractorUNet(config), ckpt_path, resume)
        val_images, val_labels = validation.sample_images(settings.validation_batch, validation_generator(settings.seed))
        total = settings.epochs * settings.steps_per_epoch

        def step_fn(_step):
            images, labels = data.sample_images(per_rank, generator)
            images = _add_noise(images, settings.noise_std, generator)
            model.train()
            loss = F.cross_entropy(model(images.to(dist.device)), labels.to(dist.device))
            return descend(optimizer, loss)

        @torch.no_grad()
        def validate():
            net.eval()
            logits = net(val_images.to(dist.device))
            return {"val_loss": float(F.cross_entropy(logits, val_labels.to(dist.device))),
                    "val_metric": _segmentation_dice(logits, val_labels.to(dist.device))}

        def save(at_step):
            save_training(dist, ckpt_path, net, optimizer, at_step, history, settings)

        t0 = time.perf_counter()
        step = StepLoop(dist, "train-deepsim-features", total, progress_json, save).run(
            step_fn, validate, step, total, 0, settings.steps_per_epoch, settings.checkpoint_every, history)
        if dist.is_main:
            training = {"command": command, "data": data.description, "validation": validation.description,
                        "steps": step, "batch_size": settings.batch_size, "optimizer": f"Adam, lr {settings.learning_rate}",
                        "loss": "cross-entropy (segmentation)", "augmentation": f"Gaussian noise σ ~ U[0, {settings.noise_std}]",
                        "seconds_this_run": round(time.perf_counter() - t0, 1), "processes": dist.world_size,
                        "final_val_dice": history[-1]["val_metric"] if history else None,
                        "history": history, "settings": settings.to_dict(),
                        **provenance(data.source, validation.source)}
            save_model(out, net.state_dict(), feature_metadata(settings, training))
            emit_done(progress_json, settings, step, history[-1]["loss"] if history else float("nan"), out)
        dist.barrier()
    return out


def registration_metadata(settings: RegistrationTraining, lam: float, search: list, training: dict) -> dict:
    return {
        "kind": MODEL_KIND,
        "architecture": {"name": "VoxelMorph-style registration U-Net + spatial transformer (Czolbe et al. 2021)",
                         "config": registration_config(settings.ndim, settings.channels).to_dict()},
        "patch_size": list(settings.size_xyz), "spacing_mm": list(settings.spacing_mm),
        "intensity_normalization": NORMALIZATION, "similarity": settings.similarity, "lambda": lam,
        "lambda_search": search, "regularizer": "diffusion ‖∇u‖² (u in voxels)", "features": settings.features,
        "training": training,
    }


def _registration_loss(settings: RegistrationTraining, lam: float, device) -> RegistrationLoss:
    deepsim = None
    if settings.similarity == "deepsim":
        deepsim = load_deepsim(settings.features, device)
        meta = deepsim.metadata
        if deepsim.ndim != settings.ndim or [float(s) for s in meta["spacing_mm"]] != [float(s) for s in settings.spacing_mm]:
            raise InputError(f"feature model {settings.features!r} is {deepsim.ndim}D at {meta['spacing_mm']} mm; the "
                             f"registration model is {settings.ndim}D at {list(settings.spacing_mm)} mm: they must agree")
    return RegistrationLoss(settings.similarity, lam, deepsim, settings.classes, settings.sup_weight)


def train_registration(settings: RegistrationTraining, data: VolumeSet, validation: VolumeSet, out, checkpoint_dir=None,
                       resume: bool = False, device: str = "auto", progress_json: bool = False, command: str = "") -> Path:
    """Stage 2: train the registration U-Net for every λ candidate, keep the best on validation Dice."""
    if settings.similarity not in SIMILARITIES:
        raise InputError(f"unknown similarity {settings.similarity!r}: choose one of {', '.join(SIMILARITIES)}")
    config = registration_config(settings.ndim, settings.channels)
    _check_geometry(settings.ndim, settings.size_xyz, settings.spacing_mm, config.divisor)
    if settings.similarity == "deepsim" and not settings.features:
        raise InputError("--similarity deepsim needs --features (a model from train-deepsim-features)")
    if settings.similarity == "ncc_sup" and not data.has_labels:
        raise InputError("--similarity ncc_sup is supervised by label maps: give fixed_labels and moving_labels")
    if len(settings.lambdas) > 1 and not validation.has_labels:
        raise InputError("tuning λ over several values needs validation label maps (Dice); give one --lam or labels")
    out = Path(out)
    ckpt_path = checkpoint_path(out, checkpoint_dir, REGISTRATION_CHECKPOINT)
    with distributed(device) as dist:
        per_rank = batch_per_rank(settings.batch_size, dist)
        ckpt = resume_checkpoint(resume, ckpt_path, settings.to_dict())
        # every candidate's state is kept, so a resume with more --epochs continues each of them
        states, results = dict(ckpt.get("candidates", {})), dict(ckpt.get("results", {}))
        total = settings.epochs * settings.steps_per_epoch
        val = validation.sample_pairs(settings.validation_pairs, validation_generator(settings.seed))
        val = [None if t is None else t.to(dist.device) for t in val]
        t0 = time.perf_counter()
        step = 0
        for index, lam in enumerate(float(v) for v in settings.lambdas):
            saved = states.get(index)
            if saved is not None and saved["step"] >= total and index in results:
                continue
            loss_fn = _registration_loss(settings, lam, dist.device)
            net, optimizer = seeded_network(lambda: RegistrationUNet(config), settings.seed, settings.learning_rate,
                                            dist)
            step, history = restore_training(saved or {}, net, optimizer)
            model = dist.wrap(net)
            generator = step_generator(settings.seed, dist, step, index)
            if dist.is_main:
                emit_progress(progress_json, event="stage", epoch=step // settings.steps_per_epoch, step=step,
                              fraction=index / len(settings.lambdas), loss=float("nan"),
                              message=f"{settings.similarity}, λ = {lam} ({index + 1} of {len(settings.lambdas)})")

            def step_fn(_step, model=model, optimizer=optimizer, loss_fn=loss_fn, generator=generator):
                moving, fixed, ml, fl = [None if t is None else t.to(dist.device)
                                         for t in data.sample_pairs(per_rank, generator)]
                model.train()
                loss, _ = loss_fn(model(torch.cat([moving, fixed], dim=1)), moving, fixed, ml, fl)
                return descend(optimizer, loss)

            @torch.no_grad()
            def validate(net=net, loss_fn=loss_fn):
                net.eval()
                moving, fixed, ml, fl = val
                u = net.displacement(moving, fixed)
                loss, parts = loss_fn(u, moving, fixed, ml, fl)
                out_val = {"val_loss": float(loss), "val_similarity": parts["similarity"]}
                if ml is not None:
                    out_val["val_metric"] = float(dice_scores(ml, fl, u, settings.classes).nanmean())
                return out_val

            def save(at_step, net=net, optimizer=optimizer, history=history, index=index):
                states[index] = {**training_state(net, optimizer, at_step, list(history)),
                                 "model": {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}}
                if dist.is_main:
                    atomic_save({"settings": settings.to_dict(), "candidates": states, "results": results}, ckpt_path)

            step = StepLoop(dist, "train-deepsim", total * len(settings.lambdas), progress_json, save).run(
                step_fn, validate, step, total, index * total, settings.steps_per_epoch, settings.checkpoint_every,
                history)
            final = validate()
            results[index] = {"lambda": lam, "val_dice": final.get("val_metric"), "val_loss": final["val_loss"],
                              "history": history}
            save(step)
        results = [results[i] for i in range(len(settings.lambdas))]
        best = max(range(len(results)), key=lambda i: _score(results[i]))
        best_state = states[best]["model"]
        if dist.is_main:
            search = [{k: v for k, v in r.items() if k != "history"} for r in results]
            training = {"command": command, "data": data.description, "validation": validation.description,
                        "steps_per_candidate": total, "batch_size": settings.batch_size,
                        "optimizer": f"Adam, lr {settings.learning_rate}",
                        "loss": f"eq. 1: D = {settings.similarity}, R = diffusion, λ = {results[best]['lambda']}",
                        "seconds_this_run": round(time.perf_counter() - t0, 1), "processes": dist.world_size,
                        "history": results[best]["history"], "settings": settings.to_dict(),
                        **provenance(data.source, validation.source)}
            save_model(out, best_state, registration_metadata(settings, results[best]["lambda"], search, training))
            emit_done(progress_json, settings, step, results[best]["val_loss"], out,
                      f"λ = {results[best]['lambda']} kept")
        dist.barrier()
    return out


def _score(result: dict) -> float:
    """Higher is better: validation Dice where labels exist, else the negative validation loss."""
    dice = result.get("val_dice")
    return float(dice) if dice is not None and not np.isnan(dice) else -float(result["val_loss"])
