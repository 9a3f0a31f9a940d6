"""Diffeomorphic patch-wise registration evaluated as the thesis' Tables 5.1-5.3 (and Fig. 5.3).

The thesis' setting: pairs of subjects made from one template, the nilearn ICBM 2009a T1, at 2 mm. The bundled
model never trained on ICBM data (models trained on the corpus may: ICBM 2009a is a train-split subject there);
the results file records the model's training data, and benchmarks/accuracy/deformable_evaluation.py evaluates
on the corpus's test heads. Each subject is the template
under its own random diffeomorphism (data.synthetic.smooth_random_field, 4 mm, seeds 1000+) with its own
gamma and noise; the GM and WM probability maps are deformed with it (label masks: p > 0.5). The moving
subject is also displaced rigidly (|t_i| ~ U[1, 5] mm, θ_i ~ U[-0.05, 0.05] rad), so every method starts
from the same rigid NMI registration ("rigid only", the floor).

Methods, both directions (moving→fixed with the forward transform; fixed→moving with the inverse):
- ours: the network alone, as in the thesis: ``register(..., 'diffeo', initial_transform=rigid, iterations=0)``
  (forward and inverse from one prediction; instance optimization is evaluated in deformable_evaluation.py);
- SimpleITK diffeomorphic demons (histogram matching, 3 levels, 50 iterations per level, σ 1.5 voxels),
  registered separately in each direction as the thesis did with NiftyReg, from the same rigid transform.
  (A B-spline FFD with Mattes MI took over 6 minutes per registration on this shared 2-core machine, so
  the unimodal, diffeomorphic demons is the classical baseline here.)

Metrics (thesis §4.1): NMI (Studholme, 64 bins), MSE, MAE (intensities scaled to [0, 1] by the fixed
image's p1-p99), Dice of label masks (GM, WM) and of a threshold mask (normalized T1 > 0.3), % folding
voxels, mean Jacobian, wall times. Fig. 5.3: voxel-wise mean and std of |m| over all predicted tiles.

Results: benchmarks/results/diffeo_evaluation_<precision>.json (the network precision that ran: float32 on a
CPU without bfloat16 instructions, bfloat16 on one with them).

    OMP_NUM_THREADS=1 python benchmarks/accuracy/diffeo_evaluation.py --pairs 2 \
        --figure docs/figures/diffeo_momentum_marginals.png
"""
from __future__ import annotations

import argparse
import platform
import re
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from DeepRegistrationLib.api import register
from DeepRegistrationLib.core.device import PRECISION_CHOICES, resolve_precision
from DeepRegistrationLib.core.image import Image
from DeepRegistrationLib.core.jacobian import jacobian_determinant, jacobian_statistics
from DeepRegistrationLib.core.transforms import DisplacementField
from DeepRegistrationLib.core.warp import warp
from DeepRegistrationLib.data import sources
from DeepRegistrationLib.data.synthetic import intensity_jitter, random_rigid, smooth_random_field
from DeepRegistrationLib.deformable.diffeo_registration import load_momentum_net
from DeepRegistrationLib.methods import SPECS
from DeepRegistrationLib.core.network_input import normalize_intensity, resample_to
from DeepRegistrationLib.deformable.patchwise import predict_momentum
from DeepRegistrationLib.metrics.evaluation import dice_per_label, lengths
from DeepRegistrationLib.metrics.similarity import nmi
from DeepRegistrationLib.viz import figure

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from baselines import sitk_demons  # noqa: E402
from results_json import default_path, write_results  # noqa: E402

DEFAULT_MODEL = SPECS["diffeo"].default_model

SPACING = 2.0


def make_subject(t1, gm, wm, seed):
    rng = np.random.default_rng(seed)
    field = smooth_random_field(t1.grid, rng, max_displacement_mm=4.0)
    return (intensity_jitter(warp(t1, t1.grid, field), rng), warp(gm, t1.grid, field), warp(wm, t1.grid, field))


