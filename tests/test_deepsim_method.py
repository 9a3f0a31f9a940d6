"""``--method deepsim``, the bundled DeepSim models, and the train-deepsim-features / train-deepsim commands."""
import json

import numpy as np
import pytest
import torch

from DeepRegistrationLib.api import register
from DeepRegistrationLib.cli import main
from DeepRegistrationLib.core.errors import InputError
from DeepRegistrationLib.core.image import Grid, Image
from DeepRegistrationLib.core.io import read_image, write_image
from DeepRegistrationLib.core.transforms import CompositeTransform, DisplacementField, RigidTransform, read_transform
from DeepRegistrationLib.core.warp import warp
from DeepRegistrationLib.data.synthetic import smooth_random_field
from DeepRegistrationLib.deformable.deepsim_registration import covering_grid, load_registration_net
from DeepRegistrationLib.metrics.deepsim_similarity import load_deepsim, load_feature_extractor
from DeepRegistrationLib.metrics.evaluation import dice_per_label
from DeepRegistrationLib.models.model_file import read_metadata
from DeepRegistrationLib.training.common import load_checkpoint, write_pairs_csv
from DeepRegistrationLib.data.corpus_pairs import TemplateSubjectSettings, icbm_template
from registration_helpers import cli_register

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def brain_pair(tmp_path_factory):
    """ICBM 2009a T1 at 4 mm with its tissue labels, and both under a known smooth deformation (NIfTI)."""
    folder = tmp_path_factory.mktemp("deepsim_pair")
    image, labels = icbm_template(TemplateSubjectSettings(size_xyz=(40, 48, 40), spacing_mm=4.0))
    truth = smooth_random_field(image.grid, np.random.default_rng(5), max_displacement_mm=8.0,
                                control_spacing_mm=32.0)
    moving = warp(image, image.grid, truth)
    moving_labels = warp(labels, labels.grid, truth, mode="nearest")
    write_image(image, folder / "fixed.nii.gz")
    write_image(moving, folder / "moving.nii.gz")
    write_image(labels, folder / "fixed_labels.nii.gz")
    write_image(moving_labels, folder / "moving_labels.nii.gz")
    return folder, image, moving, labels, moving_labels


def mean_dice(a: Image, b: Image) -> float:
    return float(np.mean(list(dice_per_label(a.array, b.array, [1, 2, 3]).values())))


def test_covering_grid_covers_the_reference_with_divisible_sides():
    ref = Grid((91, 109, 91), (2.0, 2.0, 2.0), (90.0, 126.0, -72.0), np.diag([-1.0, -1.0, 1.0]))
    g = covering_grid(ref, (4.0, 4.0, 4.0), 8)
    assert g.size == (48, 56, 48) and all(s % 8 == 0 for s in g.size)
    np.testing.assert_allclose(g.center_physical(), ref.center_physical(), atol=1e-9)
    lo, hi = g.bounding_box_physical()
    rlo, rhi = ref.bounding_box_physical()
    assert np.all(lo <= rlo + 1e-9) and np.all(hi >= rhi - 1e-9)
    g2 = covering_grid(ref, (2.0, 2.0), 8)
    assert g2.size == (96, 112, 91) and g2.spacing.tolist() == [2.0, 2.0, 2.0]


def test_bundled_models_state_their_provenance_and_are_tiny():
    for ndim in (2, 3):
        feats = read_metadata(f"deepsim_features_brain_t1_{ndim}d")
        assert feats["kind"] == "deepsim-features" and feats["architecture"]["config"]["ndim"] == ndim
        assert feats["training"]["command"].startswith("deepregistration train-deepsim-features")
        assert feats["training"]["final_val_dice"] > 0.6
        meta = read_metadata(f"deepsim_brain_t1_{ndim}d")
        assert meta["kind"] == "deepsim" and meta["similarity"] == "deepsim"
        assert meta["training"]["command"].startswith(("deepregistration train-deepsim ",
                                                       "python benchmarks/accuracy/deepsim_comparison.py"))
        assert meta["features"] == f"deepsim_features_brain_t1_{ndim}d" and meta["lambda"] > 0
        assert "icbm" in meta["training"]["data"].lower() and "val" in meta["training"]["validation"]
        net, _ = load_registration_net(f"deepsim_brain_t1_{ndim}d")
        extractor, _ = load_feature_extractor(f"deepsim_features_brain_t1_{ndim}d")
        assert sum(p.numel() for p in net.parameters()) < 200_000
        assert sum(p.numel() for p in extractor.parameters()) < 200_000


