"""Instance optimization (IO) of the learned deformable methods on real heads no bundled model was trained on.

Cases: two real head T1s (with skull) that no training step of the bundled models used: ITK's KmeansTest
subject (with its 6-class tissue segmentation) and Colin27 (with the AAL labels), each resampled to 2 mm
and warped by a known smooth diffeomorphism (data.synthetic.smooth_random_field: B-spline velocity,
control spacing 24 mm, |c| <= 4 mm, integrated by scaling and squaring), plus a small intensity change
(gamma 0.9-1.1, 1 % noise). Pairs: (fixed = the subject under the deformation φ_true, moving = the
subject), so the transform a registration should find (fixed to moving points) is φ_true itself.

For each pair and method (``diffeo``, ``dirnet``, ``deepsim`` with and without IO, i.e. their defaults and
``iterations=0``) and SimpleITK's diffeomorphic demons (symmetric forces, histogram matching, 3 levels
4/2/1, 50 iterations each, σ 1.5 voxels) timed in the same run:
- displacement error: mean over the labelled voxels (tissue classes / AAL regions) of |φ(x) − φ_true(x)| mm;
- tissue Dice: mean Dice over the label classes of the fixed labels and the moving labels (the labels
  under the true deformation, nearest neighbour) resampled with the estimated transform;
- folding: % voxels with det J <= 0, forward and (methods with an inverse) inverse;
- wall time of the whole ``register`` call (demons: one direction).

    python benchmarks/accuracy/instance_optimization.py --out benchmarks/results/instance_optimization.json

The machine may be shared; times are from one run, ours and demons' side by side.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from DeepRegistrationLib.api import register
from DeepRegistrationLib.core.image import Image
from DeepRegistrationLib.core.jacobian import jacobian_determinant
from DeepRegistrationLib.core.transforms import DisplacementField
from DeepRegistrationLib.core.warp import warp
from DeepRegistrationLib.data import sources
from DeepRegistrationLib.data.synthetic import intensity_jitter, smooth_random_field
from DeepRegistrationLib.core.network_input import resample_to
from DeepRegistrationLib.metrics.evaluation import dice_per_label

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from baselines import sitk_demons  # noqa: E402

SPACING = 2.0


def itk_subject():
    """The KmeansTest T1 and its 6-class segmentation (labels 2-6 are tissue classes; 0-1 background)."""
    t1 = sources.itk_brain_t1(with_segmentation=False)
    # sources.itk_brain_t1() looks for ..._T1UCharRaw_PrelimSegmentation.nii.gz; the package ships the
    # segmentation as KmeansTest_T1KmeansPrelimSegmentation.nii.gz
    seg = Image.from_sitk(sitk.ReadImage(str(sources._debian_file(
        sources.ITK_EXAMPLES, "KmeansTest_T1KmeansPrelimSegmentation.nii.gz", "insighttoolkit5-examples"))))
    return t1, seg, [2, 3, 4, 5, 6]


def colin_subject():
    t1, aal = sources.colin27()
    return t1, aal, [int(v) for v in np.unique(aal.array) if v > 0]


SUBJECTS = {"itk-kmeans": itk_subject, "colin27": colin_subject}


def make_case(name: str, seed: int) -> dict:
    t1, labels, classes = SUBJECTS[name]()
    grid = t1.grid.with_spacing([SPACING] * 3)
    moving = resample_to(t1, grid)
    moving_labels = warp(labels, grid, mode="nearest")
    rng = np.random.default_rng(seed)
    truth = smooth_random_field(grid, rng, max_displacement_mm=4.0)     # the fixed image is moving∘truth
    fixed = intensity_jitter(warp(moving, grid, truth), rng, (0.9, 1.1), 0.01)
    return {"name": name, "fixed": fixed, "moving": moving, "fixed_labels": warp(moving_labels, grid, truth, mode="nearest"),
            "moving_labels": moving_labels, "truth": truth, "classes": classes}


def folding_percent(transform, grid) -> float:
    det = jacobian_determinant(DisplacementField.from_transform(transform, grid))
    return float(100.0 * np.mean(det <= 0))


def evaluate(case: dict, transform, inverse=None) -> dict:
    grid = case["fixed"].grid
    inside = np.isin(case["fixed_labels"].array, case["classes"])
    est = DisplacementField.from_transform(transform, grid).displacement_mm
    error = np.linalg.norm(est - case["truth"].displacement_mm, axis=-1)[inside]
    warped_labels = warp(case["moving_labels"], grid, transform, mode="nearest").array
    dice = dice_per_label(case["fixed_labels"].array, warped_labels, case["classes"])
    out = {"displacement_error_mm": float(error.mean()),
           "tissue_dice": float(np.nanmean([dice[c] for c in case["classes"]])),
           "folding_percent_forward": folding_percent(transform, grid)}
    if inverse is not None:
        out["folding_percent_inverse"] = folding_percent(inverse, case["moving"].grid)
    return out


def before(case: dict) -> dict:
    grid = case["fixed"].grid
    inside = np.isin(case["fixed_labels"].array, case["classes"])
    dice = dice_per_label(case["fixed_labels"].array, case["moving_labels"].array, case["classes"])
    return {"displacement_error_mm": float(np.linalg.norm(case["truth"].displacement_mm, axis=-1)[inside].mean()),
            "tissue_dice": float(np.nanmean([dice[c] for c in case["classes"]])), "grid": grid.to_dict()}


def run_method(case: dict, method: str, params: dict) -> dict:
    t0 = time.perf_counter()
    result = register(case["fixed"], case["moving"], method, **params)
    seconds = time.perf_counter() - t0
    out = {**evaluate(case, result.transform, result.inverse), "seconds": seconds,
           "warnings": result.report.get("warnings", [])}
    io = result.report.get("instance_optimization")
    if io:
        out["instance_optimization"] = {"iterations_done": io["iterations_done"], "seconds": io["seconds"],
                                        "stages": [{k: s[k] for k in ("shape_zyx", "iterations_done", "seconds",
                                                                      "stopped")} | {"loss_first_last": [s["loss"][0], s["loss"][-1]] if s["loss"] else []}
                                                   for s in io["stages"]]}
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subjects", default="itk-kmeans,colin27")
    parser.add_argument("--methods", default="diffeo,dirnet,deepsim")
    parser.add_argument("--param", action="append", default=[], metavar="METHOD:KEY=VALUE",
                        help="an option for one method's IO runs (e.g. diffeo:iterations=20)")
    parser.add_argument("--no-demons", action="store_true")
    parser.add_argument("--no-network-only", action="store_true")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", default="benchmarks/results/instance_optimization.json")
    args = parser.parse_args()
    extra = {}
    for item in args.param:
        method, kv = item.split(":", 1)
        key, value = kv.split("=", 1)
        extra.setdefault(method, {})[key] = value
    rows = []
    for k, name in enumerate(args.subjects.split(",")):
        case = make_case(name, args.seed + k)
        row = {"subject": name, "before": before(case)}
        print(f"\n{name}: {case['fixed'].grid.size} voxels at {SPACING} mm; before: error "
              f"{row['before']['displacement_error_mm']:.3f} mm, Dice {row['before']['tissue_dice']:.3f}")
        if not args.no_demons:
            t0 = time.perf_counter()
            field = sitk_demons(case["fixed"], case["moving"], symmetric=True)
            row["demons"] = {**evaluate(case, field), "seconds": time.perf_counter() - t0}
            print(f"  demons            : {_line(row['demons'])}")
        for method in args.methods.split(","):
            variants = [("io", extra.get(method, {}))] + ([] if args.no_network_only else [("network", {"iterations": 0})])
            for variant, params in variants:
                r = run_method(case, method, params)
                row[f"{method}/{variant}"] = {**r, "params": params}
                print(f"  {method + '/' + variant:18s}: {_line(r)}")
                for w in r["warnings"]:
                    print(f"      warning: {w}")
        rows.append(row)
        write_results(Path(args.out), rows)             # after every subject, so a cut-short run keeps its rows
    print(f"\nwrote {args.out}")


def write_results(out: Path, rows: list) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"benchmark": "instance_optimization", "command": " ".join(["python"] + sys.argv),
                               "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} "
                                          "torch threads; shared with other jobs", "rows": rows}, indent=1))


def _line(r: dict) -> str:
    inv = f"/{r['folding_percent_inverse']:.4f}" if "folding_percent_inverse" in r else ""
    io = r.get("instance_optimization")
    io_text = f", IO {io['iterations_done']} it {io['seconds']:.1f} s" if io else ""
    return (f"error {r['displacement_error_mm']:.3f} mm, Dice {r['tissue_dice']:.3f}, folding "
            f"{r['folding_percent_forward']:.4f}{inv} %, {r['seconds']:.1f} s{io_text}")


if __name__ == "__main__":
    main()
