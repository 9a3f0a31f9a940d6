"""The figures register() reports, against their definitions computed the direct way."""
import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from DeepRegistrationLib.core.image import Image
from DeepRegistrationLib.core.jacobian import jacobian_determinant
from DeepRegistrationLib.core.transforms import AffineTransform, DisplacementField, RigidTransform, compose
from DeepRegistrationLib.core.warp import physical_points_at, sample_voxel_indices
from DeepRegistrationLib.metrics.quality_report import REPORT_POINTS, folding_warning, mapped_sample, quality_report
from DeepRegistrationLib.metrics.sampled_nmi import SampledNMI


def _smooth_field(grid, seed, amplitude):
    rng = np.random.default_rng(seed)
    return np.stack([gaussian_filter(rng.normal(size=grid.shape), 2) * amplitude for _ in range(3)], -1).astype(np.float32)


@pytest.mark.parametrize("linear", [RigidTransform([0.05, -0.1, 0.2], [2.0, -1.5, 3.0]),
                                    AffineTransform(np.diag([1.1, 0.95, 1.2, 1.0]))], ids=["rigid", "affine"])
def test_report_equals_nmi_and_jacobian_computed_directly(smooth_volume, linear):
    """Oblique, anisotropic grid; a field on it followed by a linear pose, as the registrations return."""
    grid = smooth_volume.grid
    transform = compose(DisplacementField(_smooth_field(grid, 1, 8), grid), linear)
    initial = RigidTransform([0.02, 0.0, -0.03], [1.0, 0.5, 0.0], grid.center_physical())
    report, jacobian = quality_report(smooth_volume, smooth_volume, initial, transform)

    def nmi(t):
        return SampledNMI.on_grid(smooth_volume, smooth_volume, 64, REPORT_POINTS, 0, "cpu", linear=False)(t)

    assert report["nmi64_before"] == pytest.approx(nmi(initial), abs=1e-9)
    assert report["nmi64_after"] == pytest.approx(nmi(transform), abs=1e-6)
    direct = jacobian_determinant(DisplacementField.from_transform(transform, grid))
    assert jacobian.grid.same_as(grid)
    np.testing.assert_allclose(jacobian.array, direct, rtol=1e-5, atol=1e-5)
    assert report["jacobian_min"] == pytest.approx(float(direct.min()), abs=1e-5)
    assert 0 < report["jacobian_min"] < report["jacobian_max"]
    assert "inverse_consistency_mm" not in report


def test_inverse_consistency_counts_only_voxels_mapped_into_the_moving_image(oblique_grid):
    """On an oblique, anisotropic grid, φ(x) = x + 2 voxels along the grid's first axis and φ⁻¹ = x − 2 voxels:
    exact where φ(x) is inside the moving image (the last two of 23 columns are not); the old whole-grid
    mean would have been 2/23 of the shift."""
    grid = oblique_grid
    image = Image(gaussian_filter(np.random.default_rng(0).random(grid.shape), 1.5).astype(np.float32), grid)
    shift = np.zeros((*grid.shape, 3), np.float32)
    shift[...] = 2 * grid.spacing[0] * grid.direction[:, 0]
    forward, inverse = DisplacementField(shift, grid), DisplacementField(-shift, grid)
    report, jacobian = quality_report(image, image, RigidTransform(), forward, inverse)
    ic = report["inverse_consistency_mm"]
    assert ic["fraction_of_voxels"] == pytest.approx(21 / 23)
    assert ic["max"] < 1e-4          # float32 rounding on the oblique grid: 1.7e-5 mm
    np.testing.assert_allclose(jacobian.array, 1.0, atol=1e-6)
    assert report["folding_voxels"] == 0
    shift[...] = 30 * grid.spacing[0] * grid.direction[:, 0]     # 30 voxels: beyond the 23-voxel grid
    report, _ = quality_report(image, image, RigidTransform(), DisplacementField(shift, grid),
                               DisplacementField(-shift, grid))
    assert report["inverse_consistency_mm"] == {"mean": None, "max": None, "fraction_of_voxels": 0.0}
    assert report["nmi64_after"] == 1.0


def test_sample_images_read_the_field_at_its_voxels_or_interpolate_it(smooth_volume):
    """Every voxel (the sample up to REPORT_POINTS): the field's own values; a drawn sample: interpolation."""
    grid = smooth_volume.grid
    transform = compose(DisplacementField(_smooth_field(grid, 2, 6), grid),
                        RigidTransform([0.1, 0.0, -0.2], [3.0, 0.0, 1.0], grid.center_physical()))
    every = physical_points_at(grid, sample_voxel_indices(grid, REPORT_POINTS))
    some = physical_points_at(grid, sample_voxel_indices(grid, grid.num_voxels // 3))
    assert every.shape[0] == grid.num_voxels and some.shape[0] == grid.num_voxels // 3
    direct = mapped_sample(transform, grid, every)
    assert direct.dtype == every.dtype
    assert float((direct - transform.transform_points_torch(every)).abs().max()) < 1e-4
    assert torch.equal(mapped_sample(transform, grid, some), transform.transform_points_torch(some))


def test_a_folding_result_gets_a_warning_with_its_count(smooth_volume):
    """register() adds this warning to the report (and the CLI and the panel show it) whenever the result folds
    on the fixed grid, whatever a method's own checks saw on its working grid."""
    grid = smooth_volume.grid
    for amplitude, folds in ((2.0, False), (60.0, True)):
        field = DisplacementField(_smooth_field(grid, 3, amplitude), grid)
        report, jacobian = quality_report(smooth_volume, smooth_volume, RigidTransform(), field)
        n = int((jacobian.array <= 0).sum())
        assert (n > 0) == folds and report["folding_voxels"] == n
        warning = folding_warning(report)
        assert (warning is None) == (not folds)
        if folds:
            assert f"{n} voxels" in warning
