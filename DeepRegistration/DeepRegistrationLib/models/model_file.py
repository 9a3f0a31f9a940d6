"""Model files: weights plus metadata, loaded without unpickling code.

A model file is ``torch.save`` of a plain dict ``{"format", "metadata", "state_dict"}`` holding
only tensors, strings, numbers, lists and dicts, read back with ``torch.load(weights_only=True)``.
The metadata says what the network is and how its inputs must be prepared; loading checks it.
"""
from __future__ import annotations

import datetime
import os
import subprocess
from pathlib import Path

import torch

from .. import __version__
from ..core.errors import InputError
from ..data.sources import cache_dir

FORMAT = "deepregistration-model/1"
BUNDLED_DIR = Path(__file__).resolve().parent / "bundled"
#: Every model file states these.
REQUIRED_METADATA = ("kind", "architecture", "patch_size", "spacing_mm", "intensity_normalization",
                     "training", "created", "library_version")


def code_commit() -> dict:
    """The git commit of the library's source tree and whether it had uncommitted changes (``code_commit``
    None when the library is not run from a git checkout, e.g. when installed from a wheel)."""
    here = Path(__file__).resolve().parent

    def git(*args):
        return subprocess.run(["git", *args], cwd=here, capture_output=True, text=True, timeout=30).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(commit) and bool(git("status", "--porcelain", "--untracked-files=no", "--", str(here.parent)))
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "", False
    return {"code_commit": commit or None, "code_dirty": dirty}


def save_model(path, state_dict: dict, metadata: dict) -> Path:
    """Write atomically (temporary file, then rename); ``created`` and ``library_version`` are filled in, and
    the training record gets the code commit (:func:`code_commit`) unless it states one."""
    metadata = dict(metadata)
    metadata.setdefault("created", datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    metadata.setdefault("library_version", __version__)
    if isinstance(metadata.get("training"), dict) and "code_commit" not in metadata["training"]:
        metadata["training"] = {**metadata["training"], **code_commit()}
    missing = [k for k in REQUIRED_METADATA if k not in metadata]
    if missing:
        raise ValueError(f"model metadata lacks {missing}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    payload = {"format": FORMAT, "metadata": metadata,
               "state_dict": {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}}
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def resolve_model_path(name_or_path) -> Path:
    """A bundled model's name (file stem under ``models/bundled``) or a path to a model file."""
    p = Path(str(name_or_path))
    if p.suffix == ".pt" and p.exists():
        return p
    bundled = BUNDLED_DIR / f"{name_or_path}.pt"
    if bundled.exists():
        return bundled
    if p.exists():
        return p
    raise InputError(f"model {name_or_path!r} is neither a file nor a bundled model "
                     f"(bundled: {', '.join(bundled_model_names()) or 'none'})")


def bundled_model_names() -> list:
    return sorted(p.stem for p in BUNDLED_DIR.glob("*.pt"))


def user_models_dir() -> Path:
    """Where models trained by the user are saved by default (listed next to the bundled ones)."""
    folder = cache_dir() / "models"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def available_models() -> list:
    """Bundled model names, then the paths of the user's trained models."""
    return bundled_model_names() + sorted(str(p) for p in user_models_dir().glob("*.pt"))


def load_model(name_or_path, kind: str, map_location="cpu"):
    """Return ``(state_dict, metadata)`` of a model file of the given ``kind``; refuse anything else."""
    path = resolve_model_path(name_or_path)
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception:  # noqa: BLE001 - any failure here means "not a model file we can trust"
        # torch's own message advises weights_only=False, which would run the file's code: not passed on
        raise InputError(f"{path} is not a DeepRegistration model file: it does not load as tensors and plain "
                         f"data alone (torch.load with weights_only=True); files holding pickled code are "
                         f"refused") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise InputError(f"{path} is not a DeepRegistration model file (format {FORMAT!r} expected)")
    metadata = payload.get("metadata") or {}
    missing = [k for k in REQUIRED_METADATA if k not in metadata]
    if missing:
        raise InputError(f"{path}: model metadata lacks {', '.join(missing)}")
    if metadata["kind"] != kind:
        raise InputError(f"{path} is a {metadata['kind']!r} model; a {kind!r} model is needed here")
    return payload["state_dict"], metadata


def read_metadata(name_or_path) -> dict:
    """Metadata of any model file (for model cards in the GUI), validated as in :func:`load_model`."""
    path = resolve_model_path(name_or_path)
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise InputError(f"{path} is not a DeepRegistration model file")
    return payload["metadata"]


def build_checked(model: torch.nn.Module, state_dict: dict, path_hint: str = "model") -> torch.nn.Module:
    """Load weights into a freshly built network; a shape or key mismatch is an :class:`InputError`."""
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as err:
        raise InputError(f"{path_hint}: weights do not fit the architecture in its metadata: "
                         f"{str(err).splitlines()[0]}") from None
    return model.eval()


def load_network(name_or_path, kind: str, build, description: str, device="cpu") -> tuple:
    """``(network, metadata)`` of a model file of ``kind``: ``build(architecture config dict)`` makes the
    network, whose weights are then checked and loaded; it is returned in eval mode on ``device``."""
    state, meta = load_model(name_or_path, kind)
    try:
        net = build(meta["architecture"]["config"])
    except (KeyError, TypeError, ValueError) as err:
        raise InputError(f"{name_or_path}: {description} architecture metadata is unusable ({err})") from None
    return build_checked(net, state, str(name_or_path)).to(device), meta
