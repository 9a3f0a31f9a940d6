"""One pair of a batch, start to finish: what a Dask worker runs (and the Slicer batch script records).

``run_pair`` reads the pair's files, calls ``registration.register`` and ``registration.write_outputs`` as
``deepregistration register`` does, adds the QA thumbnails (and Dice when label maps are given), and
writes all of it into a temporary folder that becomes ``pairs/<id>`` only when complete
(:mod:`.store`, :func:`attempt`). A failure (missing file, bad image, out of memory, any error) is recorded in that
folder's ``status.json`` and ``log.txt`` and does not stop the batch; a stop request (the stop file
exists) cancels the registration at its next progress report and leaves nothing behind.
"""
from __future__ import annotations

import os
import shutil
import socket
import time
import traceback
import warnings
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ..core.errors import Cancelled
from ..core.progress import Progress
from . import store
from .thumbnails import save_thumbnails

#: file names of what ``register`` writes, per output kind of ``registration.write_outputs``
OUTPUT_NAMES = {"transform": "transform.h5", "volume": "registered.nii.gz", "inverse": "inverse.h5",
                "jacobian": "jacobian.nii.gz", "report": "report.json"}


class PairLog:
    """``log.txt`` of a pair: timestamped lines, written as they come."""

    def __init__(self, path):
        self.file = open(path, "a", buffering=1)
        self._last = None

    def __call__(self, line: str) -> None:
        self.file.write(f"{datetime.now(timezone.utc).strftime('%H:%M:%S.%f')[:-3]} {line}\n")

    def progress(self, fraction: float, message: str) -> None:
        if message and message != self._last:
            self(f"{100 * fraction:5.1f} %  {message}")
            self._last = message

    def close(self) -> None:
        self.file.close()


def label_overlap(result, fixed_labels, moving_labels, initial) -> dict:
    """Mean Dice over the fixed label map's labels, of the moving labels resampled (nearest) with the
    initial transform (before) and with the result (after)."""
    from ..core.warp import warp
    from ..metrics.evaluation import dice_per_label

    labels = [int(v) for v in np.unique(fixed_labels.array) if v != 0]
    out = {"dice_labels": len(labels)}
    for name, transform in (("dice_before", initial), ("dice_after", result.transform)):
        moved = warp(moving_labels, fixed_labels.grid, transform, mode="nearest").array
        values = [v for v in dice_per_label(fixed_labels.array, moved, labels).values() if np.isfinite(v)]
        out[name] = float(np.mean(values)) if values else None
    return out


def record_result(result, folder, extra_report: dict = None) -> dict:
    """Write a :class:`~DeepRegistrationLib.registration.RegistrationResult` into ``folder`` as the batch lays a pair
    out: ``register``'s outputs (``registration.write_outputs``) and the thumbnails. Returns the status entries
    ``outputs`` and ``thumbnails`` (file names inside ``folder``)."""
    from ..registration import write_outputs

    folder = Path(folder)
    if extra_report:
        result.report.update(extra_report)
    paths = {kind: folder / name for kind, name in OUTPUT_NAMES.items()}
    written = write_outputs(result, paths["transform"], paths["volume"], paths["report"],
                            paths["inverse"] if result.inverse is not None else None,
                            paths["jacobian"] if result.jacobian is not None else None)
    return {"outputs": {kind: Path(p).name for kind, p in written.items()},
            "thumbnails": save_thumbnails(result, folder)}


def _device(device: str, gpu_per_worker: bool) -> str:
    """``cuda:<worker number mod GPUs>`` on an embedded cluster with one worker per GPU, else ``device``."""
    if not gpu_per_worker:
        return device
    import torch
    from distributed import get_worker

    name = get_worker().name
    index = int(name) if str(name).isdigit() else 0
    return f"cuda:{index % torch.cuda.device_count()}"


def _read_inputs(files: dict) -> dict:
    from ..core.io import read_image
    from ..core.transforms import read_transform

    out = {"fixed": read_image(files["fixed"], "fixed image"), "moving": read_image(files["moving"], "moving image")}
    for role in ("fixed_mask", "moving_mask", "fixed_labels", "moving_labels"):
        if role in files:
            out[role] = read_image(files[role], role.replace("_", " "), require_volume=False)
    if ("fixed_labels" in out) != ("moving_labels" in out):
        from ..core.errors import InputError
        raise InputError("label maps: give both fixed_labels and moving_labels, or neither")
    out["initial"] = read_transform(files["initial_transform"]) if "initial_transform" in files else None
    return out


