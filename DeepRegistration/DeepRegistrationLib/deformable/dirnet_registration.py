"""One-pass deformable registration with a trained DIRNet (de Vos et al. 2017), behind ``--method dirnet``.

Both images are resampled onto the model's grid (its spacing and size, centred on the fixed image,
the fixed image's axes; the moving image through the initial transform), normalized as in training,
and the network predicts B-spline control points once. The dense displacement is turned into LPS
millimetres and returned on the fixed image's grid (zero outside the model's field of view), composed
with the initial transform. A 2D model registers every slice along the fixed image's third index axis
on its own (in-plane displacement only), as the paper registers 2D slices.

Instance optimization (:func:`optimize_control_points`, on by default) refines the predicted control
points on the pair at hand, coarse to fine: the first level is the model's grid, each further one has
twice as many voxels per axis over the same extent (the control points stay where the network put them,
only the similarity is read on finer images). The loss is the chosen similarity of the warped moving
image and the fixed one, without a regularization term, as the paper trains DIRNet: the B-spline's
control-point spacing is its regularization. Masks weight the similarity (the moving mask carried by
the deformation). The field is then read on the finest level's grid.
"""
from __future__ import annotations

import numpy as np
import torch

from ..core.bspline import bspline_displacement, patch_centres
from ..core.image import Grid, Image
from ..core.spatial_transformer import warp_voxels
from ..core.transforms import DisplacementField, compose
from ..method_spec import MethodOutput, RegistrationContext
from ..models.model_file import load_network, resolve_model_path
from ..networks.dirnet_regressor import DIRNet, DIRNetConfig
from . import instance_optimization as io
from ..core.network_input import normalize_intensity, resample_to
from .model_input import MASKS_UNUSED, displacement_on, domain_warnings, initial_or_none

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


def refined_grid(grid: Grid, ndim: int, factor: int) -> Grid:
    """``grid`` with ``factor`` times as many voxel steps along its first ``ndim`` axes over the same extent."""
    size = [(n - 1) * factor + 1 if a < ndim else n for a, n in enumerate(grid.size)]
    spacing = [s / factor if a < ndim else s for a, s in enumerate(grid.spacing)]
    return Grid(tuple(size), np.asarray(spacing), grid.origin, grid.direction)


def as_batch(x: np.ndarray, ndim: int, device) -> torch.Tensor:
    """A z-first volume as the network's batch: (1, 1, nz, ny, nx) for 3D, (nz, 1, ny, nx) for 2D slices."""
    t = torch.as_tensor(x, device=device)
    return t[None, None] if ndim == 3 else t[:, None]


def field_from_control(net: DIRNet, control: torch.Tensor, grid: Grid, factor: int) -> torch.Tensor:
    """Displacement (B, ndim, *shape) in voxels of ``refined_grid(grid, ndim, factor)`` from the network's
    control points (voxels of ``grid``)."""
    ndim = net.config.ndim
    model_shape = list(reversed(grid.size[:ndim]))                  # z-first (y-first in 2D)
    shape = [(n - 1) * factor + 1 for n in model_shape]
    first, step = zip(*[patch_centres(n, c) for n, c in zip(reversed(model_shape), reversed(control.shape[2:]))])
    return bspline_displacement(control * factor, shape, net.config.spline_order, [f * factor for f in first],
                                [s * factor for s in step])


@torch.no_grad()
def predict_control(net: DIRNet, fixed: Image, moving: Image, device) -> torch.Tensor:
    """The network's control points (voxels of the model grid) for both images already on the model grid."""
    ndim = net.config.ndim
    f = as_batch(normalize_intensity(fixed.array), ndim, device)
    m = as_batch(normalize_intensity(moving.array), ndim, device)
    return net.regressor(f, m)


@torch.no_grad()
def predict_field(net: DIRNet, fixed: Image, moving: Image, grid: Grid, device) -> DisplacementField:
    """Displacement (LPS mm) on ``grid`` mapping fixed points to moving points; both images already on ``grid``."""
    return displacement_on(field_from_control(net, predict_control(net, fixed, moving, device), grid, 1), grid,
                           net.config.ndim)


