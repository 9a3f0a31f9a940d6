"""The QA report of a batch: one row per pair, flagged pairs first, as HTML, CSV, JSON and a cohort plot.

``report.html`` is static and opens from disk: inline CSS, a small inline script that sorts the table
by any column, and thumbnails as relative links into ``pairs/<id>/``. The rules that flag a pair are
stated at the top of the page (:data:`RULES`).
"""
from __future__ import annotations

import csv
import html
import json
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import quote

import numpy as np

from ..viz.figure import pyplot, save_figure
from . import store

#: det J <= 0 anywhere
FOLDING = "folding"
#: NMI (64 bins) after < before, or mean Dice after < before where label maps are given
WORSE = "similarity worse"
#: the method's own confidence below this (where it reports one)
CONFIDENCE_MIN = 0.5
LOW_CONFIDENCE = "low confidence"
#: mean inverse-consistency error above this fraction of the fixed image's smallest spacing
INVERSE_ERROR_MAX_VOXELS = 0.5
INVERSE = "inverse error"
FAILED = "failed"

RULES = (
    (FAILED, "the registration failed; its error is shown and the pair is retried by the next run."),
    (FOLDING, "at least one voxel folds (det J ≤ 0)."),
    (WORSE, "NMI (64 bins) is lower after registration than before, or, where label maps are given, the mean "
            "Dice is."),
    (LOW_CONFIDENCE, f"the method reports its confidence in the result and it is low: a report entry "
                     f"'flagged' that is true, or 'confidence' below {CONFIDENCE_MIN} (methods without one are "
                     f"not judged on it)."),
    (INVERSE, f"the mean inverse-consistency error ‖φ⁻¹(φ(x)) − x‖ exceeds {INVERSE_ERROR_MAX_VOXELS} voxel of "
              f"the fixed image (methods that give an inverse)."),
)

#: (key, header, numeric, decimals) of the table's columns, in order
COLUMNS = (
    ("rank", "#", True, 0), ("id", "pair", False, None), ("method", "method", False, None),
    ("status", "status", False, None), ("flags", "flags", False, None),
    ("nmi_before", "NMI before", True, 4), ("nmi_after", "NMI after", True, 4), ("nmi_gain", "ΔNMI", True, 4),
    ("dice_before", "Dice before", True, 3), ("dice_after", "Dice after", True, 3),
    ("folding_voxels", "folding voxels", True, 0), ("folding_percent", "folding %", True, 4),
    ("jacobian_min", "min det J", True, 3), ("jacobian_max", "max det J", True, 3),
    ("inverse_error_mean_mm", "inverse error mean (mm)", True, 3),
    ("inverse_error_max_mm", "inverse error max (mm)", True, 3),
    ("confidence", "confidence", False, None), ("seconds", "time (s)", True, 1),
)
THUMBNAILS = (("checkerboard", "checkerboard"), ("jacobian", "Jacobian"), ("grid", "deformation grid"))


def _number(value):
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value) \
        else None


def confidence_of(report: dict) -> tuple:
    """(shown value, low?) of a method's own confidence: a 'confidence' number or dict, a 'flagged' bool."""
    value = report.get("confidence")
    flagged = report.get("flagged")
    if isinstance(value, dict):
        flagged = value.get("flagged", flagged)
        value = value.get("value", value.get("confidence"))
    number = _number(value)
    low = bool(flagged) if isinstance(flagged, bool) else False
    if number is not None:
        low = low or number < CONFIDENCE_MIN
        return f"{number:.3g}" + (" (flagged)" if flagged is True else ""), low
    if isinstance(flagged, bool):
        return "flagged" if flagged else "ok", low
    return "", False


