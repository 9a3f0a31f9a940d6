"""Learned-metric speed: training throughput (patch pairs per second, on-the-fly sampling included) and
registration wall time of the CNN metric vs NMI on the same pair, on the CPU and, when present, the GPU.

Data: SPM avg152 T1 (fixed) and T2 (moving, displaced by a known rigid transform). Nothing is trained
on it here: throughput is measured on freshly initialized networks; registration uses the given
metric set (default: the bundled 'sedghi-t1-t2').

    python benchmarks/metric_speed.py [--steps 30] [--threads 1]
"""
from __future__ import annotations

import argparse
import platform
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from DeepRegistrationLib.api import register
from DeepRegistrationLib.core.transforms import RigidTransform
from DeepRegistrationLib.core.warp import warp
from DeepRegistrationLib.data import sources
from DeepRegistrationLib.metrics.evaluation import rigid_errors
from DeepRegistrationLib.networks.metric_cnn import MetricCNN, default_architecture
from DeepRegistrationLib.rigid.metric_patches import PatchPairSampler, SamplerSettings, prepare_level


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def throughput(device, channels, steps: int, batch: int = 64) -> tuple:
    """(pairs/s sampling only, pairs/s sampling + training step)."""
    t1, t2 = sources.spm_avg152("T1"), sources.spm_avg152("T2")
    f, m = prepare_level(t1, 2.0, device), prepare_level(t2, 2.0, device)
    sampler = PatchPairSampler(SamplerSettings(17, 2.0, 25.0, 10, 17.0, True), device)
    net = MetricCNN(default_architecture(channels)).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    t = RigidTransform(center_mm=t1.grid.center_physical())
    sampler.balanced_batch([(f, m)], [t], batch, g)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        sampler.balanced_batch([(f, m)], [t], batch, g)
    sync(device)
    sample_rate = steps * batch / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for _ in range(steps):
        x, y = sampler.balanced_batch([(f, m)], [t], batch, g)
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    sync(device)
    return sample_rate, steps * batch / (time.perf_counter() - t0)


def registration_times(device, model: str, patches: int, evaluations: int) -> dict:
    t1, t2 = sources.spm_avg152("T1"), sources.spm_avg152("T2")
    true = RigidTransform(np.radians([3.0, -2.0, 4.0]), [9.0, -6.0, 5.0], t1.grid.center_physical())
    moving = warp(t2, t2.grid, true.inverse())
    out = {}
    for name, method, options in (("NMI (60 bins)", "nmi", {"bins": 60}),
                                  ("CNN", "learned-metric", {"models": [model], "patches": patches,
                                                  "max_evaluations": evaluations})):
        t0 = time.perf_counter()
        result = register(t1, moving, method, str(device), **options)
        out[name] = (time.perf_counter() - t0, rigid_errors(result.transform, true)["t_norm_mm"],
                     result.report["evaluations"])
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--model", default="sedghi-t1-t2")
    p.add_argument("--patches", type=int, default=128)
    p.add_argument("--max-evaluations", type=int, default=200)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    print(f"Hardware: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{args.threads} CPU thread(s)" + (f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else
                                             ", no GPU") + ".")
    print("Data: SPM avg152 T1/T2 (one pair; no train/test split is involved in timing).\n")
    print("| device | network (conv widths) | sampling only, pairs/s | sampling + training step, pairs/s |")
    print("|---|---|---|---|")
    for device in devices:
        for channels in ((8, 16, 16), (16, 32, 32)):
            s, t = throughput(device, channels, args.steps)
            print(f"| {device.type} | {','.join(map(str, channels))} | {s:.0f} | {t:.0f} |", flush=True)
    print("\n| device | method | seconds | ‖Δt‖ mm | evaluations | time / NMI time |")
    print("|---|---|---|---|---|---|")
    for device in devices:
        times = registration_times(device, args.model, args.patches, args.max_evaluations)
        for name, (sec, err, evals) in times.items():
            print(f"| {device.type} | {name} | {sec:.1f} | {err:.2f} | {evals} | "
                  f"{sec / times['NMI (60 bins)'][0]:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
