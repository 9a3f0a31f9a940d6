"""What every training command shares: pair lists, atomic checkpoints and resuming, torchrun/DDP, progress
bars, and the step loop."""
from __future__ import annotations

import csv
import os
import signal
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from ..core.device import resolve_device
from ..core.errors import Cancelled, InputError
from ..core.io import read_image
from ..core.network_input import normalize_intensity, resample_to
from ..core.progress import emit_json
from ..data.corpus import code_version

PAIR_COLUMNS = ("fixed", "moving")
OPTIONAL_COLUMNS = ("fixed_mask", "moving_mask", "fixed_labels", "moving_labels")


def read_pairs_csv(path) -> list:
    """Rows of a CSV with a header naming at least ``fixed,moving`` (optionally masks and label maps).

    Relative paths are taken relative to the CSV's folder. Returns a list of dicts.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"pairs CSV not found: {path}")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or not all(c in reader.fieldnames for c in PAIR_COLUMNS):
            raise InputError(f"{path}: the header must name the columns 'fixed' and 'moving' (got {reader.fieldnames})")
        rows = []
        for n, row in enumerate(reader, start=2):
            entry = {}
            for key in PAIR_COLUMNS + OPTIONAL_COLUMNS:
                value = (row.get(key) or "").strip()
                if not value:
                    if key in PAIR_COLUMNS:
                        raise InputError(f"{path}, line {n}: empty '{key}'")
                    continue
                p = Path(value)
                entry[key] = p if p.is_absolute() else (path.parent / p)
                if not entry[key].exists():
                    raise InputError(f"{path}, line {n}: {key} file not found: {entry[key]}")
            rows.append(entry)
    if not rows:
        raise InputError(f"{path} lists no pairs")
    return rows


def prepared_pairs(path, grid_of) -> list:
    """(fixed, moving) images of every row of the pairs CSV ``path``, both resampled to ``grid_of(fixed image,
    row)`` and their intensities normalized, as a model sees its inputs (:mod:`..core.network_input`)."""
    pairs = []
    for row in read_pairs_csv(path):
        fixed = read_image(row["fixed"], "fixed image")
        moving = read_image(row["moving"], "moving image")
        grid = grid_of(fixed, row)
        pairs.append(tuple(image.with_array(normalize_intensity(image.array))
                           for image in (resample_to(fixed, grid), resample_to(moving, grid))))
    return pairs


def write_pairs_csv(path, rows: list) -> None:
    """Write a pairs CSV (the inverse of :func:`read_pairs_csv`)."""
    keys = [k for k in PAIR_COLUMNS + OPTIONAL_COLUMNS if any(k in r for r in rows)]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for r in rows:
            w.writerow({k: str(r[k]) for k in keys if k in r})


def provenance(train_source=None, validation_source=None) -> dict:
    """What every model file's ``training`` block records of its origin: the code version and, when it
    was trained on the subject corpus (:class:`..data.corpus_pairs.CorpusPairs`), its subjects and synthesis."""
    record = {"code": code_version()}
    if train_source is not None:
        record["corpus"] = train_source.provenance(validation_source if validation_source is not None
                                                   else train_source)
    return record


def atomic_save(obj: dict, path) -> None:
    """torch.save to a temporary file in the same folder, then rename: never a half-written checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_checkpoint(path) -> dict:
    """A checkpoint written by :func:`atomic_save` (tensors and plain values only)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"checkpoint not found: {path}")
    return torch.load(path, map_location="cpu", weights_only=True)


def torch_rng_state(device: torch.device) -> dict:
    """PyTorch's global random state (dropout draws from it), for a checkpoint to resume exactly."""
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_torch_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


