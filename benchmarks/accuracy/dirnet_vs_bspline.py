"""DIRNet vs a tuned SimpleITK B-spline registration: Dice on unseen test pairs and wall time (de Vos et al. 2017, Table 1).

Test data (never seen in training; the bundled models were trained on the SPM avg152 T1 template only):
the ICBM 2009a T1 template with GM/WM labels (argmax of background, GM, WM probability), resampled to
2 mm (2D: its axial slices; 3D: the volume). A test "subject" is the template under a random diffeomorphic
deformation (``data.synthetic.smooth_random_field``, 24 mm control spacing, coefficients <= 4 mm,
in-plane only in 2D) with a random gamma and 1 % noise; a pair is two such subjects, and its labels
are warped along (nearest neighbour). Dice is the mean of the GM and WM Dice on the fixed grid.

Baseline (the paper's SimpleElastix role): SimpleITK cubic B-spline, correlation metric (DIRNet's
NCC), L-BFGS-B with 100 iterations per level, two levels (shrink 2 then 1), grid spacing tuned on
separate validation pairs; in 3D the metric is sampled on 5 % random voxels to bound its time. Both run on
the CPU with one thread, in the same process. Results: benchmarks/results/dirnet_vs_bspline.json.

    OMP_NUM_THREADS=1 python benchmarks/accuracy/dirnet_vs_bspline.py --pairs-2d 20 --pairs-3d 3 \
        --figure docs/figures/dirnet_qualitative.png
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
from DeepRegistrationLib.core.image import Grid, Image
from DeepRegistrationLib.core.transforms import DisplacementField
from DeepRegistrationLib.core.warp import warp
from DeepRegistrationLib.data import sources
from DeepRegistrationLib.data.synthetic import intensity_jitter, scaling_and_squaring, smooth_random_field
from DeepRegistrationLib.deformable.dirnet_registration import load_dirnet, model_grid, predict_field
from DeepRegistrationLib.core.network_input import resample_to
from DeepRegistrationLib.metrics.evaluation import dice_per_label
from DeepRegistrationLib.rigid.pyramid import downsample
from DeepRegistrationLib.viz import figure

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from results_json import add_json_argument, write_results  # noqa: E402

MODEL_2D, MODEL_3D = "dirnet_brain_t1_2d", "dirnet_brain_t1_3d"
#: Fraction of voxels (random) on which the 3D baseline evaluates its metric.
SAMPLING_3D = 0.05
SPLIT = ("train: SPM avg152 T1 template (bundled models); test: ICBM 2009a T1 + GM/WM labels, "
         "random deformation pairs (seeds {seeds})")


def icbm_with_labels(spacing_mm: float):
    """ICBM 2009a T1 and labels 0/1/2 (background, GM, WM by argmax) on an axis-aligned grid of ``spacing_mm``."""
    t1, gm, wm = (sources.icbm152(k) for k in ("t1", "gm", "wm"))
    labels = np.argmax(np.stack([1.0 - gm.array - wm.array, gm.array, wm.array]), axis=0).astype(np.int16)
    t1 = downsample(t1, spacing_mm / t1.grid.spacing[0])
    return t1, warp(Image(labels, gm.grid), t1.grid, mode="nearest")


def axial_slice(image: Image, z: int) -> Image:
    """One axial slice as a single-slice volume with an identity-direction grid at the origin."""
    nx, ny, _ = image.grid.size
    return Image(image.array[z:z + 1].copy(), Grid((nx, ny, 1), image.grid.spacing, np.zeros(3), np.eye(3)))


def in_plane_field(grid: Grid, rng) -> DisplacementField:
    """smooth_random_field on a single-slice grid with the through-plane part removed, then integrated."""
    velocity = smooth_random_field(grid, rng, integrate=False).displacement_mm.copy()
    velocity[..., 2] = 0.0
    return scaling_and_squaring(DisplacementField(velocity, grid))


def make_pair(t1: Image, labels: Image, rng, field_fn):
    """Two subjects of one template: (fixed, fixed labels, moving, moving labels)."""
    out = []
    for _ in range(2):
        phi = field_fn(t1.grid, rng)
        out += [intensity_jitter(warp(t1, t1.grid, phi), rng), warp(labels, t1.grid, phi, mode="nearest")]
    return out


def mean_dice(fixed_labels: Image, warped_labels: Image) -> float:
    return float(np.mean(list(dice_per_label(fixed_labels.array, warped_labels.array, [1, 2]).values())))


def sitk_bspline(fixed: Image, moving: Image, grid_spacing_mm: float, sampling: float = 1.0):
    """The baseline: returns (fixed->moving DisplacementField on the fixed grid, seconds).

    ``sampling`` < 1 evaluates the metric on that fraction of random voxels (used in 3D to bound the time)."""
    dim = 2 if fixed.grid.size[2] == 1 else 3

    def to_sitk(img):
        arr = img.array[0] if dim == 2 else img.array
        out = sitk.GetImageFromArray(arr.astype(np.float32))
        out.SetSpacing(tuple(img.grid.spacing[:dim]))
        out.SetOrigin(tuple(img.grid.origin[:dim]))
        out.SetDirection(tuple(img.grid.direction[:dim, :dim].reshape(-1)))
        return out

    t0 = time.perf_counter()
    f, m = to_sitk(fixed), to_sitk(moving)
    extent = (np.asarray(fixed.grid.size[:dim]) - 1) * fixed.grid.spacing[:dim]
    mesh = [max(1, int(round(e / grid_spacing_mm))) for e in extent]
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsCorrelation()
    if sampling < 1.0:
        reg.SetMetricSamplingStrategy(reg.RANDOM)
        reg.SetMetricSamplingPercentage(sampling, 1)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsLBFGSB(gradientConvergenceTolerance=1e-5, numberOfIterations=100)
    reg.SetShrinkFactorsPerLevel([2, 1])
    reg.SetSmoothingSigmasPerLevel([1, 0])
    reg.SetInitialTransform(sitk.BSplineTransformInitializer(f, mesh, order=3), inPlace=False)
    transform = reg.Execute(f, m)
    tdf = sitk.TransformToDisplacementFieldFilter()
    tdf.SetReferenceImage(f)
    tdf.SetOutputPixelType(sitk.sitkVectorFloat64)
    u = sitk.GetArrayFromImage(tdf.Execute(transform)).astype(np.float32)
    seconds = time.perf_counter() - t0
    if dim == 2:
        u = np.concatenate([u, np.zeros(u.shape[:-1] + (1,), np.float32)], axis=-1)[None]
    return DisplacementField(u, fixed.grid), seconds


def dirnet_2d(net, meta, fixed: Image, moving: Image):
    """One 2D slice pair in one pass: returns (field on the fixed grid, seconds)."""
    t0 = time.perf_counter()
    grid = model_grid(fixed.grid, meta["patch_size"], meta["spacing_mm"])
    field = predict_field(net, resample_to(fixed, grid), resample_to(moving, grid), grid, "cpu")
    on_fixed = DisplacementField.from_transform(field, fixed.grid)
    return on_fixed, time.perf_counter() - t0


def summarize(values):
    a = np.asarray(values)
    return f"{a.mean():.3f} ± {a.std(ddof=1) if len(a) > 1 else 0.0:.3f}"


def tune_grid_spacing(t1, labels, slices, candidates, seed):
    """Baseline grid spacing with the best mean Dice on 2D validation pairs (seeds apart from the test's)."""
    rng = np.random.default_rng(seed)
    cases = [make_pair(axial_slice(t1, z), axial_slice(labels, z), rng, in_plane_field)
             for z in rng.choice(slices, 3, replace=False)]
    scores = {}
    for spacing in candidates:
        dices = []
        for f, fl, m, ml in cases:
            field, _ = sitk_bspline(f, m, spacing)
            dices.append(mean_dice(fl, warp(ml, f.grid, field, mode="nearest")))
        scores[spacing] = float(np.mean(dices))
    return max(scores, key=scores.get), scores


def save_figure(path, case, dirnet_field, sitk_field):
    plt = figure.pyplot()

    from DeepRegistrationLib.viz.deformation_grid import plot_deformation_grid

    f, _, m, _ = case
    warped = {k: warp(m, f.grid, v) for k, v in (("DIRNet", dirnet_field), ("SimpleITK B-spline", sitk_field))}
    fig, axes = plt.subplots(2, 4, figsize=(13, 7))
    axes[0, 0].imshow(f.array[0], cmap="gray", origin="lower")
    axes[0, 0].set_title("fixed")
    axes[0, 1].imshow(m.array[0], cmap="gray", origin="lower")
    axes[0, 1].set_title("moving")
    axes[1, 0].imshow(np.abs(m.array[0] - f.array[0]), cmap="magma", origin="lower")
    axes[1, 0].set_title("|moving - fixed|")
    axes[1, 1].axis("off")
    for col, (name, w) in enumerate(warped.items(), start=2):
        field = dirnet_field if name == "DIRNet" else sitk_field
        u = field.displacement_mm[0] / f.grid.spacing  # identity direction: mm -> voxels per axis
        plot_deformation_grid(axes[0, col], w.array[0], u[..., 1], u[..., 0], spacing_vox=6)
        axes[0, col].set_title(f"{name}: warped + grid")
        axes[1, col].imshow(np.abs(w.array[0] - f.array[0]), cmap="magma", origin="lower",
                            vmax=float(np.abs(m.array[0] - f.array[0]).max()))
        axes[1, col].set_title(f"|{name} - fixed|")
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    figure.save_figure(fig, path, dpi=80)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs-2d", type=int, default=20)
    parser.add_argument("--pairs-3d", type=int, default=4)
    parser.add_argument("--seed", type=int, default=2017)
    parser.add_argument("--figure", help="PNG of one 2D test pair (as the paper's Fig. 4, with grid lines)")
    add_json_argument(parser, "dirnet_vs_bspline")
    args = parser.parse_args()
    torch.set_num_threads(1)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)

    t1, labels = icbm_with_labels(2.0)
    content = (labels.array > 0).mean(axis=(1, 2))
    slices = np.flatnonzero(content > 0.5 * content.max())
    net2, meta2 = load_dirnet(MODEL_2D)
    control_mm = float(meta2["spacing_mm"][0] * net2.config.downsampling_factor)
    best, scores = tune_grid_spacing(t1, labels, slices, (control_mm, control_mm / 2), args.seed + 1)
    print(f"baseline grid spacing tuned on 3 validation slice pairs (seed {args.seed + 1}): "
          + ", ".join(f"{k:g} mm -> Dice {v:.3f}" for k, v in scores.items()) + f"; chosen {best:g} mm")

    rng = np.random.default_rng(args.seed)
    rows2 = {"before": [], "DIRNet": [], "SimpleITK": []}
    times2 = {"DIRNet": [], "SimpleITK": []}
    for n, z in enumerate(rng.choice(slices, args.pairs_2d, replace=True)):
        case = make_pair(axial_slice(t1, z), axial_slice(labels, z), rng, in_plane_field)
        f, fl, m, ml = case
        d_field, d_sec = dirnet_2d(net2, meta2, f, m)
        s_field, s_sec = sitk_bspline(f, m, best)
        rows2["before"].append(mean_dice(fl, ml))
        rows2["DIRNet"].append(mean_dice(fl, warp(ml, f.grid, d_field, mode="nearest")))
        rows2["SimpleITK"].append(mean_dice(fl, warp(ml, f.grid, s_field, mode="nearest")))
        times2["DIRNet"].append(d_sec)
        times2["SimpleITK"].append(s_sec)
        if n == 0 and args.figure:
            save_figure(args.figure, case, d_field, s_field)

    t1_3, labels_3 = t1, labels
    rows3 = {"before": [], "DIRNet": [], "SimpleITK": []}
    times3 = {"DIRNet": [], "SimpleITK": []}
    net3, meta3 = load_dirnet(MODEL_3D)
    control3_mm = float(meta3["spacing_mm"][0] * net3.config.downsampling_factor)
    for _ in range(args.pairs_3d):
        f, fl, m, ml = make_pair(t1_3, labels_3, rng, lambda g, r: smooth_random_field(g, r))
        result = register(f, m, "dirnet", "cpu", models=[MODEL_3D])
        s_field, s_sec = sitk_bspline(f, m, control3_mm * best / control_mm, SAMPLING_3D)
        rows3["before"].append(mean_dice(fl, ml))
        rows3["DIRNet"].append(mean_dice(fl, warp(ml, f.grid, result.transform, mode="nearest")))
        rows3["SimpleITK"].append(mean_dice(fl, warp(ml, f.grid, s_field, mode="nearest")))
        times3["DIRNet"].append(result.report["seconds_method"])
        times3["SimpleITK"].append(s_sec)

    print(f"\nCPU: {platform.processor() or platform.machine()}, 1 thread (torch and ITK); seed {args.seed}")
    print(f"split: {SPLIT.format(seeds=f'{args.seed}, tuning {args.seed + 1}')}\n")
    print("| data | method | Dice (GM, WM mean) | s per registration | time ratio SimpleITK / DIRNet |")
    print("|---|---|---|---|---|")
    for label, rows, times, unit in (
            (f"2D axial slices, ICBM 2009a at 2 mm, {args.pairs_2d} test pairs", rows2, times2, "slice"),
            (f"3D volumes, ICBM 2009a at 2 mm, {args.pairs_3d} test pairs", rows3, times3, "volume")):
        ratio = np.mean(times["SimpleITK"]) / np.mean(times["DIRNet"])
        print(f"| {label} | before registration | {summarize(rows['before'])} | | |")
        print(f"| {label} | DIRNet ({MODEL_2D if unit == 'slice' else MODEL_3D}) | {summarize(rows['DIRNet'])} | "
              f"{np.mean(times['DIRNet']):.3f} per {unit} | |")
        print(f"| {label} | SimpleITK B-spline (tuned, {best if unit == 'slice' else control3_mm * best / control_mm:g} mm grid) | "
              f"{summarize(rows['SimpleITK'])} | {np.mean(times['SimpleITK']):.3f} per {unit} | {ratio:.1f} |")
    record = {}
    for name, rows, times, model, spacing in (("2D", rows2, times2, MODEL_2D, best),
                                              ("3D", rows3, times3, MODEL_3D, control3_mm * best / control_mm)):
        diff = np.asarray(rows["DIRNet"]) - np.asarray(rows["SimpleITK"])
        print(f"\n{name}: Dice DIRNet − SimpleITK = {diff.mean():+.3f} ± {diff.std(ddof=1) if len(diff) > 1 else 0:.3f} "
              f"(paired, {len(diff)} pairs)")
        record[name] = {"pairs": len(diff), "model": model, "baseline_grid_spacing_mm": float(spacing),
                        "dice": {k: {"mean": float(np.mean(v)), "sd": float(np.std(v, ddof=1)) if len(v) > 1 else None,
                                     "per_pair": [float(x) for x in v]} for k, v in rows.items()},
                        "seconds": {k: float(np.mean(v)) for k, v in times.items()},
                        "time_ratio_simpleitk_over_dirnet": float(np.mean(times["SimpleITK"]) / np.mean(times["DIRNet"]))}
    record["baseline_tuning_dice"] = {f"{k:g}": v for k, v in scores.items()}
    write_results(args.json, "benchmarks/accuracy/dirnet_vs_bspline.py",
                  SPLIT.format(seeds=f"{args.seed}, tuning {args.seed + 1}") + "; Dice = mean of GM and WM Dice",
                  record, seed=args.seed, threads=1, figure=args.figure)


if __name__ == "__main__":
    main()
