"""Sedghi et al. Table 1 on test subjects: NMI (60 bins) vs the learned CNN metric, with a paired test.

Shared by metric_experiment2.py (T1↔T2) and metric_experiment3.py (T1↔GM). Reads a test split made by
metric_subjects.py (pairs CSV + true transforms), registers every case with ``api.register`` using
``mi`` (bins=60) and ``cnn`` (the given metric set), from the identity, and prints the Table 1 columns
(mean ± sd), the paired t-test and Wilcoxon signed-rank test on ‖Δt‖, and the mean wall time of each.
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
    """{method: [errors per case]} and {method: [seconds per case]} for NMI and the CNN metric."""
    torch.set_num_threads(1)
    data_dir = Path(data_dir)
    rows = read_pairs_csv(data_dir / "test.csv")[:cases]
    truth = json.loads((data_dir / "test_truth.json").read_text())[:cases]
    errors = {"initial": [], "NMI (60 bins)": [], "CNN": []}
    seconds = {"NMI (60 bins)": [], "CNN": []}
    for row, t in zip(rows, truth):
        fixed, moving = read_image(row["fixed"]), read_image(row["moving"])
        true = RigidTransform(t["angles_rad"], t["translation_mm"], t["center_mm"])
        errors["initial"].append(rigid_errors(RigidTransform(center_mm=true.center_mm), true))
        for name, method, options in (("NMI (60 bins)", "nmi", {"bins": 60}),
                                      ("CNN", "learned-metric", {"models": [model], "patches": patches,
                                                      "max_evaluations": max_evaluations})):
            t0 = time.perf_counter()
            result = register(fixed, moving, method, "cpu", **options)
            seconds[name].append(time.perf_counter() - t0)
            errors[name].append(rigid_errors(result.transform, true))
        print(f"  case {len(seconds['CNN'])}: initial ‖t‖ {errors['initial'][-1]['t_norm_mm']:.2f} mm, "
              f"NMI {errors['NMI (60 bins)'][-1]['t_norm_mm']:.2f} mm, CNN {errors['CNN'][-1]['t_norm_mm']:.2f} mm",
              flush=True)
    return {"errors": errors, "seconds": seconds}


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
    nmi = np.array([e["t_norm_mm"] for e in result["errors"]["NMI (60 bins)"]])
    cnn = np.array([e["t_norm_mm"] for e in result["errors"]["CNN"]])
    if len(nmi) > 1:
        t = stats.ttest_rel(cnn, nmi)
        w = stats.wilcoxon(cnn, nmi) if np.any(cnn != nmi) else None
        lines.append("")
        lines.append(f"Paired on ‖Δt‖ (n = {len(nmi)}): mean CNN − NMI = {np.mean(cnn - nmi):+.2f} mm; "
                     f"paired t-test p = {t.pvalue:.3g}" + (f"; Wilcoxon p = {w.pvalue:.3g}" if w else "") + ".")
        lines.append(f"Target (CNN mean ‖Δt‖ below NMI's): {'met' if cnn.mean() < nmi.mean() else 'NOT met'} "
                     f"({cnn.mean():.2f} vs {nmi.mean():.2f} mm).")
    return "\n".join(lines)
