"""§2.1 patch-pair sampling: geometry, symmetrization, negatives, dithering, levels."""
import numpy as np
import pytest
import torch

from DeepRegistrationLib.core.image import Grid, Image
from DeepRegistrationLib.core.transforms import RigidTransform
from DeepRegistrationLib.data import sources
from DeepRegistrationLib.rigid.metric_patches import (PatchPairSampler, SamplerSettings, anti_aliased_resample,
                                                         cube_symmetries, patch_offsets, prepare_level)


@pytest.fixture(scope="module")
def t1_level():
    return prepare_level(sources.spm_avg152("T1"), 4.0)


def ramp_level(axis: int):
    """A volume equal to the physical coordinate along ``axis`` (trilinear sampling reproduces it exactly)."""
    grid = Grid((40, 40, 40), (2.0, 2.0, 2.0), (-39.0, -39.0, -39.0))
    from DeepRegistrationLib.core.warp import physical_grid_points
    from DeepRegistrationLib.rigid.metric_patches import LevelVolume
    pts = physical_grid_points(grid)
    vol = pts[..., axis].clone()
    inner = pts[(pts.abs() < 15).all(-1)]
    return LevelVolume(Image(vol.numpy(), grid), vol[None], (pts.abs() < 15).all(-1).float()[None], inner)


def test_positive_without_dither_on_identical_image_is_identical(t1_level):
    s = PatchPairSampler(SamplerSettings(patch_size=9, spacing_mm=4.0, dither_variance_mm2=0.0,
                                         dithers_per_location=3, symmetrize=True))
    t = RigidTransform(center_mm=t1_level.grid.center_physical())
    x = s.positives(t1_level, t1_level, t, 20, torch.Generator().manual_seed(0))
    assert x.shape == (60, 2, 9, 9, 9)
    assert torch.allclose(x[:, 0], x[:, 1], atol=1e-6)
    assert float(x[:, 0].std()) > 0.05 and 0.0 <= float(x.min()) and float(x.max()) <= 1.0 + 1e-5


def test_cube_symmetries():
    s = cube_symmetries()
    assert s.shape == (48, 3, 3)
    assert len({tuple(m.flatten().tolist()) for m in s}) == 48
    assert torch.allclose(s @ s.transpose(1, 2), torch.eye(3).expand(48, 3, 3))
    assert torch.equal(s[0], torch.eye(3))


def test_symmetry_is_the_same_for_both_patches(t1_level):
    """Each symmetrized pair equals the identity-oriented pair with one and the same voxel permutation."""
    other = prepare_level(sources.spm_avg152("T2"), 4.0)
    settings = SamplerSettings(patch_size=7, spacing_mm=4.0, dither_variance_mm2=0.0, symmetrize=True)
    s = PatchPairSampler(settings)
    t = RigidTransform([0.05, -0.03, 0.02], [3.0, -2.0, 1.0], t1_level.grid.center_physical())
    x = s.positives(t1_level, other, t, 16, torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)  # replay the draws: centres, then symmetry indices
    centres = s._centres(t1_level, 16, g)
    k = torch.randint(0, 48, (16,), generator=g)
    plain = PatchPairSampler(SamplerSettings(patch_size=7, spacing_mm=4.0, symmetrize=False))
    offsets = patch_offsets(7, 4.0)
    key = {tuple(np.round(o, 3)): i for i, o in enumerate(offsets.numpy())}
    m = torch.as_tensor(t.matrix4(), dtype=torch.float32)
    a, b = m[:3, :3], m[:3, 3]
    assert len(set(k.tolist())) > 4
    for n in range(16):
        pts = centres[n] + offsets
        ref_f = plain._patches(t1_level, pts[None]).flatten()
        ref_m = plain._patches(other, (pts @ a.T + b)[None]).flatten()
        perm = [key[tuple(np.round(o, 3))] for o in (offsets @ s.symmetries[k[n]].T).numpy()]
        assert torch.allclose(x[n, 0].flatten(), ref_f[perm], atol=1e-5)
        assert torch.allclose(x[n, 1].flatten(), ref_m[perm], atol=1e-5)


def test_negatives_respect_minimum_distance(t1_level):
    s = PatchPairSampler(SamplerSettings(patch_size=9, spacing_mm=4.0, min_negative_distance_mm=40.0))
    mapped = s._centres(t1_level, 500, torch.Generator().manual_seed(1))
    far = s.negative_centres(mapped, t1_level, torch.Generator().manual_seed(2))
    assert float((far - mapped).norm(dim=-1).min()) >= 40.0
    x = s.negatives(t1_level, t1_level, RigidTransform(), 50, torch.Generator().manual_seed(4))
    assert x.shape == (50, 2, 9, 9, 9) and not torch.allclose(x[:, 0], x[:, 1])


@pytest.mark.parametrize("axis", [0, 2])
def test_dither_standard_deviation(axis):
    ramp = ramp_level(axis)
    sigma2 = 10.0
    s = PatchPairSampler(SamplerSettings(patch_size=5, spacing_mm=2.0, dither_variance_mm2=sigma2,
                                         dithers_per_location=100, symmetrize=False))
    x = s.positives(ramp, ramp, RigidTransform(), 40, torch.Generator().manual_seed(5))
    d = (x[:, 1, 2, 2, 2] - x[:, 0, 2, 2, 2]).numpy()  # centre voxel: moving(x + d) - fixed(x) = d_axis
    assert abs(d.mean()) < 0.2
    assert abs(d.std() - np.sqrt(sigma2)) < 0.1 * np.sqrt(sigma2)
    # m draws per location: 100 consecutive pairs share the fixed patch
    assert torch.equal(x[0, 0], x[99, 0]) and not torch.equal(x[99, 0], x[100, 0])


def test_balanced_batch_and_levels():
    t1 = sources.spm_avg152("T1")
    coarse = anti_aliased_resample(t1, 8.0)
    assert np.allclose(coarse.grid.spacing, 8.0) and np.allclose(coarse.grid.origin, t1.grid.origin)
    level = prepare_level(t1, 8.0)
    assert float(level.volume.min()) == 0.0 and float(level.volume.max()) == 1.0
    s = PatchPairSampler(SamplerSettings(patch_size=9, spacing_mm=8.0, dither_variance_mm2=4.0, dithers_per_location=4))
    x, y = s.balanced_batch([(level, level)], [RigidTransform()], 64, torch.Generator().manual_seed(0))
    assert x.shape == (64, 2, 9, 9, 9) and int(y.sum()) == 32
