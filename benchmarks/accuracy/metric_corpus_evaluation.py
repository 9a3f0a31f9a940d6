"""Rigid registration error of metric sets (and NMI) on corpus cases of one split: the learned metric's selection
(``--split validation``) and report (``--split test``) figures of issue 35.

Cases come from ``data.corpus_pairs.corpus_metric_cases`` (whole heads at 2 mm, one random diffeomorphism, each
image its own bias field, blur, gamma, resolution, noise and field of view; T1-T2: the subject's T2 or a T2-like
image of its tissue classes; T1-GM: the gradient magnitude of the fixed image), misregistered by Sedghi et al.'s
distribution of the task. ``--seed`` must differ from the training run's (its validation cases are aligned draws of
seed ``[seed, 1, k]``; these are ``[seed, split, k]`` of another seed). Every method registers every case from the
identity with ``api.register`` and its default options (the learned metric: the NMI start, then its stages), the
confidence estimate left out. Errors: ‖Δt‖ about the true centre (Sedghi et al.) and the TRE, the mean distance
between the estimated and true mapping of the fixed image's foreground voxels (every 4th voxel per axis). One
value per case; the per-subject means are printed too (several cases come from one subject).

    python benchmarks/accuracy/metric_corpus_evaluation.py --task t1-t2 --split validation --cases 4 \
        --model sedghi-t1-t2 --model /tmp/new.pt --json /tmp/val.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import wilcoxon

from DeepRegistrationLib.api import register
from DeepRegistrationLib.core.io import read_image, write_image
from DeepRegistrationLib.core.transforms import RigidTransform
from DeepRegistrationLib.data.corpus_pairs import METRIC_TASKS, corpus_metric_cases
from DeepRegistrationLib.metrics.evaluation import rigid_errors

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from results_json import default_path, write_results  # noqa: E402


def cached_cases(split: str, task: str, count: int, seed: int, cache) -> list:
    """:func:`corpus_metric_cases`, written to (and read back from) ``cache`` so other models can be measured on
    exactly the same cases without making them again."""
    if cache is None:
        return corpus_metric_cases(split, task, count, seed)
    folder = Path(cache) / f"{task}_{split}_{seed}"
    index = folder / "cases.json"
    if index.exists():
        records = json.loads(index.read_text())
        if len(records) >= count:
            return [(r["name"], read_image(folder / r["fixed"]), read_image(folder / r["moving"]),
                     RigidTransform(r["angles_rad"], r["translation_mm"], r["center_mm"])) for r in records[:count]]
    cases = corpus_metric_cases(split, task, count, seed)
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for k, (name, fixed, moving, true) in enumerate(cases):
        write_image(fixed, folder / f"case{k}_fixed.nii.gz")
        write_image(moving, folder / f"case{k}_moving.nii.gz")
        records.append({"name": name, "fixed": f"case{k}_fixed.nii.gz", "moving": f"case{k}_moving.nii.gz",
                        "angles_rad": true.angles_rad.tolist(), "translation_mm": true.translation_mm.tolist(),
                        "center_mm": true.center_mm.tolist()})
    index.write_text(json.dumps(records, indent=1))
    return cases


def foreground_points(fixed) -> np.ndarray:
    """Physical points (N, 3) of every 4th voxel whose intensity exceeds 10 % of the 99th percentile."""
    a = fixed.array
    idx = np.argwhere(a[::4, ::4, ::4] > 0.1 * np.percentile(a, 99)) * 4
    return np.stack([fixed.grid.index_to_physical(i[::-1].astype(float)) for i in idx])


def tre_mm(estimated, true, points: np.ndarray) -> float:
    return float(np.linalg.norm(estimated.transform_points(points) - true.transform_points(points), axis=1).mean())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", choices=list(METRIC_TASKS), required=True)
    p.add_argument("--split", choices=("validation", "test"), required=True)
    p.add_argument("--cases", type=int, default=4)
    p.add_argument("--seed", type=int, default=100)
    p.add_argument("--model", action="append", required=True, help="metric set (bundled name or file); repeatable")
    p.add_argument("--no-nmi", action="store_true", help="leave NMI out")
    p.add_argument("--max-evaluations", type=int, default=300)
    p.add_argument("--json", help="results file (default benchmarks/results/metric_corpus_<task>.json)")
    p.add_argument("--cache", help="folder to keep the cases in (made once, read by later runs)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    methods = ([] if args.no_nmi else [("nmi", "nmi", {"confidence": False})]) + [
        (m, "learned-metric", {"models": [m], "max_evaluations": args.max_evaluations, "confidence": False})
        for m in args.model]
    rows = []
    for name, fixed, moving, true in cached_cases(args.split, args.task, args.cases, args.seed, args.cache):
        points = foreground_points(fixed)
        row = {"case": name, "subject": name.split("/")[0],
               "initial_tre_mm": tre_mm(type(true)(center_mm=true.center_mm), true, points)}
        for label, method, options in methods:
            t0 = time.perf_counter()
            result = register(fixed, moving, method, "cpu", **options)
            row[label] = {"seconds": time.perf_counter() - t0, "tre_mm": tre_mm(result.transform, true, points),
                          **rigid_errors(result.transform, true)}
        rows.append(row)
        print(f"{name}: initial TRE {row['initial_tre_mm']:.2f} mm; "
              + "; ".join(f"{m[0]} {row[m[0]]['tre_mm']:.2f} mm" for m in methods), flush=True)
    print(f"\n{args.task}, corpus {args.split} split, {len(rows)} cases (seed {args.seed}):")
    print("| method | TRE mean (mm) | TRE max | ‖Δt‖ mean (mm) | cases TRE > 5 mm | per-subject TRE means | s / case |")
    print("|---|---|---|---|---|---|---|")
    subjects = sorted({r["subject"] for r in rows})
    for label, *_ in [("initial",)] + methods:
        get = (lambda r: r["initial_tre_mm"]) if label == "initial" else (lambda r: r[label]["tre_mm"])
        tre = np.array([get(r) for r in rows])
        per_subject = ", ".join(f"{s} {np.mean([get(r) for r in rows if r['subject'] == s]):.2f}" for s in subjects)
        dt = "–" if label == "initial" else f"{np.mean([r[label]['t_norm_mm'] for r in rows]):.2f}"
        sec = "–" if label == "initial" else f"{np.mean([r[label]['seconds'] for r in rows]):.1f}"
        print(f"| {label} | {tre.mean():.2f} | {tre.max():.2f} | {dt} | {int((tre > 5).sum())} | {per_subject} | {sec} |")
    summary = {label: {"tre_mean_mm": float(np.mean([r[label]["tre_mm"] for r in rows])),
                       "tre_max_mm": float(np.max([r[label]["tre_mm"] for r in rows])),
                       "failures_over_5mm": int(sum(r[label]["tre_mm"] > 5 for r in rows)),
                       "seconds_mean": float(np.mean([r[label]["seconds"] for r in rows]))}
               for label, *_ in methods}
    for label, *_ in methods:      # one value per subject: its cases are not independent samples
        summary[label]["tre_per_subject_mm"] = {s: float(np.mean([r[label]["tre_mm"] for r in rows
                                                                  if r["subject"] == s])) for s in subjects}
    if "nmi" in summary:
        for label, *_ in methods[1:]:
            diff = [summary[label]["tre_per_subject_mm"][s] - summary["nmi"]["tre_per_subject_mm"][s] for s in subjects]
            summary[label]["paired_vs_nmi_over_subjects"] = {
                "mean_difference_mm": float(np.mean(diff)), "n_subjects": len(diff),
                "wilcoxon_p": float(wilcoxon(diff).pvalue) if len(diff) > 1 and any(diff) else None}
    write_results(args.json or default_path(f"metric_corpus_{args.task.replace('-', '_')}"),
                  "metric_corpus_evaluation", f"corpus {args.split} split, {args.task}, {len(rows)} cases "
                  f"(seed {args.seed}): " + ", ".join(sorted({r['subject'] for r in rows})),
                  {"cases": rows, "summary": summary}, task=args.task, split=args.split, seed=args.seed,
                  models=args.model)
    return 0


if __name__ == "__main__":
    sys.exit(main())
