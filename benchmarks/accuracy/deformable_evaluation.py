"""The deformable evaluation (issue 34 item 4): every deformable method on test-split subjects, side by side.

Subjects: the test split of the subject corpus (``DeepRegistrationLib.data.corpus``: Colin27 and ITK's
KmeansTest head), resampled to ``--spacing-mm``. No training or selection step of the project may use them;
the JSON records, per learned model, whether its training data touched a test subject (the bundled
``diffeo`` model was fine-tuned on SPM's single_subj_T1, which is Colin27).

* Same-subject pairs under known smooth diffeomorphisms: the moving image is the subject's T1, the fixed
  image the T1 under φ = exp(v) (v a cubic B-spline velocity, control spacing 24 mm, coefficients U(±b) mm,
  scaling and squaring), each with its own 1 % noise. The true fixed→moving map is φ and the true
  moving→fixed map φ⁻¹ = exp(−v). Reported per direction: mean displacement error (mm) against the truth
  inside the head (T1 above 10 % of its 99th percentile), tissue Dice (CSF/GM/WM, labels warped by nearest
  neighbour), % folding voxels (Jacobian ≤ 0); Colin27 also AAL Dice (116 regions).
* Inter-subject pairs with label maps: ITK's head (moving) onto Colin27 (fixed), both with tissue classes
  (ITK's own; Colin27's by k-means inside its brain) and brain masks, after one SimpleITK affine (Mattes MI)
  that every method starts from. Reported: tissue and brain Dice and HD95 (mm; SimpleITK distance maps).

Methods, all timed in this run on the same CPU threads: ``diffeo``, ``dirnet``, ``deepsim`` through
``api.register``, with their default instance optimization and as ``NAME/network`` without it
(``--param METHOD:KEY=VALUE`` passes options, e.g. ``diffeo:io_levels=2``; a method that
gives an inverse gives both directions in one call, the others are run again with the images swapped),
SimpleITK diffeomorphic demons, a SimpleITK B-spline (correlation, L-BFGS-B, 3 levels; control spacing
chosen on a validation-split pair at ``--tune-spacing-mm``, never on test data), and ANTs SyN (antspyx,
CC metric; optional).
One row per subject pair and method; the speed-up per direction is demons' time for one direction over
the method's. Results: ``benchmarks/results/deformable_evaluation.json``.

    OMP_NUM_THREADS=1 python benchmarks/accuracy/deformable_evaluation.py --same-subject-pairs 1 --threads 1
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from DeepRegistrationLib.api import register
from DeepRegistrationLib.core.image import Image
from DeepRegistrationLib.core.jacobian import jacobian_determinant, jacobian_statistics
from DeepRegistrationLib.core.transforms import AffineTransform, DisplacementField, from_sitk
from DeepRegistrationLib.core.warp import warp
from DeepRegistrationLib.data import corpus
from DeepRegistrationLib.data.synthetic import scaling_and_squaring, smooth_random_field
from DeepRegistrationLib.metrics.evaluation import dice_per_label
from DeepRegistrationLib.models.model_file import read_metadata

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from baselines import sitk_demons  # noqa: E402
from results_json import default_path, write_results  # noqa: E402

LEARNED = {"diffeo": "diffeo_brain_t1", "dirnet": "dirnet_brain_t1_3d", "deepsim": "deepsim_brain_t1_3d"}
BASELINES = ("demons", "bspline", "ants-syn")
TISSUE = {1: "CSF", 2: "GM", 3: "WM"}


# ---------------------------------------------------------------- data
def as_labels(image: Image) -> Image:
    return image.with_array(np.rint(image.array).astype(np.int16))


def isotropic(image: Image, spacing: float, labels: bool = False) -> Image:
    out = warp(image, image.grid.with_spacing([spacing] * 3), mode="nearest" if labels else "linear")
    return as_labels(out) if labels else out


def head_mask(image: Image) -> np.ndarray:
    return image.array > 0.1 * np.percentile(image.array, 99)


def add_noise(image: Image, rng, fraction: float = 0.01) -> Image:
    scale = fraction * float(np.percentile(image.array, 99))
    return image.with_array((image.array + rng.normal(0, scale, image.array.shape)).astype(np.float32))


def same_subject_pair(subject_id: str, spacing: float, seed: int, max_mm: float) -> dict:
    """Moving = the subject; fixed = the subject under φ = exp(v); truth fixed→moving φ, moving→fixed exp(−v)."""
    t1 = isotropic(corpus.load_image(subject_id), spacing)
    labels = {name: isotropic(corpus.load_labels(subject_id, name), spacing, True)
              for name in ("tissue", "aal") if name in corpus.subject(subject_id).labels}
    rng = np.random.default_rng(seed)
    v = smooth_random_field(t1.grid, rng, max_mm, 24.0, integrate=False)
    phi = scaling_and_squaring(v)
    phi_inv = scaling_and_squaring(DisplacementField(-v.displacement_mm, v.grid))
    fixed = add_noise(warp(t1, t1.grid, phi), rng)
    return {"name": f"{subject_id} / {subject_id} under exp(v), seed {seed}", "kind": "same subject",
            "fixed": fixed, "moving": add_noise(t1, rng),
            "fixed_labels": {k: as_labels(warp(x, t1.grid, phi, mode="nearest")) for k, x in labels.items()},
            "moving_labels": labels, "truth": phi, "truth_inverse": phi_inv,
            "fixed_head": head_mask(fixed), "moving_head": head_mask(t1)}


def affine_start(fixed: Image, moving: Image) -> AffineTransform:
    """One SimpleITK affine registration (Mattes MI, moments start, 3 levels): the start of every method."""
    f, m = (sitk.Cast(x.to_sitk(), sitk.sitkFloat32) for x in (fixed, moving))
    init = sitk.CenteredTransformInitializer(f, m, sitk.AffineTransform(3), sitk.CenteredTransformInitializerFilter.MOMENTS)
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(50)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(0.2, 1)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(2.0, 1e-4, 200)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel([4, 2, 1])
    reg.SetSmoothingSigmasPerLevel([2, 1, 0])
    reg.SetInitialTransform(init, inPlace=False)
    return from_sitk(reg.Execute(f, m))


def inter_subject_pair(fixed_id: str, moving_id: str, spacing: float) -> dict:
    fixed = isotropic(corpus.load_image(fixed_id), spacing)
    moving = isotropic(corpus.load_image(moving_id), spacing)
    start = affine_start(fixed, moving)
    on_fixed = warp(moving, fixed.grid, start)
    labels = {}
    for name in ("tissue", "brain"):
        f = isotropic(corpus.load_labels(fixed_id, name), spacing, True)
        m = warp(corpus.load_labels(moving_id, name), fixed.grid, start, mode="nearest")
        labels[name] = (f, as_labels(m))
    return {"name": f"{moving_id} → {fixed_id} (affine start)", "kind": "inter-subject", "fixed": fixed,
            "moving": on_fixed, "fixed_labels": {k: v[0] for k, v in labels.items()},
            "moving_labels": {k: v[1] for k, v in labels.items()}, "truth": None}


# ---------------------------------------------------------------- baselines
def sitk_image(image: Image) -> sitk.Image:
    return sitk.Cast(image.to_sitk(), sitk.sitkFloat32)


def field_of(transform: sitk.Transform, reference: sitk.Image) -> DisplacementField:
    tdf = sitk.TransformToDisplacementFieldFilter()
    tdf.SetReferenceImage(reference)
    tdf.SetOutputPixelType(sitk.sitkVectorFloat64)
    img = Image.from_sitk(tdf.Execute(transform))
    return DisplacementField(img.array.astype(np.float32), img.grid)


def bspline(fixed: Image, moving: Image, control_mm: float) -> DisplacementField:
    """SimpleITK cubic B-spline (control points every ``control_mm``): correlation on 3 % random voxels,
    L-BFGS-B (50 iterations per level), three image levels (shrink 4/2/1, σ 2/1/0 voxels). The sampling and
    iterations bound its time on a 2-core CPU (10 % and 100 took 4 minutes per direction at 4 mm)."""
    f, m = sitk_image(fixed), sitk_image(moving)
    m = sitk.HistogramMatching(m, f, 256, 7, True)
    extent = (np.asarray(fixed.grid.size) - 1) * fixed.grid.spacing
    mesh = [max(1, int(round(e / control_mm))) for e in extent]
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsCorrelation()
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(0.03, 1)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsLBFGSB(gradientConvergenceTolerance=1e-5, numberOfIterations=50)
    reg.SetShrinkFactorsPerLevel([4, 2, 1])
    reg.SetSmoothingSigmasPerLevel([2, 1, 0])
    reg.SetInitialTransform(sitk.BSplineTransformInitializer(f, mesh, order=3), inPlace=False)
    return field_of(reg.Execute(f, m), f)


def ants_syn(fixed: Image, moving: Image, threads: int) -> tuple:
    """ANTs SyN only (CC, radius 4; iterations 40/20/0 at shrink 4/2/1, antspyx defaults): (forward, inverse)."""
    import ants

    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(threads)
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for name, image in (("f", fixed), ("m", moving)):
            paths.append(f"{tmp}/{name}.nii.gz")
            sitk.WriteImage(sitk_image(image), paths[-1])
        out = ants.registration(ants.image_read(paths[0]), ants.image_read(paths[1]), type_of_transform="SyNOnly",
                                syn_metric="CC", syn_sampling=4, reg_iterations=(40, 20, 0), outprefix=f"{tmp}/r")
        forward = [p for p in out["fwdtransforms"] if p.endswith("Warp.nii.gz")][0]
        inverse = [p for p in out["invtransforms"] if p.endswith("InverseWarp.nii.gz")][0]
        fields = [Image.from_sitk(sitk.ReadImage(p)) for p in (forward, inverse)]
    return tuple(DisplacementField(f.array.astype(np.float32), f.grid) for f in fields)


# ---------------------------------------------------------------- methods: (forward, inverse or None)
def method_options(name: str, params: dict) -> dict:
    """The options of a method label: ``NAME`` with its ``--param`` options, ``NAME/network`` the same with
    instance optimization off (``iterations=0``: the network alone)."""
    base, _, variant = name.partition("/")
    return {**params.get(base, {}), **({"iterations": "0"} if variant == "network" else {})}


def run_method(name: str, fixed: Image, moving: Image, options: dict, bspline_mm: float, threads: int):
    if name.partition("/")[0] in LEARNED:
        result = register(fixed, moving, name.partition("/")[0], device="cpu", **options)
        return result.transform, result.inverse, result.report
    if name == "demons":
        return sitk_demons(fixed, moving), None, {}
    if name == "bspline":
        return bspline(fixed, moving, bspline_mm), None, {}
    forward, inverse = ants_syn(fixed, moving, threads)
    return forward, inverse, {}


def timed(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0


# ---------------------------------------------------------------- metrics
def displacement(transform, grid) -> np.ndarray:
    if transform is None:
        return np.zeros(grid.shape + (3,), np.float32)
    field = transform if isinstance(transform, DisplacementField) and transform.grid.same_as(grid) \
        else DisplacementField.from_transform(transform, grid)
    return field.displacement_mm


def hd95(a: np.ndarray, b: np.ndarray, reference: Image) -> float:
    """95th percentile of the symmetric surface distances (mm) of two masks on ``reference``'s grid."""
    if not a.any() or not b.any():
        return float("nan")

    def surface_and_distance(mask):
        img = reference.with_array(mask.astype(np.uint8)).to_sitk()
        contour = sitk.GetArrayFromImage(sitk.LabelContour(img)) > 0
        dist = np.abs(sitk.GetArrayFromImage(sitk.SignedMaurerDistanceMap(img, insideIsPositive=False,
                                                                          squaredDistance=False,
                                                                          useImageSpacing=True)))
        return contour, dist

    sa, da = surface_and_distance(a)
    sb, db = surface_and_distance(b)
    return float(np.percentile(np.concatenate([db[sa], da[sb]]), 95))


