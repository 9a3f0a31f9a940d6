"""``--method dirnet`` and ``train-dirnet``: model grid, bundled models, CLI end to end, checkpoints and resume."""
import json

import numpy as np
import pytest
import torch

from DeepRegistrationLib.api import register
from DeepRegistrationLib.cli import main
from DeepRegistrationLib.core.errors import InputError
from DeepRegistrationLib.core.image import Grid
from DeepRegistrationLib.core.io import read_image, write_image
from DeepRegistrationLib.core.transforms import CompositeTransform, DisplacementField, RigidTransform
from DeepRegistrationLib.core.warp import warp
from DeepRegistrationLib.data import sources
from DeepRegistrationLib.data.synthetic import smooth_random_field
from DeepRegistrationLib.deformable.dirnet_registration import load_dirnet, model_grid
from DeepRegistrationLib.metrics.similarity import ncc
from DeepRegistrationLib.models.model_file import read_metadata, save_model
from DeepRegistrationLib.rigid.pyramid import downsample
from DeepRegistrationLib.training.common import load_checkpoint, write_pairs_csv
from registration_helpers import cli_register


@pytest.fixture(scope="module")
def brain_pair(tmp_path_factory):
    """SPM avg152 T1 at 4 mm and the same image under a known smooth deformation, written as NIfTI."""
    folder = tmp_path_factory.mktemp("dirnet_pair")
    fixed = downsample(sources.spm_avg152("T1"), 2)
    truth = smooth_random_field(fixed.grid, np.random.default_rng(3), max_displacement_mm=4.0)
    moving = warp(fixed, fixed.grid, truth)
    write_image(fixed, folder / "fixed.nii.gz")
    write_image(moving, folder / "moving.nii.gz")
    return folder, fixed, moving


def ncc_of(a, b):
    return float(ncc(torch.as_tensor(a.array), torch.as_tensor(b.array)))


def test_model_grid_is_centred_on_the_reference_with_its_axes():
    ref = Grid((91, 109, 91), (2.0, 2.0, 2.0), (90.0, 126.0, -72.0), np.diag([-1.0, -1.0, 1.0]))
    g3 = model_grid(ref, (32, 40, 32), (6.0, 6.0, 6.0))
    np.testing.assert_allclose(g3.center_physical(), ref.center_physical(), atol=1e-9)
    np.testing.assert_allclose(g3.direction, ref.direction)
    g2 = model_grid(ref, (96, 112), (2.0, 2.0))
    assert g2.size == (96, 112, 91) and g2.spacing.tolist() == [2.0, 2.0, 2.0]
    np.testing.assert_allclose(g2.center_physical(), ref.center_physical(), atol=1e-9)


def test_bundled_models_state_their_provenance():
    for name, ndim in (("dirnet_brain_t1_2d", 2), ("dirnet_brain_t1_3d", 3)):
        meta = read_metadata(name)
        assert meta["kind"] == "dirnet" and meta["architecture"]["config"]["ndim"] == ndim
        assert meta["training"]["command"].startswith("deepregistration train-dirnet")
        assert "SPM avg152" in meta["training"]["data"] and meta["training"]["steps"] > 0
        net, _ = load_dirnet(name)
        assert sum(p.numel() for p in net.parameters()) < 100_000


def test_cli_register_dirnet_default_model_end_to_end(brain_pair, tmp_path, capsys):
    folder, fixed, moving = brain_pair
    rc, out, report = cli_register(folder, "dirnet", tmp_path, capsys,
                                   "iterations=3")   # instance optimization on, short (its own tests go further)
    assert rc == 0 and "used the bundled model 'dirnet_brain_t1_3d'" in out
    assert report["model_dimension"] == 3 and report["folding_percent"] < 1.0
    assert report["instance_optimization"]["iterations_done"] > 0
    warped = read_image(tmp_path / "w.nii.gz")
    assert warped.grid.same_as(fixed.grid)
    assert ncc_of(fixed, warped) > ncc_of(fixed, moving)


def test_2d_model_registers_slice_by_slice_in_plane(brain_pair):
    _, fixed, moving = brain_pair
    result = register(fixed, moving, "dirnet", "cpu", models=["dirnet_brain_t1_2d"], iterations=0)
    field = result.transform
    assert isinstance(field, DisplacementField) and field.grid.same_as(fixed.grid)
    assert np.abs(field.displacement_mm[..., 2]).max() < 1e-6 < np.abs(field.displacement_mm[..., :2]).max()
    assert result.report["model_dimension"] == 2
    assert ncc_of(fixed, result.warped) > ncc_of(fixed, moving)


def test_initial_transform_is_composed(brain_pair):
    _, fixed, moving = brain_pair
    shift = RigidTransform(translation_mm=[4.0, 0.0, 0.0], center_mm=fixed.grid.center_physical())
    result = register(fixed, warp(moving, moving.grid, shift.inverse()), "dirnet", "cpu", initial_transform=shift,
                      iterations=0)
    assert isinstance(result.transform, CompositeTransform) and result.transform.transforms[-1] is shift


def test_bad_options_and_models_are_refused(brain_pair, tmp_path):
    _, fixed, moving = brain_pair
    with pytest.raises(InputError, match="unknown option"):
        register(fixed, moving, "dirnet", "cpu", tile="2")
    other = save_model(tmp_path / "other.pt", {"w": torch.zeros(1)},
                       {"kind": "metric", "architecture": {}, "patch_size": [1], "spacing_mm": [1],
                        "intensity_normalization": "", "training": {}})
    with pytest.raises(InputError, match="'dirnet' model is needed"):
        register(fixed, moving, "dirnet", "cpu", models=[str(other)])


def test_train_dirnet_cli_writes_checkpoints_resumes_and_the_model_registers(brain_pair, tmp_path, capsys):
    folder, fixed, moving = brain_pair
    write_pairs_csv(tmp_path / "pairs.csv", [{"fixed": folder / "fixed.nii.gz", "moving": folder / "moving.nii.gz"}])
    common = ["train-dirnet", "--pairs", str(tmp_path / "pairs.csv"), "--out", str(tmp_path / "m.pt"),
              "--checkpoint-dir", str(tmp_path / "ck"), "--dim", "2", "--size", "32,32", "--spacing-mm", "6,6",
              "--channels", "4", "--downsamplings", "2", "--batch-size", "4", "--steps-per-epoch", "2",
              "--checkpoint-every", "1", "--device", "cpu", "--progress-json"]
    assert main(common + ["--epochs", "1"]) == 0
    assert load_checkpoint(tmp_path / "ck" / "dirnet_last.pt")["step"] == 2
    assert main(common + ["--epochs", "2", "--resume"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    steps = [e["step"] for e in lines if e["event"] == "step"]
    assert steps == [1, 2, 3, 4] and lines[-1] == {**lines[-1], "event": "done", "model": str(tmp_path / "m.pt")}
    meta = read_metadata(tmp_path / "m.pt")
    assert meta["training"]["steps"] == 4 and meta["patch_size"] == [32, 32]
    result = register(fixed, moving, "dirnet", "cpu", models=[str(tmp_path / "m.pt")])
    assert result.transform.grid.same_as(fixed.grid)
    with pytest.raises(SystemExit):
        main(common[:1] + ["--out", str(tmp_path / "x.pt")])  # neither --pairs nor --synthetic
    assert main(common + ["--epochs", "2", "--resume", "--channels", "8"]) == 2  # other settings: refused
