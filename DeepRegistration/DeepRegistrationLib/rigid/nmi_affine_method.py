"""``--method nmi-affine``: affine registration maximizing NMI, the 12-parameter counterpart of ``nmi``.

The same objective (:class:`~..metrics.sampled_nmi.SampledNMI` on the sampling region of
:mod:`.sampling_region`), pyramid and Powell machinery as ``nmi``, over the 12 parameters of ITK's
``AffineTransform`` about the fixed image's centre (:func:`.powell.maximize_affine`). It starts from the
initial transform (any linear one), so it is usually run after a rigid stage: ``--method nmi+nmi-affine``.
"""
from __future__ import annotations

from ..method_spec import MethodOutput, MethodSpec, Option, RegistrationContext
from .init_option import CONFIDENCE_OPTION
from .nmi_method import NMI_OPTIONS

SPEC = MethodSpec(
    name="nmi-affine", label="Affine, normalized mutual information (Powell, 12 parameters)", transform="affine",
    module=__name__, inverse=True, masks=frozenset({"fixed", "moving"}),
    options=NMI_OPTIONS + (Option("max_evaluations", "int", 1200, "Powell's metric evaluations per level", minimum=1),
                           CONFIDENCE_OPTION))


def run(fixed, moving, ctx: RegistrationContext) -> MethodOutput:
    from dataclasses import replace

    from .confidence import nmi_confidence
    from .mi import MISettings, register_nmi
    from .powell import initial_affine
    options = dict(ctx.options)
    settings = MISettings(**{k: v for k, v in options.items() if k not in ("max_evaluations", "confidence")})
    settings.powell = replace(settings.powell, max_evaluations=options["max_evaluations"])
    transform, stages = register_nmi(fixed, moving, initial_affine(ctx.initial_transform), ctx.device, settings,
                                     ctx.progress.sub(0.0, 0.95), ctx.fixed_mask, ctx.moving_mask, affine=True)
    report = {
        "metric": f"NMI ({settings.bins} bins)", "levels": list(settings.levels), "stages": stages,
        "affine_parameters": transform.parameters(fixed.grid.center_physical()).tolist(),
        "affine_center_mm": fixed.grid.center_physical().tolist(),
        "evaluations": sum(s["evaluations"] for s in stages),
        "metric_before": stages[0]["metric_before"], "metric_after": stages[-1]["metric_after"]}
    if options["confidence"]:
        ctx.progress(0.95, "confidence")
        report["confidence"] = nmi_confidence(fixed, moving, transform, settings, ctx)
    return MethodOutput(transform, transform.inverse(), report)
