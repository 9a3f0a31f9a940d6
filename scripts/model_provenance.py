"""Record in every bundled model the code commit that trained it, rewriting the metadata only.

The bundled models were saved before model files recorded a commit. Their commit is found from the git
history: the oldest commit of the file whose weights equal the current ones (tensor by tensor) is the
commit that added these weights, together with the training code of that run. A model fine-tuned from an
earlier bundled model (``training.initialized_from``) gets its parent's commit the same way, matched by the
parent's ``created`` date. Runs made in pieces (``--resume``) also get the sequence of their commands, as
the model card in the docs gives it. The weights are not touched: the file is loaded with
``torch.load(weights_only=True)``, its metadata updated and the same tensors saved back, then checked equal.

    python scripts/model_provenance.py            # rewrite the bundled files that lack a commit
    python scripts/model_provenance.py --check    # exit 1 if one lacks it
"""
from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
from pathlib import Path

import torch

REPOSITORY = Path(__file__).resolve().parents[1]
BUNDLED = REPOSITORY / "DeepRegistration" / "DeepRegistrationLib" / "models" / "bundled"
NOTE = ("found from the git history by scripts/model_provenance.py: the commit that added these weights to the "
        "repository, with the training code of that run (the file's metadata of the time recorded no commit)")
#: Runs made in pieces, resumed from a checkpoint: the commands in order, as the model cards give them.
COMMAND_SEQUENCES = {
    "dirnet_brain_t1_2d": ("docs/dirnet.md", [
        "deepregistration train-dirnet --synthetic spm-avg152-t1 --dim 2 --size 96,112 --spacing-mm 2,2 "
        "--downsamplings 3 --epochs 6 --steps-per-epoch 100 --seed 1 "
        "--out DeepRegistration/DeepRegistrationLib/models/bundled/dirnet_brain_t1_2d.pt --checkpoint-dir /tmp/dn/ckpt2d "
        "--progress-json",
        "the same command with --epochs 20 --resume"]),
    "dirnet_brain_t1_3d": ("docs/dirnet.md", [
        "deepregistration train-dirnet --synthetic spm-avg152-t1 --dim 3 --size 32,40,32 --spacing-mm 6,6,6 "
        "--channels 8 --downsamplings 2 --epochs 3 --steps-per-epoch 50 --lr 2e-3 --seed 1 "
        "--out DeepRegistration/DeepRegistrationLib/models/bundled/dirnet_brain_t1_3d.pt --checkpoint-dir /tmp/dn/ckpt3d "
        "--progress-json",
        "the same command with --epochs 6 --resume"]),
}
#: The first training of the diffeo model's chain ran in pieces too (its model card, step 1).
DIFFEO_FIRST_STEP = ("docs/diffeomorphic.md", [
    "deepregistration train-diffeo --synthetic spm-avg152-t1 --out /work/runs/d1/m6400.pt --checkpoint-dir "
    "/work/runs/d1/ckpt --patch-size 32 --batch-size 4 --channels 8 --patches-per-volume 8 --groups-per-epoch 5 "
    "--epochs 40 --lr 1e-3 --subject-pool 16 --seed 0 --progress-json",
    "the same command with --epochs 80 --resume",
    "the same command with --epochs 160 --resume"])


def git(*args, binary=False):
    out = subprocess.run(["git", *args], cwd=REPOSITORY, capture_output=True, check=True)
    return out.stdout if binary else out.stdout.decode().strip()


def load_payload(source) -> dict:
    """A model file's payload (path or bytes), loaded without unpickling code."""
    if isinstance(source, bytes):
        source = io.BytesIO(source)
    return torch.load(source, map_location="cpu", weights_only=True)


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


def file_history(path: Path) -> list:
    """(commit, payload) of every committed version of ``path``, oldest first."""
    relative = path.relative_to(REPOSITORY).as_posix()
    commits = git("log", "--format=%H", "--follow", "--", relative).split()
    return [(c, load_payload(git("show", f"{c}:{relative}", binary=True))) for c in reversed(commits)]


def commit_of_weights(history: list, state_dict: dict) -> str:
    for commit, payload in history:
        if same_weights(payload["state_dict"], state_dict):
            return commit
    raise LookupError("no commit holds these weights")


def commit_of_created(history: list, created: str) -> str:
    for commit, payload in history:
        if payload["metadata"].get("created") == created:
            return commit
    raise LookupError(f"no commit holds the model created {created}")


def with_provenance(name: str, payload: dict, history: list) -> dict:
    """The payload's metadata with ``training.code_commit`` (and its ancestors'), weights unchanged."""
    metadata = dict(payload["metadata"])
    training = dict(metadata["training"])
    training["code_commit"] = commit_of_weights(history, payload["state_dict"])
    training["code_commit_note"] = NOTE
    if name in COMMAND_SEQUENCES:
        source, commands = COMMAND_SEQUENCES[name]
        training["command_sequence"] = {"commands": commands, "source": source}
    node = training
    while node.get("initialized_from"):
        parent = dict(node["initialized_from"])
        parent["code_commit"] = commit_of_created(history, parent["created"])
        parent["code_commit_note"] = NOTE
        if not parent.get("initialized_from") and "--resume" in parent.get("command", ""):
            source, commands = DIFFEO_FIRST_STEP
            parent["command_sequence"] = {"commands": commands, "source": source}
        node["initialized_from"] = parent
        node = parent
    metadata["training"] = training
    return {**payload, "metadata": metadata}


def rewrite_metadata(path: Path, payload: dict) -> None:
    """Save ``payload`` over ``path`` (atomically) and check that the weights read back bit-identical."""
    before = load_payload(path)["state_dict"]
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(payload, tmp)
    if not same_weights(load_payload(tmp)["state_dict"], before):
        tmp.unlink()
        raise RuntimeError(f"{path}: the weights would change")
    os.replace(tmp, path)


def lacks_commit(metadata: dict) -> bool:
    node = metadata.get("training") or {}
    while node:
        if not node.get("code_commit"):
            return True
        node = node.get("initialized_from") or {}
    return False


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="only report the files that lack a commit")
    args = p.parse_args(argv)
    missing = []
    for path in sorted(BUNDLED.glob("*.pt")):
        payload = load_payload(path)
        if not lacks_commit(payload["metadata"]):
            print(f"{path.stem}: {payload['metadata']['training']['code_commit']}")
            continue
        if args.check:
            missing.append(path.stem)
            continue
        updated = with_provenance(path.stem, payload, file_history(path))
        rewrite_metadata(path, updated)
        print(f"{path.stem}: code_commit {updated['metadata']['training']['code_commit']} written, weights unchanged")
    if missing:
        print("lacking a code commit: " + ", ".join(missing))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
