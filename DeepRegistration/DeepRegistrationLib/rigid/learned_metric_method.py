"""``--method learned-metric``: rigid registration maximizing a learned CNN metric (Sedghi et al. 2018, eq. 2).

The models (``--model``, several allowed) are metric sets whose stages are applied coarse to fine, in the
order given (without one, the bundled T1↔T2 set). Each stage resamples both images to its own spacing,
so inputs of any spacing work; the transform is in the images' physical space.

Coarse to fine: by default (``start=nmi``) a coarse NMI registration (pyramid levels 4 and 2, the same
masks and sampling region) gives the pose the metric's stages start from; ``start=none`` starts them from
the initial transform.
"""
from __future__ import annotations

from ..method_spec import MethodOutput, MethodSpec, Option, RegistrationContext
from .init_option import CONFIDENCE_OPTION, INIT_OPTION

SPEC = MethodSpec(
    name="learned-metric", label="Rigid, learned multimodal CNN metric (Sedghi et al. 2018)", transform="rigid",
    module=__name__, inverse=True, model_kind="cnn-metric", default_model="sedghi-t1-t2", max_models=8,
    masks=frozenset({"fixed", "moving"}),
    options=(
        Option("start", "str", "nmi", "the metric stages' start: a coarse NMI registration (levels 4, 2) or "
               "none (the initial transform)", choices=("nmi", "none")),
        Option("patches", "int", 128, "patch pairs n in eq. 2", minimum=1, maximum=100000),
        Option("seed", "int", 0, "seed of the patch centres"),
        Option("max_evaluations", "int", 300, "Powell's metric evaluations per stage", minimum=1),
        Option("search_translation_mm", "float", 30.0, "search region around each stage's start, per axis",
               minimum=0.0),
        Option("search_rotation_rad", "float", 0.35, "search region around each stage's start, per angle",
               minimum=0.0),
        INIT_OPTION, CONFIDENCE_OPTION,
    ))

#: Pyramid levels of the NMI start (factors of the fixed image's spacing).
START_LEVELS = (4.0, 2.0)


def run(fixed, moving, ctx: RegistrationContext) -> MethodOutput:
    from .cnn_metric import CNNSettings, load_metric_models, register_cnn
    from .confidence import cnn_confidence
    from .initialization import starting_pose
    from .mi import MISettings, register_nmi
    from .powell import PowellSettings
    options = {k: v for k, v in ctx.options.items() if k not in ("init", "confidence")}
    start_method = options.pop("start")
    settings = CNNSettings(powell=PowellSettings(max_evaluations=options.pop("max_evaluations")), **options)
    names = ctx.models
    stages = load_metric_models(names, ctx.device)
    start, init_report = starting_pose(fixed, moving, ctx)
    if start_method == "nmi":
        ctx.progress(0.1, "NMI start")
        start, levels = register_nmi(fixed, moving, start, ctx.device, MISettings(levels=START_LEVELS),
                                     ctx.progress.sub(0.1, 0.25), ctx.fixed_mask, ctx.moving_mask)
        init_report["start"] = {"method": "nmi", "levels": list(START_LEVELS), "stages": levels,
                                "parameters": start.parameters.tolist()}
    transform, infos = register_cnn(fixed, moving, stages, start, ctx.device, settings,
                                    ctx.progress.sub(0.25 if start_method == "nmi" else 0.1, 0.9),
                                    ctx.fixed_mask, ctx.moving_mask)
    report = {
        "metric": "learned CNN metric (sum of log-likelihood ratios over patches, Sedghi et al. eq. 2)",
        "models": [str(n) for n in names], "stages": infos, "stage_labels": [s.label for s in stages],
        "patches": settings.patches, "evaluations": sum(i["evaluations"] for i in infos),
        "metric_before": infos[0]["metric_before"], "metric_after": infos[-1]["metric_after"], **init_report}
    if ctx.options["confidence"]:
        ctx.progress(0.9, "confidence")
        report["confidence"] = cnn_confidence(fixed, moving, transform, stages, settings, ctx,
                                              init_report.get("initialization"))
    return MethodOutput(transform, transform.inverse(), report)
