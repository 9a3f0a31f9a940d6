"""B-spline transformer with local support: control-point displacements -> dense displacement field.

DIRNet's spatial transformer (de Vos et al. 2017, §2): a tensor-product B-spline of order 3 (cubic,
the baseline) or 2 (quadratic, variant B1),

    u(x) = Σ_k  Π_axes B_n((x_a - p_{k,a}) / h_a) · c_k,

with control points p_k = first + k·h along each axis (voxel units of the image). Each voxel is
influenced by only the n + 1 nearest control points per axis (local support). The sum factors per
axis, so the field is computed with one small banded weight matrix per axis (differentiable in c).

Control points are x-first channels in voxels, like ``spatial_transformer``: ``c`` has shape
(B, ndim, *control_shape) (control_shape z-first) and the result (B, ndim, *image_shape).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch

SPLINE_ORDERS = (2, 3)


def bspline_basis(t: torch.Tensor, order: int) -> torch.Tensor:
    """Centred B-spline B_n(t) of order 2 (quadratic) or 3 (cubic); zero outside |t| < (n + 1) / 2."""
    a = t.abs()
    if order == 3:
        return torch.where(a < 1, 2.0 / 3.0 - a ** 2 + a ** 3 / 2.0,
                           torch.where(a < 2, (2.0 - a) ** 3 / 6.0, torch.zeros_like(a)))
    if order == 2:
        return torch.where(a < 0.5, 0.75 - a ** 2,
                           torch.where(a < 1.5, (a - 1.5) ** 2 / 2.0, torch.zeros_like(a)))
    raise ValueError(f"B-spline order {order} is not supported (choose one of {SPLINE_ORDERS})")


def axis_weights(n_voxels: int, n_control: int, first: float, step: float, order: int = 3,
                 clamp: bool = True, device=None, dtype=torch.float32) -> torch.Tensor:
    """Weights W[x, k] = B_n((x - first - k·step) / step) of one axis, shape (n_voxels, n_control).

    With ``clamp``, the control points a B-spline needs beyond either end of the grid are taken equal
    to the end points (their weights are added to the end columns), so every row sums to one and a
    constant displacement is reproduced up to the image border. Without it they are zero.
    """
    reach = int(math.ceil((order + 1) / 2.0))
    k = torch.arange(-reach, n_control + reach, device=device, dtype=torch.float64)
    x = torch.arange(n_voxels, device=device, dtype=torch.float64)
    w = bspline_basis((x[:, None] - first - k[None, :] * step) / step, order)
    inner = w[:, reach:reach + n_control].clone()
    if clamp:
        inner[:, 0] += w[:, :reach].sum(dim=1)
        inner[:, -1] += w[:, reach + n_control:].sum(dim=1)
    return inner.to(dtype)


def patch_centres(n_voxels: int, n_control: int) -> tuple:
    """(first, step) of control points at the centres of ``n_control`` equal patches of the axis.

    This is where a fully convolutional regressor's outputs sit: output k summarizes input voxels
    [k·s, (k + 1)·s) with s = n_voxels / n_control, so its control point is at k·s + (s - 1) / 2.
    """
    step = n_voxels / n_control
    return (step - 1.0) / 2.0, step


def bspline_displacement(control: torch.Tensor, image_shape: Sequence[int], order: int = 3,
                         first: Optional[Sequence[float]] = None, step: Optional[Sequence[float]] = None,
                         clamp: bool = True) -> torch.Tensor:
    """Dense displacement (B, ndim, *image_shape) from control-point values (B, ndim, *control_shape).

    ``first`` and ``step`` (x-first, voxels, one per axis) place the control points; by default they
    sit at the patch centres of :func:`patch_centres`.
    """
    ndim = control.dim() - 2
    if len(image_shape) != ndim:
        raise ValueError(f"image shape {tuple(image_shape)} has {len(image_shape)} axes; the control grid has {ndim}")
    shape_xfirst = list(reversed(image_shape))
    ctrl_xfirst = list(reversed(control.shape[2:]))
    mats = []
    for a in range(ndim):
        f, s = patch_centres(shape_xfirst[a], ctrl_xfirst[a])
        if first is not None:
            f = float(first[a])
        if step is not None:
            s = float(step[a])
        mats.append(axis_weights(shape_xfirst[a], ctrl_xfirst[a], f, s, order, clamp, control.device, control.dtype))
    if ndim == 2:
        wx, wy = mats
        return torch.einsum("yl,xm,bclm->bcyx", wy, wx, control)
    if ndim == 3:
        wx, wy, wz = mats
        return torch.einsum("zk,yl,xm,bcklm->bczyx", wz, wy, wx, control)
    raise ValueError(f"only 2D and 3D control grids are supported, got {ndim}D")

