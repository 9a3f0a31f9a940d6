"""Reading and writing images through SimpleITK (NIfTI, NRRD, MHA), geometry kept."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import InputError
from .image import Image
from .nifti_nonfinite import count_nonfinite_nifti
from .validation import check_volume


def read_with_sitk(read, path, name: str, what: str):
    """``read(str(path))`` with a SimpleITK reader; a missing file, or one it cannot read as ``what``, is an
    :class:`InputError` that starts with ``name``."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{name}: file not found: {path}")
    try:
        return read(str(path))
    except RuntimeError as err:
        raise InputError(f"{name}: cannot read {path} as {what} ({str(err).strip().splitlines()[-1]})") from None


def read_image(path, name: str = "image", require_volume: bool = True) -> Image:
    """Read an image file; with ``require_volume`` it must be a usable 3D scalar volume."""
    itk = read_with_sitk(sitk.ReadImage, path, name, "an image")
    if itk.GetNumberOfComponentsPerPixel() > 1 and require_volume:
        raise InputError(
            f"{name}: {path} has {itk.GetNumberOfComponentsPerPixel()} components per voxel; a scalar volume is needed"
        )
    if itk.GetDimension() == 4 and require_volume:
        raise InputError(f"{name}: {path} is 4D {itk.GetSize()}; a 3D volume is needed")
    image = Image.from_sitk(itk)
    if require_volume:
        image = Image(image.array.astype(np.float32), image.grid)
        zeroed = count_nonfinite_nifti(path)
        if zeroed:
            raise InputError(
                f"{name}: {path} has {zeroed} NaN or infinite voxels (ITK's NIfTI reader turns them into 0 "
                "without a word); clean them before registering"
            )
        check_volume(image, name)
    return image


def write_image(image: Image, path) -> None:
    """Write an image; the parent folder is created. Written to a temporary name, then renamed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes[-2:]) if path.name.endswith(".nii.gz") else path.suffix
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{suffix}")
    sitk.WriteImage(image.to_sitk(), str(tmp), True)
    os.replace(tmp, path)
