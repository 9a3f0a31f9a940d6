"""Scaling and squaring on the grid of every other voxel: agreement with the full-grid integration and speed.

Data (test split): the velocity of one pair of subjects made from the nilearn ICBM 2009a T1 at 2 mm
(99×117×95), as in benchmarks/ablations/diffeo_tiles.py: momentum predicted by the bundled model with 48³ tiles,
smoothed on the whole volume. Baseline: all N = 7 squarings of exp(v) and exp(−v) on the full grid.
Ours: the first 7 − k on the grid of every other voxel, then the field interpolated back to the full grid
and the last k squarings there (``patchwise.exponentials(v, fine_steps=k)``). Each setting is timed (best
of ``--repeats``, both directions) and its forward and inverse displacements compared with the baseline's
by the tile benchmark's rule (``metrics.evaluation.fields_agree``); also its GM Dice (moving GM warped by φ
vs fixed GM, both thresholded at 0.5), its inverse consistency ‖φ⁻¹(φ(x)) − x‖ over the voxels 8 or more
from the border, and its folding voxels in both directions. The default k is the fewest full-grid
squarings whose fields agree in both directions. ``register`` uses the coarse grid only when it holds the
velocity itself by the same rule (``patchwise.coarse_grid_holds``, printed last); otherwise all squarings
run on the full grid. ``--shape Z,Y,X`` crops the pair at its centre first: on even sides the coarse grid
has one node past the last voxel (``lddmm.coarsen``), on odd sides it does not.

Results: benchmarks/results/diffeo_integration_grid.json.

    OMP_NUM_THREADS=1 python benchmarks/ablations/diffeo_integration_grid.py --repeats 3 [--shape 94,116,98]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from DeepRegistrationLib.core.image import Grid
from DeepRegistrationLib.core.jacobian import jacobian_determinant
from DeepRegistrationLib.core.transforms import DisplacementField
from DeepRegistrationLib.data import sources
from DeepRegistrationLib.core.scaling_and_squaring import compose
from DeepRegistrationLib.deformable import lddmm
from DeepRegistrationLib.deformable.diffeo_registration import lddmm_parameters, load_momentum_net
from DeepRegistrationLib.methods import SPECS
from DeepRegistrationLib.core.network_input import normalize_intensity, resample_to
from DeepRegistrationLib.deformable.patchwise import FINE_SQUARINGS, coarse_grid_holds, exponentials, predict_momentum, voxels_to_lps_mm
from DeepRegistrationLib.core.spatial_transformer import warp_voxels
from DeepRegistrationLib.metrics.evaluation import dice_per_label, fields_agree, lengths

DEFAULT_MODEL = SPECS["diffeo"].default_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "accuracy"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from diffeo_evaluation import make_subject  # noqa: E402
from results_json import add_json_argument, write_results  # noqa: E402

SPACING_MM = 2.0


def folding_voxels(u_vox: torch.Tensor, grid) -> int:
    return int((jacobian_determinant(DisplacementField(voxels_to_lps_mm(u_vox, grid), grid)) <= 0).sum())


def centre_start(full_zyx, shape_zyx) -> list:
    return [(n - s) // 2 for n, s in zip(full_zyx, shape_zyx)]


def centre_crop(array: np.ndarray, shape_zyx) -> np.ndarray:
    start = centre_start(array.shape, shape_zyx)
    return np.ascontiguousarray(array[tuple(slice(a, a + s) for a, s in zip(start, shape_zyx))])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--shape", help="Z,Y,X: centre crop of the pair (default: the whole volume)")
    add_json_argument(parser, "diffeo_integration_grid")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    grid = sources.icbm152("t1").grid.with_spacing([SPACING_MM] * 3)
    t1, gm, wm = (resample_to(sources.icbm152(k), grid) for k in ("t1", "gm", "wm"))
    pair = [make_subject(t1, gm, wm, seed) for seed in (1000, 1001)]
    shape = tuple(int(n) for n in args.shape.split(",")) if args.shape else grid.shape
    if len(shape) != 3 or any(not 0 < s <= n for s, n in zip(shape, grid.shape)):
        parser.error(f"--shape {args.shape}: three sides Z,Y,X within the volume's {','.join(map(str, grid.shape))}")
    origin = grid.index_to_physical(np.asarray(list(reversed(centre_start(grid.shape, shape))), float))
    grid = Grid(tuple(reversed(shape)), grid.spacing, origin, grid.direction)          # the crop's own geometry
    fixed, moving = (normalize_intensity(centre_crop(s[0].array, shape)) for s in pair)
    fixed_gm = (centre_crop(pair[0][1].array, shape) > 0.5).astype(np.uint8)
    moving_gm = torch.as_tensor(centre_crop(pair[1][1].array, shape), dtype=torch.float32)[None, None]
    net, meta = load_momentum_net(DEFAULT_MODEL)
    params = lddmm_parameters(meta)
    steps = params["steps"]
    momentum = predict_momentum(net, fixed, moving, 48, 12)
    spacing = [SPACING_MM] * 3
    velocity = lddmm.velocity_to_voxels(lddmm.smooth(momentum, spacing, params["alpha"], params["gamma"],
                                                     params["padding"]), spacing)
    results = {}
    for fine in [steps, *range(0, steps)][:4]:
        best = float("inf")
        for _ in range(args.repeats):
            v = velocity.clone()
            t0 = time.perf_counter()
            fields = exponentials(v, steps, fine_steps=fine)
            best = min(best, time.perf_counter() - t0)
        results[fine] = (best, fields)
    reference_seconds, (ref_forward, ref_inverse) = results[steps]
    print(f"Data: one test pair of ICBM 2009a T1 subjects ({SPACING_MM:g} mm, {t1.grid.size}, cropped to "
          f"{tuple(reversed(shape))}); model {DEFAULT_MODEL}; "
          f"{args.threads} CPU thread(s); N = {steps} squarings; best of {args.repeats}.\n")
    print("| squarings on every other voxel / on the full grid | seconds (both directions) | speed-up | "
          "mean / max \\|Δu\\| forward (mm) | mean / max \\|Δu\\| inverse (mm) | agrees | GM Dice | "
          "inverse consistency mean / max (mm) | folding voxels (forward, inverse) |")
    print("|---|---|---|---|---|---|---|---|---|")
    agreeing, rows = [], []
    for fine, (seconds, (forward, inverse)) in results.items():
        ok_f, mean_f, max_f, _ = fields_agree(forward * SPACING_MM, ref_forward * SPACING_MM)
        ok_i, mean_i, max_i, _ = fields_agree(inverse * SPACING_MM, ref_inverse * SPACING_MM)
        if ok_f and ok_i and fine < steps:
            agreeing.append(fine)
        warped = warp_voxels(moving_gm, forward, padding_mode="zeros")[0, 0].numpy()
        dice = dice_per_label(fixed_gm, (warped > 0.5).astype(np.uint8), [1])[1]
        residual = (lengths(compose(inverse, forward)) * SPACING_MM)[:, 8:-8, 8:-8, 8:-8]
        label = "0 / 7 (baseline)" if fine == steps else f"{steps - fine} / {fine}"
        rows.append({"coarse_squarings": steps - fine if fine < steps else 0, "fine_squarings": fine,
                     "seconds": seconds, "speed_up": reference_seconds / seconds,
                     "forward_mean_max_du_mm": [float(mean_f), float(max_f)],
                     "inverse_mean_max_du_mm": [float(mean_i), float(max_i)], "agrees": bool(ok_f and ok_i),
                     "gm_dice": float(dice), "inverse_consistency_mean_max_mm": [float(residual.mean()),
                                                                                 float(residual.max())],
                     "folding_voxels": [int(folding_voxels(forward, grid)), int(folding_voxels(inverse, grid))]})
        print(f"| {label} | {seconds:.3f} | {reference_seconds / seconds:.2f} | {mean_f:.4f} / {max_f:.3f} | "
              f"{mean_i:.4f} / {max_i:.3f} | {'yes' if ok_f and ok_i else 'no'} | {dice:.4f} | "
              f"{float(residual.mean()):.4f} / {float(residual.max()):.3f} | "
              f"{folding_voxels(forward, grid)}, {folding_voxels(inverse, grid)} |", flush=True)
    print(f"\nmean |u| of the baseline's forward field: {float(lengths(ref_forward * SPACING_MM).mean()):.3f} mm")
    chosen = min(agreeing) if agreeing else steps
    print(f"fewest full-grid squarings that agree: {chosen} (the library's default: {FINE_SQUARINGS}); "
          f"the coarse grid holds this velocity by patchwise.coarse_grid_holds: {coarse_grid_holds(velocity, spacing)}")
    write_results(args.json, "benchmarks/ablations/diffeo_integration_grid.py",
                  f"velocity of one test pair of ICBM 2009a T1 subjects (seeds 1000, 1001) cropped to "
                  f"{tuple(reversed(shape))} (x, y, z)", {"settings": rows, "fewest_agreeing_fine_squarings": chosen},
                  threads=args.threads, repeats=args.repeats)


if __name__ == "__main__":
    main()