def metrics(reference: Image, warped: Image, ref_masks: dict, warped_masks: dict, scale) -> dict:
    lo, hi = scale
    a = torch.as_tensor(np.clip((reference.array - lo) / (hi - lo), 0, 1))
    b = torch.as_tensor(np.clip((warped.array - lo) / (hi - lo), 0, 1))
    out = {"NMI": float(nmi(a, b, 64)), "MSE": float(((a - b) ** 2).mean()), "MAE": float((a - b).abs().mean())}
    for name in ref_masks:
        out[f"Dice {name}"] = dice_per_label(ref_masks[name], warped_masks[name], [1])[1]
    return out


def masks(t1: Image, gm: Image, wm: Image, scale) -> dict:
    lo, hi = scale
    return {"GM": (gm.array > 0.5).astype(np.uint8), "WM": (wm.array > 0.5).astype(np.uint8),
            "T1>0.3": ((t1.array - lo) / (hi - lo) > 0.3).astype(np.uint8)}


def evaluate_direction(ref, ref_gm, ref_wm, mov, mov_gm, mov_wm, transform):
    scale = tuple(np.percentile(ref.array, [1, 99]))
    warped = warp(mov, ref.grid, transform)
    warped_masks = masks(warped, warp(mov_gm, ref.grid, transform), warp(mov_wm, ref.grid, transform), scale)
    return metrics(ref, warped, masks(ref, ref_gm, ref_wm, scale), warped_masks, scale)


def regularity(transform, grid) -> dict:
    field = transform if isinstance(transform, DisplacementField) else DisplacementField.from_transform(transform, grid)
    return jacobian_statistics(jacobian_determinant(field))


def training_data(meta: dict) -> str:
    """The training data of a model and of each model it was fine-tuned from, newest first."""
    steps, training = [], meta.get("training", {})
    while training:
        synthetic = re.search(r"--synthetic (\S+)", training.get("command") or "")
        steps.append((training.get("data") or "").split(" subjects:")[0] or (synthetic.group(1) if synthetic else "?"))
        training = training.get("initialized_from") or {}
    return " <- ".join(steps)


def fmt(values, digits=4):
    a = np.asarray(values, dtype=float)
    return f"{a.mean():.{digits}f} ± {a.std(ddof=1):.{digits}f}" if len(a) > 1 else f"{a.mean():.{digits}f}"


class MomentumMarginals:
    """Voxel-wise mean and standard deviation of |m| over all predicted tiles (thesis §4.2, Fig. 5.3); ``add`` is
    a forward hook of the momentum network, so it sees every batch of tiles ``predict_momentum`` predicts."""

    def __init__(self, tile: int):
        self.count = 0
        self.sum = np.zeros((tile,) * 3, np.float64)
        self.sum_sq = np.zeros((tile,) * 3, np.float64)

    def add(self, _module, _inputs, momentum: torch.Tensor) -> None:
        magnitude = lengths(momentum.float()).double().cpu().numpy()
        self.count += magnitude.shape[0]
        self.sum += magnitude.sum(axis=0)
        self.sum_sq += (magnitude ** 2).sum(axis=0)

    def mean(self) -> np.ndarray:
        return self.sum / max(self.count, 1)

    def std(self) -> np.ndarray:
        return np.sqrt(np.maximum(self.sum_sq / max(self.count, 1) - self.mean() ** 2, 0.0))


