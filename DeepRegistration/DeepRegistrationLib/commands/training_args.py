"""What the training commands share on the command line: where the training data come from, the run options
(output, checkpoints, device, seed, progress), the random deformations, number lists, and the command line a
model file records."""
from __future__ import annotations

import shlex
import sys

from ..core.device import DEVICE_CHOICES
from ..core.errors import InputError


def add_data_sources(p, pairs: str, corpus: tuple, synthetic: tuple = None) -> None:
    """The required choice of training data: ``--pairs`` (a pairs CSV, help ``pairs``), ``--corpus`` (``corpus``:
    choices and help) and, where the command has one, ``--synthetic`` (``synthetic``: choices and help)."""
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--pairs", help=pairs)
    if synthetic is not None:
        src.add_argument("--synthetic", choices=list(synthetic[0]), help=synthetic[1])
    src.add_argument("--corpus", choices=list(corpus[0]), help=corpus[1])


def add_run_options(p, seed: int = 0, out: str = "model file to write (.pt)",
                    checkpoints: str = "atomic checkpoints (default: next to --out)") -> None:
    """``--out``, ``--checkpoint-dir``, ``--resume``, ``--device``, ``--seed`` and ``--progress-json``."""
    p.add_argument("--out", required=True, help=out)
    p.add_argument("--checkpoint-dir", help=checkpoints)
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --checkpoint-dir")
    p.add_argument("--device", default="auto", help=f"one of {', '.join(DEVICE_CHOICES)} (default auto)")
    p.add_argument("--seed", type=int, default=seed)
    p.add_argument("--progress-json", action="store_true", help="one JSON object per logged step on stdout")


def add_deformation_options(p, settings, purpose: str, coefficient: str = "coefficient") -> None:
    """``--deform-max-mm`` and ``--deform-spacing-mm``: the random B-spline deformations of ``settings``."""
    p.add_argument("--deform-max-mm", type=float, default=settings.deform_max_mm,
                   help=f"{purpose}: largest B-spline {coefficient} of the random deformations (mm)")
    p.add_argument("--deform-spacing-mm", type=float, default=settings.deform_spacing_mm,
                   help=f"{purpose}: control-point spacing of the random deformations (mm)")


def require_at_least_one(args, names) -> None:
    """Each option of ``names`` (attribute names) must be 1 or more."""
    for name in names:
        if getattr(args, name) < 1:
            raise InputError(f"--{name.replace('_', '-')} must be at least 1")


def numbers(text: str, kind=float) -> tuple:
    """A comma-separated list of numbers of type ``kind``."""
    try:
        return tuple(kind(v) for v in text.split(","))
    except ValueError:
        what = "integers" if kind is int else "numbers"
        raise InputError(f"expected comma-separated {what}, got {text!r}") from None


def command_line() -> str:
    """The command as typed, for the model file's provenance."""
    return "deepregistration " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def report_written(args, what: str, out) -> None:
    """The closing line of a training command (none with ``--progress-json``, whose last event says it)."""
    if not args.progress_json:
        print(f"{what} written to {out}")
