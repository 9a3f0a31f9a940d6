"""Offline sample data (as DATA.md describes it) and the test-case generators."""
import numpy as np
import pytest

from DeepRegistrationLib.core.errors import InputError
from DeepRegistrationLib.core.jacobian import jacobian_determinant, jacobian_statistics
from DeepRegistrationLib.data import sources
from DeepRegistrationLib.core.image import Image
from DeepRegistrationLib.core.transforms import DisplacementField
from DeepRegistrationLib.core.warp import warp
from DeepRegistrationLib.data.synthetic import (bspline_field, gradient_magnitude, random_rigid, scaling_and_squaring,
                                                smooth_random_field)
from DeepRegistrationLib.rigid.pyramid import downsample


def test_spm_templates_share_one_grid():
    t1, t2, pd = (sources.spm_avg152(m) for m in ("T1", "T2", "PD"))
    assert t1.grid.size == (91, 109, 91) and np.allclose(t1.grid.spacing, 2.0)
    assert t1.grid.same_as(t2.grid) and t1.grid.same_as(pd.grid)
    assert np.corrcoef(t1.array.ravel(), t2.array.ravel())[0, 1] < 0.9  # different contrasts


def test_icbm152_maps():
    t1, gm = sources.icbm152("t1"), sources.icbm152("gm")
    assert t1.grid.size == (197, 233, 189) and np.allclose(t1.grid.spacing, 1.0)
    assert t1.grid.same_as(gm.grid)
    assert gm.array.min() == 0.0 and gm.array.max() == 1.0         # probabilities, not the files' 0-255
    brain = t1.array > 0
    assert 0.2 < float((gm.array[brain] > 0.5).mean()) < 0.6        # GM > 0.5 is part of the brain, not all of it
    with pytest.raises(InputError, match="choose t1, gm or wm"):
        sources.icbm152("csf")


def test_cache_dir_honours_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPREGISTRATION_CACHE", str(tmp_path / "c"))
    assert sources.cache_dir() == tmp_path / "c" and (tmp_path / "c").is_dir()


def test_debian_sources_missing_say_how_to_get_them(monkeypatch, tmp_path):
    monkeypatch.setattr(sources, "MRICRON", tmp_path / "nowhere")
    monkeypatch.setenv("DEEPREGISTRATION_CACHE", str(tmp_path / "c"))
    monkeypatch.setattr(sources, "_has", lambda program: False)    # no apt-get here to fetch it
    with pytest.raises(InputError, match="apt-get install mricron-data"):
        sources.colin27()


def test_random_rigid_follows_sedghi_distribution():
    rng = np.random.default_rng(0)
    ts = [random_rigid(rng, np.zeros(3)) for _ in range(400)]
    t = np.abs(np.array([x.translation_mm for x in ts]))
    a = np.array([x.angles_rad for x in ts])
    assert t.min() >= 1.0 and t.max() <= 20.0 and abs(t.mean() - 10.5) < 0.8
    assert np.abs(a).max() <= 0.2 and abs(a.mean()) < 0.02
    signs = np.sign(np.array([x.translation_mm for x in ts]))
    assert 0.4 < (signs > 0).mean() < 0.6


def test_smooth_random_field_is_diffeomorphic():
    grid = downsample(sources.spm_avg152("T1"), 2).grid
    field = smooth_random_field(grid, np.random.default_rng(1), max_displacement_mm=6.0)
    stats = jacobian_statistics(jacobian_determinant(field))
    assert stats["folding_voxels"] == 0
    assert np.abs(field.displacement_mm).max() > 1.0


def test_scaling_and_squaring_on_an_oblique_anisotropic_grid_matches_composition_in_millimetres(oblique_grid):
    """exp(v) is computed in index voxels; the reference composes in LPS mm through ``warp`` (u <- u + u∘(id + u)).
    Away from the border (where the voxel version continues the field and ``warp`` reads zeros) they agree,
    and exp(v)∘exp(-v) is the identity: wrong direction or spacing handling would break both."""
    rng = np.random.default_rng(3)
    v = bspline_field(oblique_grid, 12.0, lambda n: rng.uniform(-3.0, 3.0, n))
    steps = 6
    ref = DisplacementField(v.displacement_mm / 2 ** steps, oblique_grid)
    for _ in range(steps):
        ref = DisplacementField(ref.displacement_mm + warp(Image(ref.displacement_mm, oblique_grid), oblique_grid,
                                                           ref).array, oblique_grid)
    phi = scaling_and_squaring(v, steps)
    inner = (slice(4, -4),) * 3
    assert phi.grid.same_as(oblique_grid)
    assert np.abs(phi.displacement_mm).max() > 1.0
    np.testing.assert_allclose(phi.displacement_mm[inner], ref.displacement_mm[inner], atol=1e-3)
    inverse = scaling_and_squaring(DisplacementField(-v.displacement_mm, oblique_grid), steps)
    round_trip = inverse.displacement_mm + warp(Image(phi.displacement_mm, oblique_grid), oblique_grid, inverse).array
    assert np.linalg.norm(round_trip, axis=-1)[inner].max() < 0.05


def test_gradient_magnitude_is_edges():
    t1 = downsample(sources.spm_avg152("T1"), 2)
    gm = gradient_magnitude(t1, 2.0)
    assert gm.grid.same_as(t1.grid) and gm.array.min() >= 0
    flat = t1.array < 0.05 * t1.array.max()
    assert gm.array[flat].mean() < gm.array.mean()
