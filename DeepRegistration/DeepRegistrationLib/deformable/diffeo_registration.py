"""Patch-wise diffeomorphic registration with a momentum U-Net (the thesis' method), behind ``--method diffeo``.

Both images are resampled to the model's spacing on a grid covering the fixed image with its axes (the
moving image through the initial rigid transform) and normalized as in training; the moving image's
intensities are then matched to the fixed image's (:func:`~..core.network_input.matched_histogram`), and the
whole-volume momentum is predicted tile by tile, smoothed and integrated (:mod:`.patchwise`). φ = exp(v) is returned
on the fixed image's own grid as an LPS-mm displacement field (composed with the initial transform when
that is not the identity), and φ⁻¹ = exp(−v) as a field on the moving image's grid. The options are
declared in :mod:`.diffeo_method`.

Instance optimization (:func:`optimize_velocity`, on by default) refines the predicted velocity before
the integration, in the same LDDMM model: v = v_net + Σ_levels K⁻¹ * δm_l, coarse to fine, each δm_l a
momentum optimized on its level (the finest level has voxels of ``resolution`` mm, by default the
model's own 2 mm; a coarser finest level costs about 8 times less per halving but, measured on a
held-out T1, left the result worse than the network's: the 4 mm loss cannot see a 1 mm misalignment;
the velocity itself stays on the model grid) (the same kernel K = (α∇² + γ)², read on the level's voxel size, and
scaling and squaring, integrated as the output is: the first squarings on every other voxel where that grid
holds the level's starting velocity), so the result is exp(v) with its exact inverse exp(−v). The loss is
eq. 3.2 with the chosen similarity ε: w·‖Lv‖² + ½ ε(I₁∘φ⁻¹, I₂) + ½ ε(I₂∘φ, I₁), ‖Lv‖² = ⟨v, m⟩ with m = L²v (L by
finite differences). Masks weight ε: the fixed mask on the fixed side and the moving mask carried
through φ (and the other way round for the inverse term). An iterate with a folding voxel in either
direction stops the level (the best fold-free iterate is kept).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..core.device import resolve_precision
from ..core.spatial_transformer import inside_fraction_mask, warp_voxels
from ..core.image import Grid, Image
from ..core.transforms import DisplacementField, compose
from ..core.warp import physical_grid_points, sample_at_points
from ..method_spec import MethodOutput, RegistrationContext
from ..models.model_file import load_network, resolve_model_path
from ..networks.momentum_unet import MomentumUNet, MomentumUNetConfig
from . import instance_optimization as io
from . import lddmm
from .patchwise import (FINE_SQUARINGS, MODEL_KIND, coarse_grid_holds, predict_fields, tiles_per_call,
                        voxels_to_lps_mm)
from ..core.network_input import matched_histogram, normalize_intensity, resample_to
from .model_input import MASKS_UNUSED, domain_warnings, initial_or_none


def load_momentum_net(name_or_path, device="cpu"):
    """``(network, metadata)`` of a diffeo model file, in eval mode on ``device``."""
    return load_network(name_or_path, MODEL_KIND, lambda c: MomentumUNet(MomentumUNetConfig(**c)), "momentum U-Net",
                        device)


def lddmm_parameters(meta: dict) -> dict:
    params = meta.get("lddmm", {})
    return {"alpha": float(params.get("alpha", lddmm.ALPHA)), "gamma": float(params.get("gamma", lddmm.GAMMA)),
            "padding": int(params.get("padding", lddmm.PADDING)), "steps": int(params.get("steps", lddmm.STEPS))}


def field_on_grid(field: DisplacementField, target: Grid, target_to_field=None, device="cpu") -> DisplacementField:
    """The transform x ↦ φ(P(x)) (P = ``target_to_field``, identity if None) as a field on ``target``.

    Displacement P(x) + u(P(x)) − x, with u zero outside ``field``'s grid; computed in z-slabs.
    """
    volume = torch.as_tensor(field.displacement_mm, device=device).permute(3, 0, 1, 2)
    out = np.empty((*target.shape, 3), np.float32)
    slab = lddmm.slab_for(target.shape)
    for z0 in range(0, target.size[2], slab):
        z1 = min(z0 + slab, target.size[2])
        pts = physical_grid_points(target, device=device, dtype=torch.float64, z_range=(z0, z1))
        q = pts if target_to_field is None else target_to_field.transform_points_torch(pts)
        u = sample_at_points(volume, field.grid, q.float(), mode="bilinear", padding_mode="zeros").movedim(0, -1)
        out[z0:z1] = (q - pts + u.double()).float().cpu().numpy()
    return DisplacementField(out, target)


def operator_norm(v_mm: torch.Tensor, spacing_zyx, alpha: float, gamma: float) -> torch.Tensor:
    """‖Lv‖² = ⟨v, L²v⟩ = ⟨v, m⟩ (the regularization of eq. 3.2), mean over voxels; L = γ − α∇² with the
    discrete Laplacian of :func:`lddmm.kernel_spectrum` (border voxels repeated)."""
    lv = gamma * v_mm
    padded = F.pad(v_mm, (1, 1, 1, 1, 1, 1), mode="replicate")
    for axis, dx in enumerate(spacing_zyx):
        dim, n = 2 + axis, v_mm.shape[2 + axis]
        line = padded[(slice(None), slice(None), *(slice(None) if d == dim else slice(1, -1) for d in (2, 3, 4)))]
        lv = lv + alpha * (2 * v_mm - line.narrow(dim, 0, n) - line.narrow(dim, 2, n)) / float(dx) ** 2
    return lv.pow(2).sum(dim=1).mean()


def optimize_velocity(v_net: torch.Tensor, fixed: torch.Tensor, moving: torch.Tensor, spacing_zyx, params: dict,
                      options: dict, progress, fixed_weights=None, moving_weights=None) -> tuple:
    """Instance optimization of the LDDMM velocity (module docstring): ``(v_mm, stages)``.

    ``v_net`` (1, 3, *shape) mm, x-first; ``fixed``/``moving`` (1, 1, *shape) normalized to [0, 1];
    ``*_weights`` (1, 1, *shape) mask weights or None, all on the model grid."""
    finest = [max(2, round((n - 1) * s / max(options["resolution"], s)) + 1) for n, s in zip(v_net.shape[2:], spacing_zyx)]
    shapes = io.level_shapes(finest, options["io_levels"])
    similarity = io.similarity_function(options["similarity"])
    fixed_levels, moving_levels = io.image_pyramid(fixed, shapes), io.image_pyramid(moving, shapes)
    alpha, gamma, steps = params["alpha"], params["gamma"], params["steps"]
    correction, stages = None, []
    for k, shape in enumerate(shapes):
        spacing = io.level_spacing(v_net.shape[2:], spacing_zyx, shape)
        f, m = fixed_levels[k], moving_levels[k]
        fw = None if fixed_weights is None else io.resize(fixed_weights, shape)
        mw = None if moving_weights is None else io.resize(moving_weights, shape)
        with torch.no_grad():
            base = io.resize(v_net, shape) + (0.0 if correction is None else io.resize(correction, shape))
            # the integration of the output (patchwise.integrate_velocity), on the level's grid
            coarse_steps = steps - FINE_SQUARINGS if coarse_grid_holds(lddmm.velocity_to_voxels(base, spacing),
                                                                       spacing) else 0
        delta = torch.zeros_like(base, requires_grad=True)

        def loss_fn():
            v = base + lddmm.smooth(delta, spacing, alpha, gamma, params["padding"])
            u, u_inv = lddmm.forward_and_inverse(lddmm.velocity_to_voxels(v, spacing), steps,
                                                 coarse_steps=coarse_steps)
            w_forward, w_inverse = inside_fraction_mask(u), inside_fraction_mask(u_inv)
            if fw is not None:
                w_forward, w_inverse = w_forward * fw, w_inverse * warp_voxels(fw, u_inv, padding_mode="zeros")
            if mw is not None:
                w_forward, w_inverse = w_forward * warp_voxels(mw, u, padding_mode="zeros"), w_inverse * mw
            loss = (options["reg_weight"] * operator_norm(v, spacing, alpha, gamma)
                    + 0.5 * similarity(warp_voxels(moving_levels[k], u, padding_mode="zeros"), f, w_forward)
                    + 0.5 * similarity(warp_voxels(fixed_levels[k], u_inv, padding_mode="zeros"), m, w_inverse))
            return loss, io.folding_refusal(u, u_inv)

        stage = io.Stage(k + 1, list(shape), spacing, options["iterations"])
        io.optimize([delta], loss_fn, options["iterations"], options["learning_rate"],
                    progress.sub(k / len(shapes), (k + 1) / len(shapes)),
                    f"instance optimization, level {k + 1}/{len(shapes)}", stage)
        stages.append(stage)
        with torch.no_grad():
            step = lddmm.smooth(delta, spacing, alpha, gamma, params["padding"])
            correction = step if correction is None else io.resize(correction, shape) + step
    with torch.no_grad():
        return v_net + io.resize(correction, v_net.shape[2:]), stages


def register_diffeo(fixed: Image, moving: Image, ctx: RegistrationContext) -> MethodOutput:
    """The method's run (see :mod:`.diffeo_method`); ``ctx.options`` already parsed by its spec."""
    name, report = ctx.models[0], {}
    options = ctx.options
    tile, discard = options["tile"], options["discard"]
    tile_batch = options["tile_batch"] or tiles_per_call(tile)
    precision = resolve_precision(options["precision"], ctx.device)
    ctx.progress(0.02, "loading model")
    net, meta = load_momentum_net(name, ctx.device)
    grid = fixed.grid.with_spacing(meta["spacing_mm"])
    initial = initial_or_none(ctx.initial_transform)
    warnings = domain_warnings(fixed, moving, meta)
    ctx.progress(0.05, "resampling to the model spacing")
    f = normalize_intensity(resample_to(fixed, grid).array)
    m = matched_histogram(normalize_intensity(resample_to(moving, grid, initial).array), f)
    params = lddmm_parameters(meta)
    spacing_zyx = list(reversed(grid.spacing.tolist()))
    refine, stages = None, []
    if options["iterations"] > 0:
        tensors = [torch.as_tensor(a, device=ctx.device)[None, None] for a in (f, m)]
        weights = (io.mask_on_grid(ctx.fixed_mask, grid, device=ctx.device),
                   io.mask_on_grid(ctx.moving_mask, grid, initial, ctx.device))

        def instance_optimization(v_mm, progress):
            with torch.enable_grad():
                v_mm, done = optimize_velocity(v_mm, *tensors, spacing_zyx, params, options, progress, *weights)
            stages.extend(done)
            return v_mm
        refine = instance_optimization
    elif ctx.fixed_mask is not None or ctx.moving_mask is not None:
        warnings.append(MASKS_UNUSED)
    u_vox, u_inv_vox, timings = predict_fields(net, f, m, spacing_zyx, params, tile, discard, ctx.device, tile_batch,
                                               progress=ctx.progress.sub(0.1, 0.85), precision=precision,
                                               refine_velocity=refine)
    del f, m
    ctx.progress(0.88, "fields on the image grids")
    forward = DisplacementField(voxels_to_lps_mm(u_vox, grid), grid)
    del u_vox
    inverse = DisplacementField(voxels_to_lps_mm(u_inv_vox, grid), grid)
    del u_inv_vox
    if not grid.same_as(fixed.grid):
        forward = field_on_grid(forward, fixed.grid, device=ctx.device)
    inverse_on_moving = inverse
    if initial is not None or not grid.same_as(moving.grid):
        back = initial.inverse() if initial is not None else None
        inverse_on_moving = field_on_grid(inverse, moving.grid, back, ctx.device)
    transform = forward if initial is None else compose(forward, initial)
    report.update({"model": str(resolve_model_path(name)), "model_grid": grid.to_dict(), "tile": tile,
                   "discard": discard, "network_precision": precision, "lddmm": params, **timings})
    if options["iterations"] > 0:
        report["instance_optimization"], io_warnings = io.report(
            options["similarity"], stages, levels=options["io_levels"], learning_rate=options["learning_rate"],
            reg_weight=options["reg_weight"], parameters="LDDMM velocity v = v_net + K^-1 dm per level")
        warnings += io_warnings
    report["warnings"] = warnings
    return MethodOutput(transform, inverse_on_moving, report)
