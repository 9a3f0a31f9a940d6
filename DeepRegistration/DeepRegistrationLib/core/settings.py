"""Settings dataclasses (network architectures, training settings) and their plain form.

``to_dict`` gives what checkpoints compare on resume and model files record: nested settings as dicts, tuples as
lists, everything else as it is.
"""
from __future__ import annotations

from dataclasses import fields


def plain(value):
    """``value`` with nested settings as dicts and tuples (at any depth) as lists."""
    if isinstance(value, Settings):
        return value.to_dict()
    if isinstance(value, (tuple, list)):
        return [plain(v) for v in value]
    return value


class Settings:
    """Base of every settings dataclass (frozen or not): subclasses declare their fields and inherit ``to_dict``."""

    def to_dict(self) -> dict:
        return {f.name: plain(getattr(self, f.name)) for f in fields(self)}