def test_cli_register_deepsim_default_model_end_to_end(brain_pair, tmp_path, capsys):
    folder, fixed, moving, labels, moving_labels = brain_pair
    rc, out, report = cli_register(folder, "deepsim", tmp_path, capsys)   # the default call: IO on
    assert rc == 0 and "used the bundled model 'deepsim_brain_t1_3d'" in out
    assert report["model_dimension"] == 3 and report["model_similarity"] == "deepsim"
    assert report["instance_optimization"]["iterations_done"] > 0
    assert report["folding_percent"] < 1.0
    assert read_image(tmp_path / "w.nii.gz").grid.same_as(fixed.grid)
    transform = DisplacementField.from_transform(read_transform(tmp_path / "t.h5"), fixed.grid)
    warped_labels = warp(moving_labels, fixed.grid, transform, mode="nearest")
    before, after = mean_dice(labels, moving_labels), mean_dice(labels, warped_labels)
    with capsys.disabled():
        print(f"\ndeepsim default call on the ICBM pair: tissue Dice {before:.3f} -> {after:.3f}")
    assert after > before + 0.01          # measured: 0.833 -> 0.853 with the bundled (corpus-trained) 3D model


def test_2d_model_registers_slice_by_slice_in_plane(brain_pair):
    _, fixed, moving, labels, moving_labels = brain_pair
    result = register(fixed, moving, "deepsim", "cpu", models=["deepsim_brain_t1_2d"], iterations=0)
    field = result.transform
    assert isinstance(field, DisplacementField) and field.grid.same_as(fixed.grid)
    assert np.abs(field.displacement_mm[..., 2]).max() < 1e-6 < np.abs(field.displacement_mm[..., :2]).max()
    assert result.report["model_dimension"] == 2


def test_initial_transform_is_composed(brain_pair):
    _, fixed, moving, _, _ = brain_pair
    shift = RigidTransform(translation_mm=[4.0, 0.0, 0.0], center_mm=fixed.grid.center_physical())
    result = register(fixed, warp(moving, moving.grid, shift.inverse()), "deepsim", "cpu", initial_transform=shift,
                      iterations=0)
    assert isinstance(result.transform, CompositeTransform) and result.transform.transforms[-1] is shift


def test_wrong_kinds_and_options_are_refused(brain_pair):
    _, fixed, moving, _, _ = brain_pair
    with pytest.raises(InputError, match="'deepsim' model is needed"):
        register(fixed, moving, "deepsim", "cpu", models=["deepsim_features_brain_t1_3d"])
    with pytest.raises(InputError, match="'deepsim' model is needed"):
        register(fixed, moving, "deepsim", "cpu", models=["dirnet_brain_t1_3d"])
    with pytest.raises(InputError, match="'deepsim-features' model is needed"):
        load_deepsim("deepsim_brain_t1_3d")
    with pytest.raises(InputError, match="unknown option"):
        register(fixed, moving, "deepsim", "cpu", tile="2")
    with pytest.raises(InputError, match="one --model"):
        register(fixed, moving, "deepsim", "cpu", models=["a", "b"])


