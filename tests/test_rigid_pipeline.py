"""The shared sampling region (masks for every rigid metric), nmi-affine, and one-call pipelines, on real images."""
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from DeepRegistrationLib.api import register
from DeepRegistrationLib.cli import main
from DeepRegistrationLib.core.errors import InputError
from DeepRegistrationLib.core.image import Grid, Image
from DeepRegistrationLib.core.transforms import AffineTransform, RigidTransform, read_transform
from DeepRegistrationLib.core.warp import physical_points_at, sample_at_points, warp
from DeepRegistrationLib.data import sources
from DeepRegistrationLib.methods import PIPELINE_PRESETS, pipeline_specs
from DeepRegistrationLib.metrics.sampled_nmi import SampledNMI
from DeepRegistrationLib.metrics.similarity import nmi
from DeepRegistrationLib.pipeline import plan
from DeepRegistrationLib.rigid.mi import MISettings, level_objective
from DeepRegistrationLib.rigid.pyramid import downsample
from DeepRegistrationLib.rigid.sampling_region import foreground, in_foreground

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def pair():
    """SPM avg152 T1 (fixed) and T2 (moving) at 4 mm; the T2 moved by a known rigid transform (fixed -> moving)."""
    t1, t2 = downsample(sources.spm_avg152("T1"), 2), downsample(sources.spm_avg152("T2"), 2)
    true = RigidTransform([0.06, -0.05, 0.08], [6.0, -5.0, 4.0], t1.grid.center_physical())
    return t1, warp(t2, t2.grid, true.inverse()), true


def upper_half(image, z_mm=0.0):
    """A mask of the voxels of ``image`` above LPS z = ``z_mm``."""
    z = image.grid.index_to_physical(np.argwhere(np.ones(image.array.shape, bool))[:, ::-1])[:, 2]
    return image.with_array((z.reshape(image.array.shape) > z_mm).astype(np.uint8))


def test_nmi_samples_only_fixed_foreground_mapped_into_the_moving_mask(pair):
    """Mutation check: dropping the moving mask changes the sampled points (they then reach below the cut)."""
    fixed, moving, true = pair
    settings = MISettings()
    whole = level_objective(fixed, moving, true, settings, "cpu", None, None, 10 ** 6)
    mask = upper_half(moving)
    masked = level_objective(fixed, moving, true, settings, "cpu", None, mask, 10 ** 6)
    assert masked.points.shape[0] < 0.75 * whole.points.shape[0]
    mask_tensor = torch.as_tensor(foreground(moving, mask), dtype=torch.float32)[None]
    assert bool(in_foreground(mask_tensor, moving.grid, true.transform_points_torch(masked.points)).all())
    assert not bool(in_foreground(mask_tensor, moving.grid, true.transform_points_torch(whole.points)).all())
    inside = torch.ones((1,) + moving.array.shape)        # without masks: the overlap of the fields of view
    assert bool(in_foreground(inside, moving.grid, true.transform_points_torch(whole.points)).all())
    assert whole.points.shape[0] > 0.8 * np.prod(fixed.array.shape) > 1.3 * foreground(fixed).sum()


def test_sampled_nmi_equals_the_direct_histogram_nmi(pair):
    """At the identity, with every point inside, SampledNMI (hard bins, ranges of the sample and of the moving
    image) equals similarity.nmi computed on the same values."""
    fixed, moving, _ = pair
    objective = SampledNMI.on_grid(fixed, fixed, 32, 10 ** 6, 0, "cpu", linear=False)
    values = torch.as_tensor(fixed.array).reshape(-1)
    assert objective(RigidTransform()) == pytest.approx(float(nmi(values, values, 32)), abs=1e-9)
    shifted = RigidTransform(translation_mm=[3.0, 0.0, 0.0])
    assert objective(shifted) < objective(RigidTransform()) - 0.05


