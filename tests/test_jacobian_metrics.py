"""Jacobian determinant, folding counts, similarity measures and evaluation errors, on numbers."""
import numpy as np
import pytest
import torch

from DeepRegistrationLib.core.image import Grid
from DeepRegistrationLib.core.jacobian import jacobian_determinant, jacobian_statistics
from DeepRegistrationLib.core.transforms import AffineTransform, DisplacementField, RigidTransform
from DeepRegistrationLib.metrics.evaluation import dice_per_label, lengths, rigid_errors
from DeepRegistrationLib.metrics.similarity import mse, ncc, nmi


def test_identity_field_has_unit_jacobian(oblique_grid):
    det = jacobian_determinant(DisplacementField(np.zeros((*oblique_grid.shape, 3)), oblique_grid))
    np.testing.assert_allclose(det, 1.0, atol=1e-6)
    stats = jacobian_statistics(det)
    assert stats["folding_voxels"] == 0 and stats["jacobian_mean"] == pytest.approx(1.0)


def test_affine_field_gives_its_determinant_on_oblique_grid(oblique_grid):
    a = np.array([[1.2, 0.1, 0.0, 3.0], [0.05, 0.9, 0.2, -1.0], [0.0, -0.1, 1.1, 2.0], [0, 0, 0, 1]])
    field = DisplacementField.from_transform(AffineTransform(a), oblique_grid)
    det = jacobian_determinant(field)
    np.testing.assert_allclose(det, np.linalg.det(a[:3, :3]), rtol=1e-4)


def test_folding_field_is_counted():
    grid = Grid((20, 20, 20), (1.5, 1.0, 2.0), (0, 0, 0))
    x = np.arange(20) * 1.5
    u = np.zeros((*grid.shape, 3), np.float32)
    # u_x = -2.5 (x - 15) inside a slab: d(x + u_x)/dx = 1 - 2.5 < 0 there
    slab = (x > 10) & (x < 20)
    u[..., 0] = np.where(slab, -2.5 * (x - 15.0), 0.0)[None, None, :]
    det = jacobian_determinant(DisplacementField(u, grid))
    stats = jacobian_statistics(det)
    folded_columns = np.where(det[5, 5] <= 0)[0]
    assert stats["folding_voxels"] == len(folded_columns) * 400
    assert stats["folding_percent"] == pytest.approx(100 * len(folded_columns) / 20)
    assert len(folded_columns) >= 4


def test_nmi_properties():
    rng = np.random.default_rng(0)
    a = torch.as_tensor(rng.random(20000))
    assert float(nmi(a, a)) == pytest.approx(2.0, abs=1e-6)
    assert float(nmi(a, 3 * a + 1)) == pytest.approx(2.0, abs=1e-6)  # affine intensity map: still maximal
    assert float(nmi(a, 1 - a)) == pytest.approx(2.0, abs=1e-3)  # reversed intensities: still maximal
    assert 1.5 < float(nmi(a, a, linear=True)) < 2.0  # partial-volume binning spreads the joint table
    b = torch.as_tensor(rng.random(20000))
    assert float(nmi(a, b)) < 1.05


def test_intensity_measures():
    a = torch.tensor([0.0, 1.0, 2.0, 3.0])
    b = torch.tensor([1.0, 1.0, 3.0, 5.0])
    assert float(mse(a, b)) == pytest.approx((1 + 0 + 1 + 4) / 4)
    assert float(ncc(a, 2 * a + 7)) == pytest.approx(1.0)
    assert float(ncc(a, -a)) == pytest.approx(-1.0)
    mask = torch.tensor([True, True, False, False])
    assert float(mse(a, b, mask)) == pytest.approx(0.5)


def test_dice_per_label():
    a = np.array([0, 1, 1, 2, 2, 2])
    b = np.array([0, 1, 2, 2, 2, 0])
    d = dice_per_label(a, b)
    assert d[1] == pytest.approx(2 * 1 / 3)
    assert d[2] == pytest.approx(2 * 2 / 6)


def test_rigid_errors_are_centre_independent():
    true = RigidTransform([0.1, -0.05, 0.2], [5.0, -3.0, 12.0], [10.0, 20.0, 30.0])
    same_other_centre = RigidTransform.from_matrix4(true.matrix4(), [-40.0, 5.0, 0.0])
    e = rigid_errors(same_other_centre, true)
    assert e["t_norm_mm"] < 1e-9 and max(e["theta_x_deg"], e["theta_y_deg"], e["theta_z_deg"]) < 1e-9
    est = RigidTransform(true.angles_rad + np.radians([1.0, -2.0, 0.5]), true.translation_mm + [3, 0, -4], true.center_mm)
    e = rigid_errors(est, true)
    assert e["t_norm_mm"] == pytest.approx(5.0)
    assert (e["theta_x_deg"], e["theta_y_deg"], e["theta_z_deg"]) == pytest.approx((1.0, 2.0, 0.5))


def test_field_lengths_per_voxel():
    u = torch.zeros(1, 3, 2, 3, 4)
    u[0, :, 1, 2, 3] = torch.tensor([3.0, 4.0, 12.0])
    u[0, 1, 0, 0, 0] = -2.0
    length = lengths(u)
    assert length.shape == (1, 2, 3, 4)
    assert float(length[0, 1, 2, 3]) == 13.0 and float(length[0, 0, 0, 0]) == 2.0
    assert float(length.sum()) == 15.0


def test_jacobian_slabs_equal_whole_volume():
    grid = Grid((30, 20, 70), (1.0, 2.0, 0.5), (0, 0, 0))
    u = np.random.default_rng(0).normal(size=(*grid.shape, 3)).astype(np.float32)
    field = DisplacementField(u, grid)
    np.testing.assert_array_equal(jacobian_determinant(field, slab=7), jacobian_determinant(field, slab=1000))
