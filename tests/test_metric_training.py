"""Training the learned metric end to end (tiny), resume checks, and DDP with two CPU processes."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from DeepRegistrationLib.core.errors import InputError
from DeepRegistrationLib.core.transforms import RigidTransform
from DeepRegistrationLib.data import sources
from DeepRegistrationLib.data.synthetic import intensity_jitter
from DeepRegistrationLib.models.model_file import read_metadata
from DeepRegistrationLib.rigid.cnn_metric import CNNMetricObjective, load_metric_set
from DeepRegistrationLib.training.common import Distributed
from DeepRegistrationLib.training.metric_trainer import MetricTrainer, MetricTrainingConfig, PairData, parse_stages
from DeepRegistrationLib.rigid.metric_patches import prepare_level


def tiny_pairs():
    """Aligned SPM T1/T2 and a jittered copy: two (fixed, moving) pairs."""
    t1, t2 = sources.spm_avg152("T1"), sources.spm_avg152("T2")
    rng = np.random.default_rng(0)
    return [PairData(t1, t2, name="spm T1|T2"),
            PairData(intensity_jitter(t1, rng), intensity_jitter(t2, rng), name="jittered T1|T2")]


def tiny_config(**kw):
    base = dict(stages=((1.0, 4.0),), base_spacing_mm=4.0, patch_size=9, channels=(4, 8, 8), learning_rate=0.003,
                weight_decay=0.0, epochs=3, pairs_per_epoch=2048, batch_size=64, dithers_per_location=4,
                validation_pairs=512, realign_patches=32, realign_evaluations=40, seed=0)
    base.update(kw)
    return MetricTrainingConfig(**base)


@pytest.fixture(scope="module", params=["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def trained(tmp_path_factory, request):
    """A tiny metric trained on the CPU, and on CUDA where there is one (sampling and training on the device)."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("metric") / "tiny.pt"
    trainer = MetricTrainer(tiny_pairs(), tiny_config(), out, None, Distributed(device=torch.device(request.param)),
                            show_progress=False)
    trainer.train()
    return out, trainer


def test_tiny_training_separates_aligned_from_shifted(trained):
    out, trainer = trained
    meta = read_metadata(out)
    assert meta["kind"] == "cnn-metric" and meta["stages"][0]["level"] == 1.0
    assert meta["training"]["train_pairs"] and meta["training"]["validation_pairs"]
    assert meta["stages"][0]["validation_accuracy"] > 0.75  # chance is 0.5
    stage = load_metric_set(out)[0]
    t1, t2 = sources.spm_avg152("T1"), sources.spm_avg152("T2")
    objective = CNNMetricObjective(stage, prepare_level(t1, 4.0), prepare_level(t2, 4.0), 128, 0)
    c = t1.grid.center_physical()
    aligned = objective(RigidTransform(center_mm=c))
    for shift in ([12.0, 0, 0], [0, -12.0, 0], [0, 0, 12.0]):
        assert aligned > objective(RigidTransform(translation_mm=shift, center_mm=c))
    ckpt_dir = out.parent / "tiny_checkpoints"
    assert (ckpt_dir / "realignment.csv").read_text().count("\n") == 3  # header + 2 pairs
    assert (ckpt_dir / "metric_checkpoint.pt").exists()


def test_resume_refuses_other_settings_and_continues_finished_run(trained):
    out, trainer = trained
    other = MetricTrainer(tiny_pairs(), tiny_config(patch_size=11), out, None, Distributed(), show_progress=False)
    with pytest.raises(InputError, match="other settings"):
        other.train(resume=True)
    before = out.read_bytes()
    same = MetricTrainer(tiny_pairs(), tiny_config(), out, None, Distributed(), show_progress=False)
    same.train(resume=True)  # every stage is done: nothing is retrained, the model file is untouched
    assert out.read_bytes() == before
    with pytest.raises(InputError, match="level:dither"):
        parse_stages("4-100")


def test_ddp_two_cpu_processes_end_with_identical_weights(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent), "PYTHONFAULTHANDLER": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517",
           str(Path(__file__).parent / "metric_ddp_worker.py"), str(tmp_path)]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-12000:]  # a crashing rank's Python stack (faulthandler) included
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["world"] == r1["world"] == 2
    for k in r0["weights"]:
        assert torch.equal(r0["weights"][k], r1["weights"][k]), k
    assert torch.equal(r0["transforms"], r1["transforms"])
    assert (tmp_path / "set.pt").exists() and read_metadata(tmp_path / "set.pt")["training"]["world_size"] == 2


