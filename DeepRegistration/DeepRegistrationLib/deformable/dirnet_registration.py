"""One-pass deformable registration with a trained DIRNet (de Vos et al. 2017), behind ``--method dirnet``.

Both images are resampled onto the model's grid (its spacing and size, centred on the fixed image,
the fixed image's axes; the moving image through the initial transform), normalized as in training,
and the network predicts B-spline control points once. The dense displacement is turned into LPS
millimetres and returned on the fixed image's grid (zero outside the model's field of view), composed
with the initial transform. A 2D model registers every slice along the fixed image's third index axis
on its own (in-plane displacement only), as the paper registers 2D slices.
"""
from __future__ import annotations

import numpy as np
import torch

from ..core.image import Grid, Image
from ..core.transforms import DisplacementField, compose
from ..method_spec import MethodOutput, RegistrationContext
from ..models.model_file import load_network, resolve_model_path
from ..networks.dirnet_regressor import DIRNet, DIRNetConfig
from .model_input import in_plane, initial_or_none, normalize_intensity, resample_to, voxels_to_mm

MODEL_KIND = "dirnet"
#: Intensity normalization of every input (stated in model metadata).
NORMALIZATION = "per image: (I - p1) / (p99 - p1) clipped to [0, 1], percentiles over the model grid"


def model_grid(reference: Grid, size_xyz, spacing_mm) -> Grid:
    """A grid of the model's size and spacing, centred on ``reference`` with its axes.

    ``size_xyz``/``spacing_mm`` with two entries (2D model) keep the reference's third axis.
    """
    size = list(size_xyz) + list(reference.size[len(size_xyz):])
    spacing = np.concatenate([np.asarray(spacing_mm, dtype=np.float64), reference.spacing[len(size_xyz):]])
    half = reference.direction @ (spacing * (np.asarray(size) - 1) / 2.0)
    return Grid(tuple(size), spacing, reference.center_physical() - half, reference.direction)


def load_dirnet(name_or_path, device="cpu"):
    """``(network, metadata)`` of a DIRNet model file, in eval mode on ``device``."""
    return load_network(name_or_path, MODEL_KIND, lambda c: DIRNet(DIRNetConfig(**c)), "DIRNet", device)


@torch.no_grad()
def predict_field(net: DIRNet, fixed: Image, moving: Image, grid: Grid, device) -> DisplacementField:
    """Displacement (LPS mm) on ``grid`` mapping fixed points to moving points; both images already on ``grid``."""
    f = torch.as_tensor(normalize_intensity(fixed.array), device=device)
    m = torch.as_tensor(normalize_intensity(moving.array), device=device)
    if net.config.ndim == 3:
        u, _ = net.displacement(f[None, None], m[None, None])
        u_vox = u[0].movedim(0, -1).cpu().numpy()
    else:
        u, _ = net.displacement(f[:, None], m[:, None])  # slices along the third axis as a batch
        u_vox = in_plane(u.movedim(1, -1).cpu().numpy())
    return DisplacementField(voxels_to_mm(u_vox, grid), grid)


def register_dirnet(fixed: Image, moving: Image, ctx: RegistrationContext) -> MethodOutput:
    """The method's run (see :mod:`.dirnet_method`)."""
    name, report = ctx.models[0], {}
    ctx.progress(0.05, "loading model")
    net, meta = load_dirnet(name, ctx.device)
    grid = model_grid(fixed.grid, meta["patch_size"], meta["spacing_mm"])
    control = net.config.control_shape(grid.shape[-net.config.ndim:])
    ctx.progress(0.15, "resampling to the model grid")
    initial = initial_or_none(ctx.initial_transform)
    fixed_m = resample_to(fixed, grid)
    moving_m = resample_to(moving, grid, initial)
    ctx.progress(0.4, "predicting the deformation")
    field = predict_field(net, fixed_m, moving_m, grid, ctx.device)
    ctx.progress(0.7, "field on the fixed grid")
    on_fixed = DisplacementField.from_transform(field, fixed.grid, ctx.device)
    transform = on_fixed if initial is None else compose(on_fixed, initial)
    report.update({"model": str(resolve_model_path(name)), "model_dimension": net.config.ndim,
                   "model_grid": grid.to_dict(), "control_grid_zyx": list(control),
                   "spline_order": net.config.spline_order})
    return MethodOutput(transform, None, report)
