"""Patch-wise diffeomorphic registration with a momentum U-Net (the thesis' method), behind ``--method diffeo``.

Both images are resampled to the model's spacing on a grid covering the fixed image with its axes (the
moving image through the initial rigid transform), normalized as in training, and the whole-volume
momentum is predicted tile by tile, smoothed and integrated (:mod:`.patchwise`). φ = exp(v) is returned
on the fixed image's own grid as an LPS-mm displacement field (composed with the initial transform when
that is not the identity), and φ⁻¹ = exp(−v) as a field on the moving image's grid. The options are
declared in :mod:`.diffeo_method`.
"""
from __future__ import annotations

import numpy as np
import torch

from ..core.device import resolve_precision
from ..core.image import Grid, Image
from ..core.transforms import DisplacementField, compose
from ..core.warp import physical_grid_points, sample_at_points
from ..method_spec import MethodOutput, RegistrationContext
from ..models.model_file import load_network, resolve_model_path
from ..networks.momentum_unet import MomentumUNet, MomentumUNetConfig
from . import lddmm
from .patchwise import MODEL_KIND, predict_fields, tiles_per_call, voxels_to_lps_mm
from .model_input import initial_or_none, normalize_intensity, resample_to


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


def register_diffeo(fixed: Image, moving: Image, ctx: RegistrationContext) -> MethodOutput:
    """The method's run (see :mod:`.diffeo_method`); ``ctx.options`` already parsed by its spec."""
    name, report = ctx.models[0], {}
    tile, discard = ctx.options["tile"], ctx.options["discard"]
    tile_batch = ctx.options["tile_batch"] or tiles_per_call(tile)
    precision = resolve_precision(ctx.options["precision"], ctx.device)
    ctx.progress(0.02, "loading model")
    net, meta = load_momentum_net(name, ctx.device)
    grid = fixed.grid.with_spacing(meta["spacing_mm"])
    initial = initial_or_none(ctx.initial_transform)
    ctx.progress(0.05, "resampling to the model spacing")
    f = normalize_intensity(resample_to(fixed, grid).array)
    m = normalize_intensity(resample_to(moving, grid, initial).array)
    params = lddmm_parameters(meta)
    u_vox, u_inv_vox, timings = predict_fields(net, f, m, list(reversed(grid.spacing.tolist())), params, tile, discard,
                                               ctx.device, tile_batch, progress=ctx.progress.sub(0.1, 0.85),
                                               precision=precision)
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
    return MethodOutput(transform, inverse_on_moving, report)
