"""DeepSim as the objective of classical rigid registration (Powell), as Czolbe et al. 2021 suggest (§4).

The fixed image is resampled once to the feature extractor's spacing on a grid covering it and its
features F^l are computed once; the moving image is resampled once to the same spacing on a grid
covering it (anti-aliased) and normalized. Each evaluation warps that copy onto the fixed model grid
with the candidate rigid transform and returns DeepSim (eq. 2) between the two feature sets; Powell
(:func:`rigid.powell.maximize_rigid`) maximizes it. Intensities are normalized per image on these
grids, as at training time. The mean of eq. 2 is taken over the sampling region at the start pose (the
fixed foreground mapped into the moving foreground, masks or automatic, :mod:`.sampling_region`), the
step NMI and the learned metric share.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from ..core.errors import InputError
from ..core.image import Image
from ..core.transforms import RigidTransform
from ..core.warp import warp
from ..deformable.deepsim_registration import covering_grid
from ..core.network_input import normalize_intensity, resample_to
from ..metrics.deepsim_similarity import DeepSim, deepsim_from_features
from .powell import PowellSettings, maximize_rigid
from .sampling_region import foreground, region_indices


def deepsim_rigid_objective(fixed: Image, moving: Image, deepsim: DeepSim, device="cpu", start: RigidTransform = None,
                            fixed_mask: Image = None, moving_mask: Image = None) -> Callable:
    """``objective(T) -> DeepSim(moving∘T, fixed)`` for rigid transforms T (fixed -> moving points), averaged over
    the sampling region at ``start`` (default: the identity about the fixed image's centre)."""
    if deepsim.ndim != 3:
        raise InputError(f"rigid DeepSim needs a 3D feature extractor; this one is {deepsim.ndim}D")
    spacing = [float(s) for s in deepsim.metadata["spacing_mm"]]
    divisor = deepsim.extractor.config.divisor
    grid = covering_grid(fixed.grid, spacing, divisor)
    moving_grid = covering_grid(moving.grid, spacing, divisor)
    moving_model = resample_to(moving, moving_grid)
    fixed_model = resample_to(fixed, grid)
    start = start or RigidTransform(center_mm=fixed.grid.center_physical())
    region = region_indices(fixed_model, foreground(fixed_model, fixed_mask), moving_model,
                            foreground(moving_model, moving_mask), start, device)
    weights = torch.zeros(grid.num_voxels, device=device)
    weights[region] = 1.0
    weights = weights.reshape(1, 1, *grid.shape)
    moving_model = moving_model.with_array(normalize_intensity(moving_model.array))
    deepsim.to(device)

    def features(array: np.ndarray) -> list:
        return deepsim.extractor.features(torch.as_tensor(array, device=device)[None, None])

    with torch.no_grad():
        fixed_features = features(normalize_intensity(fixed_model.array))

    @torch.no_grad()
    def objective(transform: RigidTransform) -> float:
        warped = warp(moving_model, grid, transform, device=device).array
        return float(deepsim_from_features(features(warped), fixed_features, weights)[0])

    return objective


def register_rigid_deepsim(fixed: Image, moving: Image, deepsim: DeepSim, initial: RigidTransform = None,
                           settings: PowellSettings = None, progress=None, device="cpu", fixed_mask: Image = None,
                           moving_mask: Image = None) -> tuple:
    """Rigid registration maximizing DeepSim with Powell; returns (T fixed -> moving, info)."""
    initial = initial or RigidTransform(center_mm=fixed.grid.center_physical())
    objective = deepsim_rigid_objective(fixed, moving, deepsim, device, initial, fixed_mask, moving_mask)
    return maximize_rigid(objective, initial, settings, progress, "DeepSim rigid")