@dataclass
class Distributed:
    """The process group when run under ``torchrun`` (NCCL on GPUs, gloo on the CPU), else one process."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """DistributedDataParallel around ``model`` when distributed, else the model itself."""
        if not self.enabled:
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def mean(self, value: float) -> float:
        """Average a number over ranks (for logging the loss of all ranks)."""
        if not self.enabled:
            return float(value)
        t = torch.tensor([float(value)], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return float(t.item() / self.world_size)

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


@contextmanager
def distributed(device_name: str = "auto"):
    """Context giving a :class:`Distributed`; sets up and tears down the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        yield Distributed(0, 1, resolve_device(device_name))
        return
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = resolve_device(device_name).type == "cuda"
    if use_cuda:
        torch.cuda.set_device(local)
    dist.init_process_group("nccl" if use_cuda else "gloo")
    try:
        yield Distributed(rank, world, torch.device(f"cuda:{local}") if use_cuda else torch.device("cpu"))
        dist.barrier()  # no rank tears down its connections while another still has work in flight
    finally:
        dist.destroy_process_group()


def progress_bar(total: int, description: str, enabled: bool = True):
    """A tqdm bar (ETA included) on the main process only."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=description, disable=not enabled, dynamic_ncols=True)


def emit_progress(enabled: bool, **event) -> None:
    """A JSON progress line (the training-command contract's ``--progress-json``) when enabled."""
    if enabled:
        emit_json(**event)


def settings_without(settings: dict, *keys) -> dict:
    """Settings minus the ones a resumed run may change (e.g. ``epochs``)."""
    return {k: v for k, v in settings.items() if k not in keys}


class StopRequest:
    """Set by SIGTERM, so a training loop can write its checkpoint and stop between steps."""

    def __init__(self):
        self.requested = False

    def __call__(self, signum, frame):
        self.requested = True


class StepLoop:
    """The loop of optimizer steps every trainer runs: validation each epoch, atomic checkpoints every
    ``checkpoint_every`` steps, at the end and on SIGTERM/Ctrl-C, a progress bar or JSON lines."""

    def __init__(self, dist, name: str, total_all: int, progress_json: bool, save):
        self.dist, self.name, self.total_all, self.progress_json, self.save = dist, name, total_all, progress_json, save

    def run(self, step_fn, validate, start: int, total: int, offset: int, steps_per_epoch: int,
            checkpoint_every: int, history: list) -> int:
        """Run steps ``start``..``total``; ``offset`` counts the steps of earlier stages toward the fraction."""
        dist, step = self.dist, start
        stop = StopRequest()
        previous = signal.signal(signal.SIGTERM, stop)
        bar = progress_bar(self.total_all, self.name, dist.is_main and not self.progress_json)
        bar.update(offset + step)
        try:
            while step < total:
                loss_value = dist.mean(step_fn(step))
                step += 1
                done = (offset + step) / self.total_all
                if dist.is_main:
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss_value:.4f}")
                    emit_progress(self.progress_json, event="step", epoch=(step - 1) // steps_per_epoch, step=step,
                                  fraction=done, loss=loss_value, message="")
                if step % steps_per_epoch == 0:
                    val = validate()
                    history.append({"step": step, "loss": loss_value, **val})
                    if dist.is_main:
                        emit_progress(self.progress_json, event="epoch", epoch=step // steps_per_epoch, step=step,
                                      fraction=done, loss=loss_value, **val,
                                      message=", ".join(f"{k} {v:.4f}" for k, v in val.items()))
                if step % checkpoint_every == 0 or step == total:
                    self.save(step)
                if stop.requested:
                    raise Cancelled("training stopped by SIGTERM")
        except (KeyboardInterrupt, Cancelled):
            self.save(step)
            raise
        finally:
            bar.close()
            signal.signal(signal.SIGTERM, previous)
        return step


def resume_checkpoint(resume: bool, ckpt_path: Path, settings_dict: dict) -> dict:
    """The checkpoint to resume from ({} without ``resume``); refused when written with other settings."""
    if not resume:
        return {}
    ckpt = load_checkpoint(ckpt_path)
    if settings_without(ckpt["settings"], "epochs") != settings_without(settings_dict, "epochs"):
        raise InputError(f"{ckpt_path} was written with other settings; resume with the same options "
                         "(only --epochs may change)")
    return ckpt


