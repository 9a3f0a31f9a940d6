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

Instance optimization (:func:`optimize_field`, on by default) refines the predicted field on the pair
at hand with the loss the model was trained with (eq. 1): D(I∘Φ, J) + λ‖∇u‖², λ from the model's
metadata. D is, with ``similarity=model`` (the default), the model's training similarity: DeepSim
with the model's frozen feature extractor for a DeepSim-trained model, MSE for an MSE one, local NCC
for NCC and NCC_sup ones (the label term needs labels); ``lncc`` or ``nmse`` choose another. The field
is u = u_net + c, the correction c optimized coarse to fine on the model grid and coarser ones (the
model grid last), carried between levels in mm; the learning rate (mm per Adam step) is the model
grid's, scaled with the voxel size on coarser levels. Masks weight D (the moving mask carried by Φ).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..core.image import Grid, Image
from ..core.spatial_transformer import warp_voxels
from ..core.transforms import DisplacementField, compose
from ..method_spec import MethodOutput, RegistrationContext
from ..models.model_file import load_network, resolve_model_path
from ..networks.deepsim_unet import RegistrationUNet, UNetConfig
from ..metrics.similarity import diffusion, local_ncc, mse
from . import instance_optimization as io
from ..core.network_input import normalize_intensity, resample_to
from .model_input import MASKS_UNUSED, displacement_on, domain_warnings, initial_or_none, mm_per_voxel

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


def as_batch(x: np.ndarray, ndim: int, device) -> torch.Tensor:
    """A z-first volume as the network's batch: (1, 1, nz, ny, nx) for 3D, (nz, 1, ny, nx) for 2D slices."""
    t = torch.as_tensor(x, device=device)
    return t[None, None] if ndim == 3 else t[:, None]


@torch.no_grad()
def predict_displacement(net: RegistrationUNet, fixed: np.ndarray, moving: np.ndarray, device) -> torch.Tensor:
    """u (voxels, x-first) as a network batch: (1, 3, *shape) for 3D, (nz, 2, ny, nx) for 2D slices."""
    f, m = as_batch(fixed, net.config.ndim, device), as_batch(moving, net.config.ndim, device)
    if net.config.ndim == 3:
        return net.displacement(m, f)
    return torch.cat([net.displacement(m[z:z + SLICE_BATCH], f[z:z + SLICE_BATCH])
                      for z in range(0, f.shape[0], SLICE_BATCH)])


@torch.no_grad()
def predict_field(net: RegistrationUNet, fixed: np.ndarray, moving: np.ndarray, grid: Grid, device) -> DisplacementField:
    """Φ − id (LPS mm) on ``grid`` for normalized arrays already on ``grid``."""
    return displacement_on(predict_displacement(net, fixed, moving, device), grid, net.config.ndim)


def dissimilarity(name: str, meta: dict, device):
    """(D(a, b, mask), its description) for ``similarity=name`` (module docstring)."""
    if name != "model":
        return io.similarity_function(name), name
    trained = meta.get("similarity", "mse")
    if trained == "deepsim":
        from ..metrics.deepsim_similarity import load_deepsim
        return load_deepsim(meta["features"], device), f"deepsim ({meta['features']})"
    return (mse, "mse") if trained == "mse" else (local_ncc, "lncc")