def optimize_control_points(net: DIRNet, control: torch.Tensor, fixed: Image, moving: Image, grid: Grid,
                            initial, ctx: RegistrationContext) -> tuple:
    """Instance optimization of the control points (module docstring): ``(control, finest grid, stages)``."""
    options, ndim, stages = ctx.options, net.config.ndim, []
    similarity = io.similarity_function(options["similarity"])
    control = control.clone().requires_grad_(True)
    levels = options["io_levels"]
    for k in range(levels):
        factor = 2 ** k
        level_grid = refined_grid(grid, ndim, factor)
        f = as_batch(normalize_intensity(resample_to(fixed, level_grid).array), ndim, ctx.device)
        m = as_batch(normalize_intensity(resample_to(moving, level_grid, initial).array), ndim, ctx.device)
        fw, mw = (None if w is None else w.reshape(f.shape) for w in (
            io.mask_on_grid(ctx.fixed_mask, level_grid, device=ctx.device),
            io.mask_on_grid(ctx.moving_mask, level_grid, initial, ctx.device)))

        def loss_fn():
            u = field_from_control(net, control, grid, factor)
            weights = fw
            if mw is not None:
                carried = warp_voxels(mw, u)
                weights = carried if weights is None else weights * carried
            return similarity(warp_voxels(m, u), f, weights), io.folding_refusal(u)

        stage = io.Stage(k + 1, list(f.shape[2:]) if ndim == 3 else [f.shape[0], *f.shape[2:]],
                         list(reversed(level_grid.spacing.tolist())), options["iterations"])
        io.optimize([control], loss_fn, options["iterations"], options["learning_rate"],
                    ctx.progress.sub(0.3 + 0.55 * k / levels, 0.3 + 0.55 * (k + 1) / levels),
                    f"instance optimization, level {k + 1}/{levels}", stage)
        stages.append(stage)
    return control.detach(), 2 ** (levels - 1), stages


def register_dirnet(fixed: Image, moving: Image, ctx: RegistrationContext) -> MethodOutput:
    """The method's run (see :mod:`.dirnet_method`)."""
    name, report = ctx.models[0], {}
    ctx.progress(0.05, "loading model")
    net, meta = load_dirnet(name, ctx.device)
    grid = model_grid(fixed.grid, meta["patch_size"], meta["spacing_mm"])
    control_shape = net.config.control_shape(grid.shape[-net.config.ndim:])
    warnings = domain_warnings(fixed, moving, meta, whole_image=True)
    ctx.progress(0.15, "resampling to the model grid")
    initial = initial_or_none(ctx.initial_transform)
    fixed_m = resample_to(fixed, grid)
    moving_m = resample_to(moving, grid, initial)
    ctx.progress(0.25, "predicting the deformation")
    control = predict_control(net, fixed_m, moving_m, ctx.device)
    factor, field_grid = 1, grid
    iterations = ctx.options["iterations"]
    if iterations > 0:
        with torch.enable_grad():
            control, factor, stages = optimize_control_points(net, control, fixed, moving, grid, initial, ctx)
        field_grid = refined_grid(grid, net.config.ndim, factor)
        report["instance_optimization"], io_warnings = io.report(
            ctx.options["similarity"], stages, levels=ctx.options["io_levels"],
            learning_rate=ctx.options["learning_rate"], parameters="B-spline control points of the model grid")
        warnings += io_warnings
    elif ctx.fixed_mask is not None or ctx.moving_mask is not None:
        warnings.append(MASKS_UNUSED)
    with torch.no_grad():
        field = displacement_on(field_from_control(net, control, grid, factor), field_grid, net.config.ndim)
    ctx.progress(0.88, "field on the fixed grid")
    on_fixed = field.continued_onto(fixed.grid, ctx.device)
    transform = on_fixed if initial is None else compose(on_fixed, initial)
    report.update({"model": str(resolve_model_path(name)), "model_dimension": net.config.ndim,
                   "model_grid": grid.to_dict(), "control_grid_zyx": list(control_shape),
                   "spline_order": net.config.spline_order, "warnings": warnings})
    return MethodOutput(transform, None, report)