def test_partial_volume_histogram_spreads_each_sample_over_its_four_bins():
    """Linear binning: each (fixed, moving) sample adds the products of its two bilinear weights to the four
    bins around it, checked against numpy's add.at on random values, including values at the range ends."""
    rng = np.random.default_rng(0)
    n = 12
    f = torch.as_tensor(np.concatenate([[0.0, 1.0], rng.uniform(0, 1, 500)]), dtype=torch.float32)
    m = torch.as_tensor(np.concatenate([[1.0, 0.0], rng.uniform(0, 1, 500)]), dtype=torch.float32)
    grid = Grid((4, 4, 4), (1.0, 1.0, 1.0), np.zeros(3))
    moving = Image(np.linspace(0, 1, 64, dtype=np.float32).reshape(4, 4, 4), grid)
    objective = SampledNMI(torch.zeros((len(f), 3)), f, moving, n, linear=True)
    inside = torch.ones(len(m))
    expected = np.zeros((n, n))
    fc, mc = f.numpy() * (n - 1), m.numpy() * (n - 1)
    fl, ml = np.minimum(np.floor(fc), n - 2).astype(int), np.minimum(np.floor(mc), n - 2).astype(int)
    for df, wf in ((0, 1 - (fc - fl)), (1, fc - fl)):
        for dm, wm in ((0, 1 - (mc - ml)), (1, mc - ml)):
            np.add.at(expected, (fl + df, ml + dm), wf * wm)
    p = expected / expected.sum()
    entropy = lambda q: -np.sum(q[q > 0] * np.log(q[q > 0]))  # noqa: E731
    direct = (entropy(p.sum(1)) + entropy(p.sum(0))) / entropy(p)
    assert float(objective.nmi(m, inside)) == pytest.approx(direct, abs=1e-6)
    assert float(objective.nmi(m)) == float(objective.nmi(m, inside))      # all inside: the same value, bit for bit


@pytest.mark.parametrize("linear", [True, False])
def test_points_all_inside_take_the_short_path_with_the_same_value(pair, linear):
    """When every point lands inside the moving image, the evaluation skips the per-point inside test; its
    value is that of the per-point path with all weights 1, bit for bit. A pose that moves points outside
    takes the per-point path and counts only the points inside. Fixed image on an oblique, anisotropic grid
    inside the moving image's field of view."""
    t1, moving, _ = pair
    direction = RigidTransform([0.1, -0.08, 0.15]).rotation_matrix()
    size, spacing = np.array([24, 30, 22]), np.array([5.0, 4.5, 6.0])
    origin = t1.grid.center_physical() - direction @ (spacing * (size - 1) / 2)
    fixed = warp(t1, Grid(tuple(size), spacing, origin, direction))
    objective = SampledNMI.on_grid(fixed, moving, 32, 5000, 0, "cpu", linear=linear)
    near = objective.coordinates(RigidTransform(translation_mm=[0.5, -0.3, 0.2]))
    assert float(near.abs().max()) <= 1.0
    values = torch.nn.functional.grid_sample(objective.moving_volume, near.reshape(1, 1, 1, -1, 3),
                                             align_corners=True).reshape(-1)
    assert objective.from_coordinates(near) == float(objective.nmi(values, torch.ones_like(values)))
    far = objective.coordinates(RigidTransform(translation_mm=[40.0, 0.0, 0.0]))
    inside = far.abs().amax(dim=-1) <= 1.0 + 1e-6
    assert 0 < int(inside.sum()) < len(inside)
    values = torch.nn.functional.grid_sample(objective.moving_volume, far.reshape(1, 1, 1, -1, 3),
                                             align_corners=True).reshape(-1)
    assert objective.from_coordinates(far) == float(objective.nmi(values, inside.float()))
    assert objective.from_coordinates(far) != float(objective.nmi(values, torch.ones_like(values)))


def test_register_nmi_and_learned_metric_use_the_same_sampling_region_with_masks(pair):
    fixed, moving, _ = pair
    mask = upper_half(moving)
    counts = {}
    for name in (None, "moving"):
        r = register(fixed, moving, "nmi", "cpu", levels="2", moving_mask=mask if name else None).report
        counts[name] = r["stages"][0]["sample_points"]
    assert counts["moving"] < 0.8 * counts[None]


