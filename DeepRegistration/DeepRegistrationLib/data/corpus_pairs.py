"""Training and selection data drawn from one split of the corpus (:mod:`.corpus`), synthesized (:mod:`.synthesis`).

:class:`CorpusPairs` gives the pairs every deformable trainer learns from: a random subject of the split,
then two synthetic subjects of it on the model grid. ``mode``:

* ``synthmorph``: both images synthesized from one of the subject's label maps (:data:`SYNTHESIS_LABELS`),
  each under its own random diffeomorphism, bias field, blur, resolution, noise and field of view, in one
  random contrast and gamma per pair (the unimodal losses of our trainers compare intensities);
* ``images``: both made from one of the subject's real intensity images the same way (:func:`synthesis.from_image`);
* ``mixed``: either, with equal chance.

The tissue classes (:data:`corpus.TISSUE_CLASSES`) come with every synthetic image whose subject has them
(DeepSim trains its feature extractor on them). :func:`metric_case` makes the learned metric's rigidly
misregistered multimodal cases (moved here from the former ``benchmarks/metric_subjects.py``, unchanged,
so the bundled metric sets' data can be made again from an installed package). :func:`template_subjects`
makes the labelled subjects the bundled DeepSim models were trained on (moved from the former
``training/deepsim_subjects.py``, unchanged): all of them come from the train-split ``icbm152`` subject,
so its ``test`` seeds are new deformations of a training subject, not test-split subjects.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter

from ..core.errors import InputError
from ..core.image import Grid, Image
from ..core.settings import Settings
from ..core.transforms import RigidTransform
from ..core.warp import warp
from ..core.network_input import normalize_intensity, resample_to
from . import corpus, sources, synthesis
from .synthesis import SynthesisSettings
from .synthetic import gradient_magnitude, intensity_jitter, random_rigid, smooth_random_field

MODES = ("synthmorph", "images", "mixed")
#: the label map each subject's SynthMorph images are drawn from, and its classes → tissue classes
SYNTHESIS_LABELS = {
    "icbm152": ("tissue", (0, 1, 2, 3)),
    "ixi549-tpm": ("tpm", (0, 2, 3, 1, 0, 0, 0)),
    "robex-atlas": ("tissue", (0, 1, 2, 3)),
    "colin27": ("tissue", (0, 1, 2, 3)),
    "itk-kmeans": ("kmeans6", (0, 0, 0, 0, 1, 2, 3)),
}


def isotropic_grid(spacing_mm: float):
    """A grid function for :class:`CorpusPairs`: the source grid's extent at ``spacing_mm`` in every axis."""
    return lambda grid: grid.with_spacing([spacing_mm] * 3)


