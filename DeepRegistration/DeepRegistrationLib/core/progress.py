"""Progress reporting and cancellation shared by the CLI (tqdm), Slicer (progress bar) and scripts."""
from __future__ import annotations

import json
import sys
from typing import Callable, Optional

from .errors import Cancelled


class Progress:
    """``progress(fraction, message)`` reports; raises :class:`Cancelled` when ``should_cancel()`` says so.

    ``sub(a, b)`` gives a child reporter whose [0, 1] maps to [a, b] of this one, so nested stages
    report one overall fraction.
    """

    def __init__(self, callback: Optional[Callable[[float, str], None]] = None,
                 should_cancel: Optional[Callable[[], bool]] = None, start: float = 0.0, end: float = 1.0):
        self.callback = callback
        self.should_cancel = should_cancel
        self.start, self.end = start, end

    def __call__(self, fraction: float, message: str = "") -> None:
        if self.should_cancel is not None and self.should_cancel():
            raise Cancelled("cancelled by the user")
        if self.callback is not None:
            self.callback(self.start + (self.end - self.start) * min(max(fraction, 0.0), 1.0), message)

    def sub(self, a: float, b: float) -> "Progress":
        span = self.end - self.start
        return Progress(self.callback, self.should_cancel, self.start + span * a, self.start + span * b)


def as_progress(progress) -> Progress:
    if isinstance(progress, Progress):
        return progress
    return Progress(progress)


def emit_json(**event) -> None:
    """One JSON object per line on stdout, flushed (progress for programs such as the Slicer modules)."""
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()
