"""``deepregistration register FIXED MOVING --method ...``."""
from __future__ import annotations

import argparse
import json
import sys
import textwrap

from ..api import register, write_outputs
from ..core.device import DEVICE_CHOICES
from ..core.errors import InputError
from ..core.io import read_image
from ..core.transforms import read_transform
from ..core.progress import emit_json
from ..methods import PIPELINE_PRESETS, SPECS
from ..rigid.confidence import summary as confidence_line
from ._progress import cli_progress


def parse_params(pairs) -> dict:
    out = {}
    for item in pairs or []:
        if "=" not in item:
            raise InputError(f"--param expects KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        stage, _, key = k.strip().rpartition(".")
        out[f"{stage}." * bool(stage) + key.replace("-", "_")] = v.strip()
    return out


def add_command(sub) -> None:
    p = sub.add_parser("register", help="register MOVING to FIXED", formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Register MOVING to FIXED. The output transform maps fixed points to moving "
                                   "points (ITK convention; resampling MOVING with it onto FIXED gives --out-volume).",
                       epilog="methods, their options (--param KEY=VALUE, defaults shown) and masks:\n" + "\n".join(
                           textwrap.fill(spec.help_line(), 100, initial_indent="  ", subsequent_indent="    ")
                           for spec in SPECS.values()) + "\n\n" + textwrap.fill(
                           "Pipelines: join methods with '+' (e.g. " + ", ".join(PIPELINE_PRESETS) + ") to run them in "
                           "order, each from the previous result, in one call; the report lists every stage. "
                           "--param KEY=VALUE goes to every stage with that option, --param STAGE.KEY=VALUE to one "
                           "stage; --model to the one stage that takes models; a mask to the stages that honour it.",
                           100, initial_indent="  ", subsequent_indent="  "))
    p.add_argument("fixed")
    p.add_argument("moving")
    p.add_argument("--method", default="nmi", metavar="METHOD",
                   help=f"one of {', '.join(SPECS)}, or several joined by '+' (default nmi; see below)")
    p.add_argument("--model", action="append", help="model name (bundled) or file; repeat for staged models")
    p.add_argument("--param", action="append", metavar="KEY=VALUE", help="method option (see below)")
    p.add_argument("--initial-transform", help="ITK transform file to start from (fixed -> moving)")
    p.add_argument("--fixed-mask")
    p.add_argument("--moving-mask")
    p.add_argument("--out-transform", help="ITK transform file (.h5/.tfm/.txt; .nrrd for fields)")
    p.add_argument("--out-volume", help="MOVING resampled onto FIXED")
    p.add_argument("--out-inverse", help="inverse transform (moving -> fixed points), deformable methods")
    p.add_argument("--out-inverse-volume", help="FIXED resampled onto MOVING with the inverse")
    p.add_argument("--out-jacobian", help="Jacobian determinant map on the fixed grid (deformable methods)")
    p.add_argument("--report", help="JSON report")
    p.add_argument("--device", default="auto", help=f"one of {', '.join(DEVICE_CHOICES)} (default auto)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--progress-json", action="store_true",
                   help="print progress and the outcome as JSON lines on stdout (for the Slicer module)")
    p.set_defaults(func=run)


def run(args) -> int:
    fixed = read_image(args.fixed, "fixed image")
    moving = read_image(args.moving, "moving image")
    options = parse_params(args.param)
    initial = read_transform(args.initial_transform) if args.initial_transform else None
    fixed_mask = read_image(args.fixed_mask, "fixed mask", require_volume=False) if args.fixed_mask else None
    moving_mask = read_image(args.moving_mask, "moving mask", require_volume=False) if args.moving_mask else None
    with cli_progress(f"register ({args.method})", not args.quiet, args.progress_json) as progress:
        result = register(fixed, moving, args.method, args.device, progress, initial, fixed_mask, moving_mask,
                          args.model, **options)
    warnings = result.report.get("warnings", [])
    if not args.progress_json:
        if result.report.get("model_note"):
            print(result.report["model_note"])
        for warning in warnings:
            print(f"warning: {warning}", file=sys.stderr)
    written = write_outputs(result, args.out_transform, args.out_volume, args.report, args.out_inverse,
                            args.out_jacobian, args.out_inverse_volume)
    r = result.report
    if args.progress_json:
        emit_json(event="done", outputs=written, model_note=r.get("model_note", ""), warnings=warnings)
        return 0
    for stage in r.get("stages", []) if "+" in args.method else []:
        print(f"  stage {stage['method']}: {stage['transform_type']} in {stage['seconds']:.1f} s")
        if "confidence" in stage["report"]:
            print(f"    {confidence_line(stage['report']['confidence'])}")
    print(f"{args.method}: NMI(64) {r['nmi64_before']:.4f} -> {r['nmi64_after']:.4f} in {r['seconds_total']:.1f} s "
          f"on {r['device']}")
    if "confidence" in r:
        print(confidence_line(r["confidence"]))
    if "folding_percent" in r:
        print(f"Jacobian: mean {r['jacobian_mean']:.3f}, min {r['jacobian_min']:.3f}, "
              f"folding {r['folding_percent']:.4f} %")
    for kind, path in written.items():
        print(f"  {kind}: {path}")
    if not written:
        print(json.dumps({k: r[k] for k in ("parameters", "matrix_lps") if k in r}))
    return 0