def direction_metrics(pair: dict, transform, reverse: bool) -> dict:
    """Metrics of one direction: forward (moving resampled onto fixed) or reverse (fixed onto moving)."""
    ref, mov = ("moving", "fixed") if reverse else ("fixed", "moving")
    grid = pair[ref].grid
    u = displacement(transform, grid)
    out = {}
    if pair["truth"] is not None:
        truth = pair["truth_inverse" if reverse else "truth"].displacement_mm
        head = pair[f"{ref}_head"]
        out["displacement_error_mm"] = float(np.linalg.norm(u - truth, axis=-1)[head].mean())
    field = DisplacementField(u, grid)
    for name, labels in pair[f"{mov}_labels"].items():
        warped = warp(labels, grid, field, mode="nearest").array.astype(np.int16)
        target = pair[f"{ref}_labels"][name].array
        classes = sorted(set(np.unique(target).tolist()) - {0})
        dice = dice_per_label(target, warped, classes)
        out[f"dice_{name}"] = float(np.nanmean([dice[c] for c in classes]))
        if name == "tissue":
            out.update({f"dice_{TISSUE[c]}": float(dice[c]) for c in classes})
        if pair["kind"] == "inter-subject":
            out[f"hd95_{name}_mm"] = float(np.nanmean([hd95(target == c, warped == c, pair[ref]) for c in classes]))
    if transform is not None:
        stats = jacobian_statistics(jacobian_determinant(field))
        out["folding_percent"], out["folding_voxels"] = stats["folding_percent"], int(stats["folding_voxels"])
    return out


