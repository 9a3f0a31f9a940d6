"""Training the learned metric from roughly aligned pairs: multi-resolution, multi-shot (Sedghi et al. 2018).

Stages F(l, σ²) are trained one after the other (§2.1, §3 experiment 2). A stage reads the pairs at
spacing ``base_spacing_mm × l`` and trains the 2-channel CNN on balanced positive/negative patch pairs
drawn on the fly (dithering variance σ²), with cross-entropy, Adam (lr 0.01, × 0.8 each epoch,
L2 weight decay 0.01) and dropout 0.5 (§2.2). Model selection (§3: "model selection is performed
based on the accuracy on the validation set") keeps the epoch whose metric registers the validation
pairs best (``selection="registration"``): each validation pair, at its current alignment T, is started
from ``selection_starts`` fixed random rigid perturbations of T (translations of about twice the stage's
dithering σ, rotations of σ / 50 mm rad) and registered with the epoch's metric (eq. 2, Powell); the
mean ‖Δt‖ to T is the error. The pairs are only roughly aligned, so T is the best reference there is:
the criterion measures how well the metric pulls misaligned starts back, not the absolute accuracy.
``selection="accuracy"`` keeps the epoch with the best patch-classification accuracy instead. Then
every pair is re-registered rigidly with that
stage's metric (eq. 2, Powell), and the next stage trains on the re-aligned pairs; the per-pair
transforms are written to ``realignment.json`` / ``realignment.csv`` in the checkpoint folder.

Checkpoints are written atomically at the end of every epoch and stage; ``resume`` continues from
the last one. Under ``torchrun`` the network is wrapped in DistributedDataParallel, each rank draws
its own patches, and the re-registration of the pairs is split over the ranks.
"""
from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..core.errors import InputError
from ..core.io import read_image
from ..core.settings import Settings
from ..core.transforms import RigidTransform
from ..metrics.evaluation import rigid_errors
from ..networks.metric_cnn import MetricCNN, default_architecture
from ..rigid.cnn_metric import CNNSettings, MetricStage, load_metric_set, register_cnn, save_metric_set
from ..rigid.powell import PowellSettings
from .common import Distributed, atomic_save, load_checkpoint, progress_bar, provenance
from ..rigid.metric_patches import INTENSITY_NORMALIZATION, PatchPairSampler, SamplerSettings, prepare_level
from ..rigid.sampling_region import FOREGROUND_DEFAULT

#: Sedghi et al.'s experiment-2 stages F(l, σ²): (level, dither variance in mm²).
PAPER_STAGES = ((4.0, 100.0), (2.0, 25.0), (2.0, 15.0), (1.0, 8.0))
CHECKPOINT_NAME = "metric_checkpoint.pt"


def parse_stages(text: str) -> tuple:
    """``"4:100,2:25"`` -> ((4.0, 100.0), (2.0, 25.0)): level l and dither variance σ² (mm²) per stage."""
    try:
        stages = tuple((float(a), float(b)) for a, b in (s.split(":") for s in text.split(",")))
    except ValueError:
        raise InputError(f"stages must look like 4:100,2:25 (level:dither variance), got {text!r}") from None
    if not stages or any(level <= 0 or var < 0 for level, var in stages):
        raise InputError(f"stages need positive levels and non-negative variances, got {text!r}")
    return stages


#: model-selection criteria (§3)
SELECTIONS = ("registration", "accuracy")
#: lever arm (mm) turning the stage's dithering σ into the rotation range of the selection starts
SELECTION_ROTATION_RADIUS_MM = 50.0


