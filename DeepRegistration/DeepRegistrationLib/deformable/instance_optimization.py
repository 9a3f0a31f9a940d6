"""Instance optimization (IO): the network's prediction as the start of a short optimization on the pair at hand.

As uniGradICON's "IO", FireANTs and deepali do, each learned deformable method refines its own
transformation model (the diffeo velocity, DIRNet's B-spline control points, DeepSim's displacement field)
by gradient descent on its own loss on the pair being registered, coarse to fine. This module holds what
the three share; each method's model and loss live next to its registration module.

- Levels: the working grid and coarser ones spanning the same physical extent (first and last voxel
  centres in common, so fields in mm move between levels by trilinear interpolation with
  ``align_corners=True``); each coarser level has about half the voxels per axis.
- The similarity of a unimodal pair, on intensities normalized to [0, 1] and restricted to the masks:
  the thesis' normalized MSE (eq. 3.5) or local NCC. Each method picks its default: ``diffeo`` the
  normalized MSE its network was trained with (and about 10x cheaper per evaluation than local NCC),
  ``dirnet`` local NCC (the local form of the NCC DIRNet is trained with; invariant to a local affine
  change of intensity, so a bias field or another scanner's contrast curve between two scans of one
  modality does not pull the deformation), ``deepsim`` its own training similarity (DeepSim).
- The loop (:func:`optimize`): Adam, one progress report per iteration (which raises ``Cancelled`` when
  the user cancels), and a divergence guard: a non-finite loss, a loss above the best for
  :data:`PATIENCE` iterations in a row, or an iterate with folding voxels (3D fields; diffeo: either direction)
  stops the stage; the best iterate seen is kept and the stage record says why it stopped.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..core.image import Grid, Image
from ..core.jacobian import jacobian_determinant
from ..core.warp import warp
from ..metrics.similarity import local_ncc, normalized_mse

#: Unimodal similarities IO offers (dissimilarities: lower is better).
SIMILARITIES = {"lncc": local_ncc, "nmse": normalized_mse}
#: Iterations in a row with a loss above the best before a stage counts as diverging.
PATIENCE = 5
#: No level coarser than this many voxels along an axis.
MIN_LEVEL_SIDE = 8


@dataclass
class Stage:
    """What one level of IO did: the report's record of it."""

    level: int
    shape_zyx: list
    spacing_mm: list
    iterations_planned: int
    iterations_done: int = 0
    loss: list = field(default_factory=list)
    best_iteration: int = 0
    seconds: float = 0.0
    stopped: Optional[str] = None

    def to_dict(self) -> dict:
        return {"level": self.level, "shape_zyx": self.shape_zyx, "spacing_mm": [round(s, 4) for s in self.spacing_mm],
                "iterations_planned": self.iterations_planned, "iterations_done": self.iterations_done,
                "loss": [round(v, 6) for v in self.loss], "best_iteration": self.best_iteration,
                "seconds": round(self.seconds, 3), "stopped": self.stopped}


def level_shapes(shape, levels: int) -> list:
    """Shapes of ``levels`` levels, coarsest first, the last ``shape``: each coarser one about half per axis."""
    out = [tuple(int(n) for n in shape)]
    for _ in range(levels - 1):
        coarser = tuple(max(min(n, MIN_LEVEL_SIDE), math.ceil(n / 2)) for n in out[0])
        if coarser == out[0]:
            break
        out.insert(0, coarser)
    return out


def level_spacing(shape, spacing_zyx, level_shape) -> list:
    """Voxel size (mm, z-first) of a level spanning the extent of a grid of ``shape`` and ``spacing_zyx``."""
    return [float(s) * (n - 1) / max(m - 1, 1) for n, s, m in zip(shape, spacing_zyx, level_shape)]


def resize(x: torch.Tensor, shape) -> torch.Tensor:
    """A batch (B, C, *shape) on a level of ``shape`` spanning the same extent (linear, ``align_corners``)."""
    if tuple(x.shape[2:]) == tuple(shape):
        return x
    mode = "trilinear" if len(shape) == 3 else "bilinear"
    return F.interpolate(x, size=tuple(shape), mode=mode, align_corners=True)


def gaussian_blur(x: torch.Tensor, sigmas) -> torch.Tensor:
    """Separable Gaussian of σ (voxels, one per spatial axis, z-first) on a batch (B, C, *shape)."""
    ndim = x.dim() - 2
    conv = F.conv3d if ndim == 3 else F.conv2d
    for axis, sigma in enumerate(sigmas):
        if sigma <= 0:
            continue
        radius = max(1, int(math.ceil(3 * sigma)))
        t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
        kernel = torch.exp(-0.5 * (t / sigma) ** 2)
        shape = [1] * ndim
        shape[axis] = kernel.numel()
        padding = [0] * ndim
        padding[axis] = radius
        b, c = x.shape[:2]
        flat = x.reshape(b * c, 1, *x.shape[2:])
        weights = conv(torch.ones_like(flat[:1]), (kernel / kernel.sum()).view(1, 1, *shape), padding=padding)
        x = (conv(flat, (kernel / kernel.sum()).view(1, 1, *shape), padding=padding) / weights).reshape(x.shape)
    return x


def image_pyramid(image: torch.Tensor, shapes) -> list:
    """``image`` (B, C, *shape) on every level of ``shapes``: Gaussian-smoothed (σ = half the size ratio) where coarser."""
    out = []
    for shape in shapes:
        ratio = [n / m for n, m in zip(image.shape[2:], shape)]
        sigmas = [0.5 * r if r > 1.5 else 0.0 for r in ratio]
        out.append(resize(gaussian_blur(image, sigmas), shape) if any(sigmas) else resize(image, shape))
    return out