def save_marginals_figure(marginals: MomentumMarginals, path, tile: int) -> None:
    plt = figure.pyplot()

    mean, std = marginals.mean(), marginals.std()
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
    for ax, axis, name in zip(axes, (2, 1, 0), ("x", "y", "z")):
        others = tuple(a for a in range(3) if a != axis)
        ax.plot(mean.mean(axis=others), label="mean |m|")
        ax.plot(std.mean(axis=others), label="std |m|")
        ax.axvspan(0, 12, color="0.9")
        ax.axvspan(tile - 12, tile - 1, color="0.9")
        ax.set_xlabel(f"{name} position in the {tile}³ tile (voxels); grey: discarded")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"momentum magnitude over {marginals.count} predicted tiles (marginals, thesis Fig. 5.3)", fontsize=10)
    fig.tight_layout()
    figure.save_figure(fig, path, dpi=110)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--figure", help="PNG for the momentum marginals (Fig. 5.3)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--model", default=DEFAULT_MODEL, help="diffeo model: bundled name or file (default: bundled)")
    parser.add_argument("--precision", default="auto", choices=PRECISION_CHOICES,
                        help="our network's arithmetic (default auto: bfloat16 on a CPU with bfloat16 instructions)")
    parser.add_argument("--json", help="results file (default benchmarks/results/diffeo_evaluation_<precision>.json)")
    args = parser.parse_args()
    precision = resolve_precision(args.precision, "cpu")
    torch.set_num_threads(args.threads)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(args.threads)
    grid = sources.icbm152("t1").grid.with_spacing([SPACING] * 3)
    t1, gm, wm = (resample_to(sources.icbm152(k), grid) for k in ("t1", "gm", "wm"))
    ours_name = "bundled model" if args.model == DEFAULT_MODEL else args.model
    methods = ("rigid only (NMI, Powell)", f"ours (diffeo network alone, {ours_name})", "SimpleITK diffeomorphic demons")
    table = {(m, d): [] for m in methods for d in ("moving→fixed", "fixed→moving")}
    reg_stats = {(m, d): [] for m in methods[1:] for d in ("forward", "inverse")}
    times = {m: [] for m in methods}
    inference = {m: [] for m in methods}     # the transform computation alone, without register()'s QA report
    net, meta = load_momentum_net(args.model)
    marginals = MomentumMarginals(48)
    for k in range(args.pairs):
        f, f_gm, f_wm = make_subject(t1, gm, wm, 1000 + 2 * k)
        m0, m_gm0, m_wm0 = make_subject(t1, gm, wm, 1001 + 2 * k)
        rigid_true = random_rigid(np.random.default_rng(3000 + k), grid.center_physical(), (1.0, 5.0), 0.05)
        m, m_gm, m_wm = (warp(x, grid, rigid_true.inverse()) for x in (m0, m_gm0, m_wm0))
        t0 = time.perf_counter()
        rigid_result = register(f, m, "nmi")
        times[methods[0]].append(time.perf_counter() - t0)
        inference[methods[0]].append(rigid_result.report["seconds_method"])
        rigid = rigid_result.transform
        table[(methods[0], "moving→fixed")].append(evaluate_direction(f, f_gm, f_wm, m, m_gm, m_wm, rigid))
        table[(methods[0], "fixed→moving")].append(evaluate_direction(m, m_gm, m_wm, f, f_gm, f_wm, rigid.inverse()))

        t0 = time.perf_counter()
        ours = register(f, m, "diffeo", device="cpu", initial_transform=rigid, models=[args.model], precision=precision,
                        iterations=0)
        times[methods[1]].append(time.perf_counter() - t0)
        inference[methods[1]].append(ours.report["seconds_method"])
        table[(methods[1], "moving→fixed")].append(evaluate_direction(f, f_gm, f_wm, m, m_gm, m_wm, ours.transform))
        table[(methods[1], "fixed→moving")].append(evaluate_direction(m, m_gm, m_wm, f, f_gm, f_wm, ours.inverse))
        reg_stats[(methods[1], "forward")].append(regularity(ours.transform, f.grid))
        reg_stats[(methods[1], "inverse")].append(regularity(ours.inverse, m.grid))
        fa = normalize_intensity(f.array)
        ma = normalize_intensity(warp(m, grid, rigid).array)
        hook = net.register_forward_hook(marginals.add)
        predict_momentum(net, fa, ma, 48, 12, precision=precision)
        hook.remove()

        t0 = time.perf_counter()
        fwd = sitk_demons(f, m, rigid)
        inv = sitk_demons(m, f, rigid.inverse())
        times[methods[2]].append(time.perf_counter() - t0)
        inference[methods[2]].append(times[methods[2]][-1])
        table[(methods[2], "moving→fixed")].append(evaluate_direction(f, f_gm, f_wm, m, m_gm, m_wm, fwd))
        table[(methods[2], "fixed→moving")].append(evaluate_direction(m, m_gm, m_wm, f, f_gm, f_wm, inv))
        reg_stats[(methods[2], "forward")].append(regularity(fwd, f.grid))
        reg_stats[(methods[2], "inverse")].append(regularity(inv, m.grid))
        print(f"pair {k + 1}/{args.pairs} done", flush=True)

    print(f"\nData: {args.pairs} pairs of subjects made from the ICBM 2009a T1 (2 mm, {grid.size}); "
          f"model trained on {training_data(meta)}. Machine: {platform.processor() or platform.machine()}, "
          f"{args.threads} thread(s), CPU; our network in {precision}. Mean ± sd over pairs.\n")
    print("Table 5.1 (regularity): % folding voxels and mean Jacobian\n")
    print("| method | direction | % folding | pairs with folding | mean Jacobian | min Jacobian |")
    print("|---|---|---|---|---|---|")
    for (meth, d), rows in reg_stats.items():
        print(f"| {meth} | {d} | {fmt([r['folding_percent'] for r in rows], 6)} | "
              f"{sum(r['folding_voxels'] > 0 for r in rows)} | {fmt([r['jacobian_mean'] for r in rows])} | "
              f"{fmt([r['jacobian_min'] for r in rows], 3)} |")
    keys = list(table[(methods[0], "moving→fixed")][0])
    print("\nTables 5.2-5.3 (similarity and tissue-mask Dice; NMI 64 bins)\n")
    print("| method | direction | " + " | ".join(keys) + " |")
    print("|---|---|" + "---|" * len(keys))
    for (meth, d), rows in table.items():
        print(f"| {meth} | {d} | " + " | ".join(fmt([r[k] for r in rows]) for k in keys) + " |")
    print("\nWall time per pair (s; ours: one prediction gives both directions; demons: two registrations). "
          "register(): the whole call, with the warped image and the QA report (NMI before/after, Jacobian, "
          "inverse consistency); inference: the transform computation alone (register()'s seconds_method; "
          "demons has no QA step, so both columns are its time)\n")
    print("| method | register() (s) | ratio to ours | inference (s) | ratio to ours |")
    print("|---|---|---|---|---|")
    ours_t, ours_i = np.mean(times[methods[1]]), np.mean(inference[methods[1]])
    for meth in methods:
        print(f"| {meth} | {fmt(times[meth], 2)} | {np.mean(times[meth]) / ours_t:.2f} | "
              f"{fmt(inference[meth], 2)} | {np.mean(inference[meth]) / ours_i:.2f} |")
    if args.figure:
        save_marginals_figure(marginals, args.figure, 48)
        mean = marginals.mean()
        centre = mean[12:-12, 12:-12, 12:-12].mean()
        print(f"\nFig. 5.3: mean |m| over {marginals.count} tiles: centre 24³ {centre:.3f}, outer 4-voxel shell "
              f"{np.concatenate([mean[:4].ravel(), mean[-4:].ravel()]).mean():.3f}; figure {args.figure}")

    def stats(values):
        a = np.asarray(values, dtype=float)
        return {"mean": float(a.mean()), "sd": float(a.std(ddof=1)) if len(a) > 1 else None}

    record = {
        "methods": list(methods),
        "similarity_and_dice": [{"method": meth, "direction": d, **{k: stats([r[k] for r in rows]) for k in keys}}
                                for (meth, d), rows in table.items()],
        "regularity": [{"method": meth, "direction": d,
                        "folding_percent": stats([r["folding_percent"] for r in rows]),
                        "pairs_with_folding": int(sum(r["folding_voxels"] > 0 for r in rows)),
                        "jacobian_mean": stats([r["jacobian_mean"] for r in rows]),
                        "jacobian_min": stats([r["jacobian_min"] for r in rows])}
                       for (meth, d), rows in reg_stats.items()],
        "seconds": [{"method": meth, "register": stats(times[meth]), "inference": stats(inference[meth])}
                    for meth in methods],
    }
    write_results(args.json or default_path(f"diffeo_evaluation_{precision}"), "benchmarks/accuracy/diffeo_evaluation.py",
                  f"{args.pairs} pairs of subjects made from the ICBM 2009a T1 (2 mm, {tuple(grid.size)}), "
                  f"GM/WM masks p > 0.5; model trained on {training_data(meta)}",
                  record, model=args.model, precision=precision, threads=args.threads, pairs=args.pairs,
                  figure=args.figure)


if __name__ == "__main__":
    main()
