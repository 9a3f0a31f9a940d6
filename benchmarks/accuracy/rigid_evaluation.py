"""Rigid robustness: large misalignment (issue 35 item 5) and the confidence of every result (item 6).

Subjects (:func:`subjects`): the corpus's subjects of one split (``--split``; ``data/corpus.py``), each head
at 2 mm (or coarser) against itself with an intensity change (gamma + noise: unimodal) and against its
gradient magnitude (multimodal). Validation (MNI305, ROBEX's real head, dipy's T2 head) calibrates the
confidence's thresholds (``--calibrate``); test (Colin27, ITK's KmeansTest head) gives the reported figures.

Cases: per subject pair, ``--cases`` random rigid misalignments with a rotation of U[60°, 90°] about a
uniformly random axis (about the fixed image's centre) and an offset of U[30, 60] mm in a uniformly
random direction. The misalignment is put into the moving image's header (origin and direction), so the
moving head is whole and nothing is resampled. TRE: mean ‖T(x) − T_true(x)‖ over 2000 fixed foreground
points (Otsu). Recovered: TRE < 2 mm (unimodal), < 4 mm (multimodal).

Per case, in one run: ``nmi`` with ``init=search`` (the default), ``nmi`` with ``init=none`` (the failed
starts of the confidence set), SimpleITK Mattes MI with ``CenteredTransformInitializer`` (MOMENTS), and on
the first ``--ants-cases`` cases ANTs (antspyx ``affine_initializer``, then ``Rigid``).

Confidence: over every ``nmi`` result (both inits), the share of failures (TRE > 5 mm) flagged, the share
of good results (TRE ≤ 5 mm) flagged, and Spearman's rank correlation of ``uncertainty_mm`` with TRE. The
flags are judged from the stored features with the thresholds in ``rigid/confidence.py`` at summary time, so
a results file and the thresholds it was judged with always agree.

    python benchmarks/accuracy/rigid_evaluation.py --split validation --cases 3 --ants-cases 0 \
        --json validation.json
    python benchmarks/accuracy/rigid_evaluation.py --calibrate validation.json
    OMP_NUM_THREADS=1 python benchmarks/accuracy/rigid_evaluation.py --split test --cases 5 --ants-cases 1
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from scipy.stats import spearmanr

from DeepRegistrationLib.api import register
from DeepRegistrationLib.core.image import Grid, Image
from DeepRegistrationLib.core.io import write_image
from DeepRegistrationLib.core.transforms import RigidTransform, from_sitk
from DeepRegistrationLib.data import corpus
from DeepRegistrationLib.data.synthetic import gradient_magnitude, intensity_jitter
from DeepRegistrationLib.rigid.confidence import ConfidenceSettings, judge
from DeepRegistrationLib.rigid.initialization import foreground
from DeepRegistrationLib.rigid.pyramid import downsample

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from baselines import register_sitk_mattes  # noqa: E402
from results_json import add_json_argument, write_results  # noqa: E402

FAILURE_MM = 5.0
RECOVERED_MM = {"unimodal": 2.0, "multimodal": 4.0}


def subjects(split: str) -> dict:
    """name -> (fixed T1, aligned moving, 'unimodal' | 'multimodal') for the heads of one corpus split."""
    rng = np.random.default_rng(35)
    out = {}
    for subject in corpus.subjects(split):
        if not subject.images:
            continue
        head = corpus.load_image(subject.id)
        if min(head.grid.spacing) < 2.0:
            head = downsample(head, 2)
        out[f"{subject.id} ↔ itself (gamma, noise)"] = (head, intensity_jitter(head, rng), "unimodal")
        out[f"{subject.id} ↔ its gradient magnitude"] = (head, gradient_magnitude(head), "multimodal")
    return out


def axis_angle(axis: np.ndarray, angle: float) -> np.ndarray:
    k = axis / np.linalg.norm(axis)
    cross = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(angle) * cross + (1 - np.cos(angle)) * cross @ cross


def large_misalignment(rng: np.random.Generator, centre: np.ndarray) -> tuple:
    """(fixed -> moving RigidTransform, rotation angle in degrees, offset in mm)."""
    angle = rng.uniform(60.0, 90.0)
    direction = rng.normal(size=3)
    offset = direction / np.linalg.norm(direction) * rng.uniform(30.0, 60.0)
    m = np.eye(4)
    m[:3, :3] = axis_angle(rng.normal(size=3), np.radians(angle))
    m[:3, 3] = centre + offset - m[:3, :3] @ centre
    return RigidTransform.from_matrix4(m, centre), angle, float(np.linalg.norm(offset))


def displaced(image: Image, true: RigidTransform) -> Image:
    """The same voxels with the grid moved by ``true``: moving'(true(x)) = image(x), nothing resampled."""
    g = image.grid
    m = true.matrix4()
    return Image(image.array, Grid(g.size, g.spacing, true.transform_points(g.origin[None])[0], m[:3, :3] @ g.direction))


