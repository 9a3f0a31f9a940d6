"""``--method nmi``: rigid registration maximizing NMI (60 bins by default, Sedghi et al.'s baseline).

The masks (default: automatic foregrounds) restrict the sample points as for every rigid metric
(:mod:`.sampling_region`).
"""
from __future__ import annotations

from ..method_spec import MethodOutput, MethodSpec, Option, RegistrationContext
from .init_option import CONFIDENCE_OPTION, INIT_OPTION

#: The options of the NMI objective and its pyramid (``nmi-affine`` has them too).
NMI_OPTIONS = (
    Option("bins", "int", 60, "histogram bins", minimum=8, maximum=256),
    Option("levels", "floats", (4.0, 2.0, 1.0), "pyramid levels, coarse to fine: factors by which "
           "each image's spacing is multiplied", minimum=0.1),
    Option("max_points", "int", 60000, "fixed points sampled at the finest level (at most)", minimum=1000),
    Option("seed", "int", 0, "seed of the point sample"),
)

SPEC = MethodSpec(
    name="nmi", label="Rigid, normalized mutual information (Powell)", transform="rigid",
    module=__name__, inverse=True, masks=frozenset({"fixed", "moving"}),
    options=NMI_OPTIONS + (INIT_OPTION, CONFIDENCE_OPTION))


def run(fixed, moving, ctx: RegistrationContext) -> MethodOutput:
    from .confidence import nmi_confidence
    from .initialization import starting_pose
    from .mi import MISettings, register_nmi
    start, init_report = starting_pose(fixed, moving, ctx)
    settings = MISettings(**{k: v for k, v in ctx.options.items() if k not in ("init", "confidence")})
    transform, stages = register_nmi(fixed, moving, start, ctx.device, settings, ctx.progress.sub(0.1, 0.95),
                                     ctx.fixed_mask, ctx.moving_mask)
    report = {
        "metric": f"NMI ({settings.bins} bins)", "levels": list(settings.levels), "stages": stages,
        "evaluations": sum(s["evaluations"] for s in stages),
        "metric_before": stages[0]["metric_before"], "metric_after": stages[-1]["metric_after"], **init_report}
    if ctx.options["confidence"]:
        ctx.progress(0.95, "confidence")
        report["confidence"] = nmi_confidence(fixed, moving, transform, settings, ctx,
                                              init_report.get("initialization"))
    return MethodOutput(transform, transform.inverse(), report)