#: text in a model's training record that names a test-split subject's data
TEST_SUBJECT_MARKERS = {"colin27": ("single-subject", "single_subj", "colin27"),
                        "itk-kmeans": ("kmeanstest", "itk-kmeans")}


def trained_on_test_subjects(model: str) -> list:
    """Test-split subjects a model's training (or any model it was fine-tuned from) drew on (the corpus record's
    map of every subject's split names the test subjects without drawing on them, so it is left out)."""
    text, training = [], read_metadata(model).get("training", {})
    while training:
        record = {k: v for k, v in training.items() if k != "history"}
        if isinstance(record.get("corpus"), dict):
            record["corpus"] = {k: v for k, v in record["corpus"].items() if k != "splits"}
        text.append(json.dumps(record).lower())
        training = training.get("initialized_from") or {}
    return [s for s, markers in TEST_SUBJECT_MARKERS.items() if any(m in t for t in text for m in markers)]


# ---------------------------------------------------------------- main
def parse_params(items) -> dict:
    out = {m: {} for m in LEARNED}
    for item in items or []:
        method, _, kv = item.partition(":")
        key, _, value = kv.partition("=")
        if method not in out or not key or not value:
            raise SystemExit(f"--param expects METHOD:KEY=VALUE with METHOD in {', '.join(LEARNED)}, got {item!r}")
        out[method][key.strip().replace("-", "_")] = value.strip()
    return out


