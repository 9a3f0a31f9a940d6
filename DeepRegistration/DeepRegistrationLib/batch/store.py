"""A batch's output folder: one folder per pair, written whole or not at all, and the batch lock.

Layout of ``DIR``: ``pairs/<id>/`` per pair (what ``register`` writes, ``log.txt``, thumbnails and
``status.json``), ``report.html``/``.csv``/``.json`` and ``cohort.png``. A pair is written into
``pairs/.<id>.partial-<token>/`` and renamed onto ``pairs/<id>`` once complete; ``status.json`` is
the last file written into it and records the outcome (``done`` or ``failed``) with the hash of the
pair's inputs and settings. A pair counts as complete when its ``status.json`` says ``done``, its
hash matches the current inputs and settings, and every output and thumbnail it lists exists.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import uuid
from pathlib import Path

from ..core.errors import InputError

STATUS = "status.json"
PARTIAL = ".partial-"
LOCK = ".batch.lock"


def pairs_dir(out) -> Path:
    return Path(out) / "pairs"


def pair_dir(out, pair_id: str) -> Path:
    return pairs_dir(out) / pair_id


def file_digest(path, cache: dict = None) -> str:
    """sha256 of a file's bytes ('missing' when there is no such file); ``cache`` keys on path, size
    and modification time, so a template shared by every pair is read once."""
    p = Path(path)
    try:
        st = p.stat()
    except OSError:
        return "missing"
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if cache is not None and key in cache:
        return cache[key]
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    digest = h.hexdigest()
    if cache is not None:
        cache[key] = digest
    return digest


def input_hash(digests: dict, settings: dict) -> str:
    """One hash of the inputs' contents (role -> digest) and the settings (method, options)."""
    text = json.dumps({"inputs": dict(sorted(digests.items())), "settings": settings}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def pair_hash(pair, cache: dict = None) -> str:
    """The hash of a :class:`~.pairs.Pair`: its files' contents (model files given by path included) and
    its settings."""
    digests = {role: file_digest(path, cache) for role, path in pair.files.items()}
    for n, model in enumerate(pair.options.get("models") or []):
        if Path(model).is_file():
            digests[f"model {n}"] = file_digest(model, cache)
    return input_hash(digests, pair.settings())


def read_status(folder) -> dict:
    try:
        return json.loads((Path(folder) / STATUS).read_text())
    except (OSError, ValueError):
        return {}


def is_complete(out, pair_id: str, digest: str) -> bool:
    folder = pair_dir(out, pair_id)
    status = read_status(folder)
    files = list(status.get("outputs", {}).values()) + [v for v in status.get("thumbnails", {}).values()
                                                         if isinstance(v, str)]
    return (status.get("status") == "done" and status.get("hash") == digest
            and all((folder / name).is_file() for name in files))


def new_partial(out, pair_id: str) -> Path:
    """A fresh temporary folder for a pair, next to where it will be renamed to."""
    folder = pairs_dir(out) / f".{pair_id}{PARTIAL}{uuid.uuid4().hex[:12]}"
    folder.mkdir(parents=True)
    return folder


def write_json_atomic(path, data) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


def commit(partial: Path, out, pair_id: str, status: dict) -> Path:
    """Write ``status.json`` last into ``partial`` and put the folder in the pair's place."""
    write_json_atomic(partial / STATUS, status)
    final = pair_dir(out, pair_id)
    if final.exists():
        old = final.with_name(f".{pair_id}.old-{uuid.uuid4().hex[:12]}")
        os.rename(final, old)
        os.rename(partial, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(partial, final)
    return final


def sweep_partials(out) -> int:
    """Remove what interrupted runs left (temporary pair folders); returns how many."""
    folder = pairs_dir(out)
    if not folder.is_dir():
        return 0
    stale = [p for p in folder.iterdir() if p.name.startswith(".") and (PARTIAL in p.name or ".old-" in p.name)]
    for p in stale:
        shutil.rmtree(p, ignore_errors=True)
    return len(stale)


class BatchLock:
    """``DIR/.batch.lock`` while a batch writes into ``DIR``: a second batch on the same folder is
    refused while the first is alive; a lock left by a dead process on this host is taken over."""

    def __init__(self, out):
        self.path = Path(out) / LOCK
        self.owner = {"pid": os.getpid(), "host": socket.gethostname()}

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                holder = read_lock(self.path)
                if holder and not _dead(holder):
                    raise InputError(f"another batch (pid {holder.get('pid')} on {holder.get('host')}) is writing "
                                     f"to {self.path.parent}; wait for it, or remove {self.path} if it is gone")
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(self.owner, f)
            return self
        raise InputError(f"could not take the batch lock {self.path}")

    def __exit__(self, *exc):
        if read_lock(self.path) == self.owner:
            self.path.unlink(missing_ok=True)


def read_lock(path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}


def _dead(holder: dict) -> bool:
    """True when the lock's process is known to be gone (same host, no such pid)."""
    if holder.get("host") != socket.gethostname():
        return False
    try:
        os.kill(int(holder.get("pid", -1)), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, ValueError, OverflowError):
        return False
    return False
