"""The B-spline transformer of DIRNet: exact against SimpleITK, identity, partition of unity, locality, gradients."""
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from DeepRegistrationLib.core.bspline import axis_weights, bspline_displacement, patch_centres
from DeepRegistrationLib.core.spatial_transformer import warp_voxels


def sitk_field_and_coefficients(dim, order, seed=0):
    """A random SimpleITK BSplineTransform: its dense field (z-first, x-first mm) and control grid."""
    size, spacing, origin = (37, 29, 21)[:dim], (1.5, 2.0, 0.8)[:dim], (3.0, -5.0, 7.0)[:dim]
    img = sitk.Image(size, sitk.sitkFloat32)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    t = sitk.BSplineTransformInitializer(img, [4, 3, 5][:dim], order=order)
    t.SetParameters(tuple(np.random.default_rng(seed).uniform(-3, 3, len(t.GetParameters()))))
    f = sitk.TransformToDisplacementFieldFilter()
    f.SetReferenceImage(img)
    f.SetOutputPixelType(sitk.sitkVectorFloat64)
    dense = sitk.GetArrayFromImage(f.Execute(t))
    coeff = t.GetCoefficientImages()
    control = np.stack([sitk.GetArrayFromImage(c) for c in coeff])
    first = [(coeff[0].GetOrigin()[a] - origin[a]) / spacing[a] for a in range(dim)]
    step = [coeff[0].GetSpacing()[a] / spacing[a] for a in range(dim)]
    return dense, control, first, step


@pytest.mark.parametrize("dim,order", [(2, 3), (3, 3), (2, 2), (3, 2)])
def test_reproduces_simpleitk_bspline_transform(dim, order):
    # Unit pixel spacing is not needed: the field is linear in the coefficients, so coefficients in mm
    # give the field in mm; only the control-point positions are converted to voxels.
    dense, control, first, step = sitk_field_and_coefficients(dim, order)
    u = bspline_displacement(torch.tensor(control)[None], dense.shape[:-1], order, first, step, clamp=False)[0]
    u = np.moveaxis(u.numpy(), 0, -1)
    assert np.abs(dense).max() > 0.5
    np.testing.assert_allclose(u, dense, atol=1e-9)


def test_zero_control_points_are_the_identity():
    control = torch.zeros(2, 2, 6, 7)
    u = bspline_displacement(control, (48, 56))
    assert u.shape == (2, 2, 48, 56) and torch.count_nonzero(u) == 0
    image = torch.rand(2, 1, 48, 56)
    torch.testing.assert_close(warp_voxels(image, u), image, atol=2e-5, rtol=0)  # float32 coordinates


@pytest.mark.parametrize("order", [2, 3])
def test_constant_control_points_give_a_constant_field_up_to_the_border(order):
    control = torch.ones(1, 3, 3, 4, 5) * torch.tensor([1.5, -2.0, 0.25]).view(1, 3, 1, 1, 1)
    u = bspline_displacement(control, (24, 32, 40), order)
    for c, value in enumerate((1.5, -2.0, 0.25)):
        torch.testing.assert_close(u[0, c], torch.full((24, 32, 40), value), atol=1e-5, rtol=0)


def test_local_support_of_one_control_point():
    control = torch.zeros(1, 2, 8, 8)
    control[0, 0, 3, 4] = 1.0
    u = bspline_displacement(control, (64, 64), 3)[0, 0]
    first, step = patch_centres(64, 8)
    centre_x, centre_y = first + 4 * step, first + 3 * step
    ys, xs = torch.nonzero(u, as_tuple=True)
    assert (xs.float() - centre_x).abs().max() < 2 * step and (ys.float() - centre_y).abs().max() < 2 * step
    assert float(u.max()) == pytest.approx((2.0 / 3.0) ** 2, abs=0.03)  # B3(0)^2 near the point


def test_patch_centres_sit_in_the_middle_of_each_patch():
    first, step = patch_centres(96, 12)
    assert step == 8 and first == 3.5
    w = axis_weights(96, 12, first, step, 3)
    torch.testing.assert_close(w.sum(dim=1), torch.ones(96), atol=1e-6, rtol=0)
    assert int((w[:, 5] > 0).sum()) == 32  # cubic support: |x - 43.5| < 16 voxels


def test_gradients_flow_to_the_control_points():
    control = torch.zeros(1, 3, 2, 3, 4, requires_grad=True)
    u = bspline_displacement(control, (8, 12, 16))
    (u * torch.linspace(0, 1, u.numel()).view(u.shape)).sum().backward()
    assert control.grad is not None and bool((control.grad.abs() > 0).all())
