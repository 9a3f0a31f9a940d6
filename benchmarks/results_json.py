"""Where a benchmark writes its results, and what every results file records besides its numbers.

Every kept benchmark writes one JSON file, by default ``benchmarks/results/<name>.json`` (``--json PATH``
to write elsewhere). The file holds the numbers the docs and the README quote (``results``), the data it
ran on (``data``), and how it was made: the command (from the repository root), the code commit (with
``dirty`` when the library, the script or the shared benchmark modules had uncommitted changes), the date
and the machine. ``scripts/readme_tables.py``
builds the README's and the method pages' tables from these files, so a re-run that overwrites one
updates the docs with ``python scripts/readme_tables.py``.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPOSITORY / "benchmarks" / "results"


def default_path(name: str) -> Path:
    return RESULTS_DIR / f"{name}.json"


def add_json_argument(parser, name: str) -> None:
    """``--json PATH`` (default ``benchmarks/results/<name>.json``)."""
    parser.add_argument("--json", default=str(default_path(name)),
                        help=f"results file (default benchmarks/results/{name}.json)")


def _git(*args) -> str:
    try:
        return subprocess.run(["git", *args], cwd=REPOSITORY, capture_output=True, text=True,
                              timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def command_line() -> str:
    """The command that is running, as typed from the repository root (environment variables that set
    threads included)."""
    script = Path(sys.argv[0]).resolve()
    try:
        script = script.relative_to(REPOSITORY)
    except ValueError:
        pass
    env = [f"{k}={os.environ[k]}" for k in ("OMP_NUM_THREADS",) if k in os.environ]
    return " ".join(env + ["python", shlex.quote(str(script))] + [shlex.quote(a) for a in sys.argv[1:]])


def _code_state() -> dict:
    """The commit, and whether the library, the running script or the shared benchmark modules had
    uncommitted changes."""
    script = Path(sys.argv[0]).resolve()
    paths = ["DeepRegistration", ":(glob)benchmarks/*.py"] + ([str(script)] if script.is_file() else [])
    dirty = _git("status", "--porcelain", "--untracked-files=no", "--", *paths)
    return {"commit": _git("rev-parse", "HEAD") or None, "dirty": bool(dirty)}


#: Taken when the benchmark starts, so later commits do not change what its results file says it ran.
CODE_STATE = _code_state()
LOAD_AT_START = os.getloadavg()


def machine() -> dict:
    import torch

    info = {"cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "load_average_1min": {"start": round(LOAD_AT_START[0], 2), "end": round(os.getloadavg()[0], 2)}}
    try:
        import SimpleITK as sitk
        info["simpleitk"] = sitk.Version_VersionString()
    except ImportError:
        pass
    return info


def write_results(path, benchmark: str, data: str, results, **extra) -> Path:
    """Write ``results`` (plain JSON data) with the provenance of this run; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"benchmark": benchmark, "command": command_line(), **CODE_STATE,
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "machine": machine(), "data": data, **extra, "results": results}
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    print(f"results written to {path}")
    return path
