"""``deepregistration batch PAIRS.csv --method M --out DIR``: a cohort on Dask, resumable, with a QA report."""
from __future__ import annotations

import sys

from ..core.device import DEVICE_CHOICES
from ..core.errors import Cancelled
from ._progress import cli_progress
from .register import parse_params


def add_command(sub) -> None:
    p = sub.add_parser(
        "batch", help="register every pair of a CSV (Dask), resumably, and write a QA report",
        description="Register every pair of PAIRS.csv into DIR/pairs/<id>/ (what 'register' writes, its log and "
                    "QA thumbnails) and write DIR/report.html (flagged pairs first), report.csv, report.json and "
                    "cohort.png. CSV columns: fixed, moving; optional id, fixed_mask, moving_mask, fixed_labels, "
                    "moving_labels, initial_transform, method, params ('KEY=VALUE;KEY=VALUE'), model. A rerun "
                    "skips the pairs already complete for the same inputs and settings and retries the others. "
                    "Exit status 1 when any pair failed, 130 when stopped with Ctrl-C.")
    p.add_argument("pairs", metavar="PAIRS.csv")
    p.add_argument("--method", default="nmi", help="method (or pipeline) for rows without their own 'method' "
                                                  "(any method 'register' takes; default mi)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--param", action="append", metavar="KEY=VALUE",
                   help="option of --method, as for 'register'; a row's 'params' override it key by key")
    p.add_argument("--model", action="append", help="model for --method (repeat for staged models)")
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="address of an existing Dask scheduler (e.g. tcp://host:8786); its workers must see the "
                        "files and have this library installed. Default: an embedded local cluster")
    p.add_argument("--workers", type=int, help="workers of the embedded cluster (default: one per GPU, else one "
                                               "per CPU core, at most one per 4 GiB of memory)")
    p.add_argument("--threads-per-worker", type=int, metavar="N",
                   help="torch and SimpleITK threads per worker (default: 1 on CPU workers, cores / GPUs on GPU workers)")
    p.add_argument("--device", default="auto", help=f"one of {', '.join(DEVICE_CHOICES)} (default auto: each "
                                                    "embedded worker on its own GPU when there are GPUs)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..batch.runner import run_batch

    try:
        with cli_progress(f"batch ({args.method})", not args.quiet) as progress:
            result = run_batch(args.pairs, args.method, args.out, parse_params(args.param), args.model,
                               args.scheduler, args.workers, args.threads_per_worker, args.device, progress)
    except Cancelled as stopped:      # completed pairs are kept: say so, rather than the CLI's "nothing written"
        print(f"deepregistration batch: {stopped}", file=sys.stderr)
        return 130
    layout = result.layout
    if "workers" in layout:
        print(f"{layout['workers']} Dask workers, threads per worker (torch and SimpleITK): "
              f"{layout['torch_threads_per_worker']}"
              + (", one GPU each" if layout.get("gpu_per_worker") else ""))
    flagged = sum(bool(r["flags"]) for r in result.report["rows"])
    print(f"{len(result.done)} registered, {len(result.skipped)} already complete, {len(result.failed)} failed; "
          f"{flagged} flagged; {result.seconds:.1f} s")
    for pair_id in result.failed:
        row = next(r for r in result.report["rows"] if r["id"] == pair_id)
        print(f"  failed {pair_id}: {row['error']}")
    print(f"report: {result.report['html']}")
    return 0 if result.ok else 1
