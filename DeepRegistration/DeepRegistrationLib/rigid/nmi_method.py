"""``--method nmi``: rigid registration maximizing NMI (60 bins by default, Sedghi et al.'s baseline)."""
from __future__ import annotations

from ..method_spec import MethodOutput, MethodSpec, Option, RegistrationContext

SPEC = MethodSpec(
    name="nmi", label="Rigid, normalized mutual information (Powell)", transform="rigid",
    module=__name__, inverse=True, masks=frozenset({"fixed"}),
    options=(
        Option("bins", "int", 60, "histogram bins", minimum=8, maximum=256),
        Option("levels", "floats", (4.0, 2.0, 1.0), "pyramid spacings in mm, coarse to fine", minimum=0.1),
        Option("max_points", "int", 60000, "fixed points sampled per level", minimum=1000),
        Option("seed", "int", 0, "seed of the point sample"),
    ))


def run(fixed, moving, ctx: RegistrationContext) -> MethodOutput:
    from .mi import MISettings, register_nmi
    from .powell import initial_rigid
    settings = MISettings(**ctx.options)
    transform, stages = register_nmi(fixed, moving, initial_rigid(ctx.initial_transform, fixed), ctx.device,
                                     settings, ctx.progress.sub(0.0, 0.95), ctx.fixed_mask)
    return MethodOutput(transform, transform.inverse(), {
        "metric": f"NMI ({settings.bins} bins)", "levels": list(settings.levels), "stages": stages,
        "evaluations": sum(s["evaluations"] for s in stages),
        "metric_before": stages[0]["metric_before"], "metric_after": stages[-1]["metric_after"],
    })
