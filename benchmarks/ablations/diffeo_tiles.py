"""Tile size and network precision for whole-volume prediction: agreement with 48³ float32 tiles (the
training patch and arithmetic) and speed.

Data (test split): one pair of subjects made from the nilearn ICBM 2009a T1 at 2 mm (99×117×95; the
bundled model never saw ICBM data), as in benchmarks/accuracy/diffeo_evaluation.py. For each tile size (12 voxels
discarded per side) and network precision (float32, or bfloat16 under autocast) the momentum is predicted
tile by tile and smoothed and integrated on the whole volume (float32); the forward displacement is
compared with the one from 48³ float32 tiles (mean and max |Δu| in mm over the volume) and the momentum
prediction is timed (best of ``--repeats``). A setting agrees with 48³ float32 when mean |Δu| < 0.05 mm
and < 5 % of the mean |u|, and max |Δu| < 0.5 mm. The default tile is the fastest agreeing float32 tile
(times within 10 % count as a tie, won by the smaller tile: less memory per tile); bfloat16 is then the
default precision where it agrees at that tile and is faster by more than 10 %.
Each setting's registration result is also scored against the subjects' GM maps (moving GM warped by
φ vs fixed GM, both thresholded at 0.5), so a disagreement can be read as better or worse, not only different.

Results: benchmarks/results/diffeo_tiles.json.

    python benchmarks/ablations/diffeo_tiles.py --tiles 48,64,80,96,128 --precisions float32,bfloat16
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from DeepRegistrationLib.core.device import has_native_bfloat16
from DeepRegistrationLib.data import sources
from DeepRegistrationLib.deformable.diffeo_registration import lddmm_parameters, load_momentum_net
from DeepRegistrationLib.methods import SPECS
from DeepRegistrationLib.deformable import lddmm
from DeepRegistrationLib.deformable.patchwise import integrate_velocity, predict_momentum
from DeepRegistrationLib.core.network_input import normalize_intensity, resample_to
from DeepRegistrationLib.core.spatial_transformer import warp_voxels
from DeepRegistrationLib.metrics.evaluation import dice_per_label, fields_agree

DEFAULT_MODEL = SPECS["diffeo"].default_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "accuracy"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from diffeo_evaluation import make_subject  # noqa: E402
from results_json import add_json_argument, write_results  # noqa: E402

TIE = 1.10


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiles", default="48,64,80,96,128")
    parser.add_argument("--precisions", default="float32,bfloat16")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--model", default=DEFAULT_MODEL, help="diffeo model: bundled name or file (default: bundled)")
    add_json_argument(parser, "diffeo_tiles")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tiles = [int(t) for t in args.tiles.split(",")]
    precisions = args.precisions.split(",")
    if "float32" not in precisions:
        parser.error("--precisions must include float32 (the reference)")
    grid = sources.icbm152("t1").grid.with_spacing([2.0] * 3)
    t1, gm, wm = (resample_to(sources.icbm152(k), grid) for k in ("t1", "gm", "wm"))
    pair = [make_subject(t1, gm, wm, seed) for seed in (1000, 1001)]
    subjects = [normalize_intensity(s[0].array) for s in pair]
    fixed_gm = (pair[0][1].array > 0.5).astype(np.uint8)
    moving_gm = torch.as_tensor(pair[1][1].array, dtype=torch.float32)[None, None]

    def gm_dice(u_mm):
        warped = warp_voxels(moving_gm, u_mm / 2.0, padding_mode="zeros")[0, 0].numpy()
        return dice_per_label(fixed_gm, (warped > 0.5).astype(np.uint8), [1])[1]
    net, meta = load_momentum_net(args.model)
    params = lddmm_parameters(meta)
    settings = [(tile, precision) for precision in precisions for tile in tiles]
    seconds, fields = {}, {}
    for tile, precision in settings:
        best = float("inf")
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            momentum = predict_momentum(net, subjects[0], subjects[1], tile, 12, precision=precision)
            best = min(best, time.perf_counter() - t0)
        v = lddmm.smooth(momentum, [2.0] * 3, params["alpha"], params["gamma"], params["padding"])
        fields[tile, precision] = integrate_velocity(lddmm.velocity_to_voxels(v, [2.0] * 3), [2.0] * 3,
                                                     params["steps"])[0] * 2.0
        seconds[tile, precision] = best
    reference = (48 if 48 in tiles else tiles[0], "float32")
    ref = fields[reference]
    print(f"Data: one test pair of ICBM 2009a T1 subjects (2 mm, {t1.grid.size}); model {args.model}; "
          f"{args.threads} CPU thread(s); 12 voxels discarded per tile side; CPU bfloat16 instructions: "
          f"{'yes' if has_native_bfloat16('cpu') else 'no'}; GM Dice before registration "
          f"{gm_dice(torch.zeros_like(ref)):.4f}.\n")
    print(f"| tile | precision | kept per tile | momentum prediction (s) | speed-up vs {reference[0]}³ float32 | "
          "mean |Δu| (mm) | max |Δu| (mm) | agrees | GM Dice |")
    print("|---|---|---|---|---|---|---|---|---|")
    agrees, rows = {}, []
    for tile, precision in settings:
        agrees[tile, precision], mean, largest, _ = fields_agree(fields[tile, precision], ref)
        rows.append({"tile": tile, "precision": precision, "seconds": seconds[tile, precision],
                     "mean_du_mm": float(mean), "max_du_mm": float(largest), "agrees": bool(agrees[tile, precision]),
                     "gm_dice": float(gm_dice(fields[tile, precision]))})
        print(f"| {tile}³ | {precision} | {100 * ((tile - 24) / tile) ** 3:.1f} % | {seconds[tile, precision]:.2f} | "
              f"{seconds[reference] / seconds[tile, precision]:.2f} | {mean:.4f} | {largest:.4f} | "
              f"{'yes' if agrees[tile, precision] else 'no'} | {gm_dice(fields[tile, precision]):.4f} |")
    print(f"\nmean |u| of the {reference[0]}³ float32 result: {float(ref.norm(dim=1).mean()):.3f} mm "
          f"(max {float(ref.norm(dim=1).max()):.3f})")
    agreeing = [(seconds[tile, "float32"], tile) for tile in tiles if agrees[tile, "float32"]]
    fastest = min(agreeing)[0]
    tile = min(t for s, t in agreeing if s <= TIE * fastest)
    print(f"fastest agreeing float32 tile (ties within 10 % go to the smaller tile): {tile}³")
    if "bfloat16" in precisions:
        faster = agrees[tile, "bfloat16"] and seconds[tile, "bfloat16"] * TIE < seconds[tile, "float32"]
        print(f"bfloat16 at {tile}³: {'agrees and is faster: the default on this CPU' if faster else 'not the default'} "
              f"({seconds[tile, 'float32'] / seconds[tile, 'bfloat16']:.2f}x)")
    write_results(args.json, "benchmarks/ablations/diffeo_tiles.py",
                  f"one test pair of ICBM 2009a T1 subjects (2 mm, {tuple(t1.grid.size)}), seeds 1000 and 1001",
                  {"settings": rows, "reference": list(reference), "chosen_tile": tile,
                   "mean_u_mm": float(ref.norm(dim=1).mean())},
                  model=args.model, threads=args.threads, repeats=args.repeats,
                  native_bfloat16=bool(has_native_bfloat16("cpu")))


if __name__ == "__main__":
    main()
