"""Counting NaN and infinite voxels in a NIfTI file's own bytes.

ITK's NIfTI reader (ITK 5.x, the one in SimpleITK 2.x) silently reads every NaN and
±Inf voxel as 0 (fixed in ITK 6, InsightSoftwareConsortium/ITK#6683), so a check on
the array SimpleITK returns cannot see them. This reads the voxel bytes directly.
"""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

_FLOAT_TYPES = {16: "f4", 64: "f8"}  # NIfTI datatype codes: FLOAT32, FLOAT64
_CHUNK_VOXELS = 1 << 23


def _header(raw: bytes):
    """(datatype, voxel count, voxel offset, byte order) of a NIfTI-1 or NIfTI-2 header."""
    for order in "<>":
        size = int(np.frombuffer(raw[:4], f"{order}i4")[0])
        if size == 348:
            dims = np.frombuffer(raw[40:56], f"{order}i2")
            datatype = int(np.frombuffer(raw[70:72], f"{order}i2")[0])
            offset = int(np.frombuffer(raw[108:112], f"{order}f4")[0])
            return datatype, int(np.prod(dims[1:1 + dims[0]], dtype=np.int64)), offset, order
        if size == 540:
            datatype = int(np.frombuffer(raw[12:14], f"{order}i2")[0])
            dims = np.frombuffer(raw[16:80], f"{order}i8")
            offset = int(np.frombuffer(raw[168:176], f"{order}i8")[0])
            return datatype, int(np.prod(dims[1:1 + dims[0]], dtype=np.int64)), offset, order
    return None


def _open(path: Path):
    return gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")


def _data_file(path: Path):
    """The file holding the voxels: the .nii itself, or the .img beside a .hdr."""
    name = path.name.lower()
    if not name.endswith((".hdr", ".hdr.gz")):
        return path
    stem = path.name[: -len(".hdr.gz")] if name.endswith(".gz") else path.name[: -len(".hdr")]
    return next((img for img in (path.with_name(stem + ".img"), path.with_name(stem + ".img.gz")) if img.exists()), None)


def count_nonfinite_nifti(path) -> int:
    """Number of NaN or infinite voxels stored in a float NIfTI file (0 for other files)."""
    path = Path(path)
    if not path.name.lower().endswith((".nii", ".nii.gz", ".hdr", ".hdr.gz")):
        return 0
    with _open(path) as f:
        header = _header(f.read(540))
    if header is None or header[0] not in _FLOAT_TYPES:
        return 0
    datatype, voxels, offset, order = header
    data_path = _data_file(path)
    if data_path is None:
        return 0
    dtype = np.dtype(f"{order}{_FLOAT_TYPES[datatype]}")
    bad = 0
    with _open(data_path) as f:
        f.seek(offset)
        remaining = voxels
        while remaining > 0:
            chunk = np.frombuffer(f.read(min(remaining, _CHUNK_VOXELS) * dtype.itemsize), dtype)
            if chunk.size == 0:
                break
            bad += int(np.count_nonzero(~np.isfinite(chunk)))
            remaining -= chunk.size
    return bad
