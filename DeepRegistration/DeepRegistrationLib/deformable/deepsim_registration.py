"""One-pass deformable registration with a U-Net trained with DeepSim (Czolbe et al. 2021), behind ``--method deepsim``.

Both images are resampled to the model's spacing on a grid covering the fixed image with its axes (the
moving image through the initial transform), each side rounded up to a multiple of the U-Net's divisor
and centred on the fixed image; intensities are normalized as in training. The registration U-Net
predicts the displacement u once (Φ(x) = x + u(x) maps fixed to moving points); it is turned into LPS
millimetres and returned on the fixed image's own grid (zero outside the model grid), composed with the
initial transform when that is not the identity. A 2D model registers every slice along the fixed
image's third index axis on its own (in-plane displacement only), as the paper's 2D experiments.

The same method runs the paper's baselines: a model trained with MSE, NCC or NCC_sup instead of
DeepSim has the same architecture; its metadata (and the report) says which similarity trained it.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..core.image import Grid, Image
from ..core.transforms import DisplacementField, compose
from ..method_spec import MethodOutput, RegistrationContext
from ..models.model_file import load_network, resolve_model_path
from ..networks.deepsim_unet import RegistrationUNet, UNetConfig
from .model_input import in_plane, initial_or_none, normalize_intensity, resample_to, voxels_to_mm

MODEL_KIND = "deepsim"
NORMALIZATION = "per image: (I - p1) / (p99 - p1) clipped to [0, 1], percentiles over the model grid"
#: 2D slices per network call
SLICE_BATCH = 16


def covering_grid(reference: Grid, spacing_mm, divisor: int) -> Grid:
    """A grid of ``spacing_mm`` covering ``reference`` with its axes and centre, sides multiples of ``divisor``.

    With two spacings (a 2D model) the third axis keeps the reference's spacing and size.
    """
    k = len(spacing_mm)
    spacing = np.concatenate([np.asarray(spacing_mm, dtype=np.float64), reference.spacing[k:]])
    extent = (np.asarray(reference.size) - 1) * reference.spacing
    size = [int(math.ceil((math.floor(e / s + 1e-6) + 1) / divisor)) * divisor
            for e, s in zip(extent[:k], spacing[:k])] + list(reference.size[k:])
    half = reference.direction @ (spacing * (np.asarray(size) - 1) / 2.0)
    return Grid(tuple(size), spacing, reference.center_physical() - half, reference.direction)


def load_registration_net(name_or_path, device="cpu"):
    """``(network, metadata)`` of a DeepSim registration model file, in eval mode on ``device``."""
    return load_network(name_or_path, MODEL_KIND, lambda c: RegistrationUNet(UNetConfig(**c)),
                        "registration U-Net", device)


@torch.no_grad()
def predict_field(net: RegistrationUNet, fixed: np.ndarray, moving: np.ndarray, grid: Grid, device) -> DisplacementField:
    """Φ − id (LPS mm) on ``grid`` for normalized arrays already on ``grid``."""
    f = torch.as_tensor(fixed, device=device)
    m = torch.as_tensor(moving, device=device)
    if net.config.ndim == 3:
        u_vox = net.displacement(m[None, None], f[None, None])[0].movedim(0, -1).cpu().numpy()
    else:
        parts = [net.displacement(m[z:z + SLICE_BATCH, None], f[z:z + SLICE_BATCH, None]).movedim(1, -1).cpu().numpy()
                 for z in range(0, f.shape[0], SLICE_BATCH)]
        u_vox = in_plane(np.concatenate(parts))
    return DisplacementField(voxels_to_mm(u_vox, grid), grid)


def register_deepsim(fixed: Image, moving: Image, ctx: RegistrationContext) -> MethodOutput:
    """The method's run (see :mod:`.deepsim_method`)."""
    name, report = ctx.models[0], {}
    ctx.progress(0.05, "loading model")
    net, meta = load_registration_net(name, ctx.device)
    grid = covering_grid(fixed.grid, meta["spacing_mm"], net.config.divisor)
    ctx.progress(0.15, "resampling to the model spacing")
    initial = initial_or_none(ctx.initial_transform)
    f = normalize_intensity(resample_to(fixed, grid).array)
    m = normalize_intensity(resample_to(moving, grid, initial).array)
    ctx.progress(0.4, "predicting the deformation")
    field = predict_field(net, f, m, grid, ctx.device)
    ctx.progress(0.7, "field on the fixed grid")
    on_fixed = DisplacementField.from_transform(field, fixed.grid, ctx.device)
    transform = on_fixed if initial is None else compose(on_fixed, initial)
    report.update({"model": str(resolve_model_path(name)), "model_dimension": net.config.ndim,
                   "model_similarity": meta.get("similarity", "unknown"),
                   "model_lambda": meta.get("lambda"), "model_grid": grid.to_dict()})
    return MethodOutput(transform, None, report)