def foreground_points(image: Image, n: int = 2000) -> np.ndarray:
    k, j, i = np.nonzero(foreground(image))
    idx = np.random.default_rng(0).permutation(len(i))[:n]
    return image.grid.index_to_physical(np.stack([i[idx], j[idx], k[idx]], 1).astype(np.float64))


def tre(estimated, true: RigidTransform, points: np.ndarray) -> float:
    return float(np.linalg.norm(estimated.transform_points(points) - true.transform_points(points), axis=1).mean())


def sitk_moments(fixed: Image, moving: Image) -> RigidTransform:
    """SimpleITK: CenteredTransformInitializer (MOMENTS), then Mattes MI rigid (benchmarks/baselines.py)."""
    init = sitk.CenteredTransformInitializer(sitk.Cast(fixed.to_sitk(), sitk.sitkFloat32),
                                             sitk.Cast(moving.to_sitk(), sitk.sitkFloat32), sitk.Euler3DTransform(),
                                             sitk.CenteredTransformInitializerFilter.MOMENTS)
    return register_sitk_mattes(fixed, moving, from_sitk(init))


def ants_rigid(fixed: Image, moving: Image, search_degrees: float):
    """antspyx: affine_initializer (rotation search of ``search_degrees`` steps), then Rigid registration."""
    import ants
    with tempfile.TemporaryDirectory() as tmp:
        paths = [os.path.join(tmp, n) for n in ("f.nii.gz", "m.nii.gz")]
        write_image(fixed, paths[0])
        write_image(moving, paths[1])
        f, m = ants.image_read(paths[0]), ants.image_read(paths[1])
        init = ants.affine_initializer(f, m, search_factor=search_degrees, radian_fraction=1.0,
                                       use_principal_axis=False, local_search_iterations=10)
        out = ants.registration(f, m, type_of_transform="Rigid", initial_transform=init)
        return from_sitk(sitk.ReadTransform(out["fwdtransforms"][0]))


def ours(fixed, moving, init: str, true, points) -> dict:
    t0 = time.perf_counter()
    result = register(fixed, moving, "nmi", "cpu", init=init)
    seconds = time.perf_counter() - t0
    conf = result.report["confidence"]
    return {"tre_mm": tre(result.transform, true, points), "seconds": seconds,
            "seconds_initialization": result.report.get("initialization", {}).get("seconds", 0.0),
            "confidence": conf}


def confidence_summary(results: list, settings: ConfidenceSettings = None) -> dict:
    """Flags judged now (``settings``, default: the code's thresholds) from each result's stored features."""
    flagged = [bool(judge(r["confidence"], settings)) for r in results]
    fails = [f for r, f in zip(results, flagged) if r["tre_mm"] > FAILURE_MM]
    good = [f for r, f in zip(results, flagged) if r["tre_mm"] <= FAILURE_MM]
    rho, p = spearmanr([r["confidence"]["uncertainty_mm"] for r in results], [r["tre_mm"] for r in results])
    return {"results": len(results), "failures": len(fails), "good": len(good),
            "failures_flagged_percent": 100.0 * np.mean(fails) if fails else None,
            "good_flagged_percent": 100.0 * np.mean(good) if good else None,
            "spearman_uncertainty_vs_tre": float(rho), "spearman_p": float(p),
            "thresholds": asdict(settings or ConfidenceSettings())}