def pair_row(pair_id: str, status: dict, report: dict) -> dict:
    """The figures of one pair, from its ``status.json`` and ``register``'s ``report.json``."""
    inverse = report.get("inverse_consistency_mm") or {}
    row = {"id": pair_id, "method": status.get("method", report.get("method", "")),
           "status": status.get("status", "not run"), "error": status.get("error", ""),
           "nmi_before": _number(report.get("nmi64_before")), "nmi_after": _number(report.get("nmi64_after")),
           "dice_before": _number(report.get("dice_before")), "dice_after": _number(report.get("dice_after")),
           "folding_voxels": report.get("folding_voxels"), "folding_percent": _number(report.get("folding_percent")),
           "jacobian_min": _number(report.get("jacobian_min")), "jacobian_max": _number(report.get("jacobian_max")),
           "inverse_error_mean_mm": _number(inverse.get("mean")), "inverse_error_max_mm": _number(inverse.get("max")),
           "seconds": _number(report.get("seconds_total", status.get("seconds"))),
           "fixed": status.get("files", {}).get("fixed", ""), "moving": status.get("files", {}).get("moving", "")}
    row["nmi_gain"] = (row["nmi_after"] - row["nmi_before"]
                       if row["nmi_before"] is not None and row["nmi_after"] is not None else None)
    row["confidence"], low = confidence_of(report)
    spacing = (report.get("fixed_grid") or {}).get("spacing")
    thumbs = status.get("thumbnails", {}) if row["status"] == "done" else {}
    for kind, _ in THUMBNAILS:
        row[kind] = f"pairs/{pair_id}/{thumbs[kind]}" if kind in thumbs else ""
    row["slice_z"] = thumbs.get("slice_z")
    row["log"] = f"pairs/{pair_id}/log.txt" if status else ""
    row["flags"] = flags(row, low, min(spacing) if spacing else None)
    return row


def flags(row: dict, low_confidence: bool = False, smallest_spacing_mm: float = None) -> list:
    """The rules (:data:`RULES`) a pair's row breaks."""
    if row["status"] == "failed":
        return [FAILED]
    out = []
    if (row["folding_voxels"] or 0) > 0:
        out.append(FOLDING)
    if (row["nmi_gain"] is not None and row["nmi_gain"] < 0) or (
            row["dice_before"] is not None and row["dice_after"] is not None and row["dice_after"] < row["dice_before"]):
        out.append(WORSE)
    if low_confidence:
        out.append(LOW_CONFIDENCE)
    if (row["inverse_error_mean_mm"] is not None and smallest_spacing_mm
            and row["inverse_error_mean_mm"] > INVERSE_ERROR_MAX_VOXELS * smallest_spacing_mm):
        out.append(INVERSE)
    return out


def ordered(rows: list) -> list:
    """Failed pairs, then flagged ones (most flags, most folding, largest NMI loss first), then the rest in
    the batch's order, then pairs not run; ``rank`` numbers the result."""
    def key(item):
        n, row = item
        if row["status"] == "failed":
            group = 0
        elif row["flags"]:
            group = 1
        elif row["status"] == "done":
            group = 2
        else:
            group = 3
        gain = row["nmi_gain"] if row["nmi_gain"] is not None else 0.0
        return (group, -len(row["flags"]), -(row["folding_percent"] or 0.0), gain if group == 1 else 0.0, n)

    out = [row for _, row in sorted(enumerate(rows), key=key)]
    for rank, row in enumerate(out, start=1):
        row["rank"] = rank
    return out


def collect_rows(out, pair_ids) -> list:
    rows = []
    for pair_id in pair_ids:
        folder = store.pair_dir(out, pair_id)
        status = store.read_status(folder)
        try:
            report = json.loads((folder / "report.json").read_text()) if status.get("status") == "done" else {}
        except (OSError, ValueError):
            report = {}
        rows.append(pair_row(pair_id, status, report))
    return ordered(rows)


