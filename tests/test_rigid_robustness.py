"""Large-misalignment start (rigid/initialization.py) and the confidence of a rigid result (rigid/confidence.py),
on SPM's avg152 T1/T2 at 4 mm (real, exactly aligned images)."""
import numpy as np
import pytest
import SimpleITK as sitk

from DeepRegistrationLib.api import register
from DeepRegistrationLib.core.image import Grid, Image
from DeepRegistrationLib.core.transforms import RigidTransform
from DeepRegistrationLib.data import sources
from DeepRegistrationLib.rigid.confidence import ConfidenceSettings, assess, confidence
from DeepRegistrationLib.rigid.initialization import foreground_sample, super_fibonacci_rotations
from DeepRegistrationLib.metrics.sampled_nmi import SampledNMI
from DeepRegistrationLib.rigid.powell import PowellSettings, maximize_rigid
from DeepRegistrationLib.rigid.pyramid import downsample


@pytest.fixture(scope="module")
def t1_t2():
    return downsample(sources.spm_avg152("T1"), 2), downsample(sources.spm_avg152("T2"), 2)


def displaced(image: Image, true: RigidTransform) -> Image:
    """The same voxels on a grid moved by ``true`` (fixed -> moving): moving(true(x)) = image(x)."""
    g = image.grid
    return Image(image.array, Grid(g.size, g.spacing, true.transform_points(g.origin[None])[0],
                                   true.rotation_matrix() @ g.direction))


def misalignment(image: Image, axis, degrees: float, offset_mm) -> RigidTransform:
    c = image.grid.center_physical()
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    m = np.eye(4)
    m[:3, :3] = np.array(sitk.VersorTransform(tuple(axis), np.radians(degrees)).GetMatrix()).reshape(3, 3)
    m[:3, 3] = c + np.asarray(offset_mm, float) - m[:3, :3] @ c
    return RigidTransform.from_matrix4(m, c)


def mean_error(estimated, true, points) -> float:
    return float(np.linalg.norm(estimated.transform_points(points) - true.transform_points(points), axis=1).mean())


def test_super_fibonacci_rotations_are_proper_and_cover_so3():
    r = super_fibonacci_rotations(300)
    assert np.allclose(r @ r.transpose(0, 2, 1), np.eye(3), atol=1e-9)
    assert np.allclose(np.linalg.det(r), 1.0)
    # every one of 200 random rotations lies within 35° of a sample
    q = np.random.default_rng(0).normal(size=(200, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    targets = np.array([_quaternion_matrix(v) for v in q])
    cos = (np.einsum("aij,bij->ab", targets, r) - 1) / 2
    nearest = np.degrees(np.arccos(np.clip(cos.max(axis=1), -1, 1)))
    assert nearest.max() < 35.0


def _quaternion_matrix(q):
    w, x, y, z = q
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def test_moments_start_recovers_90_degrees_and_60_mm(t1_t2):
    t1, _ = t1_t2
    true = misalignment(t1, (0.3, 1.0, 0.2), 90.0, (40.0, -30.0, 33.0))   # |offset| = 58.6 mm
    moving = displaced(t1, true)
    points = foreground_sample(t1)
    options = dict(levels="2", max_points=20000, confidence=False)
    moments = register(t1, moving, "nmi", "cpu", init="moments", **options)
    assert mean_error(moments.transform, true, points) < 1.0
    assert moments.report["initialization"]["init"] == "moments"
    # without a start the same registration does not get there
    plain = register(t1, moving, "nmi", "cpu", init="none", **options)
    assert mean_error(plain.transform, true, points) > 10.0


def test_given_initial_transform_is_kept(t1_t2):
    t1, t2 = t1_t2
    near = RigidTransform(np.zeros(3), (1.0, 0.0, 0.0), t1.grid.center_physical())
    result = register(t1, t2, "nmi", "cpu", initial_transform=near, levels="2", confidence=False)
    assert result.report["init"] == "given" and "initialization" not in result.report


def test_confidence_flags_a_failed_result_and_not_a_good_one(t1_t2):
    t1, t2 = t1_t2
    true = misalignment(t1, (1.0, 0.2, -0.4), 80.0, (35.0, 20.0, -30.0))
    moving = displaced(t2, true)
    points = foreground_sample(t1)

    def objective(seed):
        return SampledNMI.on_grid(t1, moving, 60, 20000, seed, "cpu")

    start = RigidTransform(center_mm=t1.grid.center_physical())
    failed, _ = maximize_rigid(objective(0), start, PowellSettings(max_evaluations=40, max_rotation_rad=0.5,
                                                                   max_translation_mm=50.0))
    assert mean_error(failed, true, points) > 20.0
    bad = confidence(objective(0), failed, t1, moving, reseeded=objective)
    assert bad["flagged"] and bad["reasons"]

    near_truth = RigidTransform.from_matrix4(true.matrix4() @ misalignment(t1, (0, 0, 1), 3.0, (2, -2, 1)).matrix4(),
                                             start.center_mm)
    good_pose, _ = maximize_rigid(objective(0), near_truth, PowellSettings(max_evaluations=600))
    assert mean_error(good_pose, true, points) < 2.0
    good = confidence(objective(0), good_pose, t1, moving, reseeded=objective)
    assert not good["flagged"], good["reasons"]
    assert good["uncertainty_mm"] < 2.0 and good["uncertainty_deg"] < 3.0


def test_uncertainty_shrinks_when_the_metric_is_sharper(t1_t2):
    t1, t2 = t1_t2
    identity = RigidTransform(center_mm=t1.grid.center_physical())
    points = foreground_sample(t1)
    blurred = [Image(sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(im.to_sitk(), 6.0)), im.grid)
               for im in (t1, t2)]
    out = {}
    for name, (f, m) in {"sharp": (t1, t2), "blurred": blurred}.items():
        def objective(seed, f=f, m=m):
            return SampledNMI.on_grid(f, m, 60, 20000, seed, "cpu")

        out[name] = assess(objective(0), identity, points, ConfidenceSettings(), objective)
    assert out["sharp"]["uncertainty_mm"] < 0.9 * out["blurred"]["uncertainty_mm"]   # 1.42 vs 1.69 mm
    assert max(out["sharp"]["curvature_eigenvalues"]) > max(out["blurred"]["curvature_eigenvalues"])
