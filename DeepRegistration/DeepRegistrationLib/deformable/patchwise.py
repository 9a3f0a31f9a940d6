"""Whole-volume prediction from patches (thesis §3.3.1 "Patch-wise Training and Prediction").

The network predicts the momentum of one tile at a time; of each tile only the centre is kept (``discard``
voxels per side are dropped, 12 by default), except on the sides where a tile touches the volume border,
where its outer part is kept too (the thesis: "only the 24 center-most voxels are used from each patch
except for the patches at the volume borders"). The kept parts tile the volume exactly. The assembled
whole-volume momentum is then smoothed (v = K⁻¹ * m) and integrated (scaling and squaring) on the whole
volume, so the regularization crosses tile borders and the result is one diffeomorphism.

The network is fully convolutional, so tiles may be larger than the 48³ training patch (less of each tile
is wasted). Network memory is bounded by the tile (and ``tile_batch``); the whole-volume part holds a few
3-channel fields and runs its compositions in z-slabs.
"""
from __future__ import annotations

import itertools
import time

import numpy as np
import torch

from ..core.device import resolve_precision
from ..core.errors import InputError
from ..core.image import Grid
from ..core.scaling_and_squaring import squarings
from ..metrics.evaluation import field_difference_within_tolerance, lengths
from . import lddmm
from .model_input import mm_per_voxel, voxels_to_mm

MODEL_KIND = "diffeo"
#: Intensity normalization of every input (stated in model metadata).
NORMALIZATION = "per image: (I - p1) / (p99 - p1) clipped to [0, 1], percentiles over the model grid"
DISCARD = 12
#: Squarings on the full grid (the rest on every other voxel): the fewest that agree with integrating on the
#: full grid throughout, by benchmarks/ablations/diffeo_integration_grid.py.
FINE_SQUARINGS = 1
#: Voxels per network call when the tiles-per-call count is not given: several tiles per call, because
#: PyTorch's CPU convolutions fall back to a 4-7x slower kernel for single-sample batches.
VOXELS_PER_CALL = 2 ** 20