class CorpusPairs:
    """Synthetic pairs of one split on model grids (``grid_of(source grid) -> model grid``).

    Subjects whose model grid is smaller than ``min_size_vox`` in any axis are left out (and not listed in
    :attr:`subject_ids`); ``need_tissue`` keeps only sources with tissue classes.
    """

    def __init__(self, split: str, mode: str, grid_of, synthesis_settings: SynthesisSettings = SynthesisSettings(),
                 min_size_vox: int = 0, need_tissue: bool = False):
        if mode not in MODES:
            raise InputError(f"unknown corpus mode {mode!r}: choose {', '.join(MODES)}")
        self.split, self.mode, self.settings = split, mode, synthesis_settings
        self.label_sources, self.image_sources, self.skipped = [], [], []
        self.drawn = set()
        for s in corpus.subjects(split):
            if mode in ("synthmorph", "mixed") and s.id in SYNTHESIS_LABELS:
                name, to_tissue = SYNTHESIS_LABELS[s.id]
                labels = corpus.load_labels(s.id, name)
                grid = grid_of(labels.grid)
                if min(grid.size) >= min_size_vox:
                    self.label_sources.append((s.id, warp(labels, grid, mode="nearest"), np.asarray(to_tissue)))
                else:
                    self.skipped.append(s.id)
            if mode in ("images", "mixed"):
                tissue = corpus.load_labels(s.id, "tissue") if "tissue" in s.labels else None
                for name in s.images:
                    image = corpus.load_image(s.id, name)
                    grid = grid_of(image.grid)
                    if min(grid.size) < min_size_vox or (need_tissue and tissue is None):
                        self.skipped.append(f"{s.id}/{name}")
                        continue
                    labels = None if tissue is None else warp(tissue, grid, mode="nearest")
                    self.image_sources.append((f"{s.id}/{name}", resample_to(image, grid), labels))
        if not self.label_sources and not self.image_sources:
            raise InputError(f"the {split} split has no {mode} sources of at least {min_size_vox} voxels per axis")

    @property
    def subject_ids(self) -> list:
        return sorted({key.split("/")[0] for key, *_ in self.label_sources + self.image_sources})

    @property
    def description(self) -> str:
        return (f"corpus {self.split} split, {self.mode}: " + ", ".join(self.subject_ids)
                + (f" (left out, too small or unlabelled: {', '.join(self.skipped)})" if self.skipped else ""))

    def subject_pair(self, rng: np.random.Generator) -> tuple:
        """Two synthetic subjects (:class:`synthesis.Synthesized`) of one random source, on one grid; their
        ``labels`` are tissue classes (or None)."""
        from_labels = not self.image_sources or (bool(self.label_sources) and rng.integers(2) == 0)
        gamma = synthesis.random_gamma(rng, self.settings)
        if from_labels:
            key, labels, to_tissue = self.label_sources[int(rng.integers(len(self.label_sources)))]
            self.drawn.add(key)
            contrast = synthesis.random_contrast(np.unique(labels.array), rng, self.settings)
            pair = [synthesis.from_labels(labels, rng, self.settings, contrast, gamma) for _ in range(2)]
            for p in pair:
                p.labels = p.labels.with_array(to_tissue[p.labels.array].astype(np.int16))
            return tuple(pair)
        key, image, labels = self.image_sources[int(rng.integers(len(self.image_sources)))]
        self.drawn.add(key.split("/")[0])
        return tuple(synthesis.from_image(image, rng, self.settings, labels, gamma) for _ in range(2))

    def pair(self, rng: np.random.Generator) -> tuple:
        """(fixed, moving) arrays in [0, 1] of :meth:`subject_pair`."""
        fixed, moving = self.subject_pair(rng)
        return fixed.image.array, moving.image.array

    def provenance(self, validation: "CorpusPairs") -> dict:
        """The model file's ``corpus`` record for training on this split and selecting on ``validation``: the
        subjects drawn so far (all available ones under ``available_*``)."""
        record = corpus.training_provenance(sorted(self.drawn), sorted(validation.drawn), self.settings.to_dict(),
                                            self.mode)
        record.update(available_train_subjects=self.subject_ids, available_validation_subjects=validation.subject_ids,
                      left_out=sorted(set(self.skipped) | set(validation.skipped)))
        return record


#: the learned metric's tasks: (translation range in mm, rotation bound in rad) of the misregistration
METRIC_TASKS = {"t1-t2": ((1.0, 20.0), 0.2), "t1-gm": ((1.0, 10.0), 0.1)}


