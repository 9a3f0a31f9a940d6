"""Sedghi et al. 2018, experiment 1 (scaled down for a CPU): bias, symmetrization and dithering.

Three one-stage metrics are trained (17³ patches at 2 mm; the paper used 32×32×5 for part one) on
SPM avg152-derived T1 (fixed) / T2 (moving) training subjects, and their response functions (sum
over 64 patches of the log-likelihood ratio) are measured on an unseen, *aligned* test subject:

  A. moving shifted deterministically by 8 mm along x, no symmetrization, no dithering -> biased peak;
  B. the same data, symmetrized (48 cube rotations/flips on both patches) -> two modes near ±8 mm;
  C. data misregistered by U{1,5} mm and U{-0.1,0.1} rad, symmetrized and dithered (m = 100,
     σ² = 10 mm²) -> one mode near 0.

Train subjects: seeds 100..100+N-1; test subject: seed 9000 (distinct deformation and jitter).
``--source icbm-t1-gm`` makes the subjects from the 1 mm ICBM 2009a T1 instead (moving: its gradient
magnitude, the modality of experiment 3) and trains at 1 mm: sharper images than the 2 mm SPM averages.

    python benchmarks/ablations/learned_metric_experiment1.py --train 4 --epochs 4 --figure docs/figures/metric_experiment1.png
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.signal import find_peaks

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from DeepRegistrationLib.data.corpus_pairs import metric_case  # noqa: E402
from results_json import default_path, write_results  # noqa: E402

from DeepRegistrationLib.core.transforms import RigidTransform  # noqa: E402
from DeepRegistrationLib.data import sources  # noqa: E402
from DeepRegistrationLib.data.synthetic import random_rigid  # noqa: E402
from DeepRegistrationLib.rigid.response_functions import build_metrics, response_functions, write_response_csv  # noqa: E402
from DeepRegistrationLib.training.common import Distributed  # noqa: E402
from DeepRegistrationLib.training.metric_trainer import MetricTrainer, MetricTrainingConfig, PairData  # noqa: E402
from DeepRegistrationLib.viz.response_plot import save_response_plot  # noqa: E402


def shift_x_8mm(rng, centre):
    return RigidTransform(np.zeros(3), [8.0, 0.0, 0.0], centre)


def small_random(rng, centre):
    return random_rigid(rng, centre, (1.0, 5.0), 0.1)


def no_misregistration(rng, centre):
    return RigidTransform(center_mm=centre)


CASES = [
    ("A: 8 mm x-shift, no augmentation", shift_x_8mm, False, 1, 0.0),
    ("B: 8 mm x-shift, symmetrized", shift_x_8mm, True, 1, 0.0),
    ("C: U{1,5} mm / U{-0.1,0.1} rad, symmetrized + dithered (m=100, σ²=10)", small_random, True, 100, 10.0),
]


#: a mode must stand out from its surroundings by this fraction of the curve's range
PEAK_PROMINENCE = 0.05


def local_maxima(rows, metric, parameter) -> list:
    pts = sorted((r["offset"], r["value"]) for r in rows if r["metric"] == metric and r["parameter"] == parameter)
    x, y = np.array(pts).T
    peaks, _ = find_peaks(np.concatenate([[-np.inf], y, [-np.inf]]), prominence=PEAK_PROMINENCE * (y.max() - y.min()))
    return [float(x[p - 1]) for p in peaks]


SOURCES = {  # name: (fixed template, moving template, metric_subjects task, level spacing in mm, description)
    "spm-t1-t2": (lambda: sources.spm_avg152("T1"), lambda: sources.spm_avg152("T2"), "t1-t2", 2.0,
                  "SPM avg152 T1 (fixed) / T2 (moving)"),
    "icbm-t1-gm": (lambda: sources.icbm152("t1"), lambda: None, "t1-gm", 1.0,
                   "ICBM 2009a T1 (fixed) / its gradient magnitude (moving), 1 mm"),
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train", type=int, default=4, help="training subjects")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--pairs-per-epoch", type=int, default=4096)
    p.add_argument("--source", choices=list(SOURCES), default="spm-t1-t2", help="subjects' template and modalities")
    p.add_argument("--cases", default="ABC", help="which of the cases A, B, C to run (default all)")
    p.add_argument("--min-negative-distance-mm", type=float, default=None,
                   help="closest negative patch centre (default: half the patch extent, as train-metric)")
    p.add_argument("--out", default="/tmp/metric_experiment1")
    p.add_argument("--figure", default="docs/figures/metric_experiment1.png")
    p.add_argument("--json", help="results file (default benchmarks/results/learned_metric_experiment1_<source>.json)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    fixed_source, moving_source, task, spacing, description = SOURCES[args.source]
    t1, t2 = fixed_source(), moving_source()
    test_fixed, test_moving, _ = metric_case(t1, t2, task, 9000, None, None, no_misregistration)
    out = Path(args.out)
    panels, table = [], []
    for name, rigid, symmetrize, m, var in [c for c in CASES if c[0][0] in args.cases.upper()]:
        t0 = time.perf_counter()
        pairs = []
        for i in range(args.train):
            f, mv, _ = metric_case(t1, t2, task, 100 + i, None, None, rigid)
            pairs.append(PairData(f, mv, name=f"train subject {100 + i}"))
        config = MetricTrainingConfig(stages=((spacing, var),), patch_size=17, channels=(8, 16, 16), learning_rate=1e-3,
                                      weight_decay=1e-4, epochs=args.epochs, pairs_per_epoch=args.pairs_per_epoch,
                                      dithers_per_location=m, symmetrize=symmetrize, realign_after_last_stage=False,
                                      min_negative_distance_mm=args.min_negative_distance_mm,
                                      description=f"experiment 1 case {name}")
        model = out / f"case_{name[0]}.pt"
        MetricTrainer(pairs, config, model, None, Distributed(), show_progress=False).train()
        metrics = build_metrics(f"cnn:{model}", test_fixed, test_moving, patches=64, device="cpu")
        for metric in metrics:
            metric.label = name
        rows = response_functions(metrics, RigidTransform(center_mm=t1.grid.center_physical()), 20.0, 15.0, 41,
                                  parameters=("tx", "ty", "rx"))
        write_response_csv(rows, out / f"case_{name[0]}_response.csv")
        panels.append((name, rows))
        table.append((name, local_maxima(rows, name, "tx"), local_maxima(rows, name, "ty"), local_maxima(rows, name, "rx"),
                      time.perf_counter() - t0))
    save_response_plot([], args.figure, "Experiment 1: response on an aligned unseen test subject (64 patches)",
                       panels=panels)
    print(f"Data: {description} subjects (smooth random deformation + intensity jitter); "
          f"train subjects seeds 100..{99 + args.train}, test subject seed 9000 (aligned, unseen).")
    nearest = ("half the patch extent" if args.min_negative_distance_mm is None
               else f"{args.min_negative_distance_mm:g} mm")
    print(f"Training per case: 1 stage, {spacing:g} mm, 17³ patches, {args.epochs} epochs × {args.pairs_per_epoch} pairs; "
          f"negatives at least {nearest} away.\n")
    print("| case | modes of tx response (mm) | modes of ty response (mm) | modes of rx response (deg) | seconds |")
    print("|---|---|---|---|---|")
    for name, tx, ty, rx, sec in table:
        print(f"| {name} | {', '.join(f'{v:+.0f}' for v in tx)} | {', '.join(f'{v:+.0f}' for v in ty)} | "
              f"{', '.join(f'{v:+.1f}' for v in rx)} | {sec:.0f} |")
    print(f"\nfigure: {args.figure}")
    write_results(args.json or default_path(f"learned_metric_experiment1_{args.source.replace('-', '_')}"),
                  "benchmarks/ablations/learned_metric_experiment1.py",
                  f"{description} subjects; train seeds 100..{99 + args.train}, test subject seed 9000 (aligned, unseen)",
                  [{"case": name, "modes_tx_mm": [float(v) for v in tx], "modes_ty_mm": [float(v) for v in ty],
                    "modes_rx_deg": [float(v) for v in rx], "seconds": sec} for name, tx, ty, rx, sec in table],
                  source=args.source, train_subjects=args.train, epochs=args.epochs,
                  pairs_per_epoch=args.pairs_per_epoch, figure=args.figure)
    return 0


if __name__ == "__main__":
    sys.exit(main())
