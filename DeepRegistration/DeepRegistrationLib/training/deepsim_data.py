"""Volumes, labels and pairs for DeepSim's two training stages, and their mini-batches (2D and 3D).

A :class:`VolumeSet` holds normalized volumes (z-first arrays) with optional label maps on the model
spacing, and the (moving, fixed) index pairs to register. Mini-batches are random crops of the model's
training size (``size_xyz``): 3D crops of the volumes, or 2D crops of axial slices (the first array
axis) that show enough content; a pair's two crops are taken at the same place. Validation batches are
drawn once with a fixed seed.

Sources: ``from_corpus`` (synthetic subjects of one split of the subject corpus, :mod:`..data.corpus_pairs`,
with their tissue classes; every ordered pair of distinct subjects on one grid), ``from_subjects`` (ICBM
2009a template subjects of one seed stream, :func:`..data.corpus_pairs.template_subjects`) or ``from_csv``
(the training contract's pairs CSV: each fixed image on a grid of the model spacing covering it, the moving
image resampled onto the same grid, label maps with nearest-neighbour; every fifth row is kept apart for
validation when there are at least two).
"""
from __future__ import annotations

import numpy as np
import torch

from ..core.errors import InputError
from ..core.io import read_image
from ..core.warp import warp
from ..deformable.deepsim_registration import covering_grid
from ..core.network_input import normalize_intensity, resample_to
from ..data.corpus_pairs import CorpusPairs, content_slices, template_subjects
from .common import read_pairs_csv