def metric_case(t1: Image, t2: Image, task: str, seed: int, translation_mm, rotation_rad, rigid=None,
                moving_margin_mm: float = 0.0) -> tuple:
    """(fixed, moving, true fixed->moving transform) of one misregistered multimodal subject.

    One smooth random deformation (4 mm, 30 mm control spacing) of the aligned T1 and T2 (so they stay
    aligned), one intensity jitter draw for both; the moving modality is T2 (``t1-t2``) or the gradient
    magnitude of the subject's T1 (``t1-gm``), misregistered by Sedghi et al.'s distribution (``rigid(rng,
    centre)`` replaces it) on the template grid widened by ``moving_margin_mm``.
    """
    if task not in METRIC_TASKS:
        raise InputError(f"unknown metric task {task!r}: choose {', '.join(METRIC_TASKS)}")
    rng = np.random.default_rng(seed)
    field = smooth_random_field(t1.grid, rng, max_displacement_mm=4.0, control_spacing_mm=30.0)
    jitter_seed = int(rng.integers(1 << 31))
    fixed = intensity_jitter(warp(t1, t1.grid, field), np.random.default_rng(jitter_seed))
    if task == "t1-t2":
        other = intensity_jitter(warp(t2, t2.grid, field), np.random.default_rng(jitter_seed))
    else:
        other = gradient_magnitude(fixed)
    centre = t1.grid.center_physical()
    true = rigid(rng, centre) if rigid else random_rigid(rng, centre, translation_mm, rotation_rad)
    moving = warp(other, other.grid.widened(moving_margin_mm), true.inverse())  # moving(T(x)) = other(x)
    return fixed, moving, true


def brain_centred_grid(reference: Grid, mask: np.ndarray, size_xyz, spacing_mm: float) -> Grid:
    """A grid of ``size_xyz`` voxels of ``spacing_mm``, with ``reference``'s axes, centred on the bounding box
    of ``mask`` (a z-first array on ``reference``)."""
    idx = np.argwhere(mask)
    centre = reference.index_to_physical((idx.min(axis=0) + idx.max(axis=0))[::-1] / 2.0)
    spacing = np.full(3, float(spacing_mm))
    half = reference.direction @ (spacing * (np.asarray(size_xyz) - 1) / 2.0)
    return Grid(tuple(size_xyz), spacing, centre - half, reference.direction)


#: seed streams of :func:`template_subjects`: deformations of one template, never shared between streams
TEMPLATE_SEED_STREAMS = {"train": 1, "val": 2, "test": 3}


@dataclass
class TemplateSubjectSettings(Settings):
    """Base grid (x-first size, mm spacing) and the random deformation that makes a template subject."""

    size_xyz: tuple = (40, 48, 40)
    spacing_mm: float = 4.0
    deform_max_mm: float = 8.0
    deform_spacing_mm: float = 32.0
    gamma_range: tuple = (0.7, 1.4)
    noise_std: float = 0.02


def icbm_template(settings: TemplateSubjectSettings) -> tuple:
    """The ICBM 2009a T1 (raw intensities) and its tissue classes on a brain-centred grid of ``settings``."""
    t1 = sources.icbm152("t1")
    grid = brain_centred_grid(t1.grid, t1.array > 0, settings.size_xyz, settings.spacing_mm)
    image = resample_to(t1, grid)
    brain = resample_to(t1.with_array((t1.array > 0).astype(np.float32)), grid).array > 0.5
    gm = resample_to(sources.icbm152("gm"), grid).array
    wm = resample_to(sources.icbm152("wm"), grid).array
    return image, Image(corpus.tissue_from_probabilities(brain, gm, wm), grid)


def template_subject(image: Image, labels: Image, rng: np.random.Generator, settings: TemplateSubjectSettings) -> tuple:
    """(normalized image, labels) of one template subject: its own smooth random diffeomorphism (image
    linear, labels nearest), gamma and noise."""
    field = smooth_random_field(image.grid, rng, settings.deform_max_mm, settings.deform_spacing_mm)
    warped = warp(image, image.grid, field)
    warped_labels = warp(labels, labels.grid, field, mode="nearest")
    jittered = intensity_jitter(warped, rng, settings.gamma_range, settings.noise_std)
    return normalize_intensity(jittered.array), warped_labels.array.astype(np.int64)


def template_subjects(stream: str, count: int, settings: TemplateSubjectSettings, seed: int = 0, base=None) -> list:
    """``count`` subjects (image, labels) of a seed stream of :data:`TEMPLATE_SEED_STREAMS`."""
    image, labels = base if base is not None else icbm_template(settings)
    return [template_subject(image, labels, np.random.default_rng([seed, TEMPLATE_SEED_STREAMS[stream], k]), settings)
            for k in range(count)]


