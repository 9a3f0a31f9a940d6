"""DeepSim vs MSE vs NCC vs NCC_sup (Czolbe et al. 2021, Fig. 2 and 3, and the noise experiment).

Every registration U-Net has the same architecture and training (``training.deepsim_trainer.train_registration``:
Adam, the same steps, batch and seed); only D of eq. 1 differs, and each metric's λ is tuned over its own
grid on the validation pairs (mean Dice). DeepSim uses the bundled feature extractor of the dimension
(``deepsim_features_brain_t1_{2d,3d}``), trained by its documented command on the same training subjects.

Data (``data.corpus_pairs.template_subjects``): subjects made from the ICBM 2009a T1 template and its GM/WM maps
(labels background/CSF/GM/WM), each under its own random diffeomorphism, gamma and noise. Splits by
seed: train subjects [seed, 1, k], validation [seed, 2, k], test [seed, 3, k]; test subjects are seen by
nothing but this evaluation. 2D: axial slices at 2 mm (80 x 96), the test pairs being subjects (k, k+1)
at evenly spaced content slices; 3D: volumes at 4 mm (40 x 48 x 40), pairs (k, k+1).

Reported: per-pair mean Dice over CSF/GM/WM of the nearest-neighbour warped moving labels; the Wilcoxon
signed-rank test of DeepSim against each baseline (paired, one-sided "DeepSim better", and two-sided);
Cohen's d (mean difference over the pooled standard deviation); the standard deviation of the Jacobian
determinant inside the fixed brain and the folding fraction, on clean test images and with Gaussian
noise of σ added to both (intensities in [0, 1]); the training time per step of each loss relative to
MSE, measured in this run. Models are cached in ``--work``. The DeepSim model of each dimension is trained
into ``--work`` by the CLI with the settings the benchmark uses for the baselines (same λ grid size, steps,
batch and seed; the bundled 2D model was made by this command, the bundled 3D one is now trained on the
subject corpus, see docs/deepsim.md); the baselines are trained by this script. Commands of the recorded run
(``docs/deepsim.md``), 2D (3D: ``--dim 3``, ``deepsim_features_brain_t1_3d``, ``--epochs 12
--batch-size 4`` everywhere):

    OMP_NUM_THREADS=1 deepregistration train-deepsim --synthetic icbm152 --dim 2 \
        --features deepsim_features_brain_t1_2d --lam 0.02,0.05,0.15 --epochs 20 --steps-per-epoch 25 \
        --batch-size 8 --device cpu --out W/deepsim_2d.pt
    OMP_NUM_THREADS=1 python benchmarks/accuracy/deepsim_comparison.py --dim 2 --work W --train mse ncc ncc_sup
    OMP_NUM_THREADS=1 python benchmarks/accuracy/deepsim_comparison.py --dim 2 --work W --evaluate --figures docs/figures
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy import stats

from DeepRegistrationLib.core.image import Grid
from DeepRegistrationLib.core.jacobian import jacobian_determinant
from DeepRegistrationLib.core.transforms import DisplacementField
from DeepRegistrationLib.deformable.deepsim_registration import load_registration_net
from DeepRegistrationLib.core.spatial_transformer import warp_voxels
from DeepRegistrationLib.metrics.deepsim_similarity import load_deepsim
from DeepRegistrationLib.models.model_file import read_metadata
from DeepRegistrationLib.training.deepsim_trainer import RegistrationTraining, train_registration
from DeepRegistrationLib.training.deepsim_data import VolumeSet
from DeepRegistrationLib.training.deepsim_losses import RegistrationLoss, dice_scores
from DeepRegistrationLib.data.corpus_pairs import (TemplateSubjectSettings, content_slices, icbm_template,
                                                 template_subjects)
from DeepRegistrationLib.viz import figure

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from results_json import default_path, write_results  # noqa: E402

METRICS = ("deepsim", "mse", "ncc", "ncc_sup")
LABELS = {"deepsim": "DeepSim", "mse": "MSE", "ncc": "NCC", "ncc_sup": "NCC_sup"}
#: λ candidates per metric, tuned on validation Dice (each D has its own range)
LAMBDA_GRID = {"deepsim": (0.02, 0.05, 0.15), "mse": (0.005, 0.02, 0.08), "ncc": (0.25, 1.0, 4.0),
               "ncc_sup": (0.25, 1.0, 4.0)}
GEOMETRY = {2: {"size": (80, 96), "spacing": 2.0, "base": (80, 96, 80)},
            3: {"size": (40, 48, 40), "spacing": 4.0, "base": (40, 48, 40)}}
NOISE_LEVELS = (0.0, 0.1, 0.2)
SLICES_PER_PAIR = 4


def settings_for(dim: int, metric: str, args) -> RegistrationTraining:
    g = GEOMETRY[dim]
    return RegistrationTraining(ndim=dim, similarity=metric, lambdas=LAMBDA_GRID[metric], size_xyz=g["size"],
                                spacing_mm=(g["spacing"],) * dim, batch_size=args.batch_size, epochs=args.epochs,
                                steps_per_epoch=args.steps_per_epoch, features=f"deepsim_features_brain_t1_{dim}d",
                                seed=args.seed)


def subject_settings(dim: int) -> TemplateSubjectSettings:
    g = GEOMETRY[dim]
    return TemplateSubjectSettings(size_xyz=g["base"], spacing_mm=g["spacing"])


def train(args, base) -> None:
    sset = subject_settings(args.dim)
    size = GEOMETRY[args.dim]["size"]
    data = VolumeSet.from_subjects("train", args.train_subjects, sset, args.dim, size, args.seed, base)
    val = VolumeSet.from_subjects("val", args.val_subjects, sset, args.dim, size, args.seed, base)
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    for metric in args.train:
        out = Path(args.work) / f"{metric}_{args.dim}d.pt"
        t0 = time.perf_counter()
        train_registration(settings_for(args.dim, metric, args), data, val, out, Path(args.work) / f"ckpt_{metric}",
                           resume=(Path(args.work) / f"ckpt_{metric}" / "deepsim_last.pt").exists(), device="cpu",
                           progress_json=False, command=command)
        print(f"{metric}: trained in {time.perf_counter() - t0:.0f} s -> {out}")


def test_pairs(args, base) -> tuple:
    """moving, fixed (N, 1, *shape) and their labels (N, *shape) of the unseen test subjects."""
    vols = template_subjects("test", args.test_subjects, subject_settings(args.dim), args.seed, base)
    moving, fixed, ml, fl = [], [], [], []
    for k in range(args.test_subjects - 1):
        (mi, mlab), (fi, flab) = vols[k + 1], vols[k]
        if args.dim == 3:
            views = [(mi, mlab, fi, flab)]
        else:
            zs = content_slices(flab)
            picks = zs[np.linspace(0, len(zs) - 1, SLICES_PER_PAIR).round().astype(int)]
            views = [(mi[z], mlab[z], fi[z], flab[z]) for z in picks]
        for a, b, c, d in views:
            moving.append(a[None]), ml.append(b), fixed.append(c[None]), fl.append(d)
    as_t = lambda xs, dt: torch.as_tensor(np.stack(xs)).to(dt)  # noqa: E731
    return as_t(moving, torch.float32), as_t(fixed, torch.float32), as_t(ml, torch.int64), as_t(fl, torch.int64)


@torch.no_grad()
def predict(net, moving, fixed, batch: int = 8) -> tuple:
    """Displacements (voxels) for all pairs, and the seconds per pair."""
    t0 = time.perf_counter()
    u = torch.cat([net.displacement(moving[i:i + batch], fixed[i:i + batch]) for i in range(0, len(moving), batch)])
    return u, (time.perf_counter() - t0) / len(moving)


def jacobian_std(u: torch.Tensor, brain: torch.Tensor, spacing: float) -> tuple:
    """Per pair: std of det(I + ∇u) inside the fixed brain and % of folding voxels (core.jacobian)."""
    stds, folds = [], []
    for ui, mask in zip(u.numpy(), brain.numpy()):
        comps = np.moveaxis(ui, 0, -1) * spacing
        if comps.shape[-1] == 2:                                   # a 2D slice as a one-slice volume
            comps = np.concatenate([comps, np.zeros(comps.shape[:-1] + (1,), comps.dtype)], axis=-1)[None]
            mask = mask[None]
        nz, ny, nx = comps.shape[:3]
        det = jacobian_determinant(DisplacementField(comps, Grid((nx, ny, nz), [spacing] * 3, np.zeros(3))))
        stds.append(float(det[mask].std()))
        folds.append(float(100.0 * (det[mask] <= 0).mean()))
    return np.array(stds), np.array(folds)


def cohens_d(a: np.ndarray, b: np.ndarray) -> float:
    return float((a.mean() - b.mean()) / np.sqrt((a.var(ddof=1) + b.var(ddof=1)) / 2.0))


def stars(p: float) -> str:
    return "***" if p < 0.001 else "**" if p < 0.01 else "*" if p < 0.05 else "n.s."


def step_seconds(args, moving, fixed, ml, fl) -> dict:
    """Seconds per training step (forward, loss, backward) of each loss on one batch, same network and data."""
    torch.manual_seed(0)
    net = load_registration_net(Path(args.work) / f"mse_{args.dim}d.pt")[0].train()
    deepsim = load_deepsim(f"deepsim_features_brain_t1_{args.dim}d")
    b = args.batch_size
    out = {}
    for metric in METRICS:
        loss_fn = RegistrationLoss(metric, 1.0, deepsim)
        times = []
        for _ in range(4):
            t0 = time.perf_counter()
            loss, _ = loss_fn(net.displacement(moving[:b], fixed[:b]), moving[:b], fixed[:b], ml[:b], fl[:b])
            loss.backward()
            times.append(time.perf_counter() - t0)
        out[metric] = float(np.median(times[1:]))
    return out


def per_pair(values, views: int) -> list:
    """One value per subject pair: the mean over its ``views`` (its slices in 2D), so that the statistics count
    pairs, not slices."""
    return np.asarray(values, dtype=float).reshape(-1, views).mean(axis=1).tolist()


def evaluate(args, base) -> dict:
    moving, fixed, ml, fl = test_pairs(args, base)
    views = SLICES_PER_PAIR if args.dim == 2 else 1
    spacing = GEOMETRY[args.dim]["spacing"]
    nets = {m: load_registration_net(Path(args.work) / f"{m}_{args.dim}d.pt")[0] for m in METRICS}
    meta = {m: read_metadata(Path(args.work) / f"{m}_{args.dim}d.pt") for m in METRICS}
    gen = torch.Generator().manual_seed(2021)
    noise = {s: (torch.randn(moving.shape, generator=gen) * s, torch.randn(fixed.shape, generator=gen) * s)
             for s in NOISE_LEVELS}
    zero = torch.zeros(len(moving), args.dim, *moving.shape[2:])
    results = {"identity": {"dice": per_pair(dice_scores(ml, fl, zero, 4).numpy(), views)}}
    for m, net in nets.items():
        r = {"lambda": meta[m]["lambda"], "lambda_search": meta[m]["lambda_search"],
             "train_seconds": meta[m]["training"]["seconds_this_run"], "noise": {}}
        for s in NOISE_LEVELS:
            u, seconds_per_view = predict(net, moving + noise[s][0], fixed + noise[s][1])
            jstd, fold = jacobian_std(u, fl > 0, spacing)
            r["noise"][str(s)] = {"dice": per_pair(dice_scores(ml, fl, u, 4).numpy(), views),
                                  "jacobian_std": per_pair(jstd, views), "folding_percent": per_pair(fold, views)}
            if s == 0.0:
                r["seconds_per_pair"] = seconds_per_view * views
        r["dice"] = r["noise"]["0.0"]["dice"]
        results[m] = r
    results["step_seconds"] = step_seconds(args, moving, fixed, ml, fl)
    return results, (moving, fixed, ml, fl, noise, nets)


def summary(results: dict) -> dict:
    """Per metric (and before registration): Dice mean and sd, the Wilcoxon tests of DeepSim against it
    (one-sided "DeepSim better" and two-sided), Cohen's d, λ, and the Dice under each noise level."""
    ds = np.array(results["deepsim"]["dice"])
    out = {}
    for m in ("identity",) + METRICS:
        d = np.array(results[m]["dice"])
        row = {"dice_mean": float(d.mean()), "dice_sd": float(d.std(ddof=1)), "pairs": len(d)}
        if m != "deepsim":
            row.update(wilcoxon_p_deepsim_better=float(stats.wilcoxon(ds, d, alternative="greater").pvalue),
                       wilcoxon_p_two_sided=float(stats.wilcoxon(ds, d).pvalue), cohens_d=float(cohens_d(ds, d)))
        if m != "identity":
            row["lambda"] = results[m]["lambda"]
            row["noise"] = {s: {k: float(np.mean(v)) for k, v in r.items()} for s, r in results[m]["noise"].items()}
        out[m] = row
    return out


