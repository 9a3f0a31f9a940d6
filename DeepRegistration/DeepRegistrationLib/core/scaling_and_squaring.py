"""Scaling and squaring: the exponential φ = exp(v) of a stationary velocity field v (thesis eq. 3.4).

u ← v / 2^N, then N times u ← u∘u, i.e. u + u(x + u(x)). Fields are batches ``(B, 3, nz, ny, nx)`` of
displacements in voxels along the grid's index axes, x-first (channel 0 along the last tensor axis);
trilinear sampling with border values outside the grid. Used by the LDDMM model (:mod:`..deformable.lddmm`)
and by the synthetic deformations (:mod:`..data.synthetic`).
"""
from __future__ import annotations

import torch

from .grid_sampling import grid_sample


def _normalized_coords(u_vox: torch.Tensor, z0: int, full_shape) -> torch.Tensor:
    """grid_sample coordinates (B, dz, ny, nx, 3) of x + u(x) for the z-slab starting at ``z0``."""
    b, _, dz, ny, nx = u_vox.shape
    sizes = (full_shape[2], full_shape[1], full_shape[0])
    axes = ((0, nx, (1, 1, 1, nx)), (0, ny, (1, 1, ny, 1)), (z0, z0 + dz, (1, dz, 1, 1)))   # x, y, z index ranges
    coords = torch.empty((b, dz, ny, nx, 3), dtype=u_vox.dtype, device=u_vox.device)
    for c, (start, stop, view) in enumerate(axes):
        scale = 2.0 / max(sizes[c] - 1, 1)
        base = torch.arange(start, stop, dtype=u_vox.dtype, device=u_vox.device).view(view)
        coords[..., c] = u_vox[:, c] * scale + (base * scale - 1.0)
    return coords


def compose(u_outer: torch.Tensor, u_inner: torch.Tensor, slab: int = None, out: torch.Tensor = None) -> torch.Tensor:
    """Displacement (voxels) of (id + u_outer)∘(id + u_inner) = u_inner + u_outer(x + u_inner(x)).

    Border values outside the grid (``padding_mode="border"``). With ``slab`` the sampling runs over
    z-slabs of that many planes, bounding the coordinate buffers by the slab. ``out`` (no autograd) is
    written instead of a new tensor; it must not share memory with either input.
    """
    nz = u_inner.shape[2]
    slab = nz if slab is None else max(1, int(slab))
    if slab >= nz:
        coords = _normalized_coords(u_inner, 0, u_inner.shape[2:])
        return torch.add(u_inner, grid_sample(u_outer, coords, padding_mode="border"), out=out)
    out = torch.empty_like(u_inner) if out is None else out
    for z0 in range(0, nz, slab):
        part = u_inner[:, :, z0:z0 + slab]
        coords = _normalized_coords(part, z0, u_inner.shape[2:])
        out[:, :, z0:z0 + slab] = part + grid_sample(u_outer, coords, padding_mode="border")
    return out


def squarings(u: torch.Tensor, steps: int, slab: int = None, spare: torch.Tensor = None) -> tuple:
    """``steps`` times u ← u∘u, i.e. u + u(x + u(x)) (eq. 3.4): ``(result, spare)``.

    With a ``spare`` field (no autograd) the steps write alternately into ``spare`` and ``u``'s own
    memory, so the whole integration holds two fields; the buffer not holding the result is returned.
    """
    for _ in range(steps):
        out = compose(u, u, slab, out=spare)
        spare = None if spare is None else u
        u = out
    return u, spare


def exponential(v_vox: torch.Tensor, steps: int, slab: int = None) -> torch.Tensor:
    """exp(v) by scaling and squaring with ``steps`` squarings: displacement in voxels of φ = exp(v)."""
    return squarings(v_vox / (2 ** steps), steps, slab)[0]
