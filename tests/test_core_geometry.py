"""Geometry of the spatial core against SimpleITK: grids, rigid transforms, warping, files."""
import numpy as np
import pytest
import SimpleITK as sitk
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

from DeepRegistrationLib.core.image import Grid, Image
from DeepRegistrationLib.core.io import read_image, write_image
from DeepRegistrationLib.core.transforms import (AffineTransform, DisplacementField, RigidTransform, compose,
                                                 read_transform, write_transform)
from DeepRegistrationLib.core.warp import inside_mask, physical_grid_points, warp
from DeepRegistrationLib.core.network_input import resample_to


def test_index_to_physical_matches_sitk(smooth_volume):
    itk = smooth_volume.to_sitk()
    for idx in [(0, 0, 0), (3, 7, 11), (22, 18, 14), (1.5, 2.25, 3.75)]:
        expected = itk.TransformContinuousIndexToPhysicalPoint(idx)
        np.testing.assert_allclose(smooth_volume.grid.index_to_physical(idx), expected, atol=1e-9)
        np.testing.assert_allclose(smooth_volume.grid.physical_to_index(expected), idx, atol=1e-9)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_io_round_trip_keeps_geometry(tmp_path, smooth_volume, suffix):
    path = tmp_path / f"img{suffix}"
    write_image(smooth_volume, path)
    back = read_image(path)
    assert back.grid.same_as(smooth_volume.grid, tol=1e-4)
    np.testing.assert_allclose(back.array, smooth_volume.array, atol=1e-5)


def test_rigid_matches_itk_euler3d():
    t = RigidTransform([0.1, -0.2, 0.15], [3.0, -4.0, 5.5], [10.0, -20.0, 7.0])
    itk = t.to_sitk()
    pts = np.random.default_rng(1).normal(size=(10, 3)) * 50
    expected = np.array([itk.TransformPoint(tuple(p)) for p in pts])
    np.testing.assert_allclose(t.transform_points(pts), expected, atol=1e-9)
    assert np.allclose(itk.GetParameters(), t.parameters)


def test_rigid_matrix_round_trip():
    t = RigidTransform([0.19, -0.05, -0.2], [1.0, 2.0, -3.0], [5.0, 6.0, 7.0])
    back = RigidTransform.from_matrix4(t.matrix4(), t.center_mm)
    np.testing.assert_allclose(back.parameters, t.parameters, atol=1e-12)


@pytest.mark.parametrize("suffix", [".tfm", ".txt", ".h5"])
def test_rigid_transform_files(tmp_path, suffix):
    t = RigidTransform([0.1, 0.05, -0.12], [4.0, -2.0, 9.0], [1.0, 2.0, 3.0])
    write_transform(t, tmp_path / f"t{suffix}")
    itk = sitk.ReadTransform(str(tmp_path / f"t{suffix}"))
    back = read_transform(tmp_path / f"t{suffix}")
    pts = np.array([[0.0, 0, 0], [10, -20, 30]])
    np.testing.assert_allclose(back.transform_points(pts), t.transform_points(pts), atol=1e-9)
    np.testing.assert_allclose([itk.TransformPoint(tuple(p)) for p in pts], t.transform_points(pts), atol=1e-9)


def _sitk_resample(moving: Image, reference: Grid, transform, interp=sitk.sitkLinear):
    ref = Image(np.zeros(reference.shape, np.float32), reference).to_sitk()
    out = sitk.Resample(moving.to_sitk(), ref, transform.to_sitk(), interp, 0.0)
    return sitk.GetArrayFromImage(out)


def _inside(moving_grid, reference, transform):
    pts = transform.transform_points_torch(physical_grid_points(reference, dtype=torch.float64))
    return inside_mask(moving_grid, pts).numpy()


