"""Generators of test cases: rigid misregistration, smooth random deformations, gradient magnitude."""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import torch

from ..core.image import Grid, Image
from ..core.scaling_and_squaring import exponential
from ..core.transforms import DisplacementField, RigidTransform

#: Gaussian derivative scale (mm) of the gradient-magnitude modality (Sedghi et al., experiment 3).
GRADIENT_MAGNITUDE_SIGMA_MM = 1.0


def random_rigid(rng: np.random.Generator, center_mm, translation_mm=(1.0, 20.0), rotation_rad=0.2) -> RigidTransform:
    """Sedghi et al.'s misregistration: |t_i| ~ U[lo, hi] mm with random sign per axis, θ_i ~ U[-r, r] rad."""
    lo, hi = translation_mm
    t = rng.uniform(lo, hi, 3) * rng.choice([-1.0, 1.0], 3)
    angles = rng.uniform(-rotation_rad, rotation_rad, 3)
    return RigidTransform(angles, t, center_mm)


def gradient_magnitude(image: Image, sigma_mm: float = GRADIENT_MAGNITUDE_SIGMA_MM) -> Image:
    """|∇(G_σ * I)| with a recursive Gaussian of σ in mm: the 'GM' modality of Sedghi et al., exp. 3."""
    out = sitk.GradientMagnitudeRecursiveGaussian(sitk.Cast(image.to_sitk(), sitk.sitkFloat32), sigma=sigma_mm)
    return Image(sitk.GetArrayFromImage(out).astype(np.float32), image.grid)


def smooth_random_field(grid: Grid, rng: np.random.Generator, max_displacement_mm: float = 4.0,
                        control_spacing_mm: float = 24.0, integrate: bool = True) -> DisplacementField:
    """A smooth random deformation: random control-point displacements, cubic B-spline interpolation,
    then (with ``integrate``) treated as a stationary velocity and integrated by scaling and squaring
    so the result is diffeomorphic. ``max_displacement_mm`` bounds the control-point values."""
    velocity = bspline_field(grid, control_spacing_mm,
                             lambda n: rng.uniform(-max_displacement_mm, max_displacement_mm, n))
    return scaling_and_squaring(velocity) if integrate else velocity


def bspline_field(grid: Grid, control_spacing_mm: float, draw) -> DisplacementField:
    """The cubic B-spline vector field (mm) on ``grid`` whose control-point values are ``draw(n)`` (n values),
    control points every ``control_spacing_mm`` over the grid's extent."""
    extent = (np.asarray(grid.size) - 1) * grid.spacing
    mesh = [max(1, int(np.ceil(e / control_spacing_mm))) for e in extent]
    ref = Image(np.zeros(grid.shape, np.float32), grid).to_sitk()
    bspline = sitk.BSplineTransformInitializer(ref, mesh, order=3)
    bspline.SetParameters(tuple(float(v) for v in draw(len(bspline.GetParameters()))))
    tdf = sitk.TransformToDisplacementFieldFilter()
    tdf.SetReferenceImage(ref)
    tdf.SetOutputPixelType(sitk.sitkVectorFloat64)
    return DisplacementField(Image.from_sitk(tdf.Execute(bspline)).array.astype(np.float32), grid)


def scaling_and_squaring(velocity: DisplacementField, steps: int = 6) -> DisplacementField:
    """exp(v) of a stationary velocity (LPS mm) on its own grid: u ← v / 2^N, then N times u ← u∘u,
    computed in voxels along the grid's index axes (:func:`..core.scaling_and_squaring.exponential`)."""
    grid = velocity.grid
    v_vox = velocity.displacement_mm.astype(np.float64) @ np.linalg.inv(grid.voxel_to_mm).T
    u_vox = exponential(torch.as_tensor(v_vox, dtype=torch.float32).movedim(-1, 0)[None], steps)
    return DisplacementField((u_vox[0].movedim(0, -1).numpy() @ grid.voxel_to_mm.T).astype(np.float32), grid)


def intensity_jitter(image: Image, rng: np.random.Generator, gamma_range=(0.8, 1.25), noise_std: float = 0.01) -> Image:
    """A different-looking 'subject': gamma change of the normalized intensities plus a little noise."""
    a = image.array.astype(np.float32)
    lo, hi = float(a.min()), float(a.max())
    x = (a - lo) / max(hi - lo, 1e-12)
    x = x ** rng.uniform(*gamma_range) + rng.normal(0, noise_std, x.shape).astype(np.float32)
    return image.with_array((np.clip(x, 0, None) * (hi - lo) + lo).astype(np.float32))