def optimize_field(u_net: torch.Tensor, fixed: torch.Tensor, moving: torch.Tensor, spacing_zyx, lam: float,
                   similarity, options: dict, progress, fixed_weights=None, moving_weights=None) -> tuple:
    """Instance optimization of the field (module docstring): ``(u in voxels of the model grid, stages)``.

    All tensors are network batches on the model grid; ``spacing_zyx`` its voxel size (the spatial axes)."""
    ndim = u_net.dim() - 2
    shape = u_net.shape[2:]
    shapes = io.level_shapes(shape, options["io_levels"])
    fixed_levels, moving_levels = io.image_pyramid(fixed, shapes), io.image_pyramid(moving, shapes)
    u_net_mm = u_net * mm_per_voxel(spacing_zyx, ndim, u_net)
    correction, stages = None, []
    for k, level in enumerate(shapes):
        spacing = io.level_spacing(shape, spacing_zyx[-ndim:], level)
        to_voxels = 1.0 / mm_per_voxel(spacing, ndim, u_net)
        f, m = fixed_levels[k], moving_levels[k]
        fw = None if fixed_weights is None else io.resize(fixed_weights, level)
        mw = None if moving_weights is None else io.resize(moving_weights, level)
        with torch.no_grad():
            base = io.resize(u_net_mm, level)
            start = torch.zeros_like(base) if correction is None else io.resize(correction, level)
        c = start.clone().requires_grad_(True)

        def loss_fn():
            u = (base + c) * to_voxels
            weights = fw
            if mw is not None:
                carried = warp_voxels(mw, u)
                weights = carried if weights is None else weights * carried
            return similarity(warp_voxels(m, u), f, weights) + lam * diffusion(u), io.folding_refusal(u)

        stage = io.Stage(k + 1, list(level) if ndim == 3 else [u_net.shape[0], *level], spacing, options["iterations"])
        io.optimize([c], loss_fn, options["iterations"], options["learning_rate"] * spacing[-1] / spacing_zyx[-1],
                    progress.sub(k / len(shapes), (k + 1) / len(shapes)),
                    f"instance optimization, level {k + 1}/{len(shapes)}", stage)
        stages.append(stage)
        correction = c.detach()
    with torch.no_grad():
        u_mm = u_net_mm + io.resize(correction, shape)
        return u_mm / mm_per_voxel(spacing_zyx, ndim, u_net), stages


def register_deepsim(fixed: Image, moving: Image, ctx: RegistrationContext) -> MethodOutput:
    """The method's run (see :mod:`.deepsim_method`)."""
    name, report, options = ctx.models[0], {}, ctx.options
    ctx.progress(0.05, "loading model")
    net, meta = load_registration_net(name, ctx.device)
    ndim = net.config.ndim
    grid = covering_grid(fixed.grid, meta["spacing_mm"], net.config.divisor)
    warnings = domain_warnings(fixed, moving, meta, whole_image=True)
    ctx.progress(0.15, "resampling to the model spacing")
    initial = initial_or_none(ctx.initial_transform)
    f = normalize_intensity(resample_to(fixed, grid).array)
    m = normalize_intensity(resample_to(moving, grid, initial).array)
    ctx.progress(0.25, "predicting the deformation")
    u = predict_displacement(net, f, m, ctx.device)

    def on_fixed_grid(u_vox):
        return displacement_on(u_vox, grid, ndim).continued_onto(fixed.grid, ctx.device)
    if options["iterations"] > 0:
        u_net = u
        similarity, described = dissimilarity(options["similarity"], meta, ctx.device)
        lam = float(meta.get("lambda") or 0.0)
        weights = [None if w is None else w.reshape(u.shape[0], 1, *u.shape[2:]) for w in (
            io.mask_on_grid(ctx.fixed_mask, grid, device=ctx.device),
            io.mask_on_grid(ctx.moving_mask, grid, initial, ctx.device))]
        with torch.enable_grad():
            u, stages = optimize_field(u, as_batch(f, ndim, ctx.device), as_batch(m, ndim, ctx.device),
                                       list(reversed(grid.spacing.tolist())), lam, similarity, options,
                                       ctx.progress.sub(0.3, 0.85), *weights)
        ctx.progress(0.88, "field on the fixed grid")
        on_fixed, kept, fold_warning = io.fold_free_on_output(u_net, u, on_fixed_grid)
        report["instance_optimization"], io_warnings = io.report(
            described, stages, levels=options["io_levels"], learning_rate=options["learning_rate"], reg_weight=lam,
            parameters="displacement field of the model grid (u = u_net + correction)", correction_kept=kept)
        warnings += io_warnings + ([fold_warning] if fold_warning else [])
    else:
        if ctx.fixed_mask is not None or ctx.moving_mask is not None:
            warnings.append(MASKS_UNUSED)
        ctx.progress(0.88, "field on the fixed grid")
        on_fixed = on_fixed_grid(u)
    transform = on_fixed if initial is None else compose(on_fixed, initial)
    report.update({"model": str(resolve_model_path(name)), "model_dimension": ndim,
                   "model_similarity": meta.get("similarity", "unknown"),
                   "model_lambda": meta.get("lambda"), "model_grid": grid.to_dict(), "warnings": warnings})
    return MethodOutput(transform, None, report)
