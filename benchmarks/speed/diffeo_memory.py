"""Peak memory and time of ``register(..., 'diffeo')`` on the CPU against volume size, up to 512³.

Each size runs in its own process (so ``ru_maxrss`` is that run's peak resident memory): a cube of N³
voxels at the model's spacing (2 mm, so the network works on all N³ voxels, the hard case), made by
resampling the ICBM 2009a T1 to N³ voxels (test data), against a copy shifted by two voxels and
intensity-jittered. With ``--rigid-initial`` the diffeo step starts from a small rigid transform (0.02,
-0.01, 0.03 rad; 1, -2, 0.5 mm about the centre), as after a rigid registration: the transform is then a
field composed with that pose, and the inverse field is resampled onto the moving grid. The script refuses sizes whose predicted peak (from the smaller sizes measured
first) would exceed the memory ``free`` reports minus a reserve, since the machine is shared.
When 512³ is not among the sizes, a linear fit peak = a + b·voxels over the measured ones estimates it.

Results: benchmarks/results/diffeo_memory.json.

    python benchmarks/speed/diffeo_memory.py --sizes 128,256,512 --tile 48 [--rigid-initial]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from results_json import add_json_argument, write_results  # noqa: E402

RESERVE_GB = 6.0


def synthetic_pair(shape_zyx, rigid_initial: bool) -> tuple:
    """(fixed, moving, initial transform): the ICBM 2009a T1 zoomed to ``shape_zyx`` voxels at 2 mm (the model
    spacing) and a copy rolled by two voxels along x and intensity-jittered; the initial transform is the
    small rigid one of ``--rigid-initial`` or the identity."""
    from scipy.ndimage import zoom

    from DeepRegistrationLib.core.image import Grid, Image
    from DeepRegistrationLib.core.transforms import RigidTransform
    from DeepRegistrationLib.data import sources
    from DeepRegistrationLib.data.synthetic import intensity_jitter

    t1 = sources.icbm152("t1")
    arr = zoom(t1.array.astype(np.float32), [n / s for n, s in zip(shape_zyx, t1.array.shape)], order=1)
    arr = np.ascontiguousarray(arr[tuple(slice(0, n) for n in shape_zyx)])
    grid = Grid(tuple(reversed(shape_zyx)), (2.0, 2.0, 2.0), (0.0, 0.0, 0.0))
    fixed = Image(arr, grid)
    moving = intensity_jitter(Image(np.roll(arr, 2, axis=2), grid), np.random.default_rng(0))
    initial = RigidTransform([0.02, -0.01, 0.03] if rigid_initial else [0.0] * 3,
                             [1.0, -2.0, 0.5] if rigid_initial else [0.0] * 3, grid.center_physical())
    return fixed, moving, initial


def run_one(n: int, tile: int, rigid_initial: bool) -> dict:
    import torch

    from DeepRegistrationLib.api import register

    torch.set_num_threads(1)
    fixed, moving, initial = synthetic_pair((n, n, n), rigid_initial)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    t0 = time.perf_counter()
    result = register(fixed, moving, "diffeo", initial_transform=initial, tile=tile)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    return {"n": n, "peak_gb": peak, "inputs_peak_gb": base, "seconds": seconds,
            "folding_voxels": result.report["folding_voxels"]}


def free_gb() -> float:
    with open("/proc/meminfo") as f:
        info = {line.split(":")[0]: float(line.split()[1]) for line in f}
    return info["MemAvailable"] / 2 ** 20


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="96,128,160,192")
    parser.add_argument("--tile", type=int, default=64)
    parser.add_argument("--rigid-initial", action="store_true", help="start from a small rigid transform")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    add_json_argument(parser, "diffeo_memory")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.tile, args.rigid_initial)))
        return
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        if len(rows) >= 2:
            b, a = np.polyfit([r["n"] ** 3 for r in rows], [r["peak_gb"] for r in rows], 1)
            predicted = a + b * n ** 3
            if predicted > free_gb() - RESERVE_GB:
                print(f"skipping {n}³: predicted {predicted:.1f} GB > available {free_gb():.1f} GB - {RESERVE_GB} GB")
                continue
        out = subprocess.run([sys.executable, __file__, "--one", str(n), "--tile", str(args.tile)]
                             + ["--rigid-initial"] * args.rigid_initial, check=True,
                             capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"{n}³ done: {rows[-1]}", flush=True)
    start = "a small rigid initial transform" if args.rigid_initial else "the identity as initial transform"
    print(f"\nData: ICBM 2009a T1 resampled to N³ voxels at 2 mm (the model spacing) vs a shifted, jittered copy, "
          f"{start}; tile {args.tile}³; CPU, 1 thread; peak RSS of the whole process (inputs included).\n")
    print("| N³ | voxels | peak RSS (GB) | seconds | folding voxels |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['n']}³ | {r['n'] ** 3:,} | {r['peak_gb']:.2f} | {r['seconds']:.1f} | {r['folding_voxels']} |")
    if all(r["n"] < 512 for r in rows):
        b, a = np.polyfit([r["n"] ** 3 for r in rows], [r["peak_gb"] for r in rows], 1)
        print(f"\nlinear fit: peak ≈ {a:.2f} GB + {b * 1e6:.3f} GB per million voxels → 512³ ≈ "
              f"{a + b * 512 ** 3:.1f} GB (extrapolated, not measured; the budget is 24 GB)")
    write_results(args.json, "benchmarks/speed/diffeo_memory.py",
                  f"ICBM 2009a T1 resampled to N³ voxels at 2 mm vs a shifted, jittered copy, {start}",
                  rows, tile=args.tile, rigid_initial=args.rigid_initial, threads=1)


if __name__ == "__main__":
    main()
