"""Momentum U-Net, loss eq. 3.2 with out-of-patch masking, and the train-diffeo command."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from DeepRegistrationLib.cli import main
from DeepRegistrationLib.core.errors import InputError
from DeepRegistrationLib.core.image import Image
from DeepRegistrationLib.core.io import write_image
from DeepRegistrationLib.data import sources
from DeepRegistrationLib.core.network_input import normalize_intensity, resample_to
from DeepRegistrationLib.models.model_file import load_model
from DeepRegistrationLib.networks.momentum_unet import MomentumUNet, MomentumUNetConfig
from DeepRegistrationLib.data.synthetic import intensity_jitter
from DeepRegistrationLib.metrics.similarity import local_ncc, mse, normalized_mse
from DeepRegistrationLib.training.diffeo_trainer import (DiffeoTraining, PairSource, diffeo_loss, pair_jitter,
                                                random_patches)
from DeepRegistrationLib.training.common import write_pairs_csv

torch.set_num_threads(1)


def test_network_shapes_dropout_and_fully_convolutional():
    torch.manual_seed(0)
    net = MomentumUNet(MomentumUNetConfig(channels=4, dropout=0.1)).eval()
    for side in (16, 24):
        out = net(torch.rand(2, 1, side, side, side), torch.rand(2, 1, side, side, side))
        assert out.shape == (2, 3, side, side, side)
        assert float(out.detach().abs().max()) < 1e-2   # near-zero head: an untrained net is close to the identity
    dropouts = [m for m in net.modules() if isinstance(m, torch.nn.Dropout3d)]
    assert len(dropouts) == 3 and all(d.p == 0.1 for d in dropouts)   # two down-samplings + first concatenation
    dilations = {m.dilation[0] for m in net.modules() if isinstance(m, torch.nn.Conv3d)}
    assert {1, 2, 4} <= dilations


def test_pair_appearance_keeps_aligned_pairs_similar():
    """Training pairs share one gamma: an aligned pair must score far below what independent draws give."""
    t1 = sources.spm_avg152("T1")
    t1 = t1.with_array(normalize_intensity(t1.array))
    nmse = lambda a, b: float(normalized_mse(torch.as_tensor(a)[None, None], torch.as_tensor(b)[None, None]))  # noqa: E731
    rng = np.random.default_rng(0)
    shared = [nmse(*pair_jitter(t1, t1, rng)) for _ in range(8)]
    independent = [nmse(intensity_jitter(t1, rng).array, intensity_jitter(t1, rng).array) for _ in range(8)]
    print(f"\nNMSE of an aligned pair, 8 draws: one gamma per pair max {max(shared):.4f}, "
          f"independent gammas max {max(independent):.4f}")
    assert max(shared) < 0.03 and max(independent) > 2 * max(shared)


def test_similarities_values():
    a = torch.zeros(1, 1, 4, 4, 4)
    b = torch.full_like(a, 0.2)
    assert float(mse(a, b)) == pytest.approx(0.04)
    assert float(normalized_mse(a, b)) == pytest.approx(0.5)   # eq. 3.5 is ½ at |x| = a = 0.2
    mask = torch.zeros_like(a)
    mask[..., :2] = 1
    c = b.clone()
    c[..., 2:] = 5.0                                             # masked-out voxels must not count
    assert float(mse(a, c, mask)) == pytest.approx(0.04)
    img = torch.rand(1, 1, 12, 12, 12)
    assert float(local_ncc(img, 2 * img + 1)) < 1e-3 < float(local_ncc(img, torch.rand_like(img)))


def test_loss_masks_voxels_warped_out_of_the_patch():
    """A momentum that shifts by ~all the patch makes almost every warped voxel unknown (Fig. 3.5)."""
    settings = DiffeoTraining(spacing_mm=1.0)
    fixed = torch.rand(1, 1, 16, 16, 16)
    seen = []

    def recording(a, b, mask):
        seen.append(float(mask.mean()))
        return mse(a, b, mask)

    zero = torch.zeros(1, 3, 16, 16, 16)
    loss, parts = diffeo_loss(zero, fixed, fixed, settings, recording, 1e-4)
    assert float(loss) < 1e-10 and seen == [1.0, 1.0]
    shift = torch.zeros(1, 3, 16, 16, 16)
    shift[:, 0] = 40.0                      # a large x momentum: v ≈ 40 mm everywhere (DC gain 1/γ² = 1)
    seen.clear()
    loss, parts = diffeo_loss(shift, fixed, fixed, settings, recording, 1e-4)
    assert seen[0] < 0.5 and seen[1] < 0.5
    assert parts["reg"] > 0


def test_custom_similarity_is_used_for_both_directions():
    calls = []

    def custom(a, b, mask):
        calls.append(a.shape)
        return (a - b).abs().mean()

    settings = DiffeoTraining(spacing_mm=2.0)
    momentum = torch.randn(2, 3, 16, 16, 16, requires_grad=True)
    loss, _ = diffeo_loss(momentum, torch.rand(2, 1, 16, 16, 16), torch.rand(2, 1, 16, 16, 16), settings, custom, 1e-4)
    loss.backward()
    assert len(calls) == 2 and momentum.grad is not None and float(momentum.grad.abs().sum()) > 0


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_network_learns_to_register_a_fixed_batch_through_eq_3_2(device):
    """Gradients reach the U-Net through smoothing, scaling and squaring and warping: it fits one batch."""
    settings = DiffeoTraining(config=MomentumUNetConfig(channels=4, dropout=0.0), patch_size=24,
                              patches_per_volume=2, volumes_at_once=1)
    rng = np.random.default_rng(0)
    fixed, moving = (x.to(device) for x in random_patches(PairSource.from_template(settings).group(rng), settings, rng))
    torch.manual_seed(0)
    net = MomentumUNet(settings.config).to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    loss = lambda momentum: diffeo_loss(momentum, fixed, moving, settings, normalized_mse, 1e-4)[0]  # noqa: E731
    zero = float(loss(torch.zeros(2, 3, 24, 24, 24, device=device)))
    for _ in range(30):
        value = loss(net(fixed, moving))
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
    fitted = value.item()
    print(f"\neq. 3.2 on one batch of two 24³ patches: zero momentum {zero:.4f}, network after 30 steps {fitted:.4f}")
    assert fitted < 0.5 * zero         # measured on the CPU: 0.36 x zero after 30 steps (0.29 x after 60)


def test_warmup_lowers_the_regularization_first():
    s = DiffeoTraining(warmup_steps=10, warmup_factor=0.1)
    assert s.reg_weight_at(0) == pytest.approx(1e-5) and s.reg_weight_at(10) == pytest.approx(1e-4)


@pytest.fixture(scope="module")
def small_pairs(tmp_path_factory):
    """Two real pairs at 4 mm: SPM avg152 T1/T1 shifted by a voxel (fast training data)."""
    folder = tmp_path_factory.mktemp("diffeo_pairs")
    t1 = sources.spm_avg152("T1")
    grid = t1.grid.with_spacing([4.0, 4.0, 4.0])
    img = resample_to(t1, grid)
    shifted = Image(np.roll(img.array, 1, axis=2), grid)
    write_image(img, folder / "a.nii.gz")
    write_image(shifted, folder / "b.nii.gz")
    write_pairs_csv(folder / "pairs.csv", [{"fixed": folder / "a.nii.gz", "moving": folder / "b.nii.gz"},
                                           {"fixed": folder / "b.nii.gz", "moving": folder / "a.nii.gz"}])
    return folder / "pairs.csv"


def test_train_diffeo_cli_checkpoint_resume_and_model(small_pairs, tmp_path, capsys):
    out = tmp_path / "m.pt"
    common = ["train-diffeo", "--pairs", str(small_pairs), "--out", str(out), "--no-augment", "--spacing-mm", "4",
              "--patch-size", "16", "--batch-size", "2", "--volumes-at-once", "2", "--patches-per-volume", "2",
              "--groups-per-epoch", "1", "--channels", "2", "--progress-json", "--lr", "1e-3"]
    assert main(common + ["--epochs", "1"]) == 0
    first = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [e["event"] for e in first].count("step") == 2 and first[-1]["event"] == "done"
    epoch = [e for e in first if e["event"] == "epoch"][0]
    assert "val_loss" in epoch and epoch["identity_val_loss"] > 0.001   # the pairs are a voxel apart
    assert main(common + ["--epochs", "2", "--resume"]) == 0
    second = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [e["step"] for e in second if e["event"] == "step"] == [3, 4]
    state, meta = load_model(out, "diffeo")
    assert meta["training"]["steps"] == 4 and meta["spacing_mm"] == [4.0, 4.0, 4.0]
    assert meta["training"]["identity_val_loss"] == pytest.approx(epoch["identity_val_loss"])   # same patches
    assert meta["lddmm"] == {"alpha": 20.0, "gamma": 1.0, "padding": 12, "steps": 7}
    assert main(common + ["--epochs", "3", "--resume", "--reg-weight", "1e-3"]) == 2   # other settings: refused
    capsys.readouterr()
    uninterrupted = tmp_path / "whole.pt"
    whole = ["--out", str(uninterrupted), "--checkpoint-dir", str(tmp_path / "whole_ckpt"), "--epochs", "2"]
    assert main(common[:common.index("--out")] + common[common.index("--out") + 2:] + whole) == 0
    expected = load_model(uninterrupted, "diffeo")[0]
    assert all(torch.equal(state[k], expected[k]) for k in expected)    # resumed exactly (dropout state included)


def test_train_diffeo_with_deepsim_as_epsilon(small_pairs, tmp_path, capsys):
    """DeepSim (Czolbe et al.) as ε of eq. 3.2: trains through the bundled 3D extractor at its 4 mm spacing."""
    common = ["train-diffeo", "--pairs", str(small_pairs), "--out", str(tmp_path / "m.pt"), "--no-augment",
              "--patch-size", "16", "--batch-size", "2", "--volumes-at-once", "2", "--patches-per-volume", "2",
              "--groups-per-epoch", "1", "--channels", "2", "--progress-json", "--epochs", "1",
              "--similarity", "deepsim", "--features", "deepsim_features_brain_t1_3d"]
    assert main(common + ["--spacing-mm", "2"]) == 2                        # extractor trained at 4 mm: refused
    assert "give --spacing-mm 4.0" in capsys.readouterr().err
    assert main(common + ["--spacing-mm", "4"]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    losses = [e["loss"] for e in events if e["event"] == "step"]
    assert len(losses) == 2 and all(np.isfinite(losses))
    meta = load_model(tmp_path / "m.pt", "diffeo")[1]
    assert "deepsim" in meta["training"]["loss"] and meta["training"]["settings"]["features"] == "deepsim_features_brain_t1_3d"


def test_train_diffeo_fine_tunes_from_an_init_model(small_pairs, tmp_path, capsys):
    """--init-model starts from another model's weights (lr 0 keeps them) and records its provenance."""
    common = ["train-diffeo", "--pairs", str(small_pairs), "--no-augment", "--spacing-mm", "4", "--patch-size", "16",
              "--batch-size", "2", "--volumes-at-once", "2", "--patches-per-volume", "2", "--groups-per-epoch", "1",
              "--channels", "2", "--progress-json", "--epochs", "1"]
    first, second = tmp_path / "first.pt", tmp_path / "second.pt"
    assert main(common + ["--out", str(first), "--lr", "1e-2"]) == 0
    assert main(common + ["--out", str(second), "--lr", "0", "--init-model", str(first), "--seed", "3"]) == 0
    capsys.readouterr()
    a, b = load_model(first, "diffeo")[0], load_model(second, "diffeo")
    assert all(torch.equal(a[k], b[0][k]) for k in a)
    origin = b[1]["training"]["initialized_from"]
    assert origin["model"] == str(first) and origin["steps"] == 2
    # selection by validation loss: lr 0 beats nothing, so the initial weights (step 0) are kept
    selected = b[1]["training"]["selected"]
    assert selected["step"] == 0 and selected["val_loss"] == b[1]["training"]["initial_val_loss"]
    trained = load_model(first, "diffeo")[1]["training"]
    assert trained["initial_val_loss"] is None
    assert trained["selected"]["val_loss"] == min(h["val_loss"] for h in trained["history"])
    assert origin["created"] == load_model(first, "diffeo")[1]["created"]
    assert origin["data"] == load_model(first, "diffeo")[1]["training"]["data"] == f"pairs of {small_pairs}"
    assert main(common + ["--out", str(tmp_path / "x.pt"), "--init-model", str(first), "--channels", "4"]) == 2
    assert "architecture" in capsys.readouterr().err
    assert main(common + ["--out", str(tmp_path / "y.pt"), "--init-model", "diffeo_brain_t1", "--channels", "8"]) == 2
    assert "spacing_mm" in capsys.readouterr().err


