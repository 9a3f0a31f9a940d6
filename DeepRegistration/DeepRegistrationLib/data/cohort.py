"""A small synthetic cohort on disk, for trying, testing and timing the batch command.

Fixed: the SPM avg152 T1 template resampled to ``spacing_mm``. Moving subject k: the template deformed
by a smooth random diffeomorphism (max control-point displacement ``max_displacement_mm``), with a
gamma/noise intensity change, then moved by a random rigid transform (translations U[1, 5] mm per axis,
rotations U[-0.05, 0.05] rad), so that rigid and deformable methods both have work to do. With
``labels``, three intensity classes of the template (and the same classes carried through each
subject's deformation and motion) are written as label maps, for Dice before and after.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from ..core.image import Grid, Image
from ..core.io import write_image
from ..core.warp import warp
from . import sources
from .synthetic import intensity_jitter, random_rigid, smooth_random_field


def template(spacing_mm: float = 6.0) -> Image:
    """The SPM avg152 T1 resampled (trilinear) to an isotropic ``spacing_mm`` grid over the same extent."""
    t1 = sources.spm_avg152("T1")
    g = t1.grid
    size = tuple(max(2, int(s * sp // spacing_mm)) for s, sp in zip(g.size, g.spacing))
    return warp(t1, Grid(size, (spacing_mm,) * 3, g.origin, g.direction))


def intensity_classes(image: Image) -> Image:
    """Labels 1-3: the thirds of the non-background intensities (a stand-in tissue segmentation)."""
    a = image.array
    inside = a > np.percentile(a, 30)
    cuts = np.percentile(a[inside], [33.3, 66.7])
    labels = np.where(inside, 1 + np.digitize(a, cuts), 0).astype(np.int16)
    return Image(labels, image.grid)


def write_cohort(folder, subjects: int, spacing_mm: float = 6.0, seed: int = 0, labels: bool = False,
                 max_displacement_mm: float = 4.0) -> Path:
    """Write ``fixed.nii.gz``, ``subject_<k>.nii.gz`` (and label maps) and ``pairs.csv`` into ``folder``;
    returns the CSV's path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fixed = template(spacing_mm)
    write_image(fixed, folder / "fixed.nii.gz")
    fixed_labels = intensity_classes(fixed) if labels else None
    if labels:
        write_image(fixed_labels, folder / "fixed_labels.nii.gz")
    rng = np.random.default_rng(seed)
    rows = []
    for k in range(subjects):
        field = smooth_random_field(fixed.grid, rng, max_displacement_mm)
        motion = random_rigid(rng, fixed.grid.center_physical(), (1.0, 5.0), 0.05).inverse()
        subject = warp(intensity_jitter(fixed, rng), fixed.grid, field)
        row = {"fixed": "fixed.nii.gz", "moving": f"subject_{k:02d}.nii.gz"}
        write_image(warp(subject, fixed.grid, motion), folder / row["moving"])
        if labels:
            moved = warp(warp(fixed_labels, fixed.grid, field, mode="nearest"), fixed.grid, motion, mode="nearest")
            row.update(fixed_labels="fixed_labels.nii.gz", moving_labels=f"subject_{k:02d}_labels.nii.gz")
            write_image(Image(moved.array.astype(np.int16), moved.grid), folder / row["moving_labels"])
        rows.append(row)
    path = folder / "pairs.csv"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path
