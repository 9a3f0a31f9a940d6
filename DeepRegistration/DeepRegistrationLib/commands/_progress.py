"""Progress of long commands: a tqdm bar for people, or JSON lines for programs (the Slicer modules)."""
from __future__ import annotations

from contextlib import contextmanager

from ..core.progress import Progress, emit_json


@contextmanager
def cli_progress(description: str, enabled: bool = True, as_json: bool = False):
    """A :class:`Progress` that drives a tqdm bar (with ETA), or prints JSON progress lines."""
    if as_json:
        yield Progress(lambda fraction, message: emit_json(event="progress", fraction=round(fraction, 4),
                                                           message=message))
        return
    from tqdm.auto import tqdm

    bar = tqdm(total=1000, desc=description, disable=not enabled, dynamic_ncols=True,
               bar_format="{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}] {postfix}")

    def update(fraction: float, message: str) -> None:
        bar.n = int(1000 * fraction)
        if message:
            bar.set_postfix_str(message, refresh=False)
        bar.refresh()

    try:
        yield Progress(update)
    finally:
        bar.close()
