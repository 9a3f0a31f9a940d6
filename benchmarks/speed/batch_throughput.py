"""Batch throughput: pairs per hour of ``run_batch`` with 1 and with 2 Dask workers, in one run, as a ratio.

Data: a synthetic cohort (``data.cohort``: SPM avg152 T1 at 4 mm, 45x54x45, each subject deformed and moved)
registered to the template with the CPU-bound rigid NMI method (Powell; ``--method``). Each configuration
gets its own ``LocalCluster`` (worker processes, one pair at a time each) with every worker warmed up
(library imported) before the clock starts, and a fresh output folder; the time is the wall time of
``run_batch`` (hashing, registration, outputs, thumbnails, report). Torch and SimpleITK run with
``--threads`` threads per worker (default 1, set explicitly in each task). ``--rounds`` repeats the 1-worker/2-worker sequence.

Also recorded: the mean per-pair wall and CPU time inside the workers (from each pair's status.json): the
wall time shows how much the workers slow each other down, the CPU time whether a pair used more than its
thread. And the load average of the machine before and after.

    python benchmarks/batch_throughput.py [--pairs 8] [--rounds 1] [--threads 1] [--method mi]
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from distributed import Client, LocalCluster

from DeepRegistrationLib.batch import store
from DeepRegistrationLib.batch.runner import cpu_budget, run_batch
from DeepRegistrationLib.data.cohort import write_cohort

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from results_json import add_json_argument, write_results  # noqa: E402



def _warm() -> bool:
    """Import what a pair needs, so that no worker's first pair pays for it inside the timing."""
    import importlib

    for name in ("DeepRegistrationLib.api", "DeepRegistrationLib.batch.job", "matplotlib.figure",
                 "DeepRegistrationLib.rigid.nmi_method"):
        importlib.import_module(name)
    return True


def measure(csv: Path, method: str, workers: int, threads: int, out: Path) -> dict:
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        client.run(_warm)
        t0 = time.perf_counter()
        result = run_batch(csv, method, out, scheduler=cluster.scheduler_address, threads_per_worker=threads)
        wall = time.perf_counter() - t0
    assert len(result.done) == len(result.report["rows"]), "every pair must register in a benchmark run"
    statuses = [store.read_status(out / "pairs" / r["id"]) for r in result.report["rows"]]
    per_pair = [s["seconds"] for s in statuses]
    n = len(per_pair)
    return {"workers": workers, "torch_threads_per_worker": threads, "pairs": n, "wall_s": wall,
            "pairs_per_hour": 3600.0 * n / wall, "mean_pair_s": sum(per_pair) / n,
            "mean_pair_cpu_s": sum(s["cpu_seconds"] for s in statuses) / n,
            "parallel_efficiency": sum(per_pair) / (wall * workers)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, default=8)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    p.add_argument("--method", default="nmi")
    p.add_argument("--spacing", type=float, default=4.0)
    add_json_argument(p, "batch_throughput")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="batch-throughput-"))
    try:
        csv = write_cohort(work / "data", args.pairs, spacing_mm=args.spacing, seed=0)
        load_before = os.getloadavg()
        runs = []
        for r in range(args.rounds):
            for workers in (1, 2):
                run = measure(csv, args.method, workers, args.threads, work / f"out-{r}-{workers}")
                runs.append(run)
                print(f"round {r}: {workers} worker(s) x {args.threads} thread(s): {run['wall_s']:.1f} s, "
                      f"{run['pairs_per_hour']:.0f} pairs/h, mean {run['mean_pair_s']:.2f} s per pair, "
                      f"efficiency {run['parallel_efficiency']:.2f}", flush=True)
        load_after = os.getloadavg()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    one = sum(r["pairs_per_hour"] for r in runs if r["workers"] == 1) / args.rounds
    two = sum(r["pairs_per_hour"] for r in runs if r["workers"] == 2) / args.rounds
    per_pair_1 = sum(r["mean_pair_s"] for r in runs if r["workers"] == 1) / args.rounds
    per_pair_2 = sum(r["mean_pair_s"] for r in runs if r["workers"] == 2) / args.rounds
    cpu_1 = sum(r["mean_pair_cpu_s"] for r in runs if r["workers"] == 1) / args.rounds
    cpu_2 = sum(r["mean_pair_cpu_s"] for r in runs if r["workers"] == 2) / args.rounds
    summary = {"throughput_ratio_2_vs_1": two / one, "per_pair_time_ratio_2_vs_1": per_pair_2 / per_pair_1,
               "ideal_ratio_from_per_pair_times": 2 * per_pair_1 / per_pair_2,
               "per_pair_cpu_time_ratio_2_vs_1": cpu_2 / cpu_1,
               "ratio_from_per_pair_cpu_times": 2 * cpu_1 / cpu_2}
    print(f"2 workers / 1 worker: {summary['throughput_ratio_2_vs_1']:.2f}x pairs per hour; per-pair time "
          f"{summary['per_pair_time_ratio_2_vs_1']:.2f}x (so at most {summary['ideal_ratio_from_per_pair_times']:.2f}x); "
          f"per-pair CPU time {summary['per_pair_cpu_time_ratio_2_vs_1']:.2f}x (2 workers on 2 free cores: "
          f"{summary['ratio_from_per_pair_cpu_times']:.2f}x); "
          f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after, on {cpu_budget()} cores")
    write_results(args.json, "benchmarks/speed/batch_throughput.py",
                  f"synthetic cohort of {args.pairs} pairs: SPM avg152 T1 at {args.spacing} mm, deformed and moved",
                  {"runs": runs, "summary": summary}, method=args.method, threads_per_worker=args.threads,
                  load_average_before=load_before, load_average_after=load_after)


if __name__ == "__main__":
    main()