def choose_bspline_spacing(candidates, spacing: float, seed: int, max_mm: float) -> dict:
    """The B-spline control spacing with the lowest displacement error on one validation-split pair."""
    pair = same_subject_pair("robex-atlas", spacing, seed, max_mm)
    errors = {}
    for c in candidates:
        field = bspline(pair["fixed"], pair["moving"], c)
        errors[c] = direction_metrics(pair, field, False)["displacement_error_mm"]
    return {"chosen_mm": min(errors, key=errors.get), "validation_errors_mm": errors,
            "validation_pair": pair["name"]}


def speedups_vs_demons(rows: list, demons_rows: list = None) -> dict:
    """Per method and pair: demons' seconds over the method's, for one direction and for both (rows of merged
    runs only against demons of the same run, taken from ``demons_rows``: every part's, by default ``rows``)."""
    out = {}
    for r in rows:
        if r["method"] in ("none", "demons") or "seconds_one_direction" not in r:
            continue
        d = next((d for d in demons_rows or rows if d["pair"] == r["pair"] and d["method"] == "demons"
                  and "seconds_one_direction" in d and d.get("part") == r.get("part")), None)
        if d:
            both = d.get("seconds_both_directions", np.nan) / r.get("seconds_both_directions", np.nan)
            out.setdefault(r["method"], []).append({"pair": r["pair"], "both_directions": both,
                                                    "one_direction": d["seconds_one_direction"]
                                                    / r["seconds_one_direction"]})
    return out


