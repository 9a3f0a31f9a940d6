"""Labelled brain "subjects" for DeepSim's training and evaluation, made offline from ICBM 2009a.

Labels (the segmentation task of DeepSim's feature extractor, and Dice): 0 background (outside the
brain of the skull-stripped ICBM T1), 1 CSF, 2 grey matter, 3 white matter: inside the brain, the
arg-max of (1 − p_GM − p_WM, p_GM, p_WM) of the ICBM GM/WM probability maps.

A subject is the template under its own random smooth diffeomorphism (``data.synthetic.
smooth_random_field``; image warped linearly, labels with ``mode='nearest'``) with its own gamma and
noise (``intensity_jitter``), normalized as every network input (``normalize_intensity``). Subjects
of the splits ``train``, ``val`` and ``test`` come from disjoint seeds, so no test subject is ever
seen in training or tuning. All subjects derive from the one template: a stated limitation.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..core.image import Grid, Image
from ..core.warp import warp
from ..data import sources
from ..data.synthetic import intensity_jitter, smooth_random_field
from ..deformable.model_input import normalize_intensity, resample_to

TISSUE_CLASSES = ("background", "CSF", "GM", "WM")
SPLITS = {"train": 1, "val": 2, "test": 3}
SOURCE = ("ICBM 2009a symmetric T1 + GM/WM probability maps (nilearn wheel), brain-centred, "
          "labels background/CSF/GM/WM")


@dataclass
class SubjectSettings:
    """Base grid (x-first size, mm spacing) and the random deformation that makes a subject."""

    size_xyz: tuple = (40, 48, 40)
    spacing_mm: float = 4.0
    deform_max_mm: float = 8.0
    deform_spacing_mm: float = 32.0
    gamma_range: tuple = (0.7, 1.4)
    noise_std: float = 0.02

    def to_dict(self) -> dict:
        return {"size_xyz": list(self.size_xyz), "spacing_mm": self.spacing_mm, "deform_max_mm": self.deform_max_mm,
                "deform_spacing_mm": self.deform_spacing_mm, "gamma_range": list(self.gamma_range),
                "noise_std": self.noise_std}


def tissue_labels(brain: np.ndarray, gm: np.ndarray, wm: np.ndarray) -> np.ndarray:
    """0 outside ``brain``; inside, 1 + arg-max of (CSF = 1 − GM − WM, GM, WM) probabilities."""
    csf = np.clip(1.0 - gm - wm, 0.0, 1.0)
    labels = 1 + np.argmax(np.stack([csf, gm, wm]), axis=0)
    return np.where(brain, labels, 0).astype(np.int16)


def brain_grid(size_xyz, spacing_mm: float) -> Grid:
    """A grid of the given size and spacing, centred on the ICBM brain, with the template's axes."""
    t1 = sources.icbm152("t1")
    idx = np.argwhere(t1.array > 0)
    centre_xyz = (idx.min(axis=0) + idx.max(axis=0))[::-1] / 2.0
    centre = t1.grid.index_to_physical(centre_xyz)
    spacing = np.full(3, float(spacing_mm))
    half = t1.grid.direction @ (spacing * (np.asarray(size_xyz) - 1) / 2.0)
    return Grid(tuple(size_xyz), spacing, centre - half, t1.grid.direction)


def template(settings: SubjectSettings) -> tuple:
    """The ICBM T1 (raw intensities) and its tissue labels on the base grid."""
    grid = brain_grid(settings.size_xyz, settings.spacing_mm)
    t1 = sources.icbm152("t1")
    image = resample_to(t1, grid)
    brain = resample_to(t1.with_array((t1.array > 0).astype(np.float32)), grid).array > 0.5
    gm = resample_to(sources.icbm152("gm"), grid).array
    wm = resample_to(sources.icbm152("wm"), grid).array
    return image, Image(tissue_labels(brain, gm, wm), grid)


def make_subject(image: Image, labels: Image, rng: np.random.Generator, settings: SubjectSettings) -> tuple:
    """(normalized image, labels) of one random subject of the template."""
    field = smooth_random_field(image.grid, rng, settings.deform_max_mm, settings.deform_spacing_mm)
    warped = warp(image, image.grid, field)
    warped_labels = warp(labels, labels.grid, field, mode="nearest")
    jittered = intensity_jitter(warped, rng, settings.gamma_range, settings.noise_std)
    return normalize_intensity(jittered.array), warped_labels.array.astype(np.int64)


def subjects(split: str, count: int, settings: SubjectSettings, seed: int = 0, base=None) -> list:
    """``count`` subjects (image, labels) of a split; seeds never shared between splits."""
    image, labels = base if base is not None else template(settings)
    return [make_subject(image, labels, np.random.default_rng([seed, SPLITS[split], k]), settings)
            for k in range(count)]


def content_slices(labels: np.ndarray, fraction: float = 0.5) -> np.ndarray:
    """Axial slice indices (first array axis) whose brain area is at least ``fraction`` of the largest."""
    area = (labels > 0).sum(axis=(1, 2))
    return np.flatnonzero(area >= fraction * area.max())
