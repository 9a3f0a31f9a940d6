"""Sedghi et al. 2018, experiment 2 (scaled down for a CPU): rigid T1-T2 registration, NMI vs the learned metric.

Test subjects come from ``metric_subjects.py --task t1-t2`` (SPM avg152-derived, translations U{1,20} mm,
rotations U{-0.2,0.2} rad, test seeds disjoint from the training seeds). The CNN metric is a metric set trained with
``deepregistration train-metric`` on that script's *training* split (by default the bundled
'sedghi-t1-t2' set, whose metadata records its training command and data).

    python benchmarks/metric_subjects.py --task t1-t2 --out /tmp/t1-t2 --train 6 --test 10
    python benchmarks/metric_experiment2.py --data /tmp/t1-t2 --cases 10
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from metric_registration_table import markdown_table, run_cases, write_results  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="folder written by metric_subjects.py --task t1-t2")
    p.add_argument("--model", default="sedghi-t1-t2", help="metric set (bundled name or file)")
    p.add_argument("--cases", type=int, default=10)
    p.add_argument("--patches", type=int, default=128, help="n of eq. 2")
    p.add_argument("--max-evaluations", type=int, default=200, help="Powell budget per stage")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "metric_experiment2.json"))
    args = p.parse_args(argv)
    print(f"Data: {args.data}/test.csv (SPM avg152-derived T1-T2 test subjects, unseen in training; "
          f"translations U{{1,20}} mm, rotations U{{-0.2,0.2}} rad). Metric: {args.model}; n = {args.patches} patches, "
          f"{args.max_evaluations} Powell evaluations per stage.")
    result = run_cases(args.data, args.model, args.cases, args.patches, args.max_evaluations)
    table = markdown_table(result, "T1-T2")
    print(table)
    write_results(args.out, " ".join(["python", *sys.argv]), result, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
