"""Rigid registration with the learned metric (eq. 2) and response functions (Fig. 2)."""
import csv

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from DeepRegistrationLib.api import register
from DeepRegistrationLib.core.errors import InputError
from DeepRegistrationLib.core.image import Grid, Image
from DeepRegistrationLib.core.transforms import RigidTransform
from DeepRegistrationLib.core.warp import physical_grid_points, warp
from DeepRegistrationLib.data import sources
from DeepRegistrationLib.metrics.evaluation import rigid_errors
from DeepRegistrationLib.rigid.cnn_metric import load_metric_set, register_cnn
from DeepRegistrationLib.rigid.response_functions import build_metrics, peak_offsets, response_functions
from DeepRegistrationLib.rigid.metric_patches import anti_aliased_resample, prepare_level
from DeepRegistrationLib.rigid.sampling_region import in_both_foregrounds


def centres_in_both_foregrounds(f, m, transform):
    """The patch-centre candidates of a CNN metric stage (the shared sampling region, on LevelVolumes)."""
    return f.foreground_points[in_both_foregrounds(f.foreground_points, m.foreground, m.grid, transform)]


@pytest.fixture(scope="module")
def shifted_pair():
    """SPM T1 (fixed) and T2 moved by a known rigid transform (fixed -> moving)."""
    t1, t2 = sources.spm_avg152("T1"), sources.spm_avg152("T2")
    true = RigidTransform(np.radians([2.0, -1.5, 1.0]), [7.0, -5.0, 4.0], t1.grid.center_physical())
    return t1, warp(t2, t2.grid, true.inverse()), true


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_cnn_registration_with_the_bundled_set_recovers_a_known_pose(shifted_pair, device):
    torch.set_num_threads(1)
    fixed, moving, true = shifted_pair
    fixed_3mm = anti_aliased_resample(fixed, 3.0)  # another spacing than the data's: resampled to the model's levels
    result = register(fixed_3mm, moving, "learned-metric", device, patches=64, max_evaluations=150, start="none",
                      init="none", confidence=False)     # ~30 % of the time; confidence runs in the MRML adapter test
    assert "sedghi-t1-t2" in result.report["model_note"]
    err = rigid_errors(result.transform, true)
    before = rigid_errors(RigidTransform(center_mm=true.center_mm), true)
    assert before["t_norm_mm"] > 9.0
    assert err["t_norm_mm"] < 3.0, err
    assert max(err["theta_x_deg"], err["theta_y_deg"], err["theta_z_deg"]) < 3.0, err
    assert all(s["metric_after"] >= s["metric_before"] for s in result.report["stages"])


def cut_below(image, z_mm):
    """The image with every voxel below LPS z = ``z_mm`` set to 0 (anatomy cut off, as by a field of view)."""
    z = image.grid.index_to_physical(np.argwhere(np.ones(image.array.shape, bool))[:, ::-1])[:, 2]
    return image.with_array(np.where(z.reshape(image.array.shape) < z_mm, 0, image.array).astype(np.float32))


def test_patch_centres_leave_out_fixed_anatomy_that_maps_outside_the_moving_anatomy(shifted_pair):
    fixed, moving, true = shifted_pair
    f = prepare_level(fixed, 4.0)
    whole = centres_in_both_foregrounds(f, prepare_level(moving, 4.0), true)
    assert whole.shape[0] >= 0.9 * f.foreground_points.shape[0]  # the 9 mm shift moves some anatomy off the grid
    cut_mm = -10.0
    m = prepare_level(cut_below(moving, cut_mm), 4.0)
    kept = centres_in_both_foregrounds(f, m, true)
    # the automatic mask (4 mm Gaussian) reaches about a voxel past the cut; nearest-voxel lookup adds half a voxel
    assert true.transform_points(kept.double().numpy())[:, 2].min() > cut_mm - 8.0
    assert kept.shape[0] < 0.8 * whole.shape[0]


def ellipsoid(grid, centre_mm, radii_mm):
    """An image on ``grid``: 100 inside the ellipsoid (LPS axes), 0 outside."""
    r = ((physical_grid_points(grid, dtype=torch.float64).numpy() - centre_mm) / radii_mm) ** 2
    return Image(np.where(r.sum(-1) < 1.0, 100.0, 0.0).astype(np.float32), grid)


