"""``--method mi``: rigid registration maximizing NMI (60 bins by default, Sedghi et al.'s baseline)."""
from __future__ import annotations

from ..api import MethodOutput, RegistrationContext
from ..core.errors import InputError
from ..core.image import Image
from ..core.transforms import LinearTransform, RigidTransform
from .mi import MISettings, register_nmi

OPTIONS = {"bins": int, "levels": str, "max_points": int, "seed": int}


def settings_from_options(options: dict) -> MISettings:
    unknown = set(options) - set(OPTIONS)
    if unknown:
        raise InputError(f"unknown option(s) for --method mi: {', '.join(sorted(unknown))} (known: {', '.join(OPTIONS)})")
    s = MISettings()
    if "bins" in options:
        s.bins = int(options["bins"])
    if "levels" in options:
        s.levels = tuple(float(v) for v in str(options["levels"]).split(","))
    if "max_points" in options:
        s.max_points = int(options["max_points"])
    if "seed" in options:
        s.seed = int(options["seed"])
    return s


def initial_rigid(initial, fixed: Image) -> RigidTransform:
    """The starting pose as a rigid transform about the fixed image's centre."""
    if not isinstance(initial, LinearTransform):
        raise InputError("rigid methods need a linear initial transform")
    return RigidTransform.from_matrix4(initial.matrix4(), fixed.grid.center_physical())


def run(fixed: Image, moving: Image, ctx: RegistrationContext) -> MethodOutput:
    settings = settings_from_options(ctx.options)
    transform, stages = register_nmi(fixed, moving, initial_rigid(ctx.initial_transform, fixed), ctx.device,
                                     settings, ctx.progress.sub(0.0, 0.95), ctx.fixed_mask)
    return MethodOutput(transform, transform.inverse(), {
        "metric": f"NMI ({settings.bins} bins)", "levels": list(settings.levels), "stages": stages,
        "evaluations": sum(s["evaluations"] for s in stages),
        "metric_before": stages[0]["metric_before"], "metric_after": stages[-1]["metric_after"],
    })