def test_train_diffeo_on_the_single_subject_template(tmp_path, capsys):
    """--synthetic takes either SPM template; the model's metadata names the one it was trained on."""
    out = tmp_path / "m.pt"
    assert main(["train-diffeo", "--synthetic", "spm-single-subject-t1", "--out", str(out), "--spacing-mm", "4",
                 "--patch-size", "16", "--batch-size", "2", "--volumes-at-once", "2", "--patches-per-volume", "1",
                 "--groups-per-epoch", "1", "--channels", "2", "--epochs", "1", "--progress-json"]) == 0
    capsys.readouterr()
    training = load_model(out, "diffeo")[1]["training"]
    assert training["data"].startswith("SPM single-subject T1 (Colin27) (4 mm) subjects")
    assert training["split"].startswith("subjects made from the SPM single-subject T1 (Colin27) template")
    single, average = sources.spm_single_subject_t1(), sources.spm_avg152("T1")
    assert single.grid.same_as(average.grid)
    assert np.corrcoef(single.array.ravel(), average.array.ravel())[0, 1] < 0.95   # another image, same space
    with pytest.raises(InputError, match="spm-avg152-t1, spm-single-subject-t1"):
        PairSource.from_template(DiffeoTraining(), "icbm152")


def test_ddp_two_cpu_processes_end_with_identical_weights(small_pairs, tmp_path):
    """train-diffeo's loop under torchrun (2 gloo processes): both ranks end with the same, trained weights."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent), "PYTHONFAULTHANDLER": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29521",
           str(Path(__file__).parent / "diffeo_ddp_worker.py"), str(small_pairs), str(tmp_path)]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-12000:]  # a crashing rank's Python stack (faulthandler) included
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["world"] == r1["world"] == 2
    assert any(not torch.equal(r0["weights"][k], r0["initial"][k]) for k in r0["initial"])     # it trained
    for k in r0["weights"]:
        assert torch.equal(r0["weights"][k], r1["weights"][k]), k
    assert load_model(tmp_path / "model.pt", "diffeo")[1]["training"]["processes"] == 2
