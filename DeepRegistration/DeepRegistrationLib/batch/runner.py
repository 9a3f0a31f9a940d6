"""Run a batch's pairs as Dask tasks (``dask.distributed``), resumably, with progress and a clean stop.

- **Cluster:** without ``scheduler``, an embedded ``LocalCluster`` of worker processes, each running one
  pair at a time: one worker per GPU (each on its own GPU), else one per CPU core (at most one per
  :data:`MEMORY_PER_WORKER` of memory), with ``threads_per_worker`` torch and SimpleITK threads each
  (default: 1 on CPU workers; the cores shared out among GPU workers). With ``scheduler``, the pairs go to that
  cluster, whose workers must see the same files and have this library installed.
- **Resume:** pairs whose outputs are complete for their current inputs and settings are skipped
  (:func:`.store.is_complete`); all others (new, failed, unfinished, changed) run.
- **Stop:** Ctrl-C (or a :class:`Cancelled` from ``progress``) writes a stop file. Running pairs
  cancel at their next progress report and remove their temporary folders, pairs not yet started do
  not start; completed pairs stay. The report is written for what is complete and :class:`Cancelled`
  is raised.
"""
from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from ..core.errors import Cancelled, InputError
from ..core.progress import as_progress
from . import store
from .job import record_failure, run_pair
from .pairs import read_pairs_csv
from .report import write_report

#: memory budget of one embedded CPU worker (a 1 mm brain registration stays well below it)
MEMORY_PER_WORKER = 4 * 2 ** 30
#: how long a stop waits for running pairs to cancel before closing the cluster
STOP_WAIT_S = 60.0


@dataclass
class BatchResult:
    """Counts of a run (pairs ``done`` now, ``skipped`` as complete, ``failed``, ``not_run``), the
    cluster layout used, and the report's paths and rows."""

    done: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    failed: list = field(default_factory=list)
    not_run: list = field(default_factory=list)
    layout: dict = field(default_factory=dict)
    report: dict = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed and not self.not_run


