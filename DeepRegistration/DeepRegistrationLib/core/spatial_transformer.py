"""Differentiable warping of image batches by dense displacements in voxel units (2D and 3D).

For networks trained on patches or slices: ``u`` has one channel per axis in the tensor's own
axis order reversed to x-first (channel 0 = x = last tensor axis), in voxels. Physical units are
handled outside, where the patch's spacing is known.
"""
from __future__ import annotations

import torch

from .grid_sampling import grid_sample


def identity_grid(shape, device=None, dtype=torch.float32) -> torch.Tensor:
    """Voxel coordinates x-first, shape (1, ndim, *shape)."""
    axes = [torch.arange(s, device=device, dtype=dtype) for s in shape]
    mesh = torch.meshgrid(*axes, indexing="ij")  # z-first (or y-first in 2D)
    return torch.stack(list(reversed(mesh)), dim=0)[None]


def voxels_to_normalized(coords: torch.Tensor) -> torch.Tensor:
    """(B, ndim, *shape) x-first voxel coordinates to grid_sample's (B, *shape, ndim), align_corners=True."""
    shape = coords.shape[2:]
    sizes = torch.tensor(list(reversed(shape)), device=coords.device, dtype=coords.dtype)
    scale = 2.0 / torch.clamp(sizes - 1, min=1)
    view = [1, -1] + [1] * len(shape)
    return (coords * scale.view(view) - 1.0).movedim(1, -1)


def warp_voxels(image: torch.Tensor, u_vox: torch.Tensor, mode: str = "bilinear",
                padding_mode: str = "border") -> torch.Tensor:
    """image(x + u(x)) for image (B, C, *shape) and u (B, ndim, *shape) in voxels, x-first channels."""
    coords = identity_grid(image.shape[2:], image.device, u_vox.dtype) + u_vox
    return grid_sample(image, voxels_to_normalized(coords), mode=mode, padding_mode=padding_mode)


def inside_fraction_mask(u_vox: torch.Tensor) -> torch.Tensor:
    """1 where x + u(x) stays inside the image, else 0: shape (B, 1, *shape)."""
    coords = identity_grid(u_vox.shape[2:], u_vox.device, u_vox.dtype) + u_vox
    sizes = torch.tensor(list(reversed(u_vox.shape[2:])), device=u_vox.device, dtype=u_vox.dtype)
    view = [1, -1] + [1] * (u_vox.dim() - 2)
    inside = (coords >= 0) & (coords <= (sizes - 1).view(view))
    return inside.all(dim=1, keepdim=True).to(u_vox.dtype)