def mask_on_grid(mask: Optional[Image], grid: Grid, fixed_to_mask=None, device="cpu") -> Optional[torch.Tensor]:
    """A mask image as weights in [0, 1] (1, 1, *grid.shape) on ``grid`` (through ``fixed_to_mask``), or None."""
    if mask is None:
        return None
    binary = mask.with_array((mask.array > 0).astype(np.float32))
    return torch.as_tensor(warp(binary, grid, fixed_to_mask).array, device=device)[None, None]


def similarity_function(name: str) -> Callable:
    return SIMILARITIES[name]


def optimize(parameters: list, loss_fn: Callable, iterations: int, learning_rate: float, progress, label: str,
             stage: Stage) -> Stage:
    """Adam on ``parameters`` for up to ``iterations`` steps of ``loss_fn() -> (loss, refusal or None)``.

    A refusal (a string saying why, e.g. folding) or a non-finite loss stops at once; a loss above the
    best for :data:`PATIENCE` iterations in a row stops too. The parameters are left at the best iterate
    seen (an iterate counts only if not refused), and ``stage`` records the losses, the iterations done,
    the time and why it stopped early.
    """
    t0 = time.perf_counter()
    optimizer = torch.optim.Adam(parameters, lr=learning_rate)
    best, best_state, rises = math.inf, [p.detach().clone() for p in parameters], 0
    for it in range(iterations):
        progress(it / iterations, label)
        optimizer.zero_grad(set_to_none=True)
        loss, refusal = loss_fn()
        value = float(loss.detach())
        stage.loss.append(value)
        stage.iterations_done = it + 1
        if refusal is not None or not math.isfinite(value):
            stage.stopped = (f"{refusal or 'the loss is not finite'} at iteration {it + 1}; "
                             f"kept iteration {stage.best_iteration}")
            break
        if value < best:
            best, rises, stage.best_iteration = value, 0, it + 1
            best_state = [p.detach().clone() for p in parameters]
        else:
            rises += 1
            if rises >= PATIENCE:
                stage.stopped = (f"the loss stayed above its best for {PATIENCE} iterations (diverging) at "
                                 f"iteration {it + 1}; kept iteration {stage.best_iteration}")
                break
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        for p, b in zip(parameters, best_state):
            p.copy_(b)
    progress(1.0, label)
    stage.seconds = time.perf_counter() - t0
    return stage


def report(similarity: str, stages: list, **settings) -> tuple:
    """(the report's ``instance_optimization`` entry, warnings) for the stages run."""
    warnings = [f"instance optimization, level {s.level}: stopped early: {s.stopped}" for s in stages if s.stopped]
    entry = {"similarity": similarity, **settings, "stages": [s.to_dict() for s in stages],
             "iterations_done": sum(s.iterations_done for s in stages),
             "seconds": round(sum(s.seconds for s in stages), 3)}
    return entry, warnings


#: Fractions of an IO correction tried, largest first, when the full one folds on the output grid.
CORRECTION_FRACTIONS = (1.0, 0.5, 0.25, 0.125, 0.0)


def fold_free_on_output(start: torch.Tensor, result: torch.Tensor, to_output: Callable) -> tuple:
    """(field on the output grid, fraction of the correction kept, warning or None).

    IO checks folding on its working grid; the field the user gets is that grid's field interpolated onto the
    fixed image's grid (``to_output``), where it can fold although the working grid did not. There the
    correction ``result − start`` is halved until the field is fold-free (Jacobian determinant > 0 at every
    voxel, as the report measures), down to the network's start; if that folds too, the full result is kept
    (and the report's folding warning says so)."""
    for fraction in CORRECTION_FRACTIONS:
        output = to_output(result if fraction == 1.0 else start + fraction * (result - start))
        folds = int((jacobian_determinant(output) <= 0).sum())
        if fraction == 1.0:
            full, full_folds = output, folds
        if folds == 0:
            warning = None if fraction == 1.0 else (
                f"instance optimization: its result folded {full_folds} voxels on the fixed grid (the optimization "
                f"checks the model grid); kept {fraction:g} of its correction, which does not fold")
            return output, fraction, warning
    return full, 1.0, None


def folding_refusal(*fields: torch.Tensor) -> Optional[str]:
    """Why an iterate is refused: folding voxels in any of these 3D displacements (voxels, x-first); 2D fields
    are not checked."""
    folds = sum(folding_voxels(u.detach()) for u in fields if u.dim() == 5)
    return f"{folds} folding voxels" if folds else None


@torch.no_grad()
def folding_voxels(u_vox: torch.Tensor) -> int:
    """Voxels where det(I + ∇u) <= 0 for a 3D displacement (1, 3, nz, ny, nx) in voxels, x-first channels
    (central differences inside, one-sided at the border)."""
    dz, dy, dx = torch.gradient(u_vox[0].float(), dim=(1, 2, 3))
    j = [[dx[c], dy[c], dz[c]] for c in range(3)]             # j[c][d] = ∂u_c/∂x_d, x-first
    for c in range(3):
        j[c][c] = j[c][c] + 1.0
    det = (j[0][0] * (j[1][1] * j[2][2] - j[1][2] * j[2][1]) - j[0][1] * (j[1][0] * j[2][2] - j[1][2] * j[2][0])
           + j[0][2] * (j[1][0] * j[2][1] - j[1][1] * j[2][0]))
    return int((det <= 0).sum())
