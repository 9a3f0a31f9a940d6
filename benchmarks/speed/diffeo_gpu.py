"""GPU targets of the diffeomorphic method: a 400×400×250 volume end to end, and peak GPU memory up to 512³.

Data: as benchmarks/speed/diffeo_memory.py, the ICBM 2009a T1 zoomed to each shape at the model spacing (2 mm, so
the network sees every voxel: the hard case) against a copy rolled by two voxels and intensity-jittered,
from its small rigid initial transform (as after a rigid registration). For each shape and network
precision, ``register(..., 'diffeo', device=...)`` is timed end to end (inputs in memory; resampling,
tiles, smoothing, integration, both fields on the image grids, the warped image and the QA report), the
first call cold (CUDA context, kernel loading) and then ``--repeats`` warm calls, the clock stopped after
``torch.cuda.synchronize()``. Peak GPU memory is PyTorch's ``max_memory_allocated`` (tensors) and
``max_memory_reserved`` (what its caching allocator held) over the warm calls. The bfloat16 field is
compared with the float32 one on the fixed grid by the tile benchmark's agreement rule
(``metrics.evaluation.fields_agree``).

Results: benchmarks/results/diffeo_gpu.json.

    python benchmarks/speed/diffeo_gpu.py --shapes 400x400x250,512x512x512 --repeats 3

``--device cpu`` runs the same script on the CPU (no memory columns), to check it where there is no GPU.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from DeepRegistrationLib.api import register
from DeepRegistrationLib.core.transforms import DisplacementField
from DeepRegistrationLib.metrics.evaluation import fields_agree

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from diffeo_memory import synthetic_pair  # noqa: E402
from results_json import add_json_argument, write_results  # noqa: E402

TARGET_SECONDS = 2.0
TARGET_GB = 8.0


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed_register(fixed, moving, initial, device: str, precision: str):
    synchronize(device)
    t0 = time.perf_counter()
    result = register(fixed, moving, "diffeo", device=device, initial_transform=initial, precision=precision)
    synchronize(device)
    return result, time.perf_counter() - t0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="400x400x250,512x512x512", help="x-by-y-by-z voxel shapes")
    parser.add_argument("--precisions", default="float32,bfloat16")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda")
    add_json_argument(parser, "diffeo_gpu")
    args = parser.parse_args()
    rows = []
    gpu = args.device.startswith("cuda")
    if gpu and not torch.cuda.is_available():
        sys.exit("diffeo_gpu.py: PyTorch sees no CUDA device here (use --device cpu to check the script)")
    machine = torch.cuda.get_device_name(args.device) if gpu else "CPU"
    print(f"Device: {machine}; PyTorch {torch.__version__}"
          + (f", CUDA {torch.version.cuda}, cuDNN TF32 {torch.backends.cudnn.allow_tf32}" if gpu else "") + ".\n")
    print("| shape (x×y×z) | network | cold call (s) | warm calls, median (s) | network (s) | smoothing and "
          "integration (s) | peak allocated (GB) | peak reserved (GB) | folding voxels | mean / max |Δu| vs float32 (mm) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for text in args.shapes.split(","):
        size_xyz = tuple(int(n) for n in text.split("x"))
        fixed, moving, initial = synthetic_pair(tuple(reversed(size_xyz)), rigid_initial=True)
        fields = {}
        for precision in args.precisions.split(","):
            result, cold = timed_register(fixed, moving, initial, args.device, precision)
            if gpu:
                torch.cuda.reset_peak_memory_stats(args.device)
            warm = [timed_register(fixed, moving, initial, args.device, precision) for _ in range(args.repeats)]
            result, report = warm[-1][0], warm[-1][0].report
            memory = (f"{torch.cuda.max_memory_allocated(args.device) / 2 ** 30:.2f} | "
                      f"{torch.cuda.max_memory_reserved(args.device) / 2 ** 30:.2f}") if gpu else "– | –"
            fields[precision] = torch.as_tensor(
                DisplacementField.from_transform(result.transform, fixed.grid).displacement_mm).permute(3, 0, 1, 2)[None]
            agrees, row = "–", {"shape_xyz": list(size_xyz), "precision": report["network_precision"],
                                "cold_seconds": cold, "warm_median_seconds": statistics.median(s for _, s in warm),
                                "network_seconds": report["seconds_momentum"],
                                "integration_seconds": report["seconds_integration"],
                                "folding_voxels": report["folding_voxels"]}
            if gpu:
                row.update(peak_allocated_gb=torch.cuda.max_memory_allocated(args.device) / 2 ** 30,
                           peak_reserved_gb=torch.cuda.max_memory_reserved(args.device) / 2 ** 30)
            if "float32" in fields and precision != "float32":
                ok, mean, largest, _ = fields_agree(fields[precision], fields["float32"])
                agrees = f"{mean:.4f} / {largest:.4f} ({'agrees' if ok else 'does not agree'})"
                row.update(agrees_with_float32=bool(ok), mean_du_mm=float(mean), max_du_mm=float(largest))
            rows.append(row)
            print(f"| {'×'.join(map(str, size_xyz))} | {report['network_precision']} | {cold:.2f} | "
                  f"{statistics.median(s for _, s in warm):.2f} | {report['seconds_momentum']:.2f} | "
                  f"{report['seconds_integration']:.2f} | {memory} | {report['folding_voxels']} | {agrees} |",
                  flush=True)
            del result, warm
            if gpu:
                torch.cuda.empty_cache()
    print(f"\nTargets: a 400×400×250 volume end to end in under {TARGET_SECONDS:.0f} s (warm median); 512³ within "
          f"{TARGET_GB:.0f} GB of GPU memory (peak reserved).")
    write_results(args.json, "benchmarks/speed/diffeo_gpu.py",
                  "ICBM 2009a T1 zoomed to each shape at 2 mm vs a rolled, jittered copy, from a small rigid start",
                  rows, device=machine, repeats=args.repeats)


if __name__ == "__main__":
    main()
