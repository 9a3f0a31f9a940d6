"""Provenance of model files: the code commit and the command that trained every bundled model, and a
metadata rewrite that keeps the weights bit-identical."""
import importlib.util
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from DeepRegistrationLib.models.model_file import BUNDLED_DIR, bundled_model_names, read_metadata, save_model

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("model_provenance", ROOT / "scripts" / "model_provenance.py")
model_provenance = importlib.util.module_from_spec(spec)
spec.loader.exec_module(model_provenance)


def git(*args):
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True)


def training_chain(meta):
    node = meta["training"]
    while node:
        yield node
        node = node.get("initialized_from")


@pytest.mark.parametrize("name", bundled_model_names())
def test_every_bundled_model_records_its_commit_and_command(name):
    chain = list(training_chain(read_metadata(name)))
    for training in chain:
        assert re.fullmatch(r"[0-9a-f]{40}", training["code_commit"]), training.get("code_commit")
        assert training["command"].startswith("deepregistration train-")


@pytest.mark.parametrize("name", bundled_model_names())
def test_the_recorded_commit_is_in_the_history(name):
    """A commit found from the history (``code_commit_note``) holds these very weights; one recorded by
    ``save_model`` at training time is the code the run used, committed before the weights were."""
    path = BUNDLED_DIR / f"{name}.pt"
    training = read_metadata(name)["training"]
    commit = training["code_commit"]
    if git("cat-file", "-e", f"{commit}^{{commit}}").returncode != 0:
        pytest.skip("the git history is not available (not a full clone)")
    if "code_commit_note" in training:
        shown = git("show", f"{commit}:{path.relative_to(ROOT).as_posix()}")
        assert shown.returncode == 0
        then = model_provenance.load_payload(shown.stdout)["state_dict"]
        assert model_provenance.same_weights(then, model_provenance.load_payload(path)["state_dict"])


def test_rewriting_the_metadata_keeps_the_weights_bit_identical(tmp_path):
    path = tmp_path / "m.pt"
    shutil.copy(BUNDLED_DIR / "dirnet_brain_t1_3d.pt", path)
    before = model_provenance.load_payload(path)
    payload = {**before, "metadata": {**before["metadata"], "note": "rewritten"}}
    model_provenance.rewrite_metadata(path, payload)
    after = model_provenance.load_payload(path)
    assert after["metadata"]["note"] == "rewritten"
    for key, tensor in before["state_dict"].items():
        assert after["state_dict"][key].dtype == tensor.dtype
        assert after["state_dict"][key].numpy().tobytes() == tensor.numpy().tobytes()


def test_a_rewrite_that_would_change_the_weights_is_refused(tmp_path):
    path = tmp_path / "m.pt"
    shutil.copy(BUNDLED_DIR / "dirnet_brain_t1_3d.pt", path)
    payload = model_provenance.load_payload(path)
    key = next(iter(payload["state_dict"]))
    changed = {**payload["state_dict"], key: payload["state_dict"][key] + 1}
    with pytest.raises(RuntimeError, match="weights would change"):
        model_provenance.rewrite_metadata(path, {**payload, "state_dict": changed})
    assert model_provenance.same_weights(model_provenance.load_payload(path)["state_dict"], payload["state_dict"])


def test_a_newly_saved_model_records_the_code_commit(tmp_path):
    head = git("rev-parse", "HEAD")
    if head.returncode != 0:
        pytest.skip("not a git checkout")
    meta = {"kind": "x", "architecture": {}, "patch_size": [1], "spacing_mm": [1.0], "intensity_normalization": "none",
            "training": {"command": "deepregistration train-x"}}
    save_model(tmp_path / "m.pt", {"w": torch.zeros(2)}, meta)
    training = torch.load(tmp_path / "m.pt", weights_only=True)["metadata"]["training"]
    assert training["code_commit"] == head.stdout.decode().strip()
    assert isinstance(training["code_dirty"], bool)