def read_rows(path: Path) -> list:
    """The rows of a results file, or those a run printed to its log (a run stopped before it finished)."""
    if path.suffix == ".json":
        return json.loads(path.read_text())["results"]["rows"]
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith('{"pair"')]


def merge(paths, out: Path) -> None:
    """One results file from runs that each evaluated some of the pairs (run side by side on the CPU's cores),
    the first run's row of a (pair, method) kept; logs of runs stopped early give their printed rows. Which test
    subjects each model was trained on is read from the model files (merge at the commit the parts ran)."""
    paths = [Path(p) for p in paths]
    parts = [json.loads(p.read_text()) for p in paths if p.suffix == ".json"]
    rows, demons = {}, []
    for index, path in enumerate(paths):
        for r in read_rows(path):
            rows.setdefault((r["pair"], r["method"]), {**r, "part": index})
            if r["method"] == "demons":
                demons.append({**r, "part": index})
    rows = list(rows.values())
    extra = {k: parts[0][k] for k in ("test_subjects", "spacing_mm", "deform_max_mm", "threads")}
    extra["models"] = {m: v for p in reversed(parts) for m, v in p["models"].items()}   # the first part's wins
    for record in extra["models"].values():         # read again: the check may have been fixed since the run
        record["trained_on_test_subjects"] = trained_on_test_subjects(record["model"])
    extra["bspline_tuning"] = next((p["bspline_tuning"] for p in parts if p["bspline_tuning"]), None)
    write_results(out, "deformable_evaluation", data_text(rows, extra["spacing_mm"]),
                  {"rows": rows, "speedup_vs_demons": speedups_vs_demons(rows, demons)},
                  parts=[{"command": p["command"], "commit": p["commit"], "machine": p["machine"]} for p in parts]
                  + [{"log": p.name, "note": "rows printed by a run stopped before it finished"}
                     for p in paths if p.suffix != ".json"], **extra)


