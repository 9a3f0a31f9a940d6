"""Deformable models on same-subject pairs of one corpus split under known diffeomorphisms: displacement error and
tissue Dice before and after, folding; for model selection (``--split validation``) and report (``--split test``).

For every subject of the split with tissue classes (data.corpus: test colin27 and itk-kmeans, validation
robex-atlas), ``--cases`` pairs: the subject's T1 on a 2 mm grid (normalized p1-p99) is the fixed image; the moving
image is it under a known random diffeomorphism ψ = exp(v) (SynthMorph's SVF as data.synthesis draws it, 16 mm control
spacing, σ ~ U(0.5, 1) × ``--velocity-std-mm``, seed ``[seed, case]``) plus 2 % noise; the true fixed->moving map is
ψ⁻¹ = exp(−v), known everywhere. Each
``--model`` registers every pair through ``api.register`` (network only where a method has instance optimization:
``iterations=0`` is passed when the method takes it). Errors: mean |φ_est(x) − φ_true(x)| over the subject's brain
voxels (mm), Dice of the tissue classes (CSF, GM, WM mean) of the moving labels warped back, % voxels with
det J ≤ 0. One row per pair; the per-subject means are printed, with the split named.

    python benchmarks/deformable_corpus_evaluation.py --method diffeo --split test --model diffeo_brain_t1 \
        --model /tmp/new.pt --json /tmp/diffeo_test.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch

from DeepRegistrationLib.api import register
from DeepRegistrationLib.core.jacobian import jacobian_determinant
from DeepRegistrationLib.core.transforms import DisplacementField
from DeepRegistrationLib.core.warp import physical_grid_points, warp
from DeepRegistrationLib.data import corpus, synthesis
from DeepRegistrationLib.data.synthetic import bspline_field, scaling_and_squaring
from DeepRegistrationLib.deformable.model_input import normalize_intensity, resample_to
from DeepRegistrationLib.methods import SPECS
from DeepRegistrationLib.metrics.evaluation import dice_per_label

SPACING_MM = 2.0
#: the T1 image of each subject the evaluation registers (2 mm where the subject has one)
T1_IMAGE = {"colin27": "spm_t1"}


def subject_pairs(split: str, cases: int, seed: int, velocity_std_mm: float):
    """(subject, case, fixed, moving, fixed labels, moving labels, true fixed->moving map) of the split."""
    settings = synthesis.SynthesisSettings()
    for s in corpus.subjects(split):
        if "tissue" not in s.labels or not s.images:
            continue
        t1 = corpus.load_image(s.id, T1_IMAGE.get(s.id, s.images[0]))
        grid = t1.grid.with_spacing([SPACING_MM] * 3)
        fixed = resample_to(t1, grid)
        fixed = fixed.with_array(normalize_intensity(fixed.array))
        labels = warp(corpus.load_labels(s.id, "tissue"), grid, mode="nearest")
        for k in range(cases):
            rng = np.random.default_rng([seed, k])
            sigma = rng.uniform(0.5, 1.0) * velocity_std_mm
            v = bspline_field(grid, settings.velocity_spacing_mm, lambda n: rng.normal(0.0, sigma, n))
            psi = scaling_and_squaring(v)                   # moving(x) = fixed(ψ(x)), ψ = exp(v)
            true = scaling_and_squaring(DisplacementField(-v.displacement_mm, grid))   # ψ⁻¹ = exp(−v)
            moving = warp(fixed, grid, psi)
            moving = moving.with_array(np.clip(moving.array + rng.normal(0, 0.02, moving.array.shape)
                                               .astype(np.float32), 0, 1))
            yield s.id, k, fixed, moving, labels, warp(labels, grid, psi, mode="nearest"), true


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--method", choices=("diffeo", "dirnet", "deepsim"), required=True)
    p.add_argument("--split", choices=("validation", "test"), required=True)
    p.add_argument("--model", action="append", required=True)
    p.add_argument("--cases", type=int, default=2)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--velocity-std-mm", type=float, default=3.0,
                   help="SVF control values ~ N(0, σ²), σ ~ U(0.5, 1) × this (default %(default)s)")
    p.add_argument("--json")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    network_only = {"iterations": 0} if any(o.name == "iterations" for o in SPECS[args.method].options) else {}
    rows = []
    for sid, k, fixed, moving, labels, moving_labels, true in subject_pairs(args.split, args.cases, args.seed, args.velocity_std_mm):
        brain = labels.array > 0
        pts = physical_grid_points(fixed.grid, dtype=torch.float64).numpy()[brain]
        ident = np.linalg.norm(true.transform_points(pts) - pts, axis=1).mean()
        row = {"subject": sid, "case": k, "before": {"displacement_error_mm": float(ident),
                                                     "dice": _dice(labels, moving_labels)}}
        for model in args.model:
            t0 = time.perf_counter()
            result = register(fixed, moving, args.method, "cpu", models=[model], **network_only)
            seconds = time.perf_counter() - t0
            err = np.linalg.norm(result.transform.transform_points(pts) - true.transform_points(pts), axis=1).mean()
            det = jacobian_determinant(DisplacementField.from_transform(result.transform, fixed.grid))
            row[model] = {"displacement_error_mm": float(err), "seconds": seconds,
                          "dice": _dice(labels, warp(moving_labels, fixed.grid, result.transform, mode="nearest")),
                          "folding_percent": float(100 * (det <= 0).mean())}
        rows.append(row)
        print(f"{sid} case {k}: before {row['before']['displacement_error_mm']:.2f} mm / Dice "
              f"{row['before']['dice']:.3f}; " + "; ".join(
                  f"{m}: {row[m]['displacement_error_mm']:.2f} mm / {row[m]['dice']:.3f}" for m in args.model),
              flush=True)
    print(f"\n{args.method}, corpus {args.split} split, {len(rows)} same-subject pairs (seed {args.seed}), network only:")
    print("| model | displacement error mean (mm) | tissue Dice mean | folding % max | per subject (mm / Dice) | s |")
    print("|---|---|---|---|---|---|")
    for m in ["before"] + args.model:
        e = [r[m]["displacement_error_mm"] for r in rows]
        d = [r[m]["dice"] for r in rows]
        subj = ", ".join(f"{s} {np.mean([r[m]['displacement_error_mm'] for r in rows if r['subject'] == s]):.2f}/"
                         f"{np.mean([r[m]['dice'] for r in rows if r['subject'] == s]):.3f}"
                         for s in sorted({r["subject"] for r in rows}))
        fold = "–" if m == "before" else f"{max(r[m]['folding_percent'] for r in rows):.3f}"
        sec = "–" if m == "before" else f"{np.mean([r[m]['seconds'] for r in rows]):.1f}"
        print(f"| {m} | {np.mean(e):.2f} | {np.mean(d):.3f} | {fold} | {subj} | {sec} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"method": args.method, "split": args.split, "seed": args.seed, "rows": rows}, f, indent=1)
    return 0


def _dice(a, b) -> float:
    return float(np.mean([v for k, v in dice_per_label(a.array, b.array, labels=(1, 2, 3)).items()]))


if __name__ == "__main__":
    sys.exit(main())
