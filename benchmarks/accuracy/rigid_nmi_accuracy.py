"""Rigid multimodal accuracy: our NMI/Powell vs SimpleITK's Mattes MI, on random misregistrations.

Tasks (all fixed = T1): T1<->T2 and T1<->PD from the SPM avg152 templates (2 mm, exactly aligned),
T1<->gradient magnitude from the nilearn ICBM 2009a T1 (resampled to 2 mm). Each case: the moving
image is displaced by a rigid transform from Sedghi et al.'s distribution (|t_i| ~ U[1, 20] mm with
random sign, θ_i ~ U[-0.2, 0.2] rad) and registered back from identity. Errors as Sedghi et al.'s
Table 1; mean ± sd over the cases; wall times of both in the same run, each with ``--threads`` threads
(torch's and SimpleITK's), as a ratio per task. Results: benchmarks/results/rigid_nmi_accuracy.json.

    python benchmarks/accuracy/rigid_nmi_accuracy.py --cases 20 --threads 2
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from DeepRegistrationLib.api import register
from DeepRegistrationLib.core.warp import warp
from DeepRegistrationLib.data import sources
from DeepRegistrationLib.data.synthetic import gradient_magnitude, random_rigid
from DeepRegistrationLib.metrics.evaluation import rigid_errors
from DeepRegistrationLib.rigid.pyramid import downsample

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from baselines import register_sitk_mattes  # noqa: E402
from results_json import add_json_argument, write_results  # noqa: E402

COLUMNS = ("t_norm_mm", "t_x_mm", "t_y_mm", "t_z_mm", "theta_x_deg", "theta_y_deg", "theta_z_deg")


def tasks():
    t1, t2, pd = (sources.spm_avg152(m) for m in ("T1", "T2", "PD"))
    icbm = downsample(sources.icbm152("t1"), 2)
    return {"T1-T2 (SPM avg152)": (t1, t2), "T1-PD (SPM avg152)": (t1, pd),
            "T1-GM (ICBM152 T1, 2 mm)": (icbm, gradient_magnitude(icbm))}


def fmt(values):
    a = np.asarray(values)
    return f"{a.mean():.2f} ± {a.std(ddof=1):.2f}" if len(a) > 1 else f"{a.mean():.2f}"


OURS, THEIRS = "NMI (ours, 60 bins, Powell)", "SimpleITK Mattes MI (RSGD)"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=20)
    parser.add_argument("--seed", type=int, default=2018)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="torch and SimpleITK threads")
    parser.add_argument("--tasks", default="all", help="comma-separated prefixes of task names (default all)")
    add_json_argument(parser, "rigid_nmi_accuracy")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(args.threads)
    rows, record, cases = [], [], []
    for name, (fixed, moving_aligned) in tasks().items():
        if args.tasks != "all" and not any(name.startswith(t) for t in args.tasks.split(",")):
            continue
        rng = np.random.default_rng(args.seed)
        res, times = {OURS: [], THEIRS: []}, {OURS: [], THEIRS: []}
        for i in range(args.cases):
            true = random_rigid(rng, fixed.grid.center_physical())
            moving = warp(moving_aligned, moving_aligned.grid, true.inverse())
            t0 = time.perf_counter()
            ours = register(fixed, moving, "nmi", args.device).transform
            times[OURS].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            theirs = register_sitk_mattes(fixed, moving)
            times[THEIRS].append(time.perf_counter() - t0)
            res[OURS].append(rigid_errors(ours, true))
            res[THEIRS].append(rigid_errors(theirs, true))
            cases.append({"task": name, "case": i, "ours": {**res[OURS][-1], "seconds": times[OURS][-1]},
                          "sitk": {**res[THEIRS][-1], "seconds": times[THEIRS][-1]}})
            print(f"{name} case {i}: ours {res[OURS][-1]['t_norm_mm']:.2f} mm {times[OURS][-1]:.1f} s, "
                  f"SimpleITK {res[THEIRS][-1]['t_norm_mm']:.2f} mm {times[THEIRS][-1]:.1f} s", flush=True)
        for method, errs in res.items():
            record.append({"task": name, "method": method, "cases": len(errs), "seconds_per_case": float(np.mean(times[method])),
                           "recovered_below_2mm_percent": float(100 * np.mean([e["t_norm_mm"] < 2.0 for e in errs])),
                           **{c: {"mean": float(np.mean([e[c] for e in errs])),
                                  "sd": float(np.std([e[c] for e in errs], ddof=1)) if len(errs) > 1 else None}
                              for c in COLUMNS}})
            rows.append((name, method, [fmt([e[c] for e in errs]) for c in COLUMNS], np.mean(times[method]),
                         100 * np.mean([e["t_norm_mm"] < 2.0 for e in errs])))
    header = (f"cases per task: {args.cases}, seed {args.seed}, device {args.device}, torch and SimpleITK threads "
              f"{args.threads}, CPU: {platform.processor() or platform.machine()}")
    lines = [header,
             "| task | method | ‖Δt‖ mm | Δt_x | Δt_y | Δt_z | Δθ_x ° | Δθ_y ° | Δθ_z ° | ‖Δt‖ < 2 mm | s / case |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, method, cols, sec, ok in rows:
        lines.append(f"| {name} | {method} | " + " | ".join(cols) + f" | {ok:.0f} % | {sec:.1f} |")
    by_task = {}
    for name, _, _, sec, _ in rows:
        by_task.setdefault(name, []).append(sec)
    ratios = {k: v[1] / v[0] for k, v in by_task.items()}
    lines.append("\nwall-time ratio SimpleITK / ours per task (above 1: ours is faster): " +
                 ", ".join(f"{k}: {v:.2f}" for k, v in ratios.items()))
    print("\n".join(lines))
    write_results(args.json, "benchmarks/accuracy/rigid_nmi_accuracy.py",
                  "SPM avg152 T1/T2/PD (2 mm) and the ICBM 2009a T1 at 2 mm with its gradient magnitude; "
                  f"{args.cases} random rigid misregistrations per task (seed {args.seed}), no training involved",
                  record, seed=args.seed, device=args.device, threads=args.threads,
                  time_ratio_sitk_over_ours=ratios, cases=cases)


if __name__ == "__main__":
    main()