def tiles_per_call(tile: int) -> int:
    """Default number of ``tile``³ tiles per network call: about 1 M voxels, at least 2."""
    return max(2, VOXELS_PER_CALL // tile ** 3)


def tile_layout(n: int, tile: int, discard: int) -> list:
    """Along one axis of length ``n`` >= ``tile``: [(start, keep_from, keep_to)], keep_* relative to the volume."""
    core = tile - 2 * discard
    out, start = [], 0
    while True:
        start = min(start, n - tile)
        last = start + tile >= n
        out.append((start, 0 if start == 0 else start + discard, n if last else start + tile - discard))
        if last:
            return out
        start += core


def check_tile(tile: int, discard: int, divisor: int) -> None:
    if tile % divisor:
        raise InputError(f"tile size {tile} must be a multiple of {divisor} (the network's down-sampling)")
    if tile <= 2 * discard:
        raise InputError(f"tile size {tile} must exceed twice the discarded border ({discard} voxels per side)")


@torch.no_grad()
def predict_momentum(net, fixed: np.ndarray, moving: np.ndarray, tile: int = 48, discard: int = DISCARD,
                     device="cpu", tile_batch: int = None, progress=None, precision: str = "float32") -> torch.Tensor:
    """Whole-volume momentum (1, 3, nz, ny, nx) from ``tile``³ tiles of the normalized arrays (z-first),
    ``tile_batch`` tiles per network call (default :func:`tiles_per_call`). With ``precision="bfloat16"``
    the network runs under autocast (bfloat16 convolutions, float32 accumulation); the momentum is float32."""
    check_tile(tile, discard, net.DIVISOR)
    precision = resolve_precision(precision, device)
    tile_batch = tile_batch or tiles_per_call(tile)
    shape = fixed.shape
    pad = [(max(tile - n, 0) // 2, max(tile - n, 0) - max(tile - n, 0) // 2) for n in shape]
    f = np.pad(fixed, pad) if any(sum(p) for p in pad) else fixed
    m = np.pad(moving, pad) if any(sum(p) for p in pad) else moving
    momentum = torch.zeros((1, 3, *f.shape), dtype=torch.float32, device=device)
    tiles = list(itertools.product(*[tile_layout(n, tile, discard) for n in f.shape]))
    for first in range(0, len(tiles), tile_batch):
        chunk = tiles[first:first + tile_batch]
        sl = [tuple(slice(s, s + tile) for s, _, _ in t) for t in chunk]
        ft = torch.as_tensor(np.stack([f[s] for s in sl]))[:, None].to(device)
        mt = torch.as_tensor(np.stack([m[s] for s in sl]))[:, None].to(device)
        with torch.autocast(torch.device(device).type, torch.bfloat16, enabled=precision == "bfloat16"):
            out = net(ft, mt).float()
        for k, t in enumerate(chunk):
            keep = tuple(slice(a - s, b - s) for s, a, b in t)
            dest = tuple(slice(a, b) for _, a, b in t)
            momentum[(0, slice(None), *dest)] = out[(k, slice(None), *keep)]
        if progress is not None:
            progress(min(1.0, (first + len(chunk)) / len(tiles)), "predicting momentum")
    crop = tuple(slice(lo, lo + n) for (lo, _), n in zip(pad, shape))
    return momentum[(slice(None), slice(None), *crop)].contiguous()


@torch.no_grad()
def integrate_velocity(v: torch.Tensor, spacing_zyx, steps: int = lddmm.STEPS) -> tuple:
    """(φ, φ⁻¹, squarings run on every other voxel) from the whole-volume velocity (voxels; its memory is
    reused): :data:`FINE_SQUARINGS` on the full grid when the coarse grid holds ``v``, else all of them."""
    coarse_steps = steps - FINE_SQUARINGS if coarse_grid_holds(v, spacing_zyx) else 0
    return (*exponentials(v, steps, steps - coarse_steps), coarse_steps)


def coarse_grid_holds(v: torch.Tensor, spacing_zyx) -> bool:
    """Whether the grid of every other voxel holds the velocity ``v`` (voxels): interpolated back from it
    (:func:`lddmm.refine`), it agrees with ``v`` by the tile benchmark's field-agreement rule, in mm."""
    mm = mm_per_voxel(spacing_zyx, 3, v)
    slab = lddmm.slab_for(v.shape)
    back = lddmm.refine(lddmm.coarsen(v), v.shape[2:], slab)
    total_diff, total_norm, largest = 0.0, 0.0, 0.0
    for z0 in range(0, v.shape[2], slab):
        part = v[:, :, z0:z0 + slab] * mm
        diff = lengths(back[:, :, z0:z0 + slab].mul_(mm) - part)
        total_diff, largest = total_diff + float(diff.sum()), max(largest, float(diff.max()))
        total_norm += float(lengths(part).sum())
    voxels = v[:, 0].numel()
    return field_difference_within_tolerance(total_diff / voxels, largest, total_norm / voxels)


@torch.no_grad()
def exponentials(v: torch.Tensor, steps: int = lddmm.STEPS, fine_steps: int = FINE_SQUARINGS) -> tuple:
    """(exp(v), exp(−v)) by scaling and squaring (eq. 3.4): the first ``steps − fine_steps`` squarings on the
    grid of every other voxel, the last ``fine_steps`` on the full grid (``fine_steps = steps``: all of
    them), in z-slabs. ``v``'s memory is reused, so at most three full-grid fields are held."""
    scale = 2.0 ** -steps
    fine_slab = lddmm.slab_for(v.shape)
    if fine_steps >= steps:
        forward, spare = squarings(v * scale, steps, fine_slab, spare=torch.empty_like(v))
        inverse, _ = squarings(v.mul_(-scale), steps, fine_slab, spare=spare)
        return forward, inverse
    coarse = lddmm.coarsen(v).mul_(scale)
    coarse_slab = lddmm.slab_for(coarse.shape)
    fields, buffer = [], v
    for sign in (1.0, -1.0):
        u, _ = squarings(coarse * sign, steps - fine_steps, coarse_slab, spare=torch.empty_like(coarse))
        u = lddmm.refine(u, v.shape[2:], fine_slab, out=buffer)
        u, buffer = squarings(u, fine_steps, fine_slab, spare=torch.empty_like(v))
        fields.append(u)
    return tuple(fields)


def predict_fields(net, fixed: np.ndarray, moving: np.ndarray, spacing_zyx, lddmm_params: dict, tile: int = 48,
                   discard: int = DISCARD, device="cpu", tile_batch: int = None, progress=None,
                   precision: str = "float32", refine_velocity=None) -> tuple:
    """(φ, φ⁻¹, timings): voxel displacements (1, 3, nz, ny, nx), x-first, on the arrays' grid.

    ``refine_velocity(v_mm, progress) -> v_mm`` (instance optimization), when given, changes the predicted
    velocity (mm, x-first) before the integration."""
    progress_of = (lambda a, b: progress.sub(a, b)) if progress is not None else (lambda a, b: None)  # noqa: E731
    end_network = 0.8 if refine_velocity is None else 0.3
    t0 = time.perf_counter()
    momentum = predict_momentum(net, fixed, moving, tile, discard, device, tile_batch, progress_of(0.0, end_network),
                                precision)
    t1 = time.perf_counter()
    if progress is not None:
        progress(end_network + 0.02, "smoothing")
    velocity = lddmm.smooth(momentum, spacing_zyx, lddmm_params["alpha"], lddmm_params["gamma"],
                            lddmm_params["padding"])
    del momentum                                    # only the velocity and the two fields from here on
    timings = {"seconds_momentum": t1 - t0}
    if refine_velocity is not None:
        t_io = time.perf_counter()
        velocity = refine_velocity(velocity, progress_of(end_network + 0.05, 0.85))
        timings["seconds_instance_optimization"] = time.perf_counter() - t_io
    if progress is not None:
        progress(0.85, "integrating")
    t2 = time.perf_counter()
    forward, inverse, coarse_steps = integrate_velocity(lddmm.velocity_to_voxels(velocity, spacing_zyx), spacing_zyx,
                                                        lddmm_params["steps"])
    timings.update({"seconds_integration": time.perf_counter() - t2, "squarings_on_every_other_voxel": coarse_steps})
    return forward, inverse, timings


def voxels_to_lps_mm(u_vox: torch.Tensor, grid: Grid) -> np.ndarray:
    """(1, 3, nz, ny, nx) x-first voxel displacement to a z-first (nz, ny, nx, 3) LPS-mm array, slab by slab."""
    out = np.empty((*u_vox.shape[2:], 3), np.float32)
    slab = lddmm.slab_for(u_vox.shape)
    for z0 in range(0, u_vox.shape[2], slab):
        out[z0:z0 + slab] = voxels_to_mm(u_vox[0, :, z0:z0 + slab].movedim(0, -1), grid).cpu().numpy()
    return out