def test_nmi_affine_recovers_a_known_affine_with_scales_and_shears():
    """SPM T1 at 4 mm and a copy under an affine with scales 0.94-1.08 and shears up to 0.05 (plus rotation and
    translation), from the identity."""
    t1 = downsample(sources.spm_avg152("T1"), 2)
    c = t1.grid.center_physical()
    a = RigidTransform([0.04, -0.03, 0.05]).rotation_matrix() @ np.array([[1.08, 0.05, 0.0], [0.0, 0.94, -0.04],
                                                                           [0.03, 0.0, 1.05]])
    true = AffineTransform.from_parameters(np.concatenate([a.reshape(-1), [4.0, -3.0, 2.5]]), c)
    moving = warp(t1, t1.grid, true.inverse())
    result = register(t1, moving, "nmi-affine", "cpu", levels="2,1", max_points=10000)
    found = result.transform
    assert isinstance(found, AffineTransform)
    assert np.abs(found.parameters(c)[:9] - true.parameters(c)[:9]).max() < 0.01
    assert np.abs(found.parameters(c)[9:] - true.parameters(c)[9:]).max() < 0.3
    brain = physical_points_at(t1.grid, torch.as_tensor(np.flatnonzero(foreground(t1))), torch.float64).numpy()
    error = np.linalg.norm(found.transform_points(brain) - true.transform_points(brain), axis=1)
    start = np.linalg.norm(brain - true.transform_points(brain), axis=1)
    assert start.mean() > 6.0 and error.mean() < 0.5, (start.mean(), error.mean())
    np.testing.assert_allclose(result.report["affine_parameters"], found.parameters(c))
    conf = result.report["confidence"]      # the 12-parameter curvature at the optimum
    assert not conf["flagged"], conf["reasons"]
    assert conf["uncertainty_deg"] is None and 0.0 < conf["uncertainty_mm"] < 2.0
    assert len(conf["curvature_eigenvalues"]) == 12 and min(conf["curvature_eigenvalues"]) > 0
    stopped = register(t1, moving, "nmi-affine", "cpu", levels="2", max_points=10000, max_evaluations=30)
    assert stopped.report["confidence"]["flagged"], stopped.report["confidence"]


def test_pipeline_routes_options_models_and_masks_and_refuses_ambiguity():
    assert [s.name for s in pipeline_specs("nmi+nmi-affine+diffeo")] == ["nmi", "nmi-affine", "diffeo"]
    assert all(pipeline_specs(p) for p in PIPELINE_PRESETS)
    stages = plan("nmi+nmi-affine+diffeo", {"levels": "2,1", "nmi.seed": "3", "tile": "32"}, ["diffeo_brain_t1"])
    assert [s.options["levels"] for s in stages[:2]] == [(2.0, 1.0), (2.0, 1.0)]
    assert stages[0].options["seed"] == 3 and stages[1].options["seed"] == 0
    assert stages[2].options["tile"] == 32 and stages[2].models == ["diffeo_brain_t1"]
    assert stages[0].models == [] and stages[1].models == []
    with pytest.raises(InputError, match="no stage of 'nmi\\+nmi-affine' has it"):
        plan("nmi+nmi-affine", {"tile": 32})
    with pytest.raises(InputError, match="'diffeo' is not a stage"):
        plan("nmi+nmi-affine", {"diffeo.tile": 32})
    with pytest.raises(InputError, match="--model is ambiguous.*learned-metric, diffeo"):
        plan("learned-metric+diffeo", {}, ["x.pt"])
    with pytest.raises(InputError, match="cannot follow the affine stage"):
        pipeline_specs("nmi-affine+nmi")
    with pytest.raises(InputError, match="diffeo is deformable, so it must be the last stage"):
        pipeline_specs("diffeo+nmi")
    some = object()
    masked = plan("nmi+diffeo", {}, None, some, some)
    assert masked[0].masks == ("fixed", "moving") and masked[1].masks == ("fixed", "moving")
    assert plan("nmi+diffeo", {}, None, some)[1].masks == ("fixed",)


def test_pipeline_reports_every_stage_and_the_final_composite(pair, tmp_path):
    fixed, moving, true = pair
    result = register(fixed, moving, "nmi+nmi-affine", "cpu", levels="2,1", max_points="10000",
                      **{"nmi-affine.max_evaluations": "300"})
    stages = result.report["stages"]
    assert [s["method"] for s in stages] == ["nmi", "nmi-affine"]
    assert stages[0]["transform_type"] == "Euler3DTransform" and stages[1]["transform_type"] == "AffineTransform"
    assert stages[1]["options"]["max_evaluations"] == 300 and stages[0]["options"]["levels"] == [2.0, 1.0]
    np.testing.assert_allclose(result.transform.matrix4(), stages[1]["matrix_lps"])
    np.testing.assert_allclose(result.report["matrix_lps"], stages[1]["matrix_lps"])
    rigid = RigidTransform(np.radians(stages[0]["angles_deg"]), stages[0]["translation_mm"], stages[0]["center_mm"])
    assert all(level["metric_after"] >= level["metric_before"] for s in stages for level in s["report"]["stages"])
    brain = fixed.grid.index_to_physical(np.argwhere(foreground(fixed))[:, ::-1])
    for t, most in ((rigid, 2.0), (result.transform, 2.5)):  # 4 mm voxels; the T1, T2 templates differ in z scale
        assert np.linalg.norm(t.transform_points(brain) - true.transform_points(brain), axis=1).mean() < most
    assert result.report["method"] == "nmi+nmi-affine"


