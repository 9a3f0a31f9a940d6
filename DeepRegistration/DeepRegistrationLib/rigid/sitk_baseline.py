"""SimpleITK's own rigid registration (Mattes MI, regular-step gradient descent): the classical baseline.

Set up as SimpleITK's rigid examples do: Euler3D about the fixed image's centre, Mattes MI with
50 bins on 10 % random samples, regular-step gradient descent with scales from physical shift,
shrink factors 4/2/1 with smoothing 2/1/0 voxels.
"""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from ..core.image import Image
from ..core.transforms import RigidTransform


def register_sitk_mattes(fixed: Image, moving: Image, initial: RigidTransform = None, seed: int = 0) -> RigidTransform:
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
