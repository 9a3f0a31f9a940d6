"""Rigid multimodal accuracy: our NMI/Powell vs SimpleITK's Mattes MI, on random misregistrations.

Tasks (all fixed = T1): T1<->T2 and T1<->PD from the SPM avg152 templates (2 mm, exactly aligned),
T1<->gradient magnitude from the nilearn ICBM 2009a T1 (resampled to 2 mm). Each case: the moving
image is displaced by a rigid transform from Sedghi et al.'s distribution (|t_i| ~ U[1, 20] mm with
random sign, θ_i ~ U[-0.2, 0.2] rad) and registered back: by SimpleITK from the identity, and by ``nmi``
twice, with its default call (coarse rotation search, the NMI pyramid, the confidence) and with the
registration alone from the identity (``init=none``, ``confidence=False``). Errors as Sedghi et al.'s
Table 1; mean ± sd over the cases. ``--data validation`` runs the same cases on each validation subject of the
corpus against its gradient magnitude, where the objective's settings are chosen. Times in the same run, each with ``--threads`` threads (torch's and
SimpleITK's): the transform (our report's ``seconds_method``; SimpleITK's whole call, which computes only
the transform) and our whole call (which adds the QA report and the resampled image); the ratios per task
compare the transforms. Results: benchmarks/results/rigid_nmi_accuracy.json.

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
from DeepRegistrationLib.data import corpus, sources
from DeepRegistrationLib.data.synthetic import gradient_magnitude, random_rigid
from DeepRegistrationLib.metrics.evaluation import rigid_errors
from DeepRegistrationLib.rigid.pyramid import downsample

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from baselines import register_sitk_mattes  # noqa: E402
from results_json import add_json_argument, write_results  # noqa: E402

COLUMNS = ("t_norm_mm", "t_x_mm", "t_y_mm", "t_z_mm", "theta_x_deg", "theta_y_deg", "theta_z_deg")


def tasks(data: str):
    """The reported tasks (``templates``), or each validation subject's image against its gradient magnitude
    (``validation``: the corpus split that chooses the objective's settings)."""
    if data == "validation":
        images = {f"{s.id} {s.images[0].upper()}-GM": corpus.load_image(s.id) for s in corpus.subjects("validation")}
        return {name: (image, gradient_magnitude(image)) for name, image in images.items()}
    t1, t2, pd = (sources.spm_avg152(m) for m in ("T1", "T2", "PD"))
    icbm = downsample(sources.icbm152("t1"), 2)
    return {"T1-T2 (SPM avg152)": (t1, t2), "T1-PD (SPM avg152)": (t1, pd),
            "T1-GM (ICBM152 T1, 2 mm)": (icbm, gradient_magnitude(icbm))}


def fmt_stats(stats: dict) -> str:
    return f"{stats['mean']:.2f} ± {stats['sd']:.2f}" if stats["sd"] is not None else f"{stats['mean']:.2f}"


#: Our two calls: the default one (coarse rotation search first, confidence estimated after), and the
#: registration alone from the identity, as SimpleITK's is set up here.
OURS = {"NMI (ours, default call)": {},
        "NMI (ours, registration alone)": {"init": "none", "confidence": False}}
THEIRS = "SimpleITK Mattes MI (RSGD)"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=20)
    parser.add_argument("--seed", type=int, default=2018)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="torch and SimpleITK threads")
    parser.add_argument("--tasks", default="all", help="comma-separated prefixes of task names (default all)")
    parser.add_argument("--data", choices=("templates", "validation"), default="templates",
                        help="the reported template tasks, or the validation subjects against their gradient magnitude")
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                        help="an nmi option for both of our calls (as `register --param`), e.g. bins=32")
    add_json_argument(parser, "rigid_nmi_accuracy")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(args.threads)
    options = dict(p.split("=", 1) for p in args.param)
    record, cases = [], []
    for name, (fixed, moving_aligned) in tasks(args.data).items():
        if args.tasks != "all" and not any(name.startswith(t) for t in args.tasks.split(",")):
            continue
        rng = np.random.default_rng(args.seed)
        res, times, transform_times = ({m: [] for m in (*OURS, THEIRS)} for _ in range(3))
        for i in range(args.cases):
            true = random_rigid(rng, fixed.grid.center_physical())
            moving = warp(moving_aligned, moving_aligned.grid, true.inverse())
            for method in (*OURS, THEIRS):
                t0 = time.perf_counter()
                if method == THEIRS:
                    transform = register_sitk_mattes(fixed, moving)
                    transform_times[method].append(time.perf_counter() - t0)
                else:
                    result = register(fixed, moving, "nmi", args.device, **options, **OURS[method])
                    transform = result.transform
                    transform_times[method].append(result.report["seconds_method"])
                times[method].append(time.perf_counter() - t0)
                res[method].append(rigid_errors(transform, true))
            cases.append({"task": name, "case": i, **{m: {**res[m][-1], "seconds": times[m][-1],
                                                          "seconds_transform": transform_times[m][-1]} for m in res}})
            print(f"{name} case {i}: " + ", ".join(f"{m} {res[m][-1]['t_norm_mm']:.2f} mm {times[m][-1]:.1f} s"
                                                  for m in res), flush=True)
        for method, errs in res.items():
            record.append({"task": name, "method": method, "cases": len(errs), "seconds_per_case": float(np.mean(times[method])),
                           "seconds_transform_per_case": float(np.mean(transform_times[method])),
                           "recovered_below_2mm_percent": float(100 * np.mean([e["t_norm_mm"] < 2.0 for e in errs])),
                           **{c: {"mean": float(np.mean([e[c] for e in errs])),
                                  "sd": float(np.std([e[c] for e in errs], ddof=1)) if len(errs) > 1 else None}
                              for c in COLUMNS}})
    header = (f"cases per task: {args.cases}, seed {args.seed}, device {args.device}, torch and SimpleITK threads "
              f"{args.threads}, CPU: {platform.processor() or platform.machine()}")
    lines = [header,
             "| task | method | ‖Δt‖ mm | Δt_x | Δt_y | Δt_z | Δθ_x ° | Δθ_y ° | Δθ_z ° | ‖Δt‖ < 2 mm | s / case: transform / whole call |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in record:
        lines.append(f"| {row['task']} | {row['method']} | " + " | ".join(fmt_stats(row[c]) for c in COLUMNS)
                     + f" | {row['recovered_below_2mm_percent']:.0f} % | {row['seconds_transform_per_case']:.1f} / "
                     f"{row['seconds_per_case']:.1f} |")
    seconds = {(row["task"], row["method"]): row["seconds_transform_per_case"] for row in record}
    ratios = {m: {task: seconds[task, THEIRS] / seconds[task, m] for task, method in seconds if method == m}
              for m in OURS}
    for m, by_task in ratios.items():
        lines.append(f"\ntime ratio SimpleITK / {m}, transforms, per task (above 1: ours is faster): " +
                     ", ".join(f"{k}: {v:.2f}" for k, v in by_task.items()))
    print("\n".join(lines))
    data = ("SPM avg152 T1/T2/PD (2 mm) and the ICBM 2009a T1 at 2 mm with its gradient magnitude"
            if args.data == "templates" else "the corpus validation subjects against their gradient magnitude")
    write_results(args.json, "benchmarks/accuracy/rigid_nmi_accuracy.py",
                  f"{data}; {args.cases} random rigid misregistrations per task (seed {args.seed}), no training involved",
                  record, seed=args.seed, device=args.device, threads=args.threads, nmi_options=options,
                  time_ratio_sitk_over_ours=ratios, cases=cases)


if __name__ == "__main__":
    main()