def attempt(out, pair_id: str, status: dict, work, should_cancel=None) -> dict:
    """Run ``work(folder, progress, log) -> status entries`` for one pair in a temporary folder and put
    the folder in the pair's place with its ``status.json`` (``done``, or ``failed`` with the error and
    only the log kept). When ``should_cancel()`` says so (checked first and at every progress report),
    the pair is cancelled: nothing is left, and the status says ``cancelled``."""
    if should_cancel is not None and should_cancel():
        return {"id": pair_id, "status": "cancelled"}
    partial = store.new_partial(out, pair_id)
    log = PairLog(partial / "log.txt")
    status = {"id": pair_id, **status, "host": socket.gethostname(), "pid": os.getpid()}
    progress = Progress(log.progress, should_cancel)
    t0, cpu0 = time.perf_counter(), time.process_time()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            status.update(work(partial, progress, log))
        for w in caught:
            log(f"warning: {w.category.__name__}: {w.message}")
        status["status"] = "done"
        log(f"done in {time.perf_counter() - t0:.1f} s")
    except Cancelled:
        log.close()
        shutil.rmtree(partial, ignore_errors=True)
        return {"id": pair_id, "status": "cancelled"}
    except Exception as err:  # noqa: BLE001 - every failure of one pair is recorded and the batch goes on
        status.update(status="failed", error=f"{type(err).__name__}: {err}")
        log(f"FAILED: {status['error']}")
        log(traceback.format_exc())
        for p in partial.iterdir():
            if p.name != "log.txt":
                p.unlink()
    status["seconds"] = time.perf_counter() - t0
    status["cpu_seconds"] = time.process_time() - cpu0
    status["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    log.close()
    store.commit(partial, out, pair_id, status)
    return status


def run_pair(pair, digest: str, out, stop_file=None, threads: int = None, device: str = "auto",
             gpu_per_worker: bool = False) -> dict:
    """Register one :class:`~.pairs.Pair` into ``out/pairs/<id>`` (what a Dask task runs); returns its
    status (``done``, ``failed`` or ``cancelled``; nothing is written for ``cancelled``)."""
    import SimpleITK as sitk
    import torch

    from ..registration import register

    if threads:       # torch and ITK (pyramid smoothing, resampling) alike
        torch.set_num_threads(int(threads))
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(int(threads))

    def work(folder, progress, log):
        dev = _device(device, gpu_per_worker)
        log(f"pair {pair.id}: {pair.method} {pair.settings()['options']} on {dev}, "
            f"{torch.get_num_threads()} torch threads")
        for role, path in pair.files.items():
            log(f"  {role}: {path}")
        inputs = _read_inputs(pair.files)
        result = register(inputs["fixed"], inputs["moving"], pair.method, dev, progress, inputs["initial"],
                          inputs.get("fixed_mask"), inputs.get("moving_mask"), **pair.options)
        extra = {}
        if "fixed_labels" in inputs:
            extra = label_overlap(result, inputs["fixed_labels"], inputs["moving_labels"], inputs["initial"])
        progress(1.0, "writing outputs and thumbnails")
        log(f"NMI {result.report['nmi64_before']:.4f} -> {result.report['nmi64_after']:.4f}")
        return {**record_result(result, folder, extra), "device": result.report.get("device")}

    status = {"hash": digest, "method": pair.method, "options": pair.settings()["options"],
              "files": dict(pair.files), "torch_threads": torch.get_num_threads(),
              "itk_threads": sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()}
    stop = Path(stop_file) if stop_file else None
    return attempt(out, pair.id, status, work, stop.exists if stop is not None else None)


def record_failure(pair, digest: str, out, error: str) -> dict:
    """Record a pair whose task died with its worker (e.g. killed for memory) as failed."""
    partial = store.new_partial(out, pair.id)
    log = PairLog(partial / "log.txt")
    log(f"FAILED: {error}")
    log.close()
    status = {"id": pair.id, "hash": digest, "method": pair.method, "options": pair.settings()["options"],
              "files": dict(pair.files), "status": "failed", "error": error,
              "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    store.commit(partial, out, pair.id, status)
    return status