def test_training_commands_checkpoint_resume_tune_lambda_and_register(brain_pair, tmp_path, capsys):
    folder, fixed, moving, _, _ = brain_pair
    row = {k: folder / f"{k}.nii.gz" for k in ("fixed", "moving", "fixed_labels", "moving_labels")}
    write_pairs_csv(tmp_path / "pairs.csv", [row, {**row, "fixed": row["moving"], "moving": row["fixed"],
                                                   "fixed_labels": row["moving_labels"],
                                                   "moving_labels": row["fixed_labels"]}])
    geometry = ["--pairs", str(tmp_path / "pairs.csv"), "--dim", "2", "--size", "32,32", "--spacing-mm", "8,8",
                "--batch-size", "2", "--steps-per-epoch", "2", "--checkpoint-every", "1", "--device", "cpu",
                "--progress-json"]
    features = ["train-deepsim-features", "--out", str(tmp_path / "f.pt"), "--checkpoint-dir", str(tmp_path / "fc"),
                "--channels", "4,8"] + geometry
    assert main(features + ["--epochs", "1"]) == 0
    assert load_checkpoint(tmp_path / "fc" / "deepsim_features_last.pt")["step"] == 2
    assert main(features + ["--epochs", "2", "--resume"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [e["step"] for e in lines if e["event"] == "step"] == [1, 2, 3, 4]
    assert lines[-1]["event"] == "done" and lines[-1]["model"] == str(tmp_path / "f.pt")
    extractor_before = {k: v.clone() for k, v in load_feature_extractor(tmp_path / "f.pt")[0].state_dict().items()}

    reg = ["train-deepsim", "--out", str(tmp_path / "r.pt"), "--checkpoint-dir", str(tmp_path / "rc"),
           "--features", str(tmp_path / "f.pt"), "--channels", "4,8", "--lam", "0.5,2", "--validation-pairs", "2"] + geometry
    assert main(reg + ["--epochs", "1"]) == 0
    ckpt = load_checkpoint(tmp_path / "rc" / "deepsim_last.pt")
    assert [ckpt["results"][i]["lambda"] for i in (0, 1)] == [0.5, 2.0]
    assert [ckpt["candidates"][i]["step"] for i in (0, 1)] == [2, 2]
    assert main(reg + ["--epochs", "2", "--resume"]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [e["step"] for e in events if e["event"] == "stage"] == [0, 0, 2, 2]   # the resume continues both at 2
    assert events[-1]["event"] == "done"
    assert [load_checkpoint(tmp_path / "rc" / "deepsim_last.pt")["candidates"][i]["step"] for i in (0, 1)] == [4, 4]
    meta = read_metadata(tmp_path / "r.pt")
    assert meta["similarity"] == "deepsim" and meta["lambda"] in (0.5, 2.0) and len(meta["lambda_search"]) == 2
    assert all(r["val_dice"] is not None for r in meta["lambda_search"])
    extractor_after = load_feature_extractor(tmp_path / "f.pt")[0].state_dict()
    assert all(torch.equal(extractor_before[k], v) for k, v in extractor_after.items())
    result = register(fixed, moving, "deepsim", "cpu", models=[str(tmp_path / "r.pt")])
    assert result.transform.grid.same_as(fixed.grid) and result.report["model_dimension"] == 2

    assert main(reg[:1] + ["--out", str(tmp_path / "x.pt"), "--similarity", "deepsim"] + geometry) == 2  # no --features
    assert main(reg + ["--epochs", "2", "--resume", "--channels", "8,8"]) == 2          # other settings: refused
    sup = ["train-deepsim", "--out", str(tmp_path / "s.pt"), "--similarity", "ncc_sup", "--channels", "4,8",
           "--epochs", "1", "--validation-pairs", "2"] + geometry
    assert main(sup) == 0 and read_metadata(tmp_path / "s.pt")["similarity"] == "ncc_sup"


def test_train_deepsim_under_torchrun_with_two_cpu_processes(brain_pair, tmp_path):
    """DDP (gloo): two processes train one model, each drawing half of every batch; rank 0 writes it."""
    import os
    import subprocess
    import sys

    folder = brain_pair[0]
    row = {k: folder / f"{k}.nii.gz" for k in ("fixed", "moving", "fixed_labels", "moving_labels")}
    write_pairs_csv(tmp_path / "pairs.csv", [row])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29519",
           "-m", "DeepRegistrationLib.cli", "train-deepsim", "--pairs", str(tmp_path / "pairs.csv"),
           "--similarity", "ncc", "--dim", "2", "--size", "32,32", "--spacing-mm", "8,8", "--channels", "4,8",
           "--batch-size", "2", "--epochs", "1", "--steps-per-epoch", "2", "--validation-pairs", "2",
           "--device", "cpu", "--progress-json", "--out", str(tmp_path / "ddp.pt")]
    result = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                            timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    meta = read_metadata(tmp_path / "ddp.pt")
    assert meta["training"]["processes"] == 2 and meta["similarity"] == "ncc"
    done = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert sum(e["event"] == "done" for e in done) == 1          # only rank 0 reports


def test_bundled_3d_model_does_not_fold_on_another_template():
    """SPM avg152 T1 (2 mm, not seen in training) against a 4 mm smooth deformation of it: no folding."""
    from DeepRegistrationLib.data import sources

    fixed = sources.spm_avg152("T1")
    moving = warp(fixed, fixed.grid, smooth_random_field(fixed.grid, np.random.default_rng(0), 4.0))
    report = register(fixed, moving, "deepsim", "cpu", iterations=0).report
    print(f"deepsim on SPM T1: folding {report['folding_voxels']} voxels, Jacobian [{report['jacobian_min']:.2f}, "
          f"{report['jacobian_max']:.2f}], {report['seconds_total']:.1f} s")
    assert report["folding_voxels"] == 0 and report["jacobian_min"] > 0.5