def data_text(rows: list, spacing_mm: float) -> str:
    return f"corpus test split at {spacing_mm:g} mm: " + "; ".join(r["pair"] for r in rows if r["method"] == "none")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--spacing-mm", type=float, default=2.0)
    p.add_argument("--same-subject-pairs", type=int, default=1, help="known-deformation pairs per test subject")
    p.add_argument("--subjects", help="test subjects for the same-subject pairs (comma-separated; default all, "
                                      "'none' for no same-subject pair)")
    p.add_argument("--no-inter-subject", action="store_true", help="skip the ITK → Colin27 pair")
    p.add_argument("--deform-max-mm", type=float, default=6.0, help="velocity coefficient bound b (mm)")
    p.add_argument("--methods", default=",".join(list(LEARNED) + [f"{m}/network" for m in LEARNED] + list(BASELINES)),
                   help="comma-separated; NAME/network: a learned method without instance optimization")
    p.add_argument("--param", action="append", metavar="METHOD:KEY=VALUE", help="an option of a learned method")
    p.add_argument("--bspline-candidates", default="20,40", help="control spacings (mm) tried on validation")
    p.add_argument("--tune-spacing-mm", type=float, default=4.0,
                   help="image spacing of the validation pair the B-spline control spacing is chosen on")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(default_path("deformable_evaluation")))
    p.add_argument("--merge", nargs="+", metavar="FILE", help="merge the results files (or logs) of partial runs "
                                                             "into --out")
    args = p.parse_args(argv)
    if args.merge:
        merge(args.merge, Path(args.out))
        return 0
    methods = [m.strip() for m in args.methods.split(",") if m.strip() not in ("", "none")]
    params = parse_params(args.param)
    torch.set_num_threads(args.threads)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(args.threads)

    tuning = None
    if "bspline" in methods:
        tuning = choose_bspline_spacing([float(c) for c in args.bspline_candidates.split(",")], args.tune_spacing_mm,
                                        10 ** 6 + args.seed, args.deform_max_mm)
        print(f"B-spline control spacing chosen on validation: {tuning}", flush=True)
    pairs = []
    chosen = None if args.subjects is None else set(args.subjects.split(","))
    for s in corpus.subjects("test"):
        if chosen is not None and s.id not in chosen:
            continue
        for k in range(args.same_subject_pairs):
            pairs.append(lambda s=s, k=k: same_subject_pair(s.id, args.spacing_mm, 1000 * args.seed + k,
                                                            args.deform_max_mm))
    if not args.no_inter_subject:
        pairs.append(lambda: inter_subject_pair("colin27", "itk-kmeans", args.spacing_mm))

    rows = []
    for make in pairs:
        pair = make()
        base = {"pair": pair["name"], "kind": pair["kind"], "grid": list(pair["fixed"].grid.size)}
        rows.append({**base, "method": "none", "forward": direction_metrics(pair, None, False),
                     "reverse": direction_metrics(pair, None, True) if pair["truth"] is not None else None})
        for name in methods:
            row = {**base, "method": name, "options": method_options(name, params)}
            try:
                (fwd, inv, report), seconds = timed(run_method, name, pair["fixed"], pair["moving"], row["options"],
                                                    tuning and tuning["chosen_mm"], args.threads)
                row["seconds_one_direction"] = seconds
                row["forward"] = direction_metrics(pair, fwd, False)
                row["inverse_from_same_call"] = inv is not None
                if pair["truth"] is not None:
                    if inv is None:
                        (inv, _, _), seconds2 = timed(run_method, name, pair["moving"], pair["fixed"],
                                                      row["options"], tuning and tuning["chosen_mm"], args.threads)
                        row["seconds_both_directions"] = seconds + seconds2
                    else:
                        row["seconds_both_directions"] = seconds
                    row["reverse"] = direction_metrics(pair, inv, True)
                for key in ("iterations", "loss_curve", "seconds_method", "seconds_total"):
                    if key in report:
                        row[f"report_{key}"] = report[key]
            except Exception as err:  # noqa: BLE001 - a method that fails is recorded, the others still run
                row["error"] = f"{type(err).__name__}: {err}"
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k not in ("options",)}, default=float), flush=True)
            write_results(args.out, "deformable_evaluation", data_text(rows, args.spacing_mm),
                          {"rows": rows, "speedup_vs_demons": speedups_vs_demons(rows)},
                          test_subjects=[s.to_dict() for s in corpus.subjects("test")],
                          models={m: {"model": LEARNED[m],
                                      "trained_on_test_subjects": trained_on_test_subjects(LEARNED[m])}
                                  for m in LEARNED if any(n.partition("/")[0] == m for n in methods)},
                          bspline_tuning=tuning, spacing_mm=args.spacing_mm, deform_max_mm=args.deform_max_mm,
                          threads=args.threads)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
