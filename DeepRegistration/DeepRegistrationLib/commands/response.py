"""``deepregistration response FIXED MOVING --metric nmi --metric cnn:MODEL --out R.csv --plot R.png``."""
from __future__ import annotations

from ..core.errors import InputError
from ..core.io import read_image
from ..core.transforms import LinearTransform, RigidTransform, read_transform
from ..core.device import resolve_device
from ..rigid.response_functions import build_metrics, peak_offsets, response_functions, write_response_csv
from ..viz.response_plot import save_response_plot


def add_command(sub) -> None:
    p = sub.add_parser("response", help="response functions of similarity metrics around a pose",
                       description="Evaluate metrics as functions of each rigid parameter (tx, ty, tz in mm; rx, ry, "
                                   "rz in degrees) around a pose, over a fixed set of patches (Sedghi et al. 2018, "
                                   "Fig. 2). Metrics: nmi, ncc, cnn:MODEL (a bundled name or a model file; one curve "
                                   "per stage).")
    p.add_argument("fixed")
    p.add_argument("moving")
    p.add_argument("--metric", action="append", required=True, help="nmi, ncc or cnn:MODEL; repeat for several")
    p.add_argument("--pose", help="ITK transform file (fixed -> moving) to centre the curves on (default identity)")
    p.add_argument("--patches", type=int, default=64, help="number of patches (default 64, as in the paper)")
    p.add_argument("--range-mm", type=float, default=20.0)
    p.add_argument("--range-deg", type=float, default=15.0)
    p.add_argument("--steps", type=int, default=41)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fixed-mask")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", required=True, help="CSV of metric, parameter, unit, offset, value")
    p.add_argument("--plot", help="PNG figure")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.patches < 1:
        raise InputError("--patches must be at least 1")
    fixed, moving = read_image(args.fixed, "fixed image"), read_image(args.moving, "moving image")
    mask = read_image(args.fixed_mask, "fixed mask", require_volume=False) if args.fixed_mask else None
    centre = fixed.grid.center_physical()
    pose = RigidTransform(center_mm=centre)
    if args.pose:
        t = read_transform(args.pose)
        if not isinstance(t, LinearTransform):
            raise InputError("--pose must be a rigid transform file")
        pose = RigidTransform.from_matrix4(t.matrix4(), centre)
    device = resolve_device(args.device)
    metrics = [m for spec in args.metric for m in build_metrics(spec, fixed, moving, args.patches, args.seed, device,
                                                                fixed_mask=mask)]
    rows = response_functions(metrics, pose, args.range_mm, args.range_deg, args.steps)
    print(f"response functions written to {write_response_csv(rows, args.out)}")
    for (metric, param), offset in peak_offsets(rows).items():
        print(f"  {metric}: peak of {param} at {offset:+.2f}")
    if args.plot:
        print(f"figure: {save_response_plot(rows, args.plot, 'response functions')}")
    return 0