def test_cli_runs_a_pipeline_with_a_stage_parameter(pair, tmp_path, capsys):
    from DeepRegistrationLib.core.io import write_image
    fixed, moving, true = pair
    write_image(fixed, tmp_path / "f.nii.gz")
    write_image(moving, tmp_path / "m.nii.gz")
    code = main(["register", str(tmp_path / "f.nii.gz"), str(tmp_path / "m.nii.gz"), "--method", "nmi+nmi-affine",
                 "--param", "levels=2", "--param", "nmi-affine.max-evaluations=200", "--out-transform",
                 str(tmp_path / "T.h5"), "--report", str(tmp_path / "R.json"), "--quiet", "--device", "cpu"])
    assert code == 0
    import json
    report = json.loads((tmp_path / "R.json").read_text())
    assert [s["options"]["levels"] for s in report["stages"]] == [[2.0], [2.0]]
    assert report["stages"][1]["options"]["max_evaluations"] == 200
    np.testing.assert_allclose(read_transform(tmp_path / "T.h5").matrix4(), report["stages"][1]["matrix_lps"],
                               atol=1e-6)
    assert "stage nmi-affine: AffineTransform" in capsys.readouterr().out


def test_deepsim_rigid_averages_over_the_same_sampling_region(pair):
    """Mutation check for DeepSim-rigid: a moving mask changes the region eq. 2 is averaged over."""
    from DeepRegistrationLib.metrics.deepsim_similarity import load_deepsim
    from DeepRegistrationLib.rigid.deepsim_objective import deepsim_rigid_objective
    fixed, moving, true = pair
    deepsim = load_deepsim("deepsim_features_brain_t1_3d")
    whole = deepsim_rigid_objective(fixed, fixed, deepsim, start=RigidTransform())
    masked = deepsim_rigid_objective(fixed, fixed, deepsim, start=RigidTransform(), moving_mask=upper_half(fixed))
    assert whole(RigidTransform()) == pytest.approx(1.0, abs=1e-4)
    shifted = RigidTransform(translation_mm=[0.0, 0.0, 6.0])
    assert abs(whole(shifted) - masked(shifted)) > 1e-3


def test_off_centre_sample_points_keep_the_oblique_anisotropic_geometry(pair):
    """On an oblique grid with spacings 5 / 4.5 / 6 mm: the points moved off their voxel centres stay within the
    grid, their offsets in voxel units have the asked σ on every axis (so in mm they scale with each axis'
    spacing), without offsets they are the voxel centres, and the fixed values NMI reads there are the image
    interpolated at those physical points (SimpleITK's linear interpolation)."""
    t1, _, _ = pair
    direction = RigidTransform([0.1, -0.08, 0.15]).rotation_matrix()
    size, spacing = np.array([24, 30, 22]), np.array([5.0, 4.5, 6.0])
    origin = t1.grid.center_physical() - direction @ (spacing * (size - 1) / 2)
    fixed = warp(t1, Grid(tuple(size), spacing, origin, direction))
    flat = torch.arange(fixed.grid.num_voxels)
    centres = physical_points_at(fixed.grid, flat, dtype=torch.float64)
    moved = physical_points_at(fixed.grid, flat, dtype=torch.float64, jitter_voxels=0.5, seed=3)
    to_index = np.linalg.inv(fixed.grid.index_to_physical_matrix())
    index = moved.numpy() @ to_index[:3, :3].T + to_index[:3, 3]
    assert (index >= -1e-9).all() and (index <= size - 1 + 1e-9).all()
    offsets = index - (centres.numpy() @ to_index[:3, :3].T + to_index[:3, 3])
    inner = (np.abs(offsets) < 0.5 * 4).all(axis=1) & (index > 2).all(axis=1) & (index < size - 3).all(axis=1)
    assert np.allclose(offsets[inner].std(axis=0), 0.5, atol=0.02)
    assert torch.allclose(physical_points_at(fixed.grid, flat[:50], jitter_voxels=0.0),
                          centres[:50].to(torch.float32))
    points = moved[:200].to(torch.float32)
    image = fixed.to_sitk()
    expected = np.array([image.EvaluateAtPhysicalPoint(tuple(map(float, p)), sitk.sitkLinear) for p in points.numpy()])
    read = sample_at_points(torch.as_tensor(fixed.array)[None], fixed.grid, points)[0].numpy()
    np.testing.assert_allclose(read, expected, atol=1e-4 * float(fixed.array.max()))
    objective = SampledNMI.reading_fixed_at(fixed, points, t1, 32)
    assert torch.equal(objective.points, points)
    reference = SampledNMI(points, torch.as_tensor(read), t1, 32)
    assert torch.equal(objective._fixed_index, reference._fixed_index)
