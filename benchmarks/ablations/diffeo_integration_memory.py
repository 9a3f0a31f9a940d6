"""Peak memory of the whole-volume smoothing and integration against the one-buffer-per-step baselines.

Each measurement runs in its own process, so ``ru_maxrss`` is that step's peak; the table gives the peak
*above* what the process held with its input field (a random smooth 3-channel field of N³ voxels), in
GB and in fields of 3×N³ float32 voxels, and the step's time:

- integration, baseline: ``exponential(v)`` then ``exponential(-v)`` with ``v`` negated in
  place, each squaring in a new tensor (the inference path before 2026-12-03);
- integration, ours: ``patchwise.exponentials`` with every squaring on the full grid (two buffers that
  the squarings alternate in, the velocity's memory reused for the inverse);
- smoothing, baseline: the FFT loop with the padded channel kept and the kernel product in a new tensor;
- smoothing, ours: ``lddmm.smooth``.

Before the table, both pairs are checked on a 40³ field to give identical results (``torch.equal``).

Results: benchmarks/results/diffeo_integration_memory.json.

    OMP_NUM_THREADS=1 python benchmarks/ablations/diffeo_integration_memory.py --sizes 256,384
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from DeepRegistrationLib.core.scaling_and_squaring import exponential
from DeepRegistrationLib.deformable import lddmm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from results_json import add_json_argument, write_results  # noqa: E402
from DeepRegistrationLib.deformable.patchwise import exponentials

SPACING = (2.0, 2.0, 2.0)
CASES = ("integration, baseline", "integration, ours", "smoothing, baseline", "smoothing, ours")


def smooth_field(n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    coarse = torch.randn(1, 3, max(n // 16, 2), max(n // 16, 2), max(n // 16, 2), generator=g)
    return F.interpolate(coarse, size=(n, n, n), mode="trilinear", align_corners=True).mul_(3.0)


@torch.no_grad()
def baseline_exponentials(v: torch.Tensor, steps: int = lddmm.STEPS) -> tuple:
    slab = lddmm.slab_for(v.shape)
    forward = exponential(v, steps, slab)
    return forward, exponential(v.neg_(), steps, slab)


def full_grid_exponentials(v: torch.Tensor) -> tuple:
    return exponentials(v, lddmm.STEPS, fine_steps=lddmm.STEPS)


def baseline_smooth(momentum: torch.Tensor) -> torch.Tensor:
    shape = momentum.shape[2:]
    padded = lddmm.padded_shape(shape)
    spectrum = lddmm.kernel_spectrum(padded, SPACING, lddmm.ALPHA, lddmm.GAMMA, torch.float32, momentum.device)
    pads = []
    for n, total in zip(reversed(shape), reversed(padded)):
        pads += [lddmm.PADDING, total - n - lddmm.PADDING]
    crop = tuple(slice(lddmm.PADDING, lddmm.PADDING + n) for n in shape)
    out = torch.empty_like(momentum)
    for c in range(momentum.shape[1]):
        m = F.pad(momentum[:, c], pads)
        v = torch.fft.irfftn(torch.fft.rfftn(m, dim=(-3, -2, -1)) * spectrum, s=padded, dim=(-3, -2, -1))
        out[:, c] = v[(slice(None), *crop)]
        del m, v
    return out


def step(case: str):
    return {"integration, baseline": baseline_exponentials, "integration, ours": full_grid_exponentials,
            "smoothing, baseline": baseline_smooth, "smoothing, ours": lambda m: lddmm.smooth(m, SPACING)}[case]


def run_one(case: str, n: int) -> dict:
    torch.set_num_threads(1)
    field = smooth_field(n)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    step(case)(field)
    seconds = time.perf_counter() - t0
    extra_gb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024 / 1e9
    return {"extra_gb": extra_gb, "fields": extra_gb / (field.numel() * 4 / 1e9), "seconds": seconds}


def same_results() -> bool:
    v = smooth_field(40)
    f0, i0 = baseline_exponentials(v.clone())
    f1, i1 = full_grid_exponentials(v.clone())
    return (torch.equal(f0, f1) and torch.equal(i0, i1)
            and torch.equal(baseline_smooth(v), lddmm.smooth(v, SPACING)))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="256,384")
    p.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    add_json_argument(p, "diffeo_integration_memory")
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(run_one(args.one[0], int(args.one[1]))))
        return 0
    identical = same_results()
    print(f"identical results (40³): {identical}\n")
    rows = []
    print("| N³ | step | peak above the input (GB) | fields of 3×N³ | seconds |")
    print("|---|---|---|---|---|")
    for n in (int(s) for s in args.sizes.split(",")):
        for case in CASES:
            out = subprocess.run([sys.executable, __file__, "--one", case, str(n)], capture_output=True, text=True,
                                 check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"| {n}³ | {case} | {r['extra_gb']:.2f} | {r['fields']:.2f} | {r['seconds']:.1f} |", flush=True)
            rows.append({"n": n, "case": case, **r})
    write_results(args.json, "benchmarks/ablations/diffeo_integration_memory.py",
                  "random smooth 3-channel fields of N³ voxels", {"identical_results_40": bool(identical), "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
