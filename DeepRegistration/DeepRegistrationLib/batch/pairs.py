"""The pairs of a cohort batch: reading and checking the pairs CSV, and each pair's settings.

Columns: ``fixed`` and ``moving`` (required); optional ``id``, ``fixed_mask``, ``moving_mask``,
``fixed_labels``, ``moving_labels``, ``initial_transform``, ``method``, ``params`` and ``model``.
Relative paths are relative to the CSV's folder. ``params`` holds ``KEY=VALUE`` items separated by
``;`` or spaces (as ``--param``); ``model`` holds model names or files separated by ``;``.

A row without its own ``method`` runs the batch's method with the batch's ``--param`` values,
overridden key by key by its ``params``; a row with its own method runs it with its own ``params``
and ``model`` only (the batch's options belong to the batch's method). Files are not opened here: a
missing or unreadable file fails that pair when it runs, and the batch goes on.
"""
from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..core.errors import InputError

REQUIRED = ("fixed", "moving")
FILE_COLUMNS = ("fixed", "moving", "fixed_mask", "moving_mask", "fixed_labels", "moving_labels", "initial_transform")
COLUMNS = ("id",) + FILE_COLUMNS + ("method", "params", "model")
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass
class Pair:
    """One registration of a batch: its id (the name of its output folder), files and settings."""

    id: str
    files: dict
    method: str
    options: dict = field(default_factory=dict)

    def settings(self) -> dict:
        """What, besides the files' contents, decides the result (part of the pair's hash)."""
        return {"method": self.method, "options": {k: (list(v) if isinstance(v, (list, tuple)) else str(v))
                                                   for k, v in sorted(self.options.items())}}


def parse_params(text: str, where: str = "params") -> dict:
    """``KEY=VALUE`` items separated by ``;`` or whitespace; keys as ``--param`` takes them (``-`` -> ``_``)."""
    out = {}
    for item in re.split(r"[;\s]+", text.strip()):
        if not item:
            continue
        if "=" not in item:
            raise InputError(f"{where}: expected KEY=VALUE items separated by ';', got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip().replace("-", "_")] = value.strip()
    return out


def stem(path: str) -> str:
    name = Path(path).name
    for suffix in (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".hdr", ".img"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._-") or "pair"


def assign_ids(rows: list, where: str) -> list:
    """Each row's ``id``, or the moving file's name, or ``<moving>-to-<fixed>`` where moving names repeat."""
    given = [r.get("id") or "" for r in rows]
    for n, name in enumerate(given):
        if name and not _SAFE_ID.match(name):
            raise InputError(f"{where}, row {n + 1}: id {name!r} may hold only letters, digits, '.', '_' and '-'")
    by_moving = [_safe(stem(r["moving"])) for r in rows]
    ids = []
    for name, moving, row in zip(given, by_moving, rows):
        if not name:
            name = moving if by_moving.count(moving) == 1 else f"{moving}-to-{_safe(stem(row['fixed']))}"
        ids.append(name)
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    if repeated:
        raise InputError(f"{where}: pair ids repeat ({', '.join(repeated[:5])}); give each row a unique 'id'")
    return ids


def make_pairs(rows: list, method: str, params: dict = None, models=None, where: str = "pairs") -> list:
    """:class:`Pair` objects from row dicts (file paths already resolved), with the batch's defaults."""
    if not rows:
        raise InputError(f"{where} lists no pairs")
    pairs = []
    for n, (row, pair_id) in enumerate(zip(rows, assign_ids(rows, where)), start=1):
        for key in REQUIRED:
            if not str(row.get(key) or "").strip():
                raise InputError(f"{where}, row {n}: empty '{key}'")
        own_method = (row.get("method") or "").strip()
        options = {} if own_method and own_method != method else dict(params or {})
        if not own_method and models:
            options["models"] = list(models)
        options.update(parse_params(row.get("params") or "", f"{where}, row {n}, params"))
        if (row.get("model") or "").strip():
            options["models"] = [m.strip() for m in row["model"].split(";") if m.strip()]
        files = {k: str(row[k]) for k in FILE_COLUMNS if str(row.get(k) or "").strip()}
        pairs.append(Pair(pair_id, files, own_method or method, options))
    return pairs


def read_pairs_csv(path, method: str, params: dict = None, models=None) -> list:
    """The pairs of a batch CSV (see the module docstring); unknown columns are refused (a typo would
    otherwise drop a mask silently)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"pairs CSV not found: {path}")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in reader.fieldnames or []]
        missing = [c for c in REQUIRED if c not in header]
        if missing:
            raise InputError(f"{path}: the header must name the columns 'fixed' and 'moving' (got {header})")
        unknown = [c for c in header if c not in COLUMNS]
        if unknown:
            raise InputError(f"{path}: unknown column(s) {', '.join(unknown)}; known: {', '.join(COLUMNS)}")
        rows = []
        for raw in reader:
            row = {k.strip(): (v or "").strip() for k, v in raw.items() if k is not None}
            if not any(row.values()):
                continue
            for key in FILE_COLUMNS:
                if row.get(key):
                    p = Path(row[key]).expanduser()
                    row[key] = str(p if p.is_absolute() else path.parent / p)
            rows.append(row)
    return make_pairs(rows, method, params, models, str(path))