def test_warp_matches_sitk_resample_oblique_anisotropic(smooth_volume):
    reference = Grid((17, 21, 12), (1.0, 1.7, 1.4), (-5.0, 10.0, 28.0), RigidTransform([-0.3, 0.1, 0.05]).rotation_matrix())
    t = RigidTransform([0.05, -0.1, 0.2], [2.0, -1.5, 3.0], smooth_volume.grid.center_physical())
    ours = warp(smooth_volume, reference, t).array
    theirs = _sitk_resample(smooth_volume, reference, t)
    inside = _inside(smooth_volume.grid, reference, t)
    assert inside.mean() > 0.15
    err = np.abs(ours - theirs)[inside].max()
    assert err <= 1e-3 * smooth_volume.intensity_range(), err


def test_warp_on_two_threads_matches_one_thread_and_sitk_oblique_anisotropic(smooth_volume):
    """Enough reference voxels that core.grid_sampling splits the points between the threads."""
    from DeepRegistrationLib.core.grid_sampling import POINTS_PER_THREAD
    reference = Grid((26, 31, 18), (0.7, 1.2, 0.95), (-5.0, 10.0, 28.0), RigidTransform([-0.3, 0.1, 0.05]).rotation_matrix())
    assert reference.num_voxels >= 2 * POINTS_PER_THREAD
    t = RigidTransform([0.05, -0.1, 0.2], [2.0, -1.5, 3.0], smooth_volume.grid.center_physical())
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = warp(smooth_volume, reference, t)
        torch.set_num_threads(2)
        two = warp(smooth_volume, reference, t)
    finally:
        torch.set_num_threads(threads)
    assert two.grid.same_as(reference) and np.array_equal(two.array, one.array)
    inside = _inside(smooth_volume.grid, reference, t)
    assert inside.mean() > 0.15
    err = np.abs(two.array - _sitk_resample(smooth_volume, reference, t))[inside].max()
    assert err <= 1e-3 * smooth_volume.intensity_range(), err


def test_widened_grid_keeps_every_voxel_centre(smooth_volume):
    """Grid.widened on an oblique, anisotropic grid: voxel (i, j, k) lands on voxel (i, j, k) + pad, in mm."""
    grid = smooth_volume.grid
    wide = grid.widened(4.0)
    pad = np.ceil(4.0 / grid.spacing).astype(int)                # (4, 5, 2) for spacing (1.3, 0.9, 2.1)
    assert wide.size == tuple(np.asarray(grid.size) + 2 * pad)
    assert np.allclose(wide.spacing, grid.spacing) and np.allclose(wide.direction, grid.direction)
    index = np.array([[0, 0, 0], [22, 18, 14], [5, 11, 3]], dtype=float)
    np.testing.assert_allclose(wide.index_to_physical(index + pad), grid.index_to_physical(index), atol=1e-9)
    widened = warp(smooth_volume, wide)                          # identity resampling onto the wider grid
    core = widened.array[pad[2]:-pad[2], pad[1]:-pad[1], pad[0]:-pad[0]]
    np.testing.assert_allclose(core, smooth_volume.array, atol=1e-3)
    assert widened.array[:pad[2]].max() < 1e-3 * smooth_volume.intensity_range()   # outside the original grid: zeros


def test_resample_to_own_grid_returns_the_voxels_and_geometry(smooth_volume):
    """resample_to on an oblique, anisotropic image's own grid: same voxels (float32) and geometry, as
    resampling through an identity transform gives; another grid still resamples."""
    grid = smooth_volume.grid
    same = resample_to(smooth_volume.with_array(smooth_volume.array.astype(np.float64)), grid)
    assert same.array.dtype == np.float32 and same.grid.same_as(grid)
    np.testing.assert_array_equal(same.array, smooth_volume.array)
    through_identity = resample_to(smooth_volume, grid, RigidTransform(center_mm=grid.center_physical()))
    np.testing.assert_allclose(through_identity.array, same.array, atol=1e-3 * smooth_volume.intensity_range())
    coarse = resample_to(smooth_volume, grid.with_spacing(2 * grid.spacing))
    assert coarse.grid.same_as(grid.with_spacing(2 * grid.spacing)) and coarse.array.shape != same.array.shape


