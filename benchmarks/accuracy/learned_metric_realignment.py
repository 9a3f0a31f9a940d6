"""How well train-metric's multi-shot stages re-aligned the training pairs: mean ‖Δt‖ to the truth per stage.

Reads the ``realignment.json`` that ``train-metric`` writes into its checkpoint folder (per stage, the
pairs' fixed->moving rigid parameters θx, θy, θz, tx, ty, tz and centres) and the ``train_truth.json``
of the split made by ``metric_subjects.py``, and prints mean ‖Δt‖ (metrics.evaluation.rigid_errors)
before training and after each stage.

Results: benchmarks/results/learned_metric_realignment.json (``--json`` to name it per metric set).

    python benchmarks/accuracy/learned_metric_realignment.py CKPT/realignment.json DATA/train_truth.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from DeepRegistrationLib.core.transforms import RigidTransform
from DeepRegistrationLib.metrics.evaluation import rigid_errors

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from results_json import add_json_argument, write_results  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("realignment", help="realignment.json from train-metric's checkpoint folder")
    p.add_argument("truth", help="train_truth.json from metric_subjects.py")
    add_json_argument(p, "learned_metric_realignment")
    args = p.parse_args(argv)
    truth = [RigidTransform(t["angles_rad"], t["translation_mm"], t["center_mm"])
             for t in json.loads(open(args.truth).read())]
    stages = json.loads(open(args.realignment).read())
    rows = [("before", [rigid_errors(RigidTransform(center_mm=t.center_mm), t)["t_norm_mm"] for t in truth])]
    for stage in stages:
        estimates = [RigidTransform(q[:3], q[3:], c) for q, c in zip(stage["parameters"], stage["centers_mm"])]
        rows.append((f"after F{stage['stage']}", [rigid_errors(e, t)["t_norm_mm"] for e, t in zip(estimates, truth)]))
    print(f"mean ‖Δt‖ (mm) over the {len(truth)} training pairs\n")
    print("| " + " | ".join(name for name, _ in rows) + " |")
    print("|" + "---|" * len(rows))
    print("| " + " | ".join(f"{np.mean(e):.2f}" for _, e in rows) + " |")
    write_results(args.json, "benchmarks/accuracy/learned_metric_realignment.py",
                  f"{len(truth)} training pairs of {args.truth}; re-alignment from {args.realignment}",
                  [{"after": name, "mean_t_norm_mm": float(np.mean(e)), "t_norm_mm": [float(x) for x in e]}
                   for name, e in rows])
    return 0


if __name__ == "__main__":
    sys.exit(main())