def test_patch_centres_on_oblique_anisotropic_grids_agree_with_itk_resampling_of_the_moving_mask():
    """Membership in the moving foreground, through T, equals SimpleITK's nearest resampling of the mask."""
    fixed = ellipsoid(Grid((44, 60, 26), (1.3, 0.9, 2.1), (-30.0, -25.0, -20.0),
                           RigidTransform([0.2, -0.15, 0.35]).rotation_matrix()), [-5.0, 3.0, 4.0], [20.0, 16.0, 14.0])
    true = RigidTransform([0.1, 0.05, -0.2], [6.0, -4.0, 3.0], [-5.0, 3.0, 4.0])
    moving_grid = Grid((40, 18, 34), (1.1, 2.6, 1.4), (-20.0, -35.0, -25.0),
                       RigidTransform([-0.3, 0.1, 0.25]).rotation_matrix())
    moving_centre = true.transform_points(np.array([-5.0, 3.0, 4.0]))
    moving = cut_below(ellipsoid(moving_grid, moving_centre, [20.0, 16.0, 14.0]), 2.0)
    f, m = prepare_level(fixed, 2.0), prepare_level(moving, 2.0)
    for level in (f, m):
        assert not np.allclose(level.grid.direction, np.eye(3)) and len(set(level.grid.spacing)) > 1
    kept = m.in_foreground(true.transform_points_torch(f.foreground_points)).numpy()
    moving_mask = Image(m.foreground[0].numpy(), m.grid).to_sitk()
    itk = sitk.GetArrayFromImage(sitk.Resample(moving_mask, Image(f.image.array, f.grid).to_sitk(), true.to_sitk(),
                                               sitk.sitkNearestNeighbor, 0.0))[f.foreground[0].numpy() > 0.5] > 0.5
    assert 0.2 < itk.mean() < 0.8  # the cut and the moving field of view leave out part of the fixed anatomy
    assert (kept == itk).mean() > 0.995, (kept.mean(), itk.mean())
    assert torch.equal(centres_in_both_foregrounds(f, m, true), f.foreground_points[torch.as_tensor(kept)])


def test_cnn_registration_uses_the_moving_mask_and_refuses_anatomy_that_does_not_overlap(shifted_pair):
    fixed, moving, true = shifted_pair
    upper = moving.with_array((cut_below(moving.with_array(np.ones_like(moving.array)), 0.0).array > 0)
                              .astype(np.uint8))
    common = dict(patches=16, max_evaluations=20, models=["sedghi-t1-gm"], start="none")
    counts = [[s["candidate_centres"] for s in register(fixed, moving, "learned-metric", "cpu", moving_mask=mask,
                                                        **common).report["stages"]] for mask in (None, upper)]
    assert all(0 < masked < 0.75 * whole for whole, masked in zip(*counts)), counts
    far = RigidTransform(center_mm=true.center_mm, translation_mm=[0.0, 0.0, 400.0])
    with pytest.raises(InputError, match="does not overlap"):
        register_cnn(fixed, moving, load_metric_set("sedghi-t1-gm"), far, "cpu")


def test_cnn_method_rejects_unknown_options(shifted_pair):
    fixed, moving, _ = shifted_pair
    with pytest.raises(InputError, match="unknown option"):
        register(fixed, moving, "learned-metric", "cpu", bins=60)
    with pytest.raises(InputError, match="neither a file nor a bundled model"):
        register(fixed, moving, "learned-metric", "cpu", models=["no-such-model"])


def test_nmi_response_peaks_at_the_true_pose(shifted_pair):
    fixed, moving, true = shifted_pair
    pose = RigidTransform(true.angles_rad, [0.0, 0.0, 0.0], true.center_mm)  # rotation right, translation off
    metrics = build_metrics("nmi", fixed, moving, patches=64, device="cpu")
    rows = response_functions(metrics, pose, translation_range_mm=12.0, steps=25, parameters=("tx", "ty", "tz"))
    peaks = peak_offsets(rows)
    for i, p in enumerate(("tx", "ty", "tz")):
        assert abs(peaks[("NMI (60 bins)", p)] - true.translation_mm[i]) <= 1.0, (p, peaks)


def test_response_of_a_learned_metric_and_ncc_peak_near_the_pose(shifted_pair):
    fixed, moving, true = shifted_pair
    rows = response_functions(build_metrics("cnn:sedghi-t1-t2", fixed, moving, 64, device="cpu"), true,
                              translation_range_mm=10.0, rotation_range_deg=10.0, steps=11, parameters=("tx", "rz"))
    rows += response_functions(build_metrics("ncc", fixed, fixed, 64, device="cpu"),
                               RigidTransform(center_mm=true.center_mm), translation_range_mm=10.0,
                               rotation_range_deg=10.0, steps=11, parameters=("tx", "rz"))
    peaks = peak_offsets(rows)
    assert [v for k, v in peaks.items() if k[0].startswith("NCC")] == [0.0, 0.0]
    final_stage = [k for k in peaks if k[0].startswith("sedghi-t1-t2 F")][-1][0]
    assert abs(peaks[(final_stage, "tx")]) <= 2.0 and abs(peaks[(final_stage, "rz")]) <= 4.0
    with pytest.raises(InputError, match="unknown metric"):
        build_metrics("mse", fixed, moving)


def test_response_command_writes_csv_and_plot(tmp_path, shifted_pair):
    from DeepRegistrationLib.cli import main
    from DeepRegistrationLib.core.io import write_image

    fixed, moving, _ = shifted_pair
    write_image(fixed, tmp_path / "f.nii.gz")
    write_image(moving, tmp_path / "m.nii.gz")
    assert main(["response", str(tmp_path / "f.nii.gz"), str(tmp_path / "m.nii.gz"), "--metric", "nmi", "--metric",
                 "ncc", "--patches", "16", "--steps", "5", "--device", "cpu", "--out", str(tmp_path / "r.csv"),
                 "--plot", str(tmp_path / "r.png")]) == 0
    with open(tmp_path / "r.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * 6 * 5 and {r["parameter"] for r in rows} == {"tx", "ty", "tz", "rx", "ry", "rz"}
    assert (tmp_path / "r.png").stat().st_size > 10_000