def test_warp_nearest_labels_match_sitk(smooth_volume):
    labels = Image((smooth_volume.array // 20).astype(np.int16), smooth_volume.grid)
    reference = Grid((15, 15, 15), (1.2, 1.2, 1.2), (-8.0, 9.0, 32.0))
    t = RigidTransform([0.0, 0.0, 0.1], [0.3, 0.2, 0.1], smooth_volume.grid.center_physical())
    ours = warp(labels, reference, t, mode="nearest").array
    theirs = _sitk_resample(labels, reference, t, sitk.sitkNearestNeighbor)
    inside = _inside(labels.grid, reference, t)
    assert ours.dtype == labels.array.dtype
    assert np.mean(ours[inside] == theirs[inside]) > 0.99


def test_displacement_field_matches_sitk_and_files(tmp_path, smooth_volume):
    g = smooth_volume.grid
    rng = np.random.default_rng(3)
    u = np.stack([gaussian_filter(rng.normal(size=g.shape), 2) * 6 for _ in range(3)], -1).astype(np.float32)
    field = DisplacementField(u, g)
    ours = warp(smooth_volume, g, field).array
    theirs = _sitk_resample(smooth_volume, g, field)
    inside = _inside(g, g, field)
    assert np.abs(ours - theirs)[inside].max() <= 1e-3 * smooth_volume.intensity_range()
    write_transform(field, tmp_path / "f.h5")
    write_transform(field, tmp_path / "f.nrrd")
    nrrd = Image.from_sitk(sitk.ReadImage(str(tmp_path / "f.nrrd")))
    for back in (read_transform(tmp_path / "f.h5"), DisplacementField(nrrd.array, nrrd.grid)):
        np.testing.assert_allclose(back.displacement_mm, u, atol=1e-5)
        assert back.grid.same_as(g)
    header = open(tmp_path / "f.nrrd", "rb").read(2000)
    assert b"intent_code:=1006" in header and b"displacement field type:=resampling" in header


def test_voxel_centres_mapped_directly_equal_interpolated_mapping(smooth_volume):
    """A field on its own (oblique, anisotropic) grid, first in a composite, contributes its voxel values
    without interpolation; elsewhere map_voxel_centres is transform_points_torch of the voxel centres."""
    g = smooth_volume.grid
    rng = np.random.default_rng(4)
    u = np.stack([gaussian_filter(rng.normal(size=g.shape), 2) * 6 for _ in range(3)], -1).astype(np.float32)
    field = DisplacementField(u, g)
    rigid = RigidTransform([0.1, -0.05, 0.2], [1.0, 2.0, -3.0], g.center_physical())
    other = Grid((9, 11, 7), (2.0, 1.5, 2.5), (-3.0, 4.0, 20.0), RigidTransform([0.2, 0.0, -0.1]).rotation_matrix())
    for transform in (field, compose(field, rigid), rigid, compose(rigid, field)):
        for grid in (g, other):
            pts = physical_grid_points(grid, dtype=torch.float64)
            interpolated = transform.transform_points_torch(pts)
            direct = transform.map_voxel_centres(grid)
            assert direct.dtype == torch.float64 and direct.shape == (*grid.shape, 3)
            assert float((direct - interpolated).abs().max()) < 1e-4
            slab = transform.map_voxel_centres(grid, z_range=(2, 5))
            assert torch.equal(slab, direct[2:5])
    exact = field.map_voxel_centres(g) - physical_grid_points(g, dtype=torch.float64)
    assert float((exact - torch.as_tensor(u, dtype=torch.float64)).abs().max()) < 1e-12
    assert torch.equal(compose().map_voxel_centres(other), physical_grid_points(other, dtype=torch.float64))


def test_composition_order_matches_sitk(smooth_volume):
    g = smooth_volume.grid
    u = np.zeros((*g.shape, 3), np.float32)
    u[..., 0] = 2.0
    field = DisplacementField(u, g)
    rigid = RigidTransform([0.0, 0.0, 0.3], [1.0, 2.0, 3.0], g.center_physical())
    comp = compose(field, rigid)
    p = g.center_physical()[None]
    np.testing.assert_allclose(comp.transform_points(p), rigid.transform_points(p + [2.0, 0, 0]), atol=1e-5)
    itk = comp.to_sitk()
    np.testing.assert_allclose(itk.TransformPoint(tuple(p[0])), comp.transform_points(p)[0], atol=1e-4)


def test_affine_from_sitk_similarity():
    s = sitk.Similarity3DTransform()
    s.SetScale(1.1)
    s.SetTranslation((1, 2, 3))
    from DeepRegistrationLib.core.transforms import from_sitk
    t = from_sitk(s)
    assert isinstance(t, AffineTransform)
    np.testing.assert_allclose(t.transform_points(np.array([[5.0, 6, 7]]))[0], s.TransformPoint((5, 6, 7)), atol=1e-9)


@pytest.mark.parametrize("coords_shape", [(1, 23, 29, 31, 3), (1, 1, 1, 20001, 3), (1, 37, 16, 16, 3)])
@pytest.mark.parametrize("mode,padding", [("bilinear", "border"), ("bilinear", "zeros"), ("nearest", "zeros")])
def test_threaded_grid_sample_equals_torch(monkeypatch, coords_shape, mode, padding):
    from DeepRegistrationLib.core import grid_sampling
    g = torch.Generator().manual_seed(3)
    volume = torch.rand((1, 3, 10, 12, 14), generator=g)
    coords = torch.rand(coords_shape, generator=g) * 2.4 - 1.2
    expected = F.grid_sample(volume, coords, mode=mode, padding_mode=padding, align_corners=True)
    batches = []
    torch_grid_sample = F.grid_sample

    def spy(v, c, **kw):
        batches.append(c.shape[0])
        return torch_grid_sample(v, c, **kw)

    monkeypatch.setattr(grid_sampling.F, "grid_sample", spy)
    threads = torch.get_num_threads()
    points = int(np.prod(coords_shape[1:-1]))
    try:
        for n in (2, 3, 16):
            torch.set_num_threads(n)
            out = grid_sampling.grid_sample(volume, coords, mode=mode, padding_mode=padding)
            assert out.shape == expected.shape
            assert torch.equal(out, expected)
            assert batches[-1] == min(n, max(coords_shape[1:-1]), points // grid_sampling.POINTS_PER_THREAD)
    finally:
        torch.set_num_threads(threads)


def test_a_field_continued_onto_a_larger_oblique_grid_keeps_its_values_and_has_no_jump():
    """A network's field covers part of an image: inside its grid it is interpolated as is; beyond, it continues
    with its border values (zero outside would jump there, and a jump of a few mm over a voxel folds)."""
    direction = RigidTransform([0.2, -0.1, 0.3]).rotation_matrix()
    small = Grid((12, 10, 8), np.array([3.0, 3.0, 3.0]), np.array([-10.0, -5.0, 2.0]), direction)
    rng = np.random.default_rng(0)
    u = gaussian_filter(rng.normal(0, 3.0, (8, 10, 12, 3)), (1, 1, 1, 0)).astype(np.float32) + 4.0
    field = DisplacementField(u, small)
    large = Grid((40, 36, 30), np.array([1.5, 2.0, 2.5]), small.origin - direction @ np.array([20.0, 20.0, 20.0]),
                 direction)
    continued = field.continued_onto(large)
    points = physical_grid_points(large, "cpu", torch.float64)
    inside = inside_mask(small, points).numpy()
    expected = field.transform_points(points.numpy().reshape(-1, 3)).reshape(points.shape) - points.numpy()
    np.testing.assert_allclose(continued.displacement_mm[inside], expected[inside], atol=1e-4)
    assert np.abs(continued.displacement_mm[~inside]).min() > 0.5       # zero-padding would give 0 there
    assert inside.any() and (~inside).any()
    step = np.abs(np.diff(continued.displacement_mm, axis=0)).max()     # no jump at the small grid's border
    assert step < np.abs(np.diff(u, axis=0)).max() + 1e-3
