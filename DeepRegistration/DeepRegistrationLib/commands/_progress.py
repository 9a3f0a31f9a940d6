"""A tqdm progress bar driven by the library's ``Progress`` callbacks."""
from __future__ import annotations

from contextlib import contextmanager

from ..core.progress import Progress


@contextmanager
def cli_progress(description: str, enabled: bool = True):
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