def test_train_metric_command_progress_json(tmp_path, capsys):
    from DeepRegistrationLib.cli import main
    from DeepRegistrationLib.core.io import write_image
    import json

    t1, t2 = sources.spm_avg152("T1"), sources.spm_avg152("T2")
    write_image(t1, tmp_path / "t1.nii.gz")
    write_image(t2, tmp_path / "t2.nii.gz")
    (tmp_path / "pairs.csv").write_text("fixed,moving\nt1.nii.gz,t2.nii.gz\nt1.nii.gz,t2.nii.gz\n")
    args = ["train-metric", "--pairs", str(tmp_path / "pairs.csv"), "--out", str(tmp_path / "m.pt"), "--epochs", "1",
            "--device", "cpu", "--progress-json", "--stages", "1:4", "--base-spacing-mm", "6", "--patch-size", "7",
            "--channels", "4,4,4", "--pairs-per-epoch", "128", "--validation-pairs", "64", "--dithers", "2",
            "--realign-patches", "8", "--realign-evaluations", "10"]
    assert main(args) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {e["event"] for e in events} >= {"stage", "step", "epoch", "realign", "done"}
    assert events[-1] == {**events[-1], "event": "done", "model": str(tmp_path / "m.pt")}
    assert all(0.0 <= e["fraction"] <= 1.0 for e in events)
    epoch = [e for e in events if e["event"] == "epoch"][0]
    assert {"loss", "accuracy", "val_loss", "val_metric"} <= set(epoch)
    assert (tmp_path / "m_checkpoints" / "realignment.json").exists()
    assert main(["train-metric", "--pairs", str(tmp_path / "pairs.csv"), "--out", str(tmp_path / "x.pt"),
                 "--stages", "4-100"]) == 2


def test_interrupted_run_resumes_to_the_same_weights(tmp_path, monkeypatch):
    torch.set_num_threads(1)
    config = dict(stages=((2.0, 4.0), (1.0, 2.0)), pairs_per_epoch=512, epochs=1, validation_pairs=128)
    straight = MetricTrainer(tiny_pairs(), tiny_config(**config), tmp_path / "a.pt", None, Distributed(),
                             show_progress=False)
    straight.train()
    original = MetricTrainer.train_stage

    def interrupt_second_stage(self, state, ckpt):
        if state.stage == 1:
            raise KeyboardInterrupt
        original(self, state, ckpt)

    monkeypatch.setattr(MetricTrainer, "train_stage", interrupt_second_stage)
    first = MetricTrainer(tiny_pairs(), tiny_config(**config), tmp_path / "b.pt", None, Distributed(),
                          show_progress=False)
    with pytest.raises(KeyboardInterrupt):
        first.train()
    assert len(read_metadata(tmp_path / "b.pt")["stages"]) == 1  # the finished stage was kept
    monkeypatch.setattr(MetricTrainer, "train_stage", original)
    resumed = MetricTrainer(tiny_pairs(), tiny_config(**config), tmp_path / "b.pt", None, Distributed(),
                            show_progress=False)
    resumed.train(resume=True)
    a, b = load_metric_set(tmp_path / "a.pt"), load_metric_set(tmp_path / "b.pt")
    assert len(a) == len(b) == 2
    for sa, sb in zip(a, b):
        for (k, va), vb in zip(sa.network.state_dict().items(), sb.network.state_dict().values()):
            assert torch.equal(va, vb), k


def test_model_selection_keeps_the_epoch_that_registers_validation_pairs_best(tmp_path, capsys):
    """§3 model selection by registration: perturbed starts of the validation pair are registered back."""
    import json

    torch.set_num_threads(1)
    out = tmp_path / "sel.pt"
    MetricTrainer(tiny_pairs(), tiny_config(selection_starts=3), out, None, Distributed(), reporter_json=True).train()
    epochs = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"epoch"' in line]
    errors = [e["val_registration_mm"] for e in epochs if e.get("event") == "epoch"]
    assert len(errors) == 3
    stage = read_metadata(out)["stages"][0]
    assert stage["model_selection"] == "registration"
    assert stage["validation_registration_error_mm"] == pytest.approx(min(errors))
    assert errors[-1] < errors[0]     # measured 7.2, 4.0, 3.3 mm: the criterion follows the training
    with pytest.raises(InputError, match="model selection"):
        MetricTrainer(tiny_pairs(), tiny_config(selection="loss"), out, None, Distributed())


def test_validation_pairs_of_other_subjects_select_and_stay_at_the_truth_and_init_model_starts_the_stages(tmp_path):
    """Explicit validation pairs (train-metric --corpus): never trained on nor re-registered, their transform stays
    the identity (the truth), the selection error is measured on them; --init-model with lr 0 keeps its weights."""
    torch.set_num_threads(1)
    train, validation = tiny_pairs()
    first = tmp_path / "first.pt"
    trainer = MetricTrainer([train], tiny_config(epochs=1), first, None, Distributed(), show_progress=False,
                            validation_pairs=[validation], corpus_record={"task": "test"})
    trainer.train()
    assert (trainer.train_idx, trainer.val_idx) == ([0], [1])
    realigned = trainer.last_transforms
    assert realigned[1] == [0.0] * 6 and realigned[0] != [0.0] * 6
    meta = read_metadata(first)
    assert meta["training"]["corpus"] == {"task": "test"} and meta["training"]["validation_pairs"] == [1]
    assert meta["stages"][0]["validation_registration_error_mm"] is not None
    second = tmp_path / "second.pt"
    MetricTrainer([train], tiny_config(epochs=1, learning_rate=0.0, init_model=str(first)), second, None,
                  Distributed(), show_progress=False, validation_pairs=[validation]).train()
    a, b = load_metric_set(first)[0].network.state_dict(), load_metric_set(second)[0].network.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(InputError, match="no stage 1 with level"):
        MetricTrainer([train], tiny_config(epochs=1, stages=((2.0, 4.0),), init_model=str(first)), tmp_path / "x.pt",
                      None, Distributed(), show_progress=False, validation_pairs=[validation]).train()