def cpu_budget() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def local_layout(pairs_to_run: int, workers: int = None, threads_per_worker: int = None, device: str = "auto") -> dict:
    """Workers, torch threads per worker and GPU use of the embedded cluster (see the module docstring)."""
    import psutil
    import torch

    cores = cpu_budget()
    gpus = torch.cuda.device_count() if device in ("auto", "cuda") else 0
    if gpus:
        workers = workers or gpus
        threads = threads_per_worker or max(1, cores // workers)
    else:
        threads = threads_per_worker or 1
        by_memory = max(1, int(psutil.virtual_memory().total // MEMORY_PER_WORKER))
        workers = workers or max(1, min(cores // threads, by_memory))
    workers = max(1, min(workers, max(pairs_to_run, 1)))
    return {"workers": workers, "torch_threads_per_worker": threads, "gpus": gpus, "cores": cores,
            "gpu_per_worker": bool(gpus)}


@contextmanager
def dask_client(scheduler: str = None, layout: dict = None):
    """A ``distributed.Client`` on ``scheduler``, or on an embedded ``LocalCluster`` made per ``layout``.

    The embedded workers are started with SIGINT ignored, so a Ctrl-C in the terminal reaches only this
    process, which then stops the batch in order instead of the workers dying mid-write.
    """
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise InputError("deepregistration batch needs Dask: pip install 'deepregistration[batch]' "
                         "(or pip install 'dask[distributed]')") from None
    if scheduler:
        try:
            client = Client(scheduler, timeout="30s")
        except OSError as err:
            raise InputError(f"cannot reach the Dask scheduler at {scheduler}: {err}") from None
        try:
            yield client
        finally:
            client.close()
        return
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
    try:
        cluster = LocalCluster(n_workers=layout["workers"], threads_per_worker=1, processes=True,
                               dashboard_address=None)
    finally:
        if main:
            signal.signal(signal.SIGINT, previous)
    client = Client(cluster)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


def _outcome(future, pair, digest, out) -> dict:
    """A finished task's status; a task that died with its worker is recorded as failed."""
    try:
        return future.result()
    except Exception as err:  # noqa: BLE001 - e.g. KilledWorker when the worker ran out of memory
        name = type(err).__name__
        why = " (the worker died while registering it: out of memory?)" if name == "KilledWorker" else ""
        return record_failure(pair, digest, out, f"{name}: {err}{why}")


def run_batch(pairs, method: str = "nmi", out="batch", params: dict = None, models=None, scheduler: str = None,
              workers: int = None, threads_per_worker: int = None, device: str = "auto", progress=None,
              title: str = None) -> BatchResult:
    """Register every pair of ``pairs`` (a pairs CSV, or a list of :class:`~.pairs.Pair`) into ``out``
    and write the QA report there (``out/report.html``). See the module docstring; ``progress`` is called
    as ``progress(fraction, message)`` after each pair."""
    t0 = time.perf_counter()
    out = Path(out)
    if not isinstance(pairs, (list, tuple)):
        pairs = read_pairs_csv(pairs, method, params, models)
    progress = as_progress(progress)
    result = BatchResult()
    with store.BatchLock(out):
        store.sweep_partials(out)
        cache = {}
        digests = {p.id: store.pair_hash(p, cache) for p in pairs}
        todo = [p for p in pairs if not store.is_complete(out, p.id, digests[p.id])]
        result.skipped = [p.id for p in pairs if p not in todo]
        stop_file = out / f".stop-{uuid.uuid4().hex[:12]}"
        stopped = False
        if todo:
            if scheduler:
                result.layout = {"scheduler": scheduler, "torch_threads_per_worker": threads_per_worker,
                                 "gpu_per_worker": False}
            else:
                result.layout = local_layout(len(todo), workers, threads_per_worker, device)
            progress(0.0, f"{len(result.skipped)} pairs complete, {len(todo)} to run")
            try:
                with dask_client(scheduler, result.layout) as client:
                    stopped = _run_on(client, todo, digests, out, stop_file, result, device, progress)
            finally:
                stop_file.unlink(missing_ok=True)
            if stopped and not scheduler:
                store.sweep_partials(out)
        result.not_run = [p.id for p in todo if p.id not in result.done and p.id not in result.failed]
        notes = [f"Last run: {len(todo)} pairs to run, {len(result.skipped)} already complete (skipped)"
                 + (f"; {result.layout['workers']} Dask workers" if "workers" in result.layout
                    else f"; Dask scheduler {scheduler}" if todo and scheduler else "")
                 + (f", threads per worker (torch and SimpleITK): {result.layout['torch_threads_per_worker']}"
                    if todo and result.layout.get("torch_threads_per_worker") else "")
                 + ("; stopped by the user" if stopped else "") + "."]
        result.report = write_report(out, [p.id for p in pairs], title or f"batch ({method})", notes)
    result.seconds = time.perf_counter() - t0
    if stopped:
        raise Cancelled(f"batch stopped: {len(result.done)} pairs registered in this run, {len(result.not_run)} "
                        f"not run; run the same command again to continue. Report: {result.report['html']}")
    return result


def _run_on(client, todo, digests, out, stop_file, result, device, progress) -> bool:
    """Submit the pairs, collect them as they finish; True when stopped by the user."""
    from distributed import as_completed, wait

    threads = result.layout.get("torch_threads_per_worker")
    gpu_per_worker = result.layout.get("gpu_per_worker", False)
    by_key = {}
    finished = 0
    try:
        for pair in todo:
            future = client.submit(run_pair, pair, digests[pair.id], str(out), str(stop_file), threads, device,
                                   gpu_per_worker, key=f"register-{pair.id}-{uuid.uuid4().hex[:8]}", pure=False)
            by_key[future.key] = (future, pair)
        for future in as_completed([f for f, _ in by_key.values()]):
            _, pair = by_key[future.key]
            _tally(result, _outcome(future, pair, digests[pair.id], out))
            finished += 1
            progress(finished / len(todo), f"{finished}/{len(todo)} pairs, {len(result.failed)} failed")
        return False
    except (KeyboardInterrupt, Cancelled):
        stop_file.touch()
        pending = [f for f, _ in by_key.values() if not f.done()]
        try:
            wait(pending, timeout=STOP_WAIT_S)
        except (KeyboardInterrupt, Exception):  # noqa: BLE001 - a second Ctrl-C, or the wait timing out
            pass
        for future, pair in by_key.values():
            if future.done() and pair.id not in result.done and pair.id not in result.failed:
                try:
                    _tally(result, future.result())
                except Exception:  # noqa: BLE001 - a task lost in the stop is simply not run
                    pass
        client.cancel([f for f, _ in by_key.values() if not f.done()])
        return True


def _tally(result: BatchResult, status: dict) -> None:
    if status.get("status") == "done":
        result.done.append(status["id"])
    elif status.get("status") == "failed":
        result.failed.append(status["id"])
