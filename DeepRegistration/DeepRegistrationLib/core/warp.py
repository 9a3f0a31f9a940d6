"""Warping in physical space with ``torch.nn.functional.grid_sample``.

The one place where LPS millimetres become ``grid_sample``'s normalized coordinates:
with ``align_corners=True``, voxel centre ``i`` of an axis of ``n`` voxels is at
``2 i / (n - 1) - 1``.
"""
from __future__ import annotations

import numpy as np
import torch

from .grid_sampling import grid_sample
from .image import Grid, Image

#: Voxels of the reference grid warped per chunk: bounds memory by the chunk, not the volume.
CHUNK_VOXELS = 2 ** 22


def affine_points(points: torch.Tensor, matrix: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """``points @ matrix.T + offset`` for points (..., 3), as one matrix product over the flattened points."""
    return torch.addmm(offset, points.reshape(-1, 3), matrix.T).reshape(points.shape)


def physical_grid_points(grid: Grid, device=None, dtype=torch.float32, z_range=None) -> torch.Tensor:
    """LPS coordinates of voxel centres, shape (nz, ny, nx, 3) (or a z-slab ``z_range``)."""
    nx, ny, nz = grid.size
    z0, z1 = z_range if z_range is not None else (0, nz)
    k, j, i = torch.meshgrid(
        torch.arange(z0, z1, device=device, dtype=torch.float64),
        torch.arange(ny, device=device, dtype=torch.float64),
        torch.arange(nx, device=device, dtype=torch.float64),
        indexing="ij",
    )
    index = torch.stack([i, j, k], dim=-1)
    m = torch.as_tensor(grid.index_to_physical_matrix(), device=device, dtype=torch.float64)
    return affine_points(index, m[:3, :3], m[:3, 3]).to(dtype)


def physical_points_at(grid: Grid, flat_indices: torch.Tensor, dtype=torch.float32, jitter_voxels: float = 0.0,
                       seed: int = 0) -> torch.Tensor:
    """LPS coordinates (N, 3) of the voxels with the given flat indices into the z-first array; with
    ``jitter_voxels``, each point is moved off its voxel centre by a normal offset of that many voxels per
    axis (drawn with ``seed``) and kept inside the grid."""
    nx, ny, nz = grid.size
    flat = flat_indices.to(torch.int64)
    index = torch.stack([flat % nx, (flat // nx) % ny, flat // (nx * ny)], dim=-1).to(torch.float64)
    if jitter_voxels:
        offsets = torch.randn(index.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        last = torch.tensor([nx - 1, ny - 1, nz - 1], dtype=torch.float64, device=flat.device)
        index = torch.minimum((index + jitter_voxels * offsets.to(flat.device)).clamp_(min=0), last)
    m = torch.as_tensor(grid.index_to_physical_matrix(), device=flat.device, dtype=torch.float64)
    return affine_points(index, m[:3, :3], m[:3, 3]).to(dtype)


def sample_voxel_indices(grid: Grid, max_points: int, seed: int = 0, mask: np.ndarray = None, device=None):
    """Flat indices of at most ``max_points`` voxels (all of them if fewer), drawn with a fixed seed.

    With a mask, only voxels where it is non-zero. Never builds a full-grid coordinate array.
    """
    if mask is not None:
        return subsample_indices(torch.as_tensor(np.flatnonzero(np.asarray(mask).reshape(-1))), max_points, seed
                                 ).to(device)
    n = grid.num_voxels
    if n <= max_points:
        return torch.arange(n, device=device)
    g = torch.Generator().manual_seed(seed)
    return torch.sort(torch.randperm(n, generator=g)[:max_points]).values.to(device)


def subsample_indices(indices: torch.Tensor, max_points: int, seed: int) -> torch.Tensor:
    """At most ``max_points`` of ``indices`` (all of them if fewer), drawn with a fixed seed, in increasing order."""
    if indices.numel() > max_points:
        g = torch.Generator().manual_seed(seed)
        indices = indices[torch.randperm(indices.numel(), generator=g)[:max_points].to(indices.device)]
    return torch.sort(indices).values


def physical_to_normalized(grid: Grid, points_lps: torch.Tensor) -> torch.Tensor:
    """LPS points (..., 3) to grid_sample coordinates (..., 3), x-first, align_corners=True."""
    m = np.linalg.inv(grid.index_to_physical_matrix())
    size = np.asarray(grid.size, dtype=np.float64)
    scale = 2.0 / np.maximum(size - 1, 1)
    a = torch.as_tensor(scale[:, None] * m[:3, :3], device=points_lps.device, dtype=points_lps.dtype)
    b = torch.as_tensor(scale * m[:3, 3] - 1.0, device=points_lps.device, dtype=points_lps.dtype)
    return affine_points(points_lps, a, b)


def sample_at_points(volume: torch.Tensor, grid: Grid, points_lps: torch.Tensor, mode: str = "bilinear",
                     padding_mode: str = "zeros") -> torch.Tensor:
    """Sample ``volume`` (C, nz, ny, nx) living on ``grid`` at LPS points (..., 3) -> (C, ...)."""
    lead = points_lps.shape[:-1]
    coords = physical_to_normalized(grid, points_lps.to(volume.dtype)).reshape(1, 1, 1, -1, 3)
    out = grid_sample(volume[None], coords, mode=mode, padding_mode=padding_mode)
    return out.reshape(volume.shape[0], *lead)


def inside_mask(grid: Grid, points_lps: torch.Tensor) -> torch.Tensor:
    """True where a point falls within the voxel-centre box of ``grid`` (where interpolation is exact)."""
    n = physical_to_normalized(grid, points_lps)
    return (n.abs() <= 1.0 + 1e-6).all(dim=-1)


def warp(moving: Image, reference: Grid, fixed_to_moving=None, mode: str = "linear", device="cpu",
         default_value: float = 0.0) -> Image:
    """Resample ``moving`` onto ``reference``: out(x) = moving(T(x)), T mapping fixed to moving points.

    ``mode`` is ``linear`` (trilinear) or ``nearest`` (label maps). Matches SimpleITK's ``Resample``
    with the same transform inside the overlap. Processed in z-slabs so memory is bounded.
    """
    torch_mode = {"linear": "bilinear", "nearest": "nearest"}[mode]
    device = torch.device(device)
    is_label = mode == "nearest"
    values = moving.array
    vol = torch.as_tensor(np.ascontiguousarray(values), device=device)
    vol = vol.to(torch.float64 if is_label else torch.float32)
    vol = vol[None] if not moving.is_vector else vol.permute(3, 0, 1, 2)
    nx, ny, _ = reference.size
    slab = max(1, CHUNK_VOXELS // max(nx * ny, 1))
    out_parts = []
    for z0 in range(0, reference.size[2], slab):
        z1 = min(z0 + slab, reference.size[2])
        if fixed_to_moving is None:
            pts = physical_grid_points(reference, device=device, dtype=torch.float64, z_range=(z0, z1))
        else:
            pts = fixed_to_moving.map_voxel_centres(reference, device, (z0, z1))
        sampled = sample_at_points(vol, moving.grid, pts.to(vol.dtype), mode=torch_mode)
        if default_value != 0.0:
            sampled = torch.where(inside_mask(moving.grid, pts)[None], sampled,
                                  torch.as_tensor(default_value, dtype=sampled.dtype, device=device))
        out_parts.append(sampled)
    out = torch.cat(out_parts, dim=1)
    out = out[0] if not moving.is_vector else out.permute(1, 2, 3, 0)
    array = out.cpu().numpy()
    array = np.rint(array).astype(values.dtype) if is_label else array.astype(np.float32)
    return Image(array, reference)