@dataclass
class MetricTrainingConfig(Settings):
    """Every default is the paper's value where the paper gives one (marked), else our choice."""

    stages: tuple = PAPER_STAGES                 # paper, experiment 2
    base_spacing_mm: float = 1.0                 # paper: images resampled to 1 mm
    patch_size: int = 17                         # paper
    channels: tuple = (16, 32, 32)               # ours (widths are not given)
    dropout: float = 0.5                         # paper
    learning_rate: float = 0.01                  # paper
    lr_decay: float = 0.8                        # paper, per epoch
    weight_decay: float = 0.01                   # paper (L2)
    epochs: int = 10                             # ours; with pairs_per_epoch, 1 million pairs per stage (paper)
    pairs_per_epoch: int = 100_000
    batch_size: int = 64                         # ours
    dithers_per_location: int = 100              # paper (m), experiment 1
    min_negative_distance_mm: float = None       # ours: half the patch extent when None
    symmetrize: bool = True                      # paper
    validation_fraction: float = 0.2             # ours (paper: 25 pairs for training and validation)
    validation_pairs: int = 2048                 # ours: size of the fixed validation patch-pair set
    realign_patches: int = 256                   # ours: n of eq. 2 when re-registering the pairs
    realign_evaluations: int = 300               # ours: Powell budget per pair and stage
    realign_after_last_stage: bool = True        # re-register with the final stage too (for the record)
    selection: str = "registration"              # §3 model selection: "registration" or "accuracy" (see above)
    selection_starts: int = 2                    # ours: perturbed starts per validation pair (registration)
    seed: int = 0
    init_model: str = ""                         # a metric set whose stage k starts stage k (fine-tuning)
    description: str = ""
    command: str = ""                            # the command line that ran the training (provenance)


def split_pairs(n: int, fraction: float, seed: int) -> tuple:
    """(train indices, validation indices); at least one of each when there are two pairs or more."""
    order = np.random.default_rng(seed).permutation(n).tolist()
    n_val = 0 if n < 2 else min(n - 1, max(1, int(round(fraction * n))))
    return sorted(order[n_val:]), sorted(order[:n_val])


class Reporter:
    """Progress as a tqdm bar (loss, accuracy, ETA) or as one JSON object per line; main rank only."""

    def __init__(self, total_steps: int, json_lines: bool, enabled: bool):
        self.total, self.json_lines, self.enabled = max(total_steps, 1), json_lines, enabled
        self.bar = None
        if enabled and not json_lines:
            self.bar = progress_bar(total_steps, "train-metric")

    def __call__(self, event: str, step: int, **values) -> None:
        if not self.enabled:
            return
        if self.json_lines:
            print(json.dumps({"event": event, "step": step, "fraction": min(step / self.total, 1.0), **values}),
                  flush=True)
            return
        if event == "step":
            self.bar.n = step
            self.bar.set_postfix(loss=f"{values['loss']:.3f}", acc=f"{values['accuracy']:.3f}",
                                 stage=values.get("stage"), refresh=False)
            self.bar.refresh()
        elif values.get("message"):
            self.bar.write(values["message"])

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@dataclass
class PairData:
    fixed: object
    moving: object
    fixed_mask: object = None
    moving_mask: object = None
    name: str = ""


def load_pairs(rows: list) -> list:
    """Read the images (and masks) of ``read_pairs_csv`` rows."""
    out = []
    for r in rows:
        fm = read_image(r["fixed_mask"], "fixed mask", require_volume=False) if "fixed_mask" in r else None
        mm = read_image(r["moving_mask"], "moving mask", require_volume=False) if "moving_mask" in r else None
        out.append(PairData(read_image(r["fixed"], "fixed image"), read_image(r["moving"], "moving image"), fm, mm,
                            f"{r['fixed']} | {r['moving']}"))
    return out


@dataclass
class TrainingState:
    """What a checkpoint holds besides the current network and optimizer."""

    stage: int = 0
    epoch: int = 0
    transforms: list = field(default_factory=list)     # per pair, rigid parameters (θx, θy, θz, tx, ty, tz)
    finished: list = field(default_factory=list)       # state dicts of finished stages
    stage_infos: list = field(default_factory=list)
    realignment: list = field(default_factory=list)
    best_score: float = -math.inf                       # selection score of the kept epoch (higher is better)
    best_accuracy: float = -1.0                         # its validation patch accuracy
    best_error_mm: float = None                         # its validation registration error (registration selection)
    best_state: dict = None


