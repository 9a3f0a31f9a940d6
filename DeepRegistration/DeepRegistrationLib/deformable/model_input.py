"""What the learned deformable methods share: their initial transform, their outputs in mm, and the
warnings for inputs outside a model's domain (:func:`domain_warnings`). Their inputs are prepared by
:mod:`..core.network_input`, as at training time."""
from __future__ import annotations

import numpy as np
import torch

from ..core.image import Grid, Image
from ..core.transforms import DisplacementField, LinearTransform


def initial_or_none(transform):
    """The initial transform, or None where it is the identity (nothing to resample through)."""
    identity = isinstance(transform, LinearTransform) and np.allclose(transform.matrix4(), np.eye(4), atol=1e-9)
    return None if identity else transform


def voxels_to_mm(u_vox, grid: Grid):
    """Displacements (..., 3) in x-first voxel units of ``grid`` to LPS millimetres: a float32 array for an
    array, a tensor on its device for a tensor."""
    matrix = grid.voxel_to_mm
    if isinstance(u_vox, torch.Tensor):
        return u_vox @ torch.as_tensor(matrix, dtype=torch.float32, device=u_vox.device).T
    return (u_vox @ matrix.T).astype(np.float32)


def in_plane(u2: np.ndarray) -> np.ndarray:
    """2D slice-wise displacements (..., 2) as 3D ones with no displacement along the third axis."""
    return np.concatenate([u2, np.zeros(u2.shape[:-1] + (1,), np.float32)], axis=-1)


def displacement_on(u_vox: torch.Tensor, grid: Grid, ndim: int) -> DisplacementField:
    """A network batch of voxel displacements (x-first) as an LPS-mm field on ``grid``."""
    if ndim == 3:
        return DisplacementField(voxels_to_mm(u_vox[0].movedim(0, -1).cpu().numpy(), grid), grid)
    return DisplacementField(voxels_to_mm(in_plane(u_vox.movedim(1, -1).cpu().numpy()), grid), grid)


def mm_per_voxel(spacing_zyx, ndim: int, like: torch.Tensor) -> torch.Tensor:
    """Voxel size per x-first component of the first ``ndim`` axes, shaped to scale a field batch."""
    values = list(reversed([float(s) for s in spacing_zyx[-ndim:]]))
    return torch.as_tensor(values, dtype=like.dtype, device=like.device).view(1, ndim, *[1] * ndim)


#: Report warning when masks were given but instance optimization, their only user, was switched off.
MASKS_UNUSED = ("the masks were not used: they restrict the similarity of the instance optimization, and "
                "iterations=0 runs the network alone")
#: Inputs with voxels coarser than this many times the model's spacing get a warning.
COARSER_THAN_MODEL = 2.0
#: Whole-image models (DIRNet, DeepSim): fields of view outside [1/f, f] times the training image's extent
#: get a warning; patch-wise models (diffeo): fields of view under 1/f of the training patch.
FIELD_OF_VIEW_FACTOR = 2.0
#: Fewest distinct intensities of an image (in a sample of voxels) that does not look like a label map.
MIN_DISTINCT_INTENSITIES = 16


def domain_warnings(fixed: Image, moving: Image, meta: dict, whole_image: bool = False) -> list:
    """Warnings for inputs far outside the domain of a model with metadata ``meta``: voxels much coarser
    than the model's spacing, a field of view far from the training patch (``whole_image``: the training
    image), and intensities that are not those of an MR image (nearly constant, a label map, or a
    negative range as wide as CT's Hounsfield units; the bundled models are trained on T1-weighted MR)."""
    spacing = np.asarray(meta["spacing_mm"], dtype=np.float64)
    k = len(spacing)
    trained_extent = np.asarray(meta["patch_size"], dtype=np.float64)[:k] * spacing
    out = []
    for role, image in (("fixed", fixed), ("moving", moving)):
        own = image.grid.spacing[:k]
        if np.any(own > COARSER_THAN_MODEL * spacing):
            out.append(f"{role} image: voxels of {_mm(own)} mm are over {COARSER_THAN_MODEL:g}x the model's "
                       f"{_mm(spacing)} mm; it is far blurrier than the model's training images")
        extent = np.asarray(image.grid.size[:k], dtype=np.float64) * own
        if np.any(extent < trained_extent / FIELD_OF_VIEW_FACTOR):
            out.append(f"{role} image: field of view {_mm(extent)} mm is under half the model's training "
                       f"{'image' if whole_image else 'patch'} ({_mm(trained_extent)} mm)")
        if whole_image and np.any(extent > trained_extent * FIELD_OF_VIEW_FACTOR):
            out.append(f"{role} image: field of view {_mm(extent)} mm is over {FIELD_OF_VIEW_FACTOR:g}x the model's "
                       f"training image ({_mm(trained_extent)} mm)")
        out += [f"{role} image: {w}" for w in _intensity_warnings(image.array)]
    return out


def _intensity_warnings(array: np.ndarray) -> list:
    sample = array.reshape(-1)[:: max(1, array.size // 200_000)]
    lo, hi = np.percentile(sample, [1.0, 99.0])
    if hi - lo <= 1e-6 * max(abs(hi), abs(lo), 1.0):
        return [f"nearly constant intensities (1st and 99th percentiles {lo:g}, {hi:g}); nothing to register"]
    if np.unique(sample).size < MIN_DISTINCT_INTENSITIES:
        return [f"only {np.unique(sample).size} distinct intensities: a label map or mask, not an MR image"]
    if sample.min() < -500 and hi - lo > 1000:
        return [f"intensities from {sample.min():g} to {sample.max():g} look like CT (Hounsfield units); "
                "the model was trained on T1-weighted MR"]
    return []


def _mm(values) -> str:
    return "x".join(f"{v:g}" for v in np.round(np.asarray(values, dtype=np.float64), 1))
