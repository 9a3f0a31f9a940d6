"""Tile size for whole-volume prediction: agreement with 48³ tiles (the training patch) and speed.

Data (test split): one pair of subjects made from the nilearn ICBM 2009a T1 at 2 mm (99×117×95; the
bundled model never saw ICBM data), as in benchmarks/diffeo_evaluation.py. For each tile size (12 voxels
discarded per side) the momentum is predicted tile by tile and smoothed and integrated on the whole
volume; the forward displacement is compared with the one from 48³ tiles (mean and max |Δu| in mm over
the volume) and the momentum prediction is timed (best of ``--repeats``). The default is the fastest
tile size whose field agrees with 48³ tiles: mean |Δu| < 0.05 mm and < 5 % of the mean |u|, and max |Δu|
< 0.5 mm; prediction times within 10 % count as a tie, won by the smaller tile (less memory per tile).
Each tile size's registration result is also scored against the subjects' GM maps (moving GM warped by
φ vs fixed GM, both thresholded at 0.5), so a disagreement can be read as better or worse, not only different.

    python benchmarks/diffeo_tiles.py --tiles 48,64,80,96,128
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from DeepRegistrationLib.data import sources
from DeepRegistrationLib.deformable.diffeo_method import DEFAULT_MODEL, lddmm_parameters, load_momentum_net
from DeepRegistrationLib.deformable.patchwise import integrate, predict_momentum
from DeepRegistrationLib.deformable.model_input import normalize_intensity, resample_to
from DeepRegistrationLib.deformable.spatial_transformer import warp_voxels
from DeepRegistrationLib.metrics.evaluation import dice_per_label

sys.path.insert(0, str(Path(__file__).parent))
from diffeo_evaluation import make_subject  # noqa: E402

MEAN_TOLERANCE_MM = 0.05
MAX_TOLERANCE_MM = 0.5
RELATIVE_TOLERANCE = 0.05
TIE = 1.10


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiles", default="48,64,80,96,128")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--model", default=DEFAULT_MODEL, help="diffeo model: bundled name or file (default: bundled)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tiles = [int(t) for t in args.tiles.split(",")]
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
    rows, fields = [], {}
    for tile in tiles:
        best = float("inf")
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            momentum = predict_momentum(net, subjects[0], subjects[1], tile, 12)
            best = min(best, time.perf_counter() - t0)
        fields[tile] = integrate(momentum, [2.0] * 3, **params)[0] * 2.0
        rows.append((tile, best))
    ref = fields[48] if 48 in fields else fields[tiles[0]]
    print(f"Data: one test pair of ICBM 2009a T1 subjects (2 mm, {t1.grid.size}); model {args.model}; "
          f"{args.threads} CPU thread(s); 12 voxels discarded per tile side; GM Dice before registration "
          f"{gm_dice(torch.zeros_like(ref)):.4f}.\n")
    print("| tile | kept per tile | momentum prediction (s) | speed-up vs 48³ | mean |Δu| vs 48³ (mm) | "
          "max |Δu| (mm) | agrees | GM Dice |")
    print("|---|---|---|---|---|---|---|---|")
    t48 = dict(rows).get(48, rows[0][1])
    agreeing = []
    for tile, seconds in rows:
        diff = (fields[tile] - ref).norm(dim=1)
        ok = (float(diff.mean()) < min(MEAN_TOLERANCE_MM, RELATIVE_TOLERANCE * float(ref.norm(dim=1).mean()))
              and float(diff.max()) < MAX_TOLERANCE_MM)
        if ok:
            agreeing.append((seconds, tile))
        print(f"| {tile}³ | {100 * ((tile - 24) / tile) ** 3:.1f} % | {seconds:.2f} | {t48 / seconds:.2f} | "
              f"{float(diff.mean()):.4f} | {float(diff.max()):.4f} | {'yes' if ok else 'no'} | "
              f"{gm_dice(fields[tile]):.4f} |")
    print(f"\nmean |u| of the 48³ result: {float(ref.norm(dim=1).mean()):.3f} mm (max {float(ref.norm(dim=1).max()):.3f})")
    if agreeing:
        fastest = min(agreeing)[0]
        print(f"fastest agreeing tile (ties within 10 % go to the smaller tile): "
              f"{min(t for s, t in agreeing if s <= TIE * fastest)}³")
    else:
        print("no tile size agrees")


if __name__ == "__main__":
    main()
