"""Sedghi et al. 2018, experiments 2 and 3 (scaled down for a CPU): NMI vs the learned CNN metric, Table 1.

``--task t1-t2`` (experiment 2) or ``--task t1-gm`` (experiment 3: the moving image is the gradient
magnitude of the subject's T1). Test subjects come from ``benchmarks/metric_subjects.py`` (SPM
avg152-derived; T1-T2: translations U{1,20} mm, rotations U{-0.2,0.2} rad; T1-GM: U{1,10} mm,
U{-0.1,0.1} rad), with the test seeds 500.. of ``--seed 0``, disjoint from the training seeds of the
bundled sets. Without ``--data`` the test subjects are made here, in a temporary folder. Every case is
registered with ``api.register`` from the identity (``init=none``, as in the paper) by ``nmi`` (60 bins), by
``learned-metric`` as by default ("CNN": a coarse NMI start, then the metric's stages) and by
``learned-metric`` alone ("CNN alone", ``start=none``), with the task's bundled set by default (its metadata
records its training command and data). All three get the same masks, each image's automatic head mask
(``rigid.sampling_region.automatic_foreground``), so they sample the same region: like for like. The table gives Table 1's columns (mean ± sd), the paired
t-tests and Wilcoxon signed-rank tests on ‖Δt‖ (one value per subject), and the mean wall time of each. Results: benchmarks/results/learned_metric_<task>.json.

    python benchmarks/accuracy/learned_metric_accuracy.py --task t1-t2 --cases 8
    python benchmarks/accuracy/learned_metric_accuracy.py --task t1-gm --cases 8
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from scipy import stats

from DeepRegistrationLib.api import register
from DeepRegistrationLib.core.io import read_image
from DeepRegistrationLib.core.transforms import RigidTransform
from DeepRegistrationLib.data.corpus_pairs import METRIC_TASKS
from DeepRegistrationLib.metrics.evaluation import rigid_errors
from DeepRegistrationLib.rigid.sampling_region import automatic_foreground
from DeepRegistrationLib.training.common import read_pairs_csv

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from metric_subjects import make_split  # noqa: E402
from results_json import default_path, write_results  # noqa: E402

COLUMNS = [("t_norm_mm", "‖Δt‖ mm"), ("t_x_mm", "|Δt_x|"), ("t_y_mm", "|Δt_y|"), ("t_z_mm", "|Δt_z|"),
           ("theta_x_deg", "|Δθ_x|°"), ("theta_y_deg", "|Δθ_y|°"), ("theta_z_deg", "|Δθ_z|°")]
DEFAULT_MODELS = {"t1-t2": "sedghi-t1-t2", "t1-gm": "sedghi-t1-gm"}
#: (arm, reference) pairs compared by paired tests; the first is the status table's.
COMPARISONS = (("CNN", "NMI (60 bins)"), ("CNN alone", "NMI (60 bins)"), ("CNN", "CNN alone"))
#: Test subjects of ``metric_subjects.py --seed 0``.
TEST_SEED0 = 500


def run_cases(data_dir, model: str, cases: int, patches: int, max_evaluations: int) -> dict:
    """{"errors": {arm: [errors per case]}, "seconds": {arm: [seconds per case]}} for every arm of :data:`ARMS`."""
    torch.set_num_threads(1)
    data_dir = Path(data_dir)
    rows = read_pairs_csv(data_dir / "test.csv")[:cases]
    truth = json.loads((data_dir / "test_truth.json").read_text())[:cases]
    common = {"init": "none", "confidence": False}
    arms = (("NMI (60 bins)", "nmi", {"bins": 60, **common}),
            ("CNN", "learned-metric", {"models": [model], "patches": patches, "max_evaluations": max_evaluations,
                                       **common}),
            ("CNN alone", "learned-metric", {"models": [model], "patches": patches, "max_evaluations": max_evaluations,
                                             "start": "none", **common}))
    errors = {"initial": [], **{name: [] for name, _, _ in arms}}
    seconds = {name: [] for name, _, _ in arms}
    for row, t in zip(rows, truth):
        fixed, moving = read_image(row["fixed"]), read_image(row["moving"])
        true = RigidTransform(t["angles_rad"], t["translation_mm"], t["center_mm"])
        errors["initial"].append(rigid_errors(RigidTransform(center_mm=true.center_mm), true))
        masks = {f"{side}_mask": image.with_array(automatic_foreground(image).astype(np.uint8))
                 for side, image in (("fixed", fixed), ("moving", moving))}
        for name, method, options in arms:
            t0 = time.perf_counter()
            result = register(fixed, moving, method, "cpu", **masks, **options)
            seconds[name].append(time.perf_counter() - t0)
            errors[name].append(rigid_errors(result.transform, true))
        print(f"  case {len(seconds['CNN'])}: initial ‖t‖ {errors['initial'][-1]['t_norm_mm']:.2f} mm, "
              + ", ".join(f"{name} {errors[name][-1]['t_norm_mm']:.2f} mm" for name, _, _ in arms), flush=True)
    return {"errors": errors, "seconds": seconds}


def paired_tests(result: dict, arm: str = "CNN", reference: str = "NMI (60 bins)") -> dict:
    """Paired tests of ``arm`` against ``reference`` on ‖Δt‖, one value per subject."""
    nmi = np.array([e["t_norm_mm"] for e in result["errors"][reference]])
    cnn = np.array([e["t_norm_mm"] for e in result["errors"][arm]])
    if len(nmi) < 2:
        return {}
    wilcoxon = stats.wilcoxon(cnn, nmi).pvalue if np.any(cnn != nmi) else None
    return {"n": len(nmi), "arm": arm, "reference": reference, "mean_difference_cnn_minus_nmi_mm": float(np.mean(cnn - nmi)),
            "t_test_p": float(stats.ttest_rel(cnn, nmi).pvalue),
            "wilcoxon_p": None if wilcoxon is None else float(wilcoxon)}


def markdown_table(result: dict, task: str) -> str:
    lines = ["| task | method | " + " | ".join(c[1] for c in COLUMNS) + " | s / case |",
             "|---|---|" + "---|" * (len(COLUMNS) + 1)]
    for method, errs in result["errors"].items():
        cells = []
        for key, _ in COLUMNS:
            v = np.array([e[key] for e in errs])
            cells.append(f"{v.mean():.2f} ± {v.std(ddof=1):.2f}" if len(v) > 1 else f"{v.mean():.2f}")
        sec = result["seconds"].get(method)
        lines.append(f"| {task} | {method} | " + " | ".join(cells) + (f" | {np.mean(sec):.1f} |" if sec else " | – |"))
    for arm, reference in COMPARISONS:
        tests = paired_tests(result, arm, reference)
        if tests:
            lines.append(f"Paired on ‖Δt‖ (n = {tests['n']}): mean {arm} − {reference} = "
                         f"{tests['mean_difference_cnn_minus_nmi_mm']:+.2f} mm; paired t-test p = {tests['t_test_p']:.3g}"
                         + (f"; Wilcoxon p = {tests['wilcoxon_p']:.3g}" if tests["wilcoxon_p"] is not None else "") + ".")
    return "\n".join(lines)


def summary(result: dict) -> list:
    """Per method: the mean and sd of every error column over the cases, and the seconds per case."""
    out = []
    for method, errs in result["errors"].items():
        row = {"method": method, "cases": len(errs)}
        for key, _ in COLUMNS:
            v = np.array([e[key] for e in errs], dtype=float)
            row[key] = {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if len(v) > 1 else None}
        sec = result["seconds"].get(method)
        row["seconds_per_case"] = float(np.mean(sec)) if sec else None
        out.append(row)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", choices=list(METRIC_TASKS), required=True)
    p.add_argument("--data", help="folder written by metric_subjects.py --task TASK --seed 0 (default: make the "
                                  "test subjects here)")
    p.add_argument("--model", help="metric set (bundled name or file; default: the task's bundled set)")
    p.add_argument("--cases", type=int, default=8)
    p.add_argument("--patches", type=int, default=128, help="n of eq. 2")
    p.add_argument("--max-evaluations", type=int, default=200, help="Powell budget per stage")
    p.add_argument("--json", help="results file (default benchmarks/results/learned_metric_<task>.json)")
    args = p.parse_args(argv)
    model = args.model or DEFAULT_MODELS[args.task]
    name = f"learned_metric_{args.task.replace('-', '_')}"
    args.json = args.json or default_path(name)
    (lo, hi), rotation = METRIC_TASKS[args.task]
    data = (f"SPM avg152-derived {args.task.upper()} test subjects {TEST_SEED0}..{TEST_SEED0 + args.cases - 1} of "
            f"metric_subjects.py --seed 0 (unseen in training); translations U{{{lo:g},{hi:g}}} mm, rotations "
            f"U{{-{rotation:g},{rotation:g}}} rad")
    print(f"Data: {data}. Metric: {model}; n = {args.patches} patches, {args.max_evaluations} Powell evaluations "
          f"per stage.")
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.data
        if folder is None:
            folder = tmp
            make_split(Path(tmp), "test", args.cases, TEST_SEED0, args.task, (lo, hi), rotation)
        result = run_cases(folder, model, args.cases, args.patches, args.max_evaluations)
    print(markdown_table(result, args.task.upper()))
    write_results(args.json, "benchmarks/accuracy/learned_metric_accuracy.py", data,
                  {"methods": summary(result), "paired_tests_t_norm": paired_tests(result),
                   "paired_tests_all": [paired_tests(result, a, b) for a, b in COMPARISONS],
                   "per_case_t_norm_mm": {m: [e["t_norm_mm"] for e in errs] for m, errs in result["errors"].items()}},
                  task=args.task, model=model, patches=args.patches, max_evaluations=args.max_evaluations)
    return 0


if __name__ == "__main__":
    sys.exit(main())