def checkpoint_path(out: Path, checkpoint_dir, name: str) -> Path:
    """``checkpoint_dir/name``; without a folder, ``<out stem>_checkpoints`` next to the model file ``out``."""
    return (Path(checkpoint_dir) if checkpoint_dir else out.parent / f"{out.stem}_checkpoints") / name


def batch_per_rank(batch_size: int, dist: Distributed) -> int:
    """Each process's share of a mini-batch; refused when the processes cannot share it evenly."""
    if batch_size % dist.world_size:
        raise InputError(f"--batch-size {batch_size} is not divisible by the {dist.world_size} processes")
    return batch_size // dist.world_size


def seeded_network(build, seed: int, learning_rate: float, dist: Distributed) -> tuple:
    """(network, Adam optimizer): ``build()`` on the device after seeding torch with ``seed``, so every process
    and every resumed run starts from the same weights."""
    torch.manual_seed(seed)
    net = build().to(dist.device)
    return net, torch.optim.Adam(net.parameters(), lr=learning_rate)


def restore_training(state: dict, net: torch.nn.Module, optimizer) -> tuple:
    """(step, history) of a checkpoint ``state`` whose weights and optimizer state are loaded; (0, []) for {}."""
    if state:
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    return int(state.get("step", 0)), list(state.get("history", []))


def descend(optimizer, loss: torch.Tensor) -> float:
    """One optimizer step down ``loss``; returns its value."""
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item()


def save_training(dist: Distributed, path: Path, net: torch.nn.Module, optimizer, step: int, history: list, settings,
                  **extra) -> None:
    """Rank 0 writes the training state of ``net``, the settings and ``extra`` to the checkpoint ``path``."""
    if dist.is_main:
        atomic_save({**training_state(net, optimizer, step, history), "settings": settings.to_dict(), **extra}, path)


def training_state(net: torch.nn.Module, optimizer, step: int, history: list) -> dict:
    """What a checkpoint holds of one network's training (read back by :func:`restore_training`)."""
    return {"model": net.state_dict(), "optimizer": optimizer.state_dict(), "step": step, "history": history}


def start_training(dist: Distributed, settings, build, ckpt_path: Path, resume: bool) -> tuple:
    """What a run of one network starts from: (network, optimizer, the network as the step runs it (DDP),
    step, history, sampling generator), resumed from ``ckpt_path`` when asked (:func:`seeded_network`,
    :func:`restore_training`, :func:`step_generator`)."""
    net, optimizer = seeded_network(build, settings.seed, settings.learning_rate, dist)
    step, history = restore_training(resume_checkpoint(resume, ckpt_path, settings.to_dict()), net, optimizer)
    return net, optimizer, dist.wrap(net), step, history, step_generator(settings.seed, dist, step)


def step_generator(seed: int, dist: Distributed, step: int, candidate: int = 0) -> torch.Generator:
    """The sampling generator of one process from ``step`` on (a resumed run draws new batches, not the first
    ones again); ``candidate`` separates runs that share the seed (e.g. λ candidates)."""
    return torch.Generator().manual_seed(seed * 1000 + dist.rank + 7919 * step + 104729 * candidate)


def validation_generator(seed: int) -> torch.Generator:
    """The generator of the fixed validation set: a seed no training batch uses."""
    return torch.Generator().manual_seed(10 ** 6 + seed)


def emit_done(progress_json: bool, settings, step: int, loss: float, out: Path, message: str = "done") -> None:
    """The last progress event of a training run: the model file is written."""
    emit_progress(progress_json, event="done", epoch=settings.epochs, step=step, fraction=1.0, loss=loss,
                  message=message, model=str(out))