def write_report(out, pair_ids, title: str = "DeepRegistration batch", notes: list = ()) -> dict:
    """Write ``report.html``, ``report.csv``, ``report.json`` and ``cohort.png`` into ``out`` for the pairs
    ``pair_ids`` (in the batch's order); returns {kind: path} and the ordered rows under ``rows``."""
    out = Path(out)
    rows = collect_rows(out, pair_ids)
    paths = {"csv": out / "report.csv", "json": out / "report.json", "plot": out / "cohort.png",
             "html": out / "report.html"}
    keys = [k for k, *_ in COLUMNS] + ["error", "slice_z", "fixed", "moving", "checkerboard", "jacobian", "grid", "log"]
    tmp = paths["csv"].with_name(".report.csv.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ";".join(row[k]) if k == "flags" else ("" if row[k] is None else row[k]) for k in keys})
    tmp.replace(paths["csv"])
    store.write_json_atomic(paths["json"], {"title": title, "rules": dict(RULES), "pairs": rows})
    save_cohort_plot(rows, paths["plot"])
    tmp = paths["html"].with_name(".report.html.tmp")
    tmp.write_text(render_html(rows, title, notes))
    tmp.replace(paths["html"])
    return {**{k: str(v) for k, v in paths.items()}, "rows": rows}


def save_cohort_plot(rows: list, path) -> Path:
    """The distribution of NMI gains, NMI gain against folding, and the time per pair (PNG)."""
    plt = pyplot()
    done = [r for r in rows if r["status"] == "done" and r["nmi_gain"] is not None]
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.0))
    gains = np.array([r["nmi_gain"] for r in done])
    flagged = np.array([bool(r["flags"]) for r in done], dtype=bool)
    if done:
        axes[0].hist([gains[~flagged], gains[flagged]], bins=20, stacked=True, color=["#4477aa", "#cc3311"],
                     label=["not flagged", "flagged"])
        axes[0].axvline(0.0, color="0.3", lw=0.8, ls="--")
        axes[0].legend(fontsize=7)
        folding = np.array([r["folding_percent"] or 0.0 for r in done])
        axes[1].scatter(gains[~flagged], folding[~flagged], s=14, color="#4477aa")
        axes[1].scatter(gains[flagged], folding[flagged], s=18, color="#cc3311")
        axes[1].axvline(0.0, color="0.3", lw=0.8, ls="--")
        axes[2].hist([r["seconds"] for r in done if r["seconds"] is not None], bins=20, color="#777777")
    axes[0].set_xlabel("NMI gain (after − before)", fontsize=8)
    axes[0].set_ylabel("pairs", fontsize=8)
    axes[1].set_xlabel("NMI gain", fontsize=8)
    axes[1].set_ylabel("folding voxels (%)", fontsize=8)
    axes[2].set_xlabel("time per pair (s)", fontsize=8)
    failed = sum(r["status"] == "failed" for r in rows)
    fig.suptitle(f"{len(done)} registered pairs" + (f", {failed} failed" if failed else ""), fontsize=9)
    for ax in axes:
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    return save_figure(fig, path)


STYLE = """
body { font: 12px/1.35 system-ui, sans-serif; margin: 1em; color: #222; }
h2 { font-size: 1.15em; margin: 1em 0 .3em; }
h1 { font-size: 1.4em; margin: 0 0 .3em; }
table { border-collapse: collapse; }
th, td { border: 1px solid #ccc; padding: 3px 6px; text-align: right; vertical-align: middle; }
td.text, th.text { text-align: left; }
th { background: #eee; cursor: pointer; user-select: none; position: sticky; top: 0; }
th[data-dir=asc]::after { content: " ▲"; } th[data-dir=desc]::after { content: " ▼"; }
tr.flagged td { background: #fde8e4; } tr.failed td { background: #f6c4bb; }
tr.notrun td { color: #888; }
td.flags { color: #a3190a; font-weight: 600; text-align: left; }
td img { height: 120px; display: block; }
.error { font-size: 11px; color: #a3190a; max-width: 28em; text-align: left; }
.rules { margin: .2em 0 .8em; } .rules li { margin: .1em 0; }
"""

SCRIPT = """
(function () {
  var table = document.getElementById('pairs');
  var heads = table.tHead.rows[0].cells;
  function value(row, col) {
    var cell = row.cells[col];
    return cell.hasAttribute('data-sort') ? cell.getAttribute('data-sort') : cell.textContent.trim();
  }
  Array.prototype.forEach.call(heads, function (th, col) {
    th.addEventListener('click', function () {
      var asc = th.getAttribute('data-dir') !== 'asc';
      Array.prototype.forEach.call(heads, function (h) { h.removeAttribute('data-dir'); });
      th.setAttribute('data-dir', asc ? 'asc' : 'desc');
      var numeric = th.getAttribute('data-type') === 'num';
      var body = table.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        var x = value(a, col), y = value(b, col);
        if (numeric) {
          x = x === '' ? NaN : Number(x); y = y === '' ? NaN : Number(y);
          if (isNaN(x) || isNaN(y)) { return isNaN(x) - isNaN(y); }
          return asc ? x - y : y - x;
        }
        if (x === '' || y === '') { return (x === '') - (y === ''); }
        return asc ? x.localeCompare(y) : y.localeCompare(x);
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
})();
"""