def tables(args, results: dict) -> str:
    n = len(results["identity"]["dice"])
    split = (f"ICBM 2009a subjects (one template, random diffeomorphisms + gamma + noise); train {args.train_subjects} "
             f"subjects [seed {args.seed}, 1, k], validation {args.val_subjects} [seed {args.seed}, 2, k], test "
             f"{args.test_subjects} [seed {args.seed}, 3, k] -> {n} unseen test pairs (k + 1 → k), one value per pair "
             f"({f'the mean over {SLICES_PER_PAIR} axial slices, 2 mm' if args.dim == 2 else '3D volumes, 4 mm'})")
    lines = [f"### {args.dim}D: Dice on unseen test pairs (Fig. 2)", "", f"Data and split: {split}.", "",
             "| metric | λ (tuned) | Dice mean ± sd | vs DeepSim: Wilcoxon p (one-sided, DeepSim better) | "
             "two-sided p | Cohen's d (DeepSim − metric) | train s | s / pair |",
             "|---|---|---|---|---|---|---|---|"]
    ds = np.array(results["deepsim"]["dice"])
    idd = np.array(results["identity"]["dice"])
    lines.append(f"| identity (no registration) | – | {idd.mean():.4f} ± {idd.std(ddof=1):.4f} | "
                 f"{stats.wilcoxon(ds, idd, alternative='greater').pvalue:.2g} | "
                 f"{stats.wilcoxon(ds, idd).pvalue:.2g} | {cohens_d(ds, idd):+.2f} | – | – |")
    for m in METRICS:
        d = np.array(results[m]["dice"])
        if m == "deepsim":
            comparison = "– | – | –"
        else:
            p1 = stats.wilcoxon(ds, d, alternative="greater").pvalue
            p2 = stats.wilcoxon(ds, d).pvalue
            comparison = f"{p1:.2g} {stars(p1)} | {p2:.2g} | {cohens_d(ds, d):+.2f}"
        lines.append(f"| {LABELS[m]} | {results[m]['lambda']:g} | {d.mean():.4f} ± {d.std(ddof=1):.4f} | {comparison} | "
                     f"{results[m]['train_seconds']:.0f} | {results[m]['seconds_per_pair']:.4f} |")
    lines += ["", "λ search (validation Dice per candidate): " + "; ".join(
        f"{LABELS[m]}: " + ", ".join(f"{c['lambda']:g} → {c['val_dice']:.4f}" for c in results[m]["lambda_search"])
        for m in METRICS), ""]
    base = results["step_seconds"]["mse"]
    lines += ["Training step time (forward + loss + backward, batch "
              f"{args.batch_size}, same network, this run): " + ", ".join(
                  f"{LABELS[m]} {results['step_seconds'][m] * 1000:.0f} ms ({results['step_seconds'][m] / base:.2f}× MSE)"
                  for m in METRICS), ""]
    lines += [f"### {args.dim}D: noisy inputs: Gaussian noise σ added to both test images (intensities in [0, 1])", "",
              f"Data and split: as above ({n} unseen test pairs).", "",
              "| metric | " + " | ".join(f"σ = {s}: Dice | σ = {s}: std det J | σ = {s}: folding %" for s in NOISE_LEVELS)
              + " |", "|---|" + "---|" * (3 * len(NOISE_LEVELS))]
    for m in METRICS:
        cells = []
        for s in NOISE_LEVELS:
            r = results[m]["noise"][str(s)]
            cells += [f"{np.mean(r['dice']):.4f}", f"{np.mean(r['jacobian_std']):.4f}", f"{np.mean(r['folding_percent']):.3f}"]
        lines.append(f"| {LABELS[m]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def figure_dice(args, results: dict, path: Path) -> None:
    plt = figure.pyplot()

    ds = np.array(results["deepsim"]["dice"])
    data = [np.array(results[m]["dice"]) for m in METRICS]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.boxplot(data, showmeans=True)
    ax.set_xticks(range(1, len(METRICS) + 1), [LABELS[m] for m in METRICS])
    top = max(float(d.max()) for d in data)
    for i, d in enumerate(data[1:], start=2):
        p = stats.wilcoxon(ds, d, alternative="greater").pvalue
        ax.text(i, top + 0.01, f"{stars(p)}\nd={cohens_d(ds, d):+.2f}", ha="center", va="bottom", fontsize=8)
    ax.axhline(np.mean(results["identity"]["dice"]), color="gray", linestyle=":", label="before registration")
    ax.set_ylim(None, top + 0.06)
    ax.set_ylabel("mean Dice (CSF, GM, WM)")
    ax.set_title(f"{args.dim}D ICBM subjects: unseen test pairs (n={len(ds)})", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    figure.save_figure(fig, path, dpi=100)


def figure_grids(args, evaluated, path: Path, sigma: float) -> None:
    """Fig. 3: fixed, moving and each metric's morphed moving image with its deformed grid lines (one pair)."""
    plt = figure.pyplot()

    from DeepRegistrationLib.viz.deformation_grid import plot_deformation_grid

    moving, fixed, _, _, noise, nets = evaluated
    i = len(moving) // 2 if args.dim == 2 else 0
    m = moving[i:i + 1] + noise[sigma][0][i:i + 1]
    f = fixed[i:i + 1] + noise[sigma][1][i:i + 1]
    fig, axes = plt.subplots(1, 2 + len(nets), figsize=(2.4 * (2 + len(nets)), 2.9))

    def middle(x):
        return x[0, 0] if args.dim == 2 else x[0, 0, x.shape[2] // 2]

    for ax, img, title in ((axes[0], f, "fixed J"), (axes[1], m, "moving I")):
        ax.imshow(middle(img).numpy(), cmap="gray", origin="lower")
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    with torch.no_grad():
        for ax, (name, net) in zip(axes[2:], nets.items()):
            u = net.displacement(m, f)
            warped = warp_voxels(m, u)
            uu = u[0] if args.dim == 2 else u[0, :, u.shape[2] // 2]
            plot_deformation_grid(ax, middle(warped).numpy(), uu[1].numpy(), uu[0].numpy(), spacing_vox=4)
            ax.set_title(f"I∘Φ, {LABELS[name]}", fontsize=9)
    fig.suptitle(f"{args.dim}D test pair" + (f", Gaussian noise σ = {sigma}" if sigma else ""), fontsize=10)
    fig.tight_layout()
    figure.save_figure(fig, path, dpi=100)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dim", type=int, choices=(2, 3), default=2)
    p.add_argument("--work", required=True, help="folder for the trained models and results")
    p.add_argument("--train", nargs="*", choices=METRICS, default=[], help="train (or resume) these metrics' models")
    p.add_argument("--evaluate", action="store_true")
    p.add_argument("--figures", help="folder for the figures (Fig. 2 and 3)")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--steps-per-epoch", type=int, default=25)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--train-subjects", type=int, default=16)
    p.add_argument("--val-subjects", type=int, default=4)
    p.add_argument("--test-subjects", type=int, default=11)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="results file of --evaluate (default benchmarks/results/deepsim_comparison_<dim>d.json)")
    args = p.parse_args()
    torch.set_num_threads(1)
    Path(args.work).mkdir(parents=True, exist_ok=True)
    base = icbm_template(subject_settings(args.dim))
    if args.train:
        train(args, base)
    if args.evaluate:
        results, evaluated = evaluate(args, base)
        (Path(args.work) / f"results_{args.dim}d.json").write_text(json.dumps(results))
        print(tables(args, results))
        split = (f"ICBM 2009a subjects: train {args.train_subjects} [seed {args.seed}, 1, k], validation "
                 f"{args.val_subjects} [seed {args.seed}, 2, k], test {args.test_subjects} [seed {args.seed}, 3, k] "
                 f"({'2D axial slices, 2 mm' if args.dim == 2 else '3D volumes, 4 mm'}); Dice = mean over CSF, GM, WM")
        write_results(args.json or default_path(f"deepsim_comparison_{args.dim}d"),
                      "benchmarks/accuracy/deepsim_comparison.py", split,
                      {"summary": summary(results), "per_pair": results}, dim=args.dim,
                      models={m: str(Path(args.work) / f"{m}_{args.dim}d.pt") for m in METRICS})
        if args.figures:
            folder = Path(args.figures)
            folder.mkdir(parents=True, exist_ok=True)
            figure_dice(args, results, folder / f"deepsim_dice_{args.dim}d.png")
            figure_grids(args, evaluated, folder / f"deepsim_grids_{args.dim}d.png", 0.0)
            figure_grids(args, evaluated, folder / f"deepsim_grids_noisy_{args.dim}d.png", max(NOISE_LEVELS))
            print(f"\nfigures written to {folder}")


if __name__ == "__main__":
    main()
