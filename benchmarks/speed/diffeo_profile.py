"""Where the time of one ``register(..., 'diffeo')`` call goes, and three of its parts against a baseline.

Data: the first evaluation pair of benchmarks/accuracy/diffeo_evaluation.py (ICBM 2009a T1 subjects at 2 mm,
99×117×95), registered after the same rigid NMI step. The call is run once to warm up, then
``--repeats`` times; the table gives the median of each stage from the report's timings, and of the
report's quality figures timed one by one, and the inverse-consistency error over every fixed voxel
against the report's, over those mapped into the moving image. Then, in the same run:

- the FFT smoothing (3 channels, rfftn + irfftn) on the grid padded by exactly 12 voxels per side (the
  baseline) and on ``lddmm.padded_shape`` (rounded up to 2-3-5 lengths, what ``smooth`` uses);
- the Jacobian determinant of the forward field: ``numpy.linalg.det`` of the stacked 3×3 matrices (the
  baseline) against ``core.jacobian.jacobian_determinant``, with their largest difference;
- one scaling-and-squaring composition's sampling (``grid_sample`` of a 3-channel field of the volume's size
  at x + u(x)): ``torch.nn.functional.grid_sample`` (the baseline; its CPU kernel uses one thread per
  batch item) against ``core.grid_sampling.grid_sample`` (the points cut into one batch item per thread),
  with their largest difference;
- the network's multiply-adds per tile voxel (counted from its convolution layers) and for the tiles;
- with ``--tile-batches``, the tile predictions' time (best of ``--repeats`` calls) for each number of
  tiles per network call.

Results: benchmarks/results/diffeo_profile_<threads>t.json.

    python benchmarks/speed/diffeo_profile.py --threads 1
    python benchmarks/speed/diffeo_profile.py --threads 2 --tile-batches 2,4,8,9,16,24
"""
from __future__ import annotations

import argparse
import itertools
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from DeepRegistrationLib.api import register
from DeepRegistrationLib.core.device import PRECISION_CHOICES, resolve_precision
from DeepRegistrationLib.core.grid_sampling import grid_sample
from DeepRegistrationLib.core.jacobian import jacobian_determinant
from DeepRegistrationLib.core.transforms import DisplacementField
from DeepRegistrationLib.core.warp import inside_mask, warp
from DeepRegistrationLib.data import sources
from DeepRegistrationLib.data.synthetic import random_rigid
from DeepRegistrationLib.deformable import lddmm
from DeepRegistrationLib.deformable.diffeo_registration import load_momentum_net
from DeepRegistrationLib.methods import SPECS
from DeepRegistrationLib.core.network_input import resample_to
from DeepRegistrationLib.deformable.patchwise import DISCARD, tile_layout
from DeepRegistrationLib.core.spatial_transformer import identity_grid, voxels_to_normalized
from DeepRegistrationLib.metrics.quality_report import (REPORT_POINTS, inverse_consistency_mm, jacobian_map, mapped_sample,
                                                 quality_report)
from DeepRegistrationLib.metrics.sampled_nmi import SampledNMI

DEFAULT_TILE = SPECS["diffeo"].option("tile").default

DEFAULT_MODEL = SPECS["diffeo"].default_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "accuracy"))
from diffeo_evaluation import SPACING, make_subject  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from results_json import default_path, write_results  # noqa: E402


def seconds(fn, repeats: int) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs, after one warm-up run."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def multiply_adds_per_voxel(net, tile: int) -> float:
    """Multiply-adds of all (transposed) convolutions for one tile³ input, per input voxel."""
    total = 0

    def count(module, inputs, output):
        nonlocal total
        kernel = module.weight[0, 0].numel()
        if isinstance(module, torch.nn.ConvTranspose3d):
            total += inputs[0][0].numel() * module.weight.shape[1] * kernel
        else:
            total += output[0].numel() * module.weight.shape[1] * kernel

    hooks = [m.register_forward_hook(count) for m in net.modules()
             if isinstance(m, (torch.nn.Conv3d, torch.nn.ConvTranspose3d))]
    with torch.no_grad():
        x = torch.zeros(1, 1, tile, tile, tile)
        net(x, x)
    for h in hooks:
        h.remove()
    return total / tile ** 3


def fft_smoothing(shape) -> torch.Tensor:
    x = torch.randn(3, *shape)
    return torch.fft.irfftn(torch.fft.rfftn(x, dim=(-3, -2, -1)), s=shape, dim=(-3, -2, -1))