def calibrate(results: list, margin: float = 1.1) -> ConfidenceSettings:
    """Thresholds from validation results: each local criterion just above its largest value on a good result
    (TRE ≤ 5 mm) times ``margin``, so that no good validation result is flagged by the local criteria; the
    coarse check's distance and margin stay as they are."""
    good = [r["confidence"] for r in results if r["tre_mm"] <= FAILURE_MM]
    top = {k: margin * max(c[k] for c in good) for k in ("uncertainty_mm", "misfit", "rise_sigma")}
    return replace(ConfidenceSettings(), max_uncertainty_mm=round(top["uncertainty_mm"], 2),
                   max_misfit=round(top["misfit"], 2), max_rise=round(top["rise_sigma"], 2))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", choices=("validation", "test"), default="test")
    parser.add_argument("--cases", type=int, default=4, help="cases per subject pair")
    parser.add_argument("--seed", type=int, default=35)
    parser.add_argument("--ants-cases", type=int, default=1, help="cases (the first ones) also run with ANTs")
    parser.add_argument("--ants-search-degrees", type=float, default=20.0)
    parser.add_argument("--pairs", help="comma-separated indices into subjects() (default: all); cases depend "
                                        "only on --seed and the pair's index, so runs over parts can be merged")
    parser.add_argument("--merge", nargs="+", help="merge these results files (of runs over parts) into --json")
    parser.add_argument("--calibrate", help="print the confidence thresholds calibrated on this validation file")
    add_json_argument(parser, "rigid_evaluation")
    args = parser.parse_args()
    if args.calibrate:
        record = json.loads(Path(args.calibrate).read_text())
        if record["split"] != "validation":
            parser.error("calibrate on the validation split only")
        results = [c[k] for c in record["results"]["cases"] for k in ("nmi_search", "nmi_none")]
        settings = calibrate(results)
        print(json.dumps({"thresholds": asdict(settings),
                          "validation": confidence_summary(results, settings)}, indent=1))
        return
    if args.merge:
        parts = [json.loads(Path(p).read_text()) for p in args.merge]
        unique = {(c["pair_index"], c["case"]): c for p in parts for c in p["results"]["cases"]}
        cases = [unique[k] for k in sorted(unique)]
        write_results(args.json, "rigid_evaluation", parts[0]["data"], {"cases": cases, "summary": summarize(cases)},
                      split=parts[0]["split"], parts=[p["command"] for p in parts])
        print(table(cases))
        return
    torch.set_num_threads(1)
    chosen = None if args.pairs is None else {int(i) for i in args.pairs.split(",")}
    pairs = subjects(args.split)
    data = f"corpus {args.split} split: " + "; ".join(pairs)
    cases, n_ants = [], 0
    for index, (name, (fixed, aligned, kind)) in enumerate(pairs.items()):
        if chosen is not None and index not in chosen:
            continue
        rng = np.random.default_rng([args.seed, index])
        points = foreground_points(fixed)
        for c in range(args.cases):
            true, angle, offset = large_misalignment(rng, fixed.grid.center_physical())
            moving = displaced(aligned, true)
            case = {"pair": name, "pair_index": index, "kind": kind, "case": c, "rotation_deg": angle,
                    "offset_mm": offset, "load_before": os.getloadavg()[0]}
            case["nmi_search"] = ours(fixed, moving, "search", true, points)
            case["nmi_none"] = ours(fixed, moving, "none", true, points)
            t0 = time.perf_counter()
            case["sitk_moments"] = {"tre_mm": tre(sitk_moments(fixed, moving), true, points),
                                    "seconds": time.perf_counter() - t0}
            if n_ants < args.ants_cases:
                t0 = time.perf_counter()
                case["ants"] = {"tre_mm": tre(ants_rigid(fixed, moving, args.ants_search_degrees), true, points),
                                "seconds": time.perf_counter() - t0, "search_degrees": args.ants_search_degrees}
                n_ants += 1
            case["load_after"] = os.getloadavg()[0]
            cases.append(case)
            print(json.dumps({k: case[k] for k in ("pair", "case", "rotation_deg", "offset_mm")}
                             | {k: round(case[k]["tre_mm"], 2) for k in ("nmi_search", "nmi_none", "sitk_moments")}),
                  flush=True)
            write_results(args.json, "rigid_evaluation", data, {"cases": cases, "summary": summarize(cases)},
                          split=args.split, sitk_threads=sitk.ProcessObject.GetGlobalDefaultNumberOfThreads())
    print(table(cases))
    print(json.dumps(summarize(cases), indent=1))


def table(cases: list) -> str:
    """One markdown row per case: TRE (mm) of each method, seconds, and our confidence."""
    rows = ["| pair | rotation ° | offset mm | nmi init=search: TRE, s, ±mm, flagged | nmi init=none: TRE, ±mm, "
            "flagged | SimpleITK (MOMENTS): TRE, s |", "|---|---|---|---|---|---|"]
    for c in cases:
        a, b, k = c["nmi_search"], c["nmi_none"], c["sitk_moments"]
        rows.append(f"| {c['pair']} | {c['rotation_deg']:.0f} | {c['offset_mm']:.0f} | {a['tre_mm']:.2f}, "
                    f"{a['seconds']:.0f}, {a['confidence']['uncertainty_mm']:.2f}, {_yes(a)} | "
                    f"{b['tre_mm']:.2f}, {b['confidence']['uncertainty_mm']:.2f}, {_yes(b)} | "
                    f"{k['tre_mm']:.2f}, {k['seconds']:.0f} |")
    return "\n".join(rows)


def _yes(result: dict) -> str:
    return "yes" if judge(result["confidence"]) else "no"


def summarize(cases: list) -> dict:
    def recovered(c, key):
        return c[key]["tre_mm"] < RECOVERED_MM[c["kind"]]

    s = {}
    for key in ("nmi_search", "nmi_none", "sitk_moments", "ants"):
        have = [c for c in cases if key in c]
        if have:
            s[key] = {"cases": len(have), "recovered": int(sum(recovered(c, key) for c in have)),
                      "tre_median_mm": float(np.median([c[key]["tre_mm"] for c in have])),
                      "tre_max_mm": float(np.max([c[key]["tre_mm"] for c in have])),
                      "seconds_mean": float(np.mean([c[key]["seconds"] for c in have]))}
    s["confidence"] = confidence_summary([c[k] for c in cases for k in ("nmi_search", "nmi_none")])
    s["load_average_1min"] = [float(np.min([c["load_before"] for c in cases])),
                              float(np.max([c["load_after"] for c in cases]))]
    return s


if __name__ == "__main__":
    main()
