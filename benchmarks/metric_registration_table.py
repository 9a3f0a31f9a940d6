"""Sedghi et al. Table 1 on test subjects: NMI (60 bins) vs the learned CNN metric, with paired tests.

Shared by metric_experiment2.py (T1↔T2) and metric_experiment3.py (T1↔GM). Reads a test split made by
metric_subjects.py (pairs CSV + true transforms), registers every case with ``api.register`` from the
identity using ``nmi`` (bins=60), ``learned-metric`` alone (``start=none``, the given metric set) and
``learned-metric`` as by default (``start=nmi``: a coarse NMI start, then the metric's stages). All three
sample the same region (:mod:`rigid.sampling_region`: the automatic foregrounds of both images, no
mask given), so the comparison is like for like. Prints the Table 1 columns (mean ± sd), every case's
‖Δt‖, the paired t-tests and Wilcoxon signed-rank tests on ‖Δt‖ (one value per subject), and the mean
wall time of each.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from scipy import stats

from DeepRegistrationLib.api import register
from DeepRegistrationLib.core.io import read_image
from DeepRegistrationLib.core.transforms import RigidTransform
from DeepRegistrationLib.metrics.evaluation import rigid_errors
from DeepRegistrationLib.training.common import read_pairs_csv

COLUMNS = [("t_norm_mm", "‖Δt‖ mm"), ("t_x_mm", "|Δt_x|"), ("t_y_mm", "|Δt_y|"), ("t_z_mm", "|Δt_z|"),
           ("theta_x_deg", "|Δθ_x|°"), ("theta_y_deg", "|Δθ_y|°"), ("theta_z_deg", "|Δθ_z|°")]


def run_cases(data_dir, model: str, cases: int, patches: int, max_evaluations: int) -> dict:
    """{method: [errors per case]} and {method: [seconds per case]} for NMI, the CNN metric alone and after an
    NMI start."""
    torch.set_num_threads(1)
    data_dir = Path(data_dir)
    rows = read_pairs_csv(data_dir / "test.csv")[:cases]
    truth = json.loads((data_dir / "test_truth.json").read_text())[:cases]
    arms = (("NMI (60 bins)", "nmi", {"bins": 60}),
            ("CNN", "learned-metric", {"models": [model], "patches": patches, "max_evaluations": max_evaluations,
                                       "start": "none"}),
            ("NMI start + CNN", "learned-metric", {"models": [model], "patches": patches,
                                                   "max_evaluations": max_evaluations, "start": "nmi"}))
    errors = {"initial": [], **{name: [] for name, _, _ in arms}}
    seconds = {name: [] for name, _, _ in arms}
    for row, t in zip(rows, truth):
        fixed, moving = read_image(row["fixed"]), read_image(row["moving"])
        true = RigidTransform(t["angles_rad"], t["translation_mm"], t["center_mm"])
        errors["initial"].append(rigid_errors(RigidTransform(center_mm=true.center_mm), true))
        for name, method, options in arms:
            t0 = time.perf_counter()
            result = register(fixed, moving, method, "cpu", **options)
            seconds[name].append(time.perf_counter() - t0)
            errors[name].append(rigid_errors(result.transform, true))
        print(f"  case {len(seconds['CNN'])}: initial ‖t‖ {errors['initial'][-1]['t_norm_mm']:.2f} mm, "
              + ", ".join(f"{name} {errors[name][-1]['t_norm_mm']:.2f} mm" for name, _, _ in arms),
              flush=True)
    return {"errors": errors, "seconds": seconds}


def write_results(path, command: str, result: dict, table: str) -> None:
    """The errors and times of every case and the printed table, as JSON."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"command": command, "table": table.splitlines(), **result}, indent=1))


def markdown_table(result: dict, task: str) -> str:
    lines = ["| task | method | " + " | ".join(c[1] for c in COLUMNS) + " | s / case |",
             "|---|---|" + "---|" * (len(COLUMNS) + 1)]
    for method, errs in result["errors"].items():
        cells = []
        for key, _ in COLUMNS:
            v = np.array([e[key] for e in errs])
            cells.append(f"{v.mean():.2f} ± {v.std(ddof=1):.2f}" if len(v) > 1 else f"{v.mean():.2f}")
        sec = result["seconds"].get(method)
        lines.append(f"| {task} | {method} | " + " | ".join(cells) + f" | {np.mean(sec):.1f} |" if sec else
                     f"| {task} | {method} | " + " | ".join(cells) + " | – |")
    per_case = {name: np.array([e["t_norm_mm"] for e in errs]) for name, errs in result["errors"].items()}
    lines.append("")
    lines.append("‖Δt‖ per case (mm): " + "; ".join(f"{name}: " + ", ".join(f"{v:.2f}" for v in values)
                                                    for name, values in per_case.items()))
    for a, b in (("CNN", "NMI (60 bins)"), ("NMI start + CNN", "NMI (60 bins)"), ("NMI start + CNN", "CNN")):
        x, y = per_case[a], per_case[b]
        if len(x) > 1:
            t = stats.ttest_rel(x, y)
            w = stats.wilcoxon(x, y) if np.any(x != y) else None
            lines.append(f"Paired on ‖Δt‖ (n = {len(x)}): mean {a} − {b} = {np.mean(x - y):+.2f} mm; paired t-test "
                         f"p = {t.pvalue:.3g}" + (f"; Wilcoxon p = {w.pvalue:.3g}" if w else "") + ".")
    for name in ("CNN", "NMI start + CNN"):
        cnn, nmi = per_case[name], per_case["NMI (60 bins)"]
        lines.append(f"Target ({name} mean ‖Δt‖ at most NMI's, no case above 5 mm): "
                     f"{'met' if cnn.mean() <= nmi.mean() and cnn.max() <= 5.0 else 'NOT met'} "
                     f"({cnn.mean():.2f} vs {nmi.mean():.2f} mm; worst {cnn.max():.2f} mm).")
    return "\n".join(lines)