def content_slices(labels: np.ndarray, fraction: float = 0.5) -> np.ndarray:
    """Axial slice indices (first array axis) whose foreground area is at least ``fraction`` of the largest."""
    area = (labels > 0).sum(axis=(1, 2))
    return np.flatnonzero(area >= fraction * area.max())


#: the learned metric's corpus sources per split: ``(subject, kind, T1 image, T2 image)``. ``real``: the subject's
#: real T1 and its real, aligned T2 (None: a T2-like image drawn from its tissue classes, :func:`t2_like`);
#: ``synthmorph``: a label map of :data:`SYNTHESIS_LABELS` in two independent random contrasts (T1-T2) or one
#: random contrast and its gradient magnitude (T1-GM), the background dark (:data:`METRIC_BACKGROUND_LABEL`). ``t2`` is used by the T1-T2 task only; a source that cannot
#: make the task's pair (no T2 and no tissue classes) is left out of it.
METRIC_SOURCES = {
    "train": (("icbm152", "real", "avg152_t1", "avg152_t2"), ("ixi549-tpm", "synthmorph", None, None),
              ("icbm152", "synthmorph", None, None)),
    "validation": (("robex-atlas", "real", "t1", None), ("mni305", "real", "t1", None)),
    "test": (("colin27", "real", "spm_t1", None), ("itk-kmeans", "real", "t1", None)),
}
#: T2-weighted order of the tissue classes (CSF bright, WM dark): mean ranges of the normalized intensities
T2_LIKE_MEANS = {1: (0.75, 0.95), 2: (0.45, 0.6), 3: (0.3, 0.42)}
METRIC_CASE_SPACING_MM = 2.0
#: the label of the air around the head (TPM class 6) or outside the brain (ICBM tissue 0) in synthmorph cases
METRIC_BACKGROUND_LABEL = {"ixi549-tpm": 6, "icbm152": 0}


def metric_sources(split: str, task: str) -> list:
    """The :data:`METRIC_SOURCES` of ``split`` that can make ``task``'s pairs."""
    if task not in METRIC_TASKS:
        raise InputError(f"unknown metric task {task!r}: choose {', '.join(METRIC_TASKS)}")
    if split not in METRIC_SOURCES:
        raise InputError(f"unknown split {split!r}: choose {', '.join(METRIC_SOURCES)}")
    return [s for s in METRIC_SOURCES[split] if task == "t1-gm" or s[1] == "synthmorph" or s[3] is not None
            or "tissue" in corpus.subject(s[0]).labels]