def _cell(row: dict, key: str, numeric: bool, decimals) -> str:
    value = row[key]
    if key == "flags":
        return f'<td class="flags">{html.escape(", ".join(value))}</td>'
    if key == "status":
        error = f'<div class="error">{html.escape(row["error"])}</div>' if row["error"] else ""
        log = f' (<a href="{quote(row["log"])}">log</a>)' if row["log"] else ""
        return f'<td class="text" data-sort="{html.escape(value)}">{html.escape(value)}{log}{error}</td>'
    if not numeric:
        return f'<td class="text">{html.escape(str(value or ""))}</td>'
    if value is None:
        return '<td data-sort=""></td>'
    shown = f"{value:.{decimals}f}" if decimals else f"{int(round(value))}"
    return f'<td data-sort="{float(value)!r}">{shown}</td>'


def shown_columns(rows: list) -> list:
    """The table's columns without those no pair has a value for (Dice without label maps, inverse error
    without inverses, confidence where no method reports one)."""
    always = {"rank", "id", "method", "status", "flags"}
    return [c for c in COLUMNS if c[0] in always or any(r[c[0]] not in (None, "") for r in rows)]


def render_html(rows: list, title: str, notes: list = ()) -> str:
    counts = {s: sum(r["status"] == s for r in rows) for s in ("done", "failed", "not run")}
    flagged = sum(bool(r["flags"]) for r in rows)
    columns = shown_columns(rows)
    head = "".join(f'<th data-type="{"num" if numeric else "text"}" class="{"" if numeric else "text"}">'
                   f"{html.escape(label)}</th>" for _, label, numeric, _ in columns)
    head += "".join(f'<th class="text" data-type="text">{html.escape(label)}</th>' for _, label in THUMBNAILS)
    body = []
    for row in rows:
        cls = "failed" if row["status"] == "failed" else "flagged" if row["flags"] else \
            "notrun" if row["status"] != "done" else ""
        cells = "".join(_cell(row, key, numeric, decimals) for key, _, numeric, decimals in columns)
        for kind, label in THUMBNAILS:
            cells += (f'<td class="text"><a href="{quote(row[kind])}"><img src="{quote(row[kind])}" '
                      f'alt="{html.escape(label)} of {html.escape(row["id"])}" loading="lazy"></a></td>'
                      if row[kind] else '<td class="text"></td>')
        body.append(f'<tr class="{cls}" id="pair-{html.escape(row["id"])}" title="{html.escape(row["moving"])} → '
                    f'{html.escape(row["fixed"])}">{cells}</tr>')
    rules = "".join(f"<li><b>{html.escape(name)}</b>: {html.escape(text)}</li>" for name, text in RULES)
    extra = "".join(f"<p>{html.escape(n)}</p>" for n in notes)
    made = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}: QA report</title>
<style>{STYLE}</style></head>
<body>
<h1>{html.escape(title)}: QA report</h1>
<p>{len(rows)} pairs: {counts['done']} registered, {counts['failed']} failed, {counts['not run']} not run;
<b>{flagged} flagged</b>, listed first. Written {made}. Click a column header to sort by it; click # to
return to this order. Thumbnails show the axial slice with the most folding voxels, else the one through
the smallest det J within the fixed image's foreground (the middle slice for rigid methods); click one to
enlarge it. Columns that no pair has a value for are left out.</p>
{extra}
<p>A pair is flagged when:</p><ul class="rules">{rules}</ul>
<table id="pairs"><thead><tr>{head}</tr></thead>
<tbody>
{chr(10).join(body)}
</tbody></table>
<h2>Cohort</h2>
<p><img src="cohort.png" alt="cohort plot" style="max-width:100%"></p>
<p>The table is also in <a href="report.csv">report.csv</a> and <a href="report.json">report.json</a>; each
pair's outputs and log are in <code>pairs/&lt;pair&gt;/</code>.</p>
<script>{SCRIPT}</script>
</body></html>
"""
