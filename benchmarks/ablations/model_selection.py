"""Choose between a deformable method's weights by registration error on validation subjects (never on test
subjects).

The validation loss of training is a proxy; this measures what a user gets.
Pairs: each validation-split subject of the corpus with a T1 (``--subjects``), resampled to 2 mm, against
itself under ``--pairs`` known smooth diffeomorphisms (the generator of deformable_evaluation.py: φ = exp(v),
v a cubic B-spline velocity at 24 mm, coefficients U(±6) mm, 1 % noise on each image; seeds 5000+k, apart
from the test evaluation's). Each candidate (a model of ``--method``) registers each pair, network alone
(``iterations=0``: the weights are what is being chosen) or with ``--param KEY=VALUE`` options, in both
directions: from one call where the method gives an inverse (``diffeo``), else from a second call with the
images swapped. Reported per candidate and pair: the mean displacement error (mm, inside the head) of
each direction and the folding voxels; the candidate with the lowest mean over pairs (one value per pair:
the mean of its two directions) is chosen. With ``--demons`` SimpleITK's diffeomorphic demons (as the
evaluation runs it) registers each pair in both directions as a reference row. Test-split
subjects are refused; a train-split subject may be given for tuning (say so where its numbers are used).
Results: ``--json`` (default benchmarks/results/METHOD_model_selection.json).

    OMP_NUM_THREADS=1 python benchmarks/ablations/model_selection.py --method diffeo \
        --candidate previous=PREVIOUS.pt --candidate bundled=diffeo_brain_t1
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from DeepRegistrationLib.api import register
from DeepRegistrationLib.data import corpus
from DeepRegistrationLib.models.model_file import read_metadata, resolve_model_path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "accuracy"))
from baselines import sitk_demons  # noqa: E402
from deformable_evaluation import direction_metrics, same_subject_pair  # noqa: E402
from results_json import default_path, write_results  # noqa: E402

SEED = 5000


def pair_error(pair: dict, method: str, model: str, options: dict) -> dict:
    """Displacement error and folding of both directions of ``method`` with ``model``."""
    result = register(pair["fixed"], pair["moving"], method, device="cpu", models=[model], **options)
    seconds = result.report["seconds_method"]
    inverse = result.inverse
    if inverse is None:
        swapped = register(pair["moving"], pair["fixed"], method, device="cpu", models=[model], **options)
        inverse, seconds = swapped.transform, seconds + swapped.report["seconds_method"]
    return both_directions(pair, result.transform, inverse, seconds)


def demons_error(pair: dict) -> dict:
    """The same for SimpleITK's demons, one call per direction."""
    t0 = time.perf_counter()
    forward, reverse = sitk_demons(pair["fixed"], pair["moving"]), sitk_demons(pair["moving"], pair["fixed"])
    return both_directions(pair, forward, reverse, time.perf_counter() - t0)


def both_directions(pair: dict, transform, inverse, seconds: float) -> dict:
    forward = direction_metrics(pair, transform, False)
    reverse = direction_metrics(pair, inverse, True)
    return {"forward_error_mm": forward["displacement_error_mm"], "reverse_error_mm": reverse["displacement_error_mm"],
            "error_mm": (forward["displacement_error_mm"] + reverse["displacement_error_mm"]) / 2,
            "folding_voxels": forward["folding_voxels"] + reverse["folding_voxels"],
            "seconds_method_both_directions": seconds}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--method", choices=("diffeo", "dirnet", "deepsim"), default="diffeo")
    p.add_argument("--candidate", action="append", required=True, metavar="NAME=MODEL",
                   help="a model file or bundled name of --method, labelled NAME")
    p.add_argument("--subjects", default="robex-atlas,mni305",
                   help="validation-split subjects with a T1 (a train-split one for tuning; test-split ones are refused)")
    p.add_argument("--demons", action="store_true", help="add SimpleITK demons' errors on the same pairs")
    p.add_argument("--pairs", type=int, default=2, help="known-deformation pairs per subject")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="options of every call, over iterations=0 (the network alone)")
    p.add_argument("--json", help="results file (default benchmarks/results/METHOD_model_selection.json)")
    args = p.parse_args()
    torch.set_num_threads(1)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    test = set(args.subjects.split(",")) & {s.id for s in corpus.subjects("test")}
    if test:
        p.error(f"test-split subjects are for the evaluation only: {', '.join(sorted(test))}")
    candidates = dict(c.split("=", 1) for c in args.candidate)
    options = {"iterations": "0", **dict(o.split("=", 1) for o in args.param)}
    pairs = [(s, k) for s in args.subjects.split(",") for k in range(args.pairs)]
    rows = []
    for subject, k in pairs:
        pair = same_subject_pair(subject, 2.0, SEED + k, 6.0)
        none = (direction_metrics(pair, None, False)["displacement_error_mm"]
                + direction_metrics(pair, None, True)["displacement_error_mm"]) / 2
        for name, model in candidates.items():
            row = {"pair": pair["name"], "candidate": name, "error_before_mm": none,
                   **pair_error(pair, args.method, model, options)}
            rows.append(row)
            print(row, flush=True)
        if args.demons:
            rows.append({"pair": pair["name"], "candidate": "demons (reference)", "error_before_mm": none,
                         **demons_error(pair)})
            print(rows[-1], flush=True)
    summary = {name: {"mean_error_mm": float(np.mean([r["error_mm"] for r in rows if r["candidate"] == name])),
                      "folding_voxels": int(sum(r["folding_voxels"] for r in rows if r["candidate"] == name)),
                      "model": str(resolve_model_path(model)),
                      "created": read_metadata(model).get("created")}
               for name, model in candidates.items()}
    chosen = min(summary, key=lambda n: summary[n]["mean_error_mm"])
    if args.demons:
        demons = [r for r in rows if r["candidate"] == "demons (reference)"]
        summary["demons (reference)"] = {"mean_error_mm": float(np.mean([r["error_mm"] for r in demons])),
                                         "folding_voxels": int(sum(r["folding_voxels"] for r in demons))}
    for name, s in summary.items():
        print(f"{name}: mean displacement error {s['mean_error_mm']:.3f} mm over {len(pairs)} pairs, "
              f"{s['folding_voxels']} folding voxels" + ("  <- chosen" if name == chosen else ""))
    write_results(args.json or default_path(f"{args.method}_model_selection"),
                  "benchmarks/ablations/model_selection.py",
                  f"{' and '.join(sorted({corpus.subject(s).split for s in args.subjects.split(',')}))} split: "
                  f"{', '.join(args.subjects.split(','))}, {args.pairs} known-deformation pairs each "
                  f"(seeds {SEED}+), 2 mm", {"rows": rows, "summary": summary, "chosen": chosen},
                  method=args.method, options=options, candidates=candidates)


if __name__ == "__main__":
    main()
