"""Why case C of experiment 1 needs many training subjects: the density of the positives' displacements.

Case C misregisters each training subject once, by δ (|δᵢ| ~ U[1,5] mm, random signs; rotation left
out here), symmetrizes with the 48 cube symmetries and dithers with d ~ N(0, σ²I), σ² = 10 mm². The
positives' displacement density is then a sum of Gaussians at the 48 images of every δ. Along an axis
through the true pose it must peak at 0 for the metric to be unimodal and centred; this script prints,
for the subjects the benchmark trains on, where it peaks and how much it drops from 0 to ±5 mm.

    python benchmarks/metric_experiment1_density.py --train 4 16
"""
from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from metric_experiment1 import SOURCES, small_random  # noqa: E402
from DeepRegistrationLib.data.corpus_pairs import metric_case  # noqa: E402

DITHER_VARIANCE_MM2 = 10.0
CUBE_SYMMETRIES = [(perm, signs) for perm in itertools.permutations(range(3))
                   for signs in itertools.product((-1.0, 1.0), repeat=3)]


def positive_density_along_x(deltas: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Σ over subjects and symmetries g of exp(-|t·e_x - g(δ)|² / 2σ²) (every axis gives the same)."""
    images = np.array([np.array(signs) * d[list(perm)] for d in deltas for perm, signs in CUBE_SYMMETRIES])
    points = np.stack([t, np.zeros_like(t), np.zeros_like(t)], axis=1)
    return np.exp(-((points[:, None] - images[None]) ** 2).sum(-1) / (2 * DITHER_VARIANCE_MM2)).sum(1)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train", type=int, nargs="+", default=[4, 16], help="numbers of training subjects")
    p.add_argument("--source", choices=list(SOURCES), default="icbm-t1-gm")
    args = p.parse_args(argv)
    fixed_source, moving_source, task, _, description = SOURCES[args.source]
    t1, t2 = fixed_source(), moving_source()
    deltas = np.array([metric_case(t1, t2, task, 100 + i, None, None, small_random)[2].translation_mm
                       for i in range(max(args.train))])
    t = np.linspace(-10.0, 10.0, 201)
    print(f"Training subjects of metric_experiment1.py ({description}), seeds 100...; σ² = {DITHER_VARIANCE_MM2:g} mm²\n")
    print("| subjects | density peaks at (mm; symmetric in x) | density(0) / peak | density(0) / density(±5 mm) |")
    print("|---|---|---|---|")
    for n in args.train:
        density = positive_density_along_x(deltas[:n], t)
        at = {round(v, 1): d for v, d in zip(t, density)}
        print(f"| {n} | {'±' if t[density.argmax()] else ''}{abs(t[density.argmax()]):.1f} | {at[0.0] / density.max():.3f} | "
              f"{at[0.0] / (0.5 * (at[-5.0] + at[5.0])):.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