def t2_like(t1: np.ndarray, tissue: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A T2-weighted-looking image of a subject that has no T2: inside the brain, its tissue classes with
    T2's order of intensities (:data:`T2_LIKE_MEANS`, 3 % noise); outside, its T1 scaled by U(0.4, 0.8)
    (skull dark and scalp fat bright in both weightings); a 0.7-voxel blur softens the class borders."""
    out = normalize_intensity(t1) * np.float32(rng.uniform(0.4, 0.8))
    for c, (lo, hi) in T2_LIKE_MEANS.items():
        inside = tissue == c
        out[inside] = rng.uniform(lo, hi) + 0.03 * rng.standard_normal(int(inside.sum())).astype(np.float32)
    return gaussian_filter(out, 0.7).astype(np.float32)


def corpus_metric_case(source: tuple, task: str, rng: np.random.Generator, settings: SynthesisSettings,
                       misregister: bool = True, spacing_mm: float = METRIC_CASE_SPACING_MM) -> tuple:
    """(fixed, moving, true fixed->moving rigid) of one multimodal case of a :data:`METRIC_SOURCES` entry.

    The subject is resampled to ``spacing_mm`` (default 2 mm) and deformed by one random diffeomorphism (both modalities alike, so they
    stay aligned); each image gets its own SynthMorph appearance (blur, bias field, gamma, resolution, noise,
    field of view, :func:`synthesis.appearance`); the moving image is the T2 (``t1-t2``) or the gradient magnitude
    of the fixed image (``t1-gm``, as ``deepregistration gradient-magnitude`` makes it), misregistered by Sedghi
    et al.'s distribution of the task (:data:`METRIC_TASKS`) unless ``misregister`` is False (identity truth).
    """
    subject_id, kind, t1_name, t2_name = source
    if kind == "synthmorph":
        name, _ = SYNTHESIS_LABELS[subject_id]
        labels = corpus.load_labels(subject_id, name)
        grid = labels.grid.with_spacing([spacing_mm] * 3)
        labels = warp(labels, grid, synthesis.random_diffeomorphism(grid, rng, settings), mode="nearest")
        values = np.unique(labels.array)
        contrasts = [synthesis.random_contrast(values, rng, settings) for _ in range(2 if task == "t1-t2" else 1)]
        for contrast in contrasts:   # air stays dark, as in every scan the metric will see
            contrast[METRIC_BACKGROUND_LABEL[subject_id]] = (rng.uniform(0.0, 25.0), rng.uniform(0.0, 5.0))
        images = [synthesis.gaussian_mixture(labels.array.astype(np.int16), c, rng) for c in contrasts]
    else:
        t1 = corpus.load_image(subject_id, t1_name)
        grid = t1.grid.with_spacing([spacing_mm] * 3)
        field = synthesis.random_diffeomorphism(grid, rng, settings)
        images = [warp(resample_to(t1, grid), grid, field).array]
        if task == "t1-t2":
            if t2_name is not None:
                images.append(warp(resample_to(corpus.load_image(subject_id, t2_name), grid), grid, field).array)
            else:
                tissue = warp(corpus.load_labels(subject_id, "tissue"), grid, field, mode="nearest").array
                images.append(t2_like(images[0], tissue, rng))
    fixed = Image(synthesis.appearance(images[0], grid, rng, settings), grid)
    other = (Image(synthesis.appearance(images[1], grid, rng, settings), grid) if task == "t1-t2"
             else gradient_magnitude(fixed))
    (lo, hi), rotation = METRIC_TASKS[task]
    centre = grid.center_physical()
    true = random_rigid(rng, centre, (lo, hi), rotation) if misregister else RigidTransform(center_mm=centre)
    return fixed, warp(other, grid, true.inverse()), true


def corpus_metric_cases(split: str, task: str, count: int, seed: int, settings: SynthesisSettings = SynthesisSettings(),
                        misregister: bool = True, spacing_mm: float = METRIC_CASE_SPACING_MM) -> list:
    """``count`` cases ``(name, fixed, moving, true)`` of ``split``, cycling through its sources; case k draws from
    ``default_rng([seed, split index, k])``, so the splits never share a draw."""
    sources_ = metric_sources(split, task)
    cases = []
    for k in range(count):
        source = sources_[k % len(sources_)]
        rng = np.random.default_rng([seed, corpus.SPLITS.index(split), k])
        fixed, moving, true = corpus_metric_case(source, task, rng, settings, misregister, spacing_mm)
        cases.append((f"{source[0]}/{source[1]}/{split}/{k}", fixed, moving, true))
    return cases


def metric_provenance(task: str, train_count: int, validation_count: int, seed: int,
                      settings: SynthesisSettings = SynthesisSettings(),
                      spacing_mm: float = METRIC_CASE_SPACING_MM) -> dict:
    """The ``corpus`` record of a metric set trained on :func:`corpus_metric_cases`."""
    record = corpus.training_provenance(sorted({s[0] for s in metric_sources("train", task)}),
                                        sorted({s[0] for s in metric_sources("validation", task)}),
                                        settings.to_dict(), "metric cases (corpus_pairs.corpus_metric_case)")
    record.update(task=task, sources={split: [list(s) for s in metric_sources(split, task)]
                                      for split in ("train", "validation")},
                  train_cases=train_count, validation_cases=validation_count, seed=seed, spacing_mm=spacing_mm,
                  misregistration={"train": "Sedghi et al.'s distribution of the task", "validation": "none "
                                   "(aligned: the selection's perturbed starts are measured against the truth)"})
    return record
