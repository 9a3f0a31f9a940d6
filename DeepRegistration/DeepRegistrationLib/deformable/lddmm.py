"""Stationary LDDMM transformation model of the thesis (§3.3, §3.3.1): v = K⁻¹ * m, φ = exp(v).

Tensors are batches ``(B, 3, nz, ny, nx)`` on a regular grid; vector channels are x-first (channel 0
along the last tensor axis), as in :mod:`.spatial_transformer`. Momentum and velocity are in
millimetres along the grid's index axes; :func:`velocity_to_voxels` turns them into voxels for the
integration.

- The smoothing kernel is the one induced by L = α∇² + γ Id with K = L² (Beg et al. 2005). Its DFT on
  the zero-padded grid is DFT[K⁻¹](j) = [Σ_d 2α(1 − cos(2π j_d / N_d)) / Δx_d² + γ]⁻²: the thesis gives
  the 1D formula and says the 3D case follows "similarly"; we read that as the discrete Laplacian
  summed over the axes inside the bracket (the operator L of a 3D grid), with Δx_d the physical spacing.
- The momentum is zero-padded (at least 12 voxels per side by default) before the FFT so the convolution
  is not cyclic; the padded sides are rounded up to lengths with prime factors 2, 3 and 5 only, which the
  FFT handles about 3x faster than lengths with large prime factors (the extra padding only moves the
  periodic copies further away).
- Scaling and squaring with N = 7 steps (eq. 3.4): u ← v / 2^N, then N times u ← u + u∘(id + u);
  the same with −v gives φ⁻¹. Compositions run in z-slabs (``slab``) so a large volume needs only the
  field, its successor and one slab of sampling coordinates in memory; without autograd the two
  alternate between two buffers (:func:`..core.scaling_and_squaring.squarings`, shared with the synthetic
  deformations of :mod:`..data.synthetic`).
- On whole volumes (inference) the first N − 1 squarings may run on the grid of every other voxel
  (:func:`coarsen`, :func:`refine`), where the field is still small and smooth, and the last on the full
  grid; benchmarks/ablations/diffeo_integration_grid.py measures the agreement with the full-grid integration.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..core.grid_sampling import grid_sample
from ..core.scaling_and_squaring import exponential, squarings
from .model_input import mm_per_voxel

ALPHA = 20.0
GAMMA = 1.0
PADDING = 12
STEPS = 7


def kernel_spectrum(shape, spacing_zyx, alpha: float = ALPHA, gamma: float = GAMMA,
                    dtype=torch.float32, device=None) -> torch.Tensor:
    """DFT[K⁻¹] on a grid of ``shape`` (z-first), for ``torch.fft.rfftn``'s half spectrum (last axis halved)."""
    terms = []
    for axis, (n, dx) in enumerate(zip(shape, spacing_zyx)):
        j = torch.arange(n // 2 + 1 if axis == len(shape) - 1 else n, dtype=torch.float64, device=device)
        term = 2.0 * alpha * (1.0 - torch.cos(2.0 * torch.pi * j / n)) / float(dx) ** 2
        view = [1] * len(shape)
        view[axis] = -1
        terms.append(term.view(view))
    operator = sum(terms) + gamma
    return operator.pow(-2).to(dtype)


def fft_length(n: int) -> int:
    """The smallest length >= ``n`` whose only prime factors are 2, 3 and 5."""
    while True:
        rest = n
        for p in (2, 3, 5):
            while rest % p == 0:
                rest //= p
        if rest == 1:
            return n
        n += 1


def padded_shape(shape, padding: int = PADDING) -> tuple:
    """The FFT grid of :func:`smooth`: each side padded by at least ``padding`` voxels, then to :func:`fft_length`."""
    return tuple(fft_length(int(n) + 2 * padding) for n in shape)


def smooth(momentum: torch.Tensor, spacing_zyx, alpha: float = ALPHA, gamma: float = GAMMA,
           padding: int = PADDING) -> torch.Tensor:
    """v = K⁻¹ * m by FFT on the grid zero-padded by ``padding`` voxels (or a few more at the high end, see
    :func:`padded_shape`) per side; one channel at a time."""
    shape = momentum.shape[2:]
    padded = padded_shape(shape, padding)
    spectrum = kernel_spectrum(padded, spacing_zyx, alpha, gamma, torch.float32, momentum.device)
    out = torch.empty_like(momentum)
    crop = tuple(slice(padding, padding + n) for n in shape)
    pads = []
    for n, total in zip(reversed(shape), reversed(padded)):      # F.pad lists the last axis first
        pads += [padding, total - n - padding]
    for c in range(momentum.shape[1]):                # at most a spectrum and a padded channel at a time
        product = torch.fft.rfftn(F.pad(momentum[:, c].float(), pads), dim=(-3, -2, -1)).mul_(spectrum)
        out[:, c] = torch.fft.irfftn(product, s=padded, dim=(-3, -2, -1))[(slice(None), *crop)].to(momentum.dtype)
        del product
    return out


def velocity_to_voxels(v_mm: torch.Tensor, spacing_zyx) -> torch.Tensor:
    """x-first millimetre components along the index axes to voxels."""
    return v_mm / mm_per_voxel(spacing_zyx, 3, v_mm)


def _every_other(u: torch.Tensor, dim: int) -> torch.Tensor:
    """Indices 0, 2, 4, ... of ``u`` along ``dim``; on an even side also index n, linearly extrapolated from the
    last two voxels, so that the nodes span every voxel and :func:`refine` never reads past the last node."""
    n = u.shape[dim]
    nodes = u[(slice(None),) * dim + (slice(None, None, 2),)]
    if n % 2 == 1:
        return nodes
    beyond = 2.0 * u.narrow(dim, n - 1, 1) - u.narrow(dim, n - 2, 1)
    return torch.cat([nodes, beyond], dim)


def coarsen(u_vox: torch.Tensor) -> torch.Tensor:
    """The field on the grid of every other voxel (:func:`_every_other` along each axis), in voxels of that grid
    (half as many)."""
    for dim in (2, 3, 4):
        u_vox = _every_other(u_vox, dim)
    return u_vox / 2.0


def refine(u_coarse: torch.Tensor, shape, slab: int = None, out: torch.Tensor = None) -> torch.Tensor:
    """Inverse of :func:`coarsen`: a field of voxels (1, 3, *shape) trilinearly interpolated from the grid of
    every other voxel, in z-slabs of ``slab`` planes."""
    nz, ny, nx = shape
    out = torch.empty((u_coarse.shape[0], 3, nz, ny, nx), dtype=u_coarse.dtype, device=u_coarse.device) \
        if out is None else out
    slab = nz if slab is None else max(1, int(slab))
    sizes = u_coarse.shape[:1:-1]                                        # coarse x, y, z sizes
    for z0 in range(0, nz, slab):
        dz = min(slab, nz - z0)
        coords = torch.empty((u_coarse.shape[0], dz, ny, nx, 3), dtype=u_coarse.dtype, device=u_coarse.device)
        for c, (start, stop, view) in enumerate(((0, nx, (1, 1, nx)), (0, ny, (1, ny, 1)), (z0, z0 + dz, (dz, 1, 1)))):
            index = torch.arange(start, stop, dtype=u_coarse.dtype, device=u_coarse.device) / 2.0
            coords[..., c] = (index * (2.0 / max(sizes[c] - 1, 1)) - 1.0).view(view)
        out[:, :, z0:z0 + dz] = grid_sample(u_coarse, coords, padding_mode="border").mul_(2.0)
    return out


def forward_and_inverse(v_vox: torch.Tensor, steps: int = STEPS, slab: int = None, coarse_steps: int = 0):
    """(φ, φ⁻¹) displacements in voxels: exp(v) and exp(−v) by scaling and squaring (eq. 3.4), the first
    ``coarse_steps`` squarings on the grid of every other voxel (:func:`coarsen`, :func:`refine`; autograd
    flows through both), the others on the full grid."""
    if not coarse_steps:
        return exponential(v_vox, steps, slab), exponential(-v_vox, steps, slab)
    coarse = coarsen(v_vox) / 2 ** steps
    return tuple(squarings(refine(squarings(sign * coarse, coarse_steps)[0], v_vox.shape[2:], slab),
                           steps - coarse_steps, slab)[0] for sign in (1.0, -1.0))


def slab_for(shape, voxels: int = 2 ** 22) -> int:
    """z-planes per slab so that one slab holds about ``voxels`` voxels."""
    return max(1, voxels // max(int(shape[-1]) * int(shape[-2]), 1))
