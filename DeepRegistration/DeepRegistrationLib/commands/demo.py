"""``deepregistration demo``: the main job on the built-in sample data, start to finish."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..api import register, write_outputs
from ..core.io import write_image
from ..core.warp import warp
from ..data import sources
from ..data.synthetic import random_rigid, smooth_random_field
from ..methods import SPECS
from ..metrics.evaluation import rigid_errors
from ..rigid.response_functions import nmi_and_cnn_panels
from ..viz.deformation_grid import save_deformation_grid_figure
from ..viz.overlay import save_checkerboard_figure
from ..viz.response_plot import save_response_plot
from ._progress import cli_progress

#: The rigid methods the demo runs on its T1/T2 pair (the multimodal ones with a bundled T1/T2 model).
RIGID_DEMO_METHODS = ("nmi", "learned-metric")


def add_command(sub) -> None:
    p = sub.add_parser("demo", help="register sample pairs with the bundled methods and write the results",
                       description="Loads the SPM avg152 T1 (fixed) and T2 (moving) templates, misregisters T2 by "
                                   "a random rigid transform from Sedghi et al.'s distribution and registers it back "
                                   "with NMI and with the bundled learned CNN metric (warped volumes, transforms, reports, a "
                                   "before/after checkerboard PNG, response functions of both metrics); then "
                                   "registers the T1 to a synthetically deformed T1 with the bundled diffeomorphic "
                                   "model (Jacobian map and deformation-grid picture).")
    p.add_argument("--out", default="deepregistration-demo", help="output folder (default ./deepregistration-demo)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=run)


def make_misregistered_pair(seed: int):
    """Fixed SPM T1, moving SPM T2 displaced by a known rigid transform (fixed -> moving)."""
    fixed, t2 = sources.spm_avg152("T1"), sources.spm_avg152("T2")
    true = random_rigid(np.random.default_rng(seed), fixed.grid.center_physical())
    moving = warp(t2, t2.grid, true.inverse())  # moving(T(x)) = t2(x)
    return fixed, moving, true


def _print_rigid(name: str, report: dict) -> None:
    e = report["errors_vs_truth"]
    print(f"{name}: translation error {e['t_norm_mm']:.2f} mm, rotation errors "
          f"{e['theta_x_deg']:.2f}/{e['theta_y_deg']:.2f}/{e['theta_z_deg']:.2f} deg, {report['seconds_total']:.1f} s")


def rigid_steps(fixed, moving, true, out: Path, device: str) -> dict:
    """NMI and CNN-metric rigid registration of the T1/T2 pair, the checkerboard and the response functions."""
    written = {}
    for method in RIGID_DEMO_METHODS:
        with cli_progress(SPECS[method].label) as progress:
            result = register(fixed, moving, method, device, progress)
        result.report["errors_vs_truth"] = rigid_errors(result.transform, true)
        written.update({f"{method}_{k}": v for k, v in write_outputs(
            result, out / f"{method}_transform.h5", out / f"{method}_warped.nrrd", out / f"{method}_report.json").items()})
        if result.report.get("model_note"):
            print(result.report["model_note"])
        _print_rigid(method, result.report)
        if method == "nmi":
            written["checkerboard"] = save_checkerboard_figure(
                fixed, warp(moving, fixed.grid), result.warped, out / "nmi_checkerboard.png",
                "SPM avg152 T1 (fixed) vs T2 (moving): NMI rigid registration")
    written["response"] = save_response_plot([], out / "response_nmi_vs_cnn.png",
                                             "response functions around the true pose",
                                             panels=nmi_and_cnn_panels(fixed, moving, true, SPECS["learned-metric"].default_model))
    return written


def diffeo_step(fixed, out: Path, seed: int, device: str) -> tuple:
    """The bundled diffeomorphic model on the T1 and a synthetically deformed copy of it."""
    deformed = warp(fixed, fixed.grid, smooth_random_field(fixed.grid, np.random.default_rng(seed), 4.0))
    with cli_progress(f"{SPECS['diffeo'].label} (T1 vs deformed T1)") as progress:
        result = register(fixed, deformed, "diffeo", device, progress)
    written = {f"diffeo_{k}": v for k, v in write_outputs(
        result, out / "diffeo_transform.h5", out / "diffeo_warped.nrrd", out / "diffeo_report.json",
        out_jacobian=out / "diffeo_jacobian.nrrd").items()}
    written["diffeo_grid"] = save_deformation_grid_figure(result.warped, result.transform, out / "diffeo_grid.png",
                                                          "SPM T1 vs deformed T1: diffeo, morphed grid over warped")
    r = result.report
    print(f"diffeo: NMI {r['nmi64_before']:.4f} -> {r['nmi64_after']:.4f}, folding {r['folding_percent']:.4f} %, "
          f"{r['seconds_total']:.1f} s")
    return written, {k: r[k] for k in ("nmi64_before", "nmi64_after", "folding_percent", "jacobian_min")}


def run(args) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print("loading the sample data (SPM avg152 T1/T2; fetched into the cache on first use)...")
    print("note: the SPM avg152 templates are training data of the bundled models (the learned metric set and the "
          "diffeo model were trained on subjects made from them): the demo shows the methods working, not their "
          "accuracy on unseen anatomy (see docs/corpus.md for the test-split evaluation)")
    fixed, moving, true = make_misregistered_pair(args.seed)
    write_image(fixed, out / "fixed_T1.nrrd")
    write_image(moving, out / "moving_T2.nrrd")
    written = rigid_steps(fixed, moving, true, out, args.device)
    diffeo_written, diffeo_summary = diffeo_step(fixed, out, args.seed, args.device)
    written.update(diffeo_written)
    summary = {"true_transform": {"angles_deg": np.degrees(true.angles_rad).tolist(),
                                  "translation_mm": true.translation_mm.tolist()},
               **{m: json.loads((out / f"{m}_report.json").read_text())["errors_vs_truth"] for m in RIGID_DEMO_METHODS},
               "diffeo": diffeo_summary}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"results in {out.resolve()}:")
    for path in [*written.values(), out / "summary.json"]:
        print(f"  {path}")
    return 0