class VolumeSet:
    """Volumes (image, labels or None) on one spacing, pairs (moving index, fixed index), crop size."""

    def __init__(self, volumes: list, pairs: list, ndim: int, size_xyz, description: str):
        if not volumes:
            raise InputError("no volumes to train on")
        self.volumes, self.pairs, self.ndim, self.description = volumes, pairs, ndim, description
        self.source = None
        self.crop_shape = tuple(reversed([int(s) for s in size_xyz]))
        self.slices = [content_slices(lab if lab is not None else (img > 0.1).astype(np.int64))
                       for img, lab in volumes] if ndim == 2 else None

    @property
    def has_labels(self) -> bool:
        return all(lab is not None for _, lab in self.volumes)

    @classmethod
    def from_corpus(cls, source: CorpusPairs, count: int, ndim: int, size_xyz, seed: int = 0) -> "VolumeSet":
        """``count`` synthetic subjects (pairs of :meth:`CorpusPairs.subject_pair`, seeds [seed, k]) of a
        corpus split, with tissue labels; pairs are formed between distinct subjects on one grid (drawn from
        one source: the sources' grids differ in size and field of view)."""
        vols, grids = [], []
        for k in range((count + 1) // 2):
            for s in source.subject_pair(np.random.default_rng([seed, k])):
                vols.append((normalize_intensity(s.image.array), s.labels.array.astype(np.int64)))
                grids.append(s.image.grid)
        vols, grids = vols[:count], grids[:count]
        pairs = [(i, j) for i in range(len(vols)) for j in range(len(vols)) if i != j and grids[i].same_as(grids[j])]
        volume_set = cls(vols, pairs, ndim, size_xyz, f"{len(vols)} subjects of the {source.description}")
        volume_set.source = source
        return volume_set

    @classmethod
    def from_subjects(cls, split: str, count: int, subject_settings, ndim: int, size_xyz, seed: int = 0,
                      base=None) -> "VolumeSet":
        vols = template_subjects(split, count, subject_settings, seed, base)
        pairs = [(i, j) for i in range(count) for j in range(count) if i != j]
        return cls(vols, pairs, ndim, size_xyz, f"{count} {split} subjects of ICBM 2009a (seeds [{seed}, "
                   f"{split}, 0..{count - 1}])")

    @classmethod
    def from_csv(cls, path, ndim: int, size_xyz, spacing_mm, divisor: int) -> tuple:
        """(training set, validation set) from a pairs CSV."""
        rows = read_pairs_csv(path)
        sets = {"train": ([], []), "val": ([], [])}
        for n, row in enumerate(rows):
            part = "val" if len(rows) >= 2 and n % 5 == 4 else "train"
            volumes, pairs = sets[part]
            fixed = read_image(row["fixed"], "fixed image")
            grid = covering_grid(fixed.grid, spacing_mm, divisor)
            entries = []
            for key in ("moving", "fixed"):
                image = fixed if key == "fixed" else read_image(row[key], f"{key} image")
                img = normalize_intensity(resample_to(image, grid).array)
                lab = None
                if f"{key}_labels" in row:
                    labels = read_image(row[f"{key}_labels"], f"{key} labels", require_volume=False)
                    lab = warp(labels, grid, mode="nearest").array.astype(np.int64)
                entries.append((img, lab))
            pairs.append((len(volumes), len(volumes) + 1))
            volumes.extend(entries)
        train = cls(*sets["train"], ndim, size_xyz, f"pairs of {path} (rows not ≡ 4 mod 5)")
        if not sets["val"][0]:
            return train, cls(*sets["train"], ndim, size_xyz, f"pairs of {path} (no held-out rows: validation "
                                                              "on the training pairs)")
        return train, cls(*sets["val"], ndim, size_xyz, f"pairs of {path} (rows ≡ 4 mod 5)")

    def _crop(self, arrays: list, generator, centre: bool) -> list:
        """The same random (or central) crop of the model's size from equally shaped arrays, zero-padded."""
        shape = arrays[0].shape
        pads = [max(c - s, 0) for c, s in zip(self.crop_shape, shape)]
        if any(pads):
            arrays = [np.pad(a, [(p // 2, p - p // 2) for p in pads]) for a in arrays]
            shape = arrays[0].shape
        starts = [(s - c) // 2 if centre else int(torch.randint(s - c + 1, (1,), generator=generator))
                  for s, c in zip(shape, self.crop_shape)]
        region = tuple(slice(a, a + c) for a, c in zip(starts, self.crop_shape))
        return [a[region] for a in arrays]

    def _views(self, index: int, generator, others=()) -> tuple:
        """Volume ``index`` (and volumes ``others`` at the same place): whole, or one content slice in 2D."""
        items = [self.volumes[index]] + [self.volumes[o] for o in others]
        if self.ndim == 3:
            return items
        z = int(self.slices[index][int(torch.randint(len(self.slices[index]), (1,), generator=generator))])
        return [(img[z], None if lab is None else lab[z]) for img, lab in items]

    def sample_images(self, count: int, generator, centre: bool = False) -> tuple:
        """Stage 1 batch: images (B, 1, *crop) and labels (B, *crop), int64."""
        if not self.has_labels:
            raise InputError("the feature extractor is trained on segmentation: every image needs a label map")
        images, labels = [], []
        for _ in range(count):
            i = int(torch.randint(len(self.volumes), (1,), generator=generator))
            (img, lab), = self._views(i, generator)
            img, lab = self._crop([img, lab], generator, centre)
            images.append(torch.as_tensor(img)[None])
            labels.append(torch.as_tensor(lab))
        return torch.stack(images).float(), torch.stack(labels).long()

    def sample_pairs(self, count: int, generator, centre: bool = False) -> tuple:
        """Stage 2 batch: moving, fixed (B, 1, *crop) and their labels (B, *crop) or None."""
        moving, fixed, moving_lab, fixed_lab = [], [], [], []
        for _ in range(count):
            m, f = self.pairs[int(torch.randint(len(self.pairs), (1,), generator=generator))]
            (mi, ml), (fi, fl) = self._views(f, generator, (m,))[::-1]
            arrays = [mi, fi] + ([ml, fl] if ml is not None and fl is not None else [])
            crops = self._crop(arrays, generator, centre)
            moving.append(torch.as_tensor(crops[0])[None])
            fixed.append(torch.as_tensor(crops[1])[None])
            if len(crops) == 4:
                moving_lab.append(torch.as_tensor(crops[2]))
                fixed_lab.append(torch.as_tensor(crops[3]))
        labels = (torch.stack(moving_lab).long(), torch.stack(fixed_lab).long()) if len(moving_lab) == count \
            else (None, None)
        return (torch.stack(moving).float(), torch.stack(fixed).float(), *labels)
