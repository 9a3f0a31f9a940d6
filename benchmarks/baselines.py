"""The classical baselines the benchmarks compare with, one function each, in SimpleITK.

- :func:`register_sitk_mattes`: rigid, Mattes mutual information (the rigid benchmarks);
- :func:`sitk_demons`: diffeomorphic demons (the deformable benchmarks).
"""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from DeepRegistrationLib.core.image import Image
from DeepRegistrationLib.core.transforms import DisplacementField, RigidTransform, compose


def register_sitk_mattes(fixed: Image, moving: Image, initial: RigidTransform = None, seed: int = 0) -> RigidTransform:
    """SimpleITK's own rigid registration, set up as its rigid examples do: Euler3D about the fixed image's
    centre, Mattes MI with 50 bins on 10 % random samples, regular-step gradient descent with scales from
    physical shift, shrink factors 4/2/1 with smoothing 2/1/0 voxels."""
    f = sitk.Cast(fixed.to_sitk(), sitk.sitkFloat32)
    m = sitk.Cast(moving.to_sitk(), sitk.sitkFloat32)
    init = (initial or RigidTransform(center_mm=fixed.grid.center_physical())).to_sitk()
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=50)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(0.1, seed)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(learningRate=2.0, minStep=1e-3, numberOfIterations=200,
                                                 gradientMagnitudeTolerance=1e-6)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel([4, 2, 1])
    reg.SetSmoothingSigmasPerLevel([2, 1, 0])
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    reg.SetInitialTransform(init, inPlace=False)
    out = reg.Execute(f, m)
    if out.GetName() == "CompositeTransform":
        out = sitk.CompositeTransform(out).GetNthTransform(0)
    e = sitk.Euler3DTransform(out)
    return RigidTransform(np.array([e.GetAngleX(), e.GetAngleY(), e.GetAngleZ()]), e.GetTranslation(), e.GetCenter())


def sitk_demons(fixed: Image, moving: Image, initial=None, iterations: int = 50, symmetric: bool = False):
    """SimpleITK diffeomorphic demons: histogram matching, then 3 levels (shrink 4/2/1), σ = 1.5 voxels, with
    symmetric forces when ``symmetric``. With a linear ``initial`` transform the moving image is resampled
    through it first and the result is the demons field composed with it; else the field (mm, on the fixed
    grid)."""
    f = sitk.Cast(fixed.to_sitk(), sitk.sitkFloat32)
    m = sitk.Cast(moving.to_sitk(), sitk.sitkFloat32)
    if initial is not None:
        m = sitk.Resample(m, f, initial.to_sitk(), sitk.sitkLinear, 0.0)
    m = sitk.HistogramMatching(m, f, 256, 7, True)
    demons = sitk.DiffeomorphicDemonsRegistrationFilter()
    demons.SetNumberOfIterations(iterations)
    demons.SetStandardDeviations(1.5)
    if symmetric:
        demons.SetUseGradientType(sitk.DiffeomorphicDemonsRegistrationFilter.Symmetric)
    field = None
    for shrink in (4, 2, 1):
        fs, ms = sitk.Shrink(f, [shrink] * 3), sitk.Shrink(m, [shrink] * 3)
        if field is not None:
            field = sitk.Resample(field, fs, sitk.Transform(), sitk.sitkLinear, 0.0, field.GetPixelID())
            field = demons.Execute(fs, ms, field)
        else:
            field = demons.Execute(fs, ms)
    img = Image.from_sitk(field)
    result = DisplacementField(img.array.astype(np.float32), img.grid)
    return result if initial is None else compose(result, initial)