class MetricTrainer:
    def __init__(self, pairs: list, config: MetricTrainingConfig, out, checkpoint_dir, dist_ctx: Distributed,
                 reporter_json: bool = False, show_progress: bool = True, validation_pairs: list = None,
                 corpus_record: dict = None):
        """``validation_pairs``: exactly aligned pairs of other subjects for model selection (their transforms stay
        the identity, the truth, and are never re-registered); without them a fraction of ``pairs`` validates."""
        if not pairs:
            raise InputError("train-metric needs at least one (fixed, moving) pair")
        if config.selection not in SELECTIONS or config.selection_starts < 1:
            raise InputError(f"model selection {config.selection!r} with {config.selection_starts} starts: choose "
                             f"one of {', '.join(SELECTIONS)} and at least one start")
        self.pairs, self.c, self.out = pairs, config, Path(out)
        self.ckpt_dir = Path(checkpoint_dir) if checkpoint_dir else self.out.parent / (self.out.stem + "_checkpoints")
        self.d = dist_ctx
        self.device = dist_ctx.device
        self.train_idx, self.val_idx = split_pairs(len(pairs), config.validation_fraction, config.seed)
        self.fixed_validation = bool(validation_pairs)
        if self.fixed_validation:
            self.pairs = list(pairs) + list(validation_pairs)
            self.train_idx, self.val_idx = list(range(len(pairs))), list(range(len(pairs), len(self.pairs)))
        self.corpus_record = corpus_record
        self.centres = [p.fixed.grid.center_physical() for p in self.pairs]
        steps = self.steps_per_epoch() * config.epochs * len(config.stages)
        self.report = Reporter(steps, reporter_json, dist_ctx.is_main and show_progress)
        self.global_step = 0
        self.stage_networks, self.last_transforms = [], []

    def steps_per_epoch(self) -> int:
        return max(1, math.ceil(self.c.pairs_per_epoch / (self.c.batch_size * self.d.world_size)))

    def architecture(self) -> dict:
        return default_architecture(self.c.channels, self.c.dropout)

    def sampler_settings(self, level: float, variance: float) -> SamplerSettings:
        spacing = self.c.base_spacing_mm * level
        min_dist = self.c.min_negative_distance_mm
        if min_dist is None:
            min_dist = 0.5 * self.c.patch_size * spacing
        return SamplerSettings(self.c.patch_size, spacing, variance, self.c.dithers_per_location, min_dist,
                               self.c.symmetrize)

    def transforms_of(self, state: TrainingState) -> list:
        return [RigidTransform.from_parameters(p, c) for p, c in zip(state.transforms, self.centres)]

    def checkpoint(self, net, optimizer, scheduler, state: TrainingState) -> None:
        if self.d.is_main:
            atomic_save({"config": self.c.to_dict(), "model": net.state_dict(), "optimizer": optimizer.state_dict(),
                         "scheduler": scheduler.state_dict(), "state": asdict(state)}, self.ckpt_dir / CHECKPOINT_NAME)
        self.d.barrier()

    def resume_state(self) -> dict:
        path = self.ckpt_dir / CHECKPOINT_NAME
        if not path.exists():
            raise InputError(f"--resume: no checkpoint in {self.ckpt_dir}")
        ckpt = load_checkpoint(path)
        free = ("epochs", "description", "command")
        saved = {k: v for k, v in ckpt["config"].items() if k not in free}
        current = {k: v for k, v in self.c.to_dict().items() if k not in free}
        if saved != current:
            diff = sorted(k for k in current if saved.get(k) != current[k])
            raise InputError(f"--resume: the checkpoint was made with other settings ({', '.join(diff)})")
        return ckpt

    def validation_set(self, sampler, levels, transforms, stage: int) -> tuple:
        idx = self.val_idx or self.train_idx
        g = torch.Generator().manual_seed(self.c.seed * 7919 + 104729 * (stage + 1))
        xs, ys, n = [], [], 0
        while n < self.c.validation_pairs:
            x, y = sampler.balanced_batch([levels[i] for i in idx], [transforms[i] for i in idx],
                                          min(512, self.c.validation_pairs - n), g)
            xs.append(x)
            ys.append(y)
            n += len(y)
        return torch.cat(xs), torch.cat(ys)

    @torch.no_grad()
    def evaluate(self, net, val) -> tuple:
        net.eval()
        x, y = val
        losses, correct = 0.0, 0
        for i in range(0, len(y), 256):
            logits = net(x[i:i + 256])
            losses += float(F.cross_entropy(logits, y[i:i + 256], reduction="sum"))
            correct += int((logits.argmax(1) == y[i:i + 256]).sum())
        net.train()
        return losses / len(y), correct / len(y)

    def selection_starts(self, transforms: list, variance: float, stage: int) -> list:
        """(pair index, reference T, perturbed start) for the registration criterion, fixed per stage."""
        rng = np.random.default_rng([self.c.seed, 271828, stage])
        sigma = math.sqrt(variance)
        starts = []
        for i in self.val_idx or self.train_idx:
            for _ in range(self.c.selection_starts):
                direction = rng.normal(size=3)
                dt = direction / np.linalg.norm(direction) * 2.0 * sigma * rng.uniform(0.5, 1.0)
                dtheta = rng.uniform(-1.0, 1.0, 3) * sigma / SELECTION_ROTATION_RADIUS_MM
                ref = transforms[i]
                start = RigidTransform(ref.angles_rad + dtheta, ref.translation_mm + dt, ref.center_mm)
                starts.append((i, ref, start))
        return starts

    def selection_error(self, net, spacing: float, starts: list) -> float:
        """Mean ‖Δt‖ (mm) between the references and what this epoch's metric registers from the starts."""
        settings = CNNSettings(self.c.realign_patches, self.c.seed,
                               PowellSettings(max_evaluations=self.c.realign_evaluations))
        stage = MetricStage(net.eval(), spacing, self.c.patch_size, {})
        errors = []
        for n in range(self.d.rank, len(starts), self.d.world_size):
            i, ref, start = starts[n]
            p = self.pairs[i]
            found, _ = register_cnn(p.fixed, p.moving, [stage], start, self.device, settings, None, p.fixed_mask,
                                    p.moving_mask)
            errors.append(rigid_errors(found, ref)["t_norm_mm"])
        net.train()
        if self.d.enabled:
            gathered = [None] * self.d.world_size
            dist.all_gather_object(gathered, errors)
            errors = [e for part in gathered for e in part]
        return float(np.mean(errors))

    def realign(self, stage: MetricStage, transforms: list) -> list:
        """Re-register every pair with this stage's metric (eq. 2), starting from its current transform."""
        settings = CNNSettings(self.c.realign_patches, self.c.seed,
                               PowellSettings(max_evaluations=self.c.realign_evaluations))
        mine = {i: transforms[i].parameters.tolist() for i in self.val_idx} if self.fixed_validation else {}
        for i in range(self.d.rank, len(self.pairs), self.d.world_size):
            if i in mine:
                continue
            p = self.pairs[i]
            t, _ = register_cnn(p.fixed, p.moving, [stage], transforms[i], self.device, settings, None, p.fixed_mask,
                                 p.moving_mask)
            mine[i] = t.parameters.tolist()
        if self.d.enabled:
            gathered = [None] * self.d.world_size
            dist.all_gather_object(gathered, mine)
            mine = {k: v for part in gathered for k, v in part.items()}
        return [mine[i] for i in range(len(self.pairs))]

    def write_realignment(self, state: TrainingState) -> None:
        if not self.d.is_main:
            return
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.ckpt_dir / f".realignment.json.tmp{os.getpid()}"
        tmp.write_text(json.dumps(state.realignment, indent=1))
        os.replace(tmp, self.ckpt_dir / "realignment.json")
        tmp = self.ckpt_dir / f".realignment.csv.tmp{os.getpid()}"
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["stage", "pair", "split", "fixed_moving", "theta_x_rad", "theta_y_rad", "theta_z_rad",
                        "t_x_mm", "t_y_mm", "t_z_mm", "center_x_mm", "center_y_mm", "center_z_mm"])
            for rec in state.realignment:
                for i, params in enumerate(rec["parameters"]):
                    split = "validation" if i in self.val_idx else "train"
                    w.writerow([rec["stage"], i, split, self.pairs[i].name, *params, *self.centres[i]])
        os.replace(tmp, self.ckpt_dir / "realignment.csv")

    def metadata(self) -> dict:
        return {"intensity_normalization": INTENSITY_NORMALIZATION, "foreground": FOREGROUND_DEFAULT,
                "training": {"method": "Sedghi et al. 2018 semi-supervised deep metric (multi-shot)",
                             "config": self.c.to_dict(), "pairs": [p.name for p in self.pairs],
                             "train_pairs": self.train_idx, "validation_pairs": self.val_idx,
                             "description": self.c.description, "command": self.c.command,
                             "world_size": self.d.world_size, **provenance(),
                             **({"corpus": self.corpus_record} if self.corpus_record else {})}}

    def train(self, resume: bool = False) -> Path:
        torch.manual_seed(self.c.seed)
        ckpt = self.resume_state() if resume else None
        state = TrainingState(**ckpt["state"]) if ckpt else TrainingState(
            transforms=[np.zeros(6).tolist() for _ in self.pairs])
        self.global_step = (state.stage * self.c.epochs + state.epoch) * self.steps_per_epoch()
        while state.stage < len(self.c.stages):
            resumed_epoch = ckpt is not None and ckpt["state"]["stage"] == state.stage and state.epoch > 0
            self.train_stage(state, ckpt if resumed_epoch else None)
            ckpt = None
        self.report("done", self.global_step, model=str(self.out), message=f"metric set written to {self.out}")
        self.report.close()
        return self.out

    def train_stage(self, state: TrainingState, ckpt) -> None:
        k = state.stage
        level, variance = self.c.stages[k]
        sampler = PatchPairSampler(self.sampler_settings(level, variance), self.device)
        spacing = sampler.s.spacing_mm
        levels = [(prepare_level(p.fixed, spacing, self.device, p.fixed_mask),
                   prepare_level(p.moving, spacing, self.device, p.moving_mask)) for p in self.pairs]
        transforms = self.transforms_of(state)
        val = self.validation_set(sampler, levels, transforms, k)
        starts = self.selection_starts(transforms, variance, k) if self.c.selection == "registration" else []
        torch.manual_seed(self.c.seed + 1000 * k)
        net = MetricCNN(self.architecture()).to(self.device)
        model = self.d.wrap(net)
        optimizer = torch.optim.Adam(net.parameters(), lr=self.c.learning_rate, weight_decay=self.c.weight_decay)
        scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=self.c.lr_decay)
        if ckpt is not None:
            net.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
        elif self.c.init_model:
            self.initial_weights(net, k, level, variance)
        train_levels = [levels[i] for i in self.train_idx]
        train_transforms = [transforms[i] for i in self.train_idx]
        name = f"F{k + 1}(l={level:g}, σ²={variance:g})"
        self.report("stage", self.global_step, epoch=state.epoch, message=f"stage {name}: spacing {spacing:g} mm")
        while state.epoch < self.c.epochs:
            g = torch.Generator().manual_seed(self.c.seed + 100_003 * k + 1009 * state.epoch + 13 * self.d.rank)
            run_loss, run_acc = 0.0, 0.0
            for step in range(self.steps_per_epoch()):
                x, y = sampler.balanced_batch(train_levels, train_transforms, self.c.batch_size, g)
                logits = model(x)
                loss = F.cross_entropy(logits, y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                self.global_step += 1
                acc = float((logits.argmax(1) == y).float().mean())
                run_loss = float(loss.detach()) if step == 0 else 0.9 * run_loss + 0.1 * float(loss.detach())
                run_acc = acc if step == 0 else 0.9 * run_acc + 0.1 * acc
                if step % 10 == 0 or step == self.steps_per_epoch() - 1:
                    self.report("step", self.global_step, epoch=state.epoch, loss=run_loss, accuracy=run_acc,
                                stage=k + 1)
            scheduler.step()
            val_loss, val_acc = self.evaluate(net, val)
            error = self.selection_error(net, spacing, starts) if starts else None
            score = val_acc if error is None else -error
            if score > state.best_score:
                state.best_score, state.best_accuracy, state.best_error_mm = score, val_acc, error
                state.best_state = {n: t.detach().cpu().clone() for n, t in net.state_dict().items()}
            state.epoch += 1
            registration = {} if error is None else {"val_registration_mm": error}
            self.report("epoch", self.global_step, epoch=state.epoch, loss=run_loss, accuracy=run_acc,
                        val_loss=val_loss, val_metric=val_acc, **registration,
                        message=f"{name} epoch {state.epoch}: loss {run_loss:.4f}, accuracy {run_acc:.3f}, "
                                f"validation loss {val_loss:.4f}, validation accuracy {val_acc:.3f}"
                                + ("" if error is None else f", validation registration error {error:.2f} mm"))
            self.checkpoint(net, optimizer, scheduler, state)
        self.finish_stage(state, net, optimizer, scheduler, level, variance, spacing, sampler.s)

    def initial_weights(self, net, k: int, level: float, variance: float) -> None:
        """Stage k of ``init_model`` into ``net``; refused unless that stage has this one's level, dithering and
        architecture."""
        stages = load_metric_set(self.c.init_model)
        info = stages[k].info if k < len(stages) else None
        if info is None or (info["level"], info["dither_variance_mm2"]) != (level, variance) \
                or info["architecture"] != json.loads(json.dumps(self.architecture())):
            raise InputError(f"--init-model {self.c.init_model}: it has no stage {k + 1} with level {level:g}, "
                             f"dither variance {variance:g} and this architecture")
        net.load_state_dict(stages[k].network.state_dict())

    def finish_stage(self, state, net, optimizer, scheduler, level, variance, spacing, sampler_settings) -> None:
        k = state.stage
        net.load_state_dict(state.best_state)
        net.eval()
        info = {"stage": k + 1, "level": level, "dither_variance_mm2": variance, "spacing_mm": spacing,
                "patch_size": self.c.patch_size, "architecture": self.architecture(),
                "dithers_per_location": sampler_settings.dithers_per_location,
                "min_negative_distance_mm": sampler_settings.min_negative_distance_mm,
                "symmetrize": sampler_settings.symmetrize, "validation_accuracy": state.best_accuracy,
                "model_selection": self.c.selection, "validation_registration_error_mm": state.best_error_mm}
        if k + 1 < len(self.c.stages) or self.c.realign_after_last_stage:
            count = len(self.train_idx) if self.fixed_validation else len(self.pairs)
            self.report("realign", self.global_step, epoch=state.epoch,
                        message=f"stage {k + 1}: re-registering {count} pairs with its metric")
            stage = MetricStage(net, spacing, self.c.patch_size, info)
            state.transforms = self.realign(stage, self.transforms_of(state))
            state.realignment.append({"stage": k + 1, "parameters": state.transforms,
                                      "centers_mm": [c.tolist() for c in self.centres]})
        self.last_transforms = state.transforms
        state.finished.append(state.best_state)
        state.stage_infos.append(info)
        nets = [MetricCNN(i["architecture"]) for i in state.stage_infos]
        for n_, sd in zip(nets, state.finished):
            n_.load_state_dict(sd)
        self.stage_networks = nets
        if self.d.is_main:
            save_metric_set(self.out, nets, state.stage_infos, self.metadata())
        self.write_realignment(state)
        state.stage, state.epoch, state.best_state = k + 1, 0, None
        state.best_score, state.best_accuracy, state.best_error_mm = -math.inf, -1.0, None
        self.checkpoint(net, optimizer, scheduler, state)