def composition_coords(shape) -> torch.Tensor:
    """grid_sample coordinates of x + u(x) for a smooth random u of about 2 voxels on ``shape``."""
    u = F.interpolate(torch.randn(1, 3, *(max(n // 16, 2) for n in shape), generator=torch.Generator().manual_seed(0)),
                      size=shape, mode="trilinear", align_corners=True) * 2.0
    return voxels_to_normalized(identity_grid(shape) + u)


def numpy_det_jacobian(field: DisplacementField) -> np.ndarray:
    """The baseline: I + ∂u/∂x stacked as (..., 3, 3) and ``numpy.linalg.det``."""
    u = field.displacement_mm
    index_from_physical = np.linalg.inv(field.grid.voxel_to_mm).astype(np.float32)
    grads = np.stack([np.gradient(u, axis=ax) for ax in (2, 1, 0)], axis=-1)
    return np.linalg.det(grads @ index_from_physical + np.eye(3, dtype=np.float32))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--tile-batches", default="", help="comma-separated tiles per network call to time")
    p.add_argument("--precision", default="auto", choices=PRECISION_CHOICES,
                   help="the network's arithmetic (default auto: bfloat16 on a CPU with bfloat16 instructions)")
    p.add_argument("--json", help="results file (default benchmarks/results/diffeo_profile_<threads>t.json)")
    args = p.parse_args(argv)
    record = {}
    precision = resolve_precision(args.precision, "cpu")
    torch.set_num_threads(args.threads)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(args.threads)
    grid = sources.icbm152("t1").grid.with_spacing([SPACING] * 3)
    t1, gm, wm = (resample_to(sources.icbm152(k), grid) for k in ("t1", "gm", "wm"))
    fixed = make_subject(t1, gm, wm, 1000)[0]
    moving = warp(make_subject(t1, gm, wm, 1001)[0], grid,
                  random_rigid(np.random.default_rng(3000), grid.center_physical(), (1.0, 5.0), 0.05).inverse())
    rigid = register(fixed, moving, "nmi").transform

    register(fixed, moving, "diffeo", initial_transform=rigid, precision=precision)
    reports = [register(fixed, moving, "diffeo", initial_transform=rigid, precision=precision).report
               for _ in range(args.repeats)]
    stage = {name: statistics.median(fn(r) for r in reports) for name, fn in (
        ("tile predictions (network)", lambda r: r["seconds_momentum"]),
        ("smoothing and integration", lambda r: r["seconds_integration"]),
        ("rest of the method (loading, resampling, fields on the image grids)",
         lambda r: r["seconds_method"] - r["seconds_momentum"] - r["seconds_integration"]),
        ("warped image", lambda r: r["seconds_resample"]),
        ("QA report", lambda r: r["seconds_total"] - r["seconds_method"] - r["seconds_resample"]),
        ("whole register() call", lambda r: r["seconds_total"]))}
    result = register(fixed, moving, "diffeo", initial_transform=rigid, precision=precision)
    forward = DisplacementField.from_transform(result.transform, fixed.grid)
    nmi = SampledNMI.on_grid(fixed, moving, 64, REPORT_POINTS, seed=0, device="cpu", linear=False)
    mapped = mapped_sample(result.transform, fixed.grid, nmi.points)
    inside = inside_mask(moving.grid, mapped)
    report_parts = {
        "NMI sample (fixed voxels and values)": seconds(
            lambda: SampledNMI.on_grid(fixed, moving, 64, REPORT_POINTS, seed=0, device="cpu", linear=False),
            args.repeats),
        "NMI before": seconds(lambda: nmi(rigid), args.repeats),
        "forward transform at the sample": seconds(lambda: mapped_sample(result.transform, fixed.grid, nmi.points),
                                                   args.repeats),
        "NMI after": seconds(lambda: nmi.at_points(mapped), args.repeats),
        "Jacobian determinant map": seconds(lambda: jacobian_map(result.transform, fixed.grid), args.repeats),
        "inverse consistency": seconds(lambda: inverse_consistency_mm(result.inverse, mapped, nmi.points, inside),
                                       args.repeats),
        "whole QA report": seconds(lambda: quality_report(fixed, moving, rigid, result.transform, result.inverse),
                                   args.repeats),
    }

    print(f"Data: evaluation pair 1 of diffeo_evaluation.py (2 mm, {grid.size}); {platform.machine()} CPU, "
          f"{args.threads} thread(s), network in {precision}; medians of {args.repeats} runs after a warm-up.\n")
    print("| stage of register(..., 'diffeo') | seconds |")
    print("|---|---|")
    for name, value in stage.items():
        print(f"| {name} | {value:.2f} |")
    print("\n| QA report part | seconds |")
    print("|---|---|")
    for name, value in report_parts.items():
        print(f"| {name} | {value:.3f} |")
    with torch.no_grad():
        error = (result.inverse.transform_points_torch(mapped) - nmi.points).norm(dim=-1)
    print(f"\ninverse consistency ‖φ⁻¹(φ(x)) − x‖ over every fixed voxel: mean {error.mean():.4f} mm, max "
          f"{error.max():.2f} mm; over the {100 * inside.double().mean():.1f} % mapped into the moving image (the "
          f"report's): mean {error[inside].mean():.4f} mm, max {error[inside].max():.2f} mm; over the others: mean "
          f"{error[~inside].mean():.2f} mm")

    shape = fixed.grid.shape
    exact = tuple(n + 2 * lddmm.PADDING for n in shape)
    rounded = lddmm.padded_shape(shape)
    t_exact = seconds(lambda: fft_smoothing(exact), args.repeats)
    t_rounded = seconds(lambda: fft_smoothing(rounded), args.repeats)
    t_numpy = seconds(lambda: numpy_det_jacobian(forward), args.repeats)
    t_ours = seconds(lambda: jacobian_determinant(forward), args.repeats)
    difference = float(np.abs(numpy_det_jacobian(forward) - jacobian_determinant(forward)).max())
    field = torch.randn(1, 3, *shape)
    coords = composition_coords(shape)
    t_torch = seconds(lambda: F.grid_sample(field, coords, padding_mode="border", align_corners=True), args.repeats)
    t_threads = seconds(lambda: grid_sample(field, coords, padding_mode="border"), args.repeats)
    sampling_difference = float((F.grid_sample(field, coords, padding_mode="border", align_corners=True)
                                 - grid_sample(field, coords, padding_mode="border")).abs().max())
    print("\n| part | baseline | seconds | ours | seconds | ratio |")
    print("|---|---|---|---|---|---|")
    print(f"| FFT smoothing, 3 channels | padded by 12: {'×'.join(map(str, exact))} | {t_exact:.3f} | "
          f"rounded: {'×'.join(map(str, rounded))} | {t_rounded:.3f} | {t_exact / t_rounded:.1f} |")
    print(f"| Jacobian determinant | numpy.linalg.det | {t_numpy:.3f} | triple product | {t_ours:.3f} | "
          f"{t_numpy / t_ours:.1f} |")
    print(f"| sampling of one composition, 3 channels | F.grid_sample | {t_torch:.3f} | one batch item per thread | "
          f"{t_threads:.3f} | {t_torch / t_threads:.1f} |")
    print(f"\nlargest |det J difference|: {difference:.1e}; largest sampling difference: {sampling_difference:.1e}")
    record.update(stages_seconds=stage, qa_report_parts_seconds=report_parts,
                  inverse_consistency_mm={"every_voxel_mean": float(error.mean()), "mapped_inside_mean":
                                          float(error[inside].mean()), "fraction_inside": float(inside.double().mean())},
                  parts={"fft_smoothing": [t_exact, t_rounded], "jacobian_determinant": [t_numpy, t_ours],
                         "composition_sampling": [t_torch, t_threads]})

    net = load_momentum_net(DEFAULT_MODEL)[0]
    per_voxel = multiply_adds_per_voxel(net, DEFAULT_TILE)
    tiles = len(list(itertools.product(*[tile_layout(n, DEFAULT_TILE, DISCARD) for n in shape])))
    total = per_voxel * tiles * DEFAULT_TILE ** 3
    print(f"network: {per_voxel:,.0f} multiply-adds per tile voxel; {tiles} tiles of {DEFAULT_TILE}³ = "
          f"{tiles * DEFAULT_TILE ** 3 / np.prod(shape):.1f}× the volume's voxels; {total / 1e9:.1f} G multiply-adds, "
          f"{total / 1e9 / stage['tile predictions (network)']:.1f} G per second of tile prediction")
    record["network"] = {"multiply_adds_per_tile_voxel": per_voxel, "tiles": tiles, "multiply_adds": total}
    if args.tile_batches:
        print("\n| tiles per network call | tile predictions (s) |")
        print("|---|---|")
        record["tile_batches_seconds"] = {}
        for batch in (int(b) for b in args.tile_batches.split(",")):
            best = min(register(fixed, moving, "diffeo", initial_transform=rigid, tile_batch=batch,
                                precision=precision).report["seconds_momentum"] for _ in range(args.repeats))
            print(f"| {batch} | {best:.2f} |")
            record["tile_batches_seconds"][str(batch)] = best
    write_results(args.json or default_path(f"diffeo_profile_{args.threads}t"), "benchmarks/speed/diffeo_profile.py",
                  f"evaluation pair 1 of diffeo_evaluation.py (ICBM 2009a T1 subjects, 2 mm, {tuple(grid.size)})",
                  record, threads=args.threads, precision=precision, repeats=args.repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
