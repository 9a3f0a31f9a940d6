"""``--method learned-metric``: rigid registration maximizing a learned CNN metric (Sedghi et al. 2018, eq. 2).

The models (``--model``, several allowed) are metric sets whose stages are applied coarse to fine, in the
order given (without one, the bundled T1↔T2 set). Each stage resamples both images to its own spacing,
so inputs of any spacing work; the transform is in the images' physical space.
"""
from __future__ import annotations

from ..method_spec import MethodOutput, MethodSpec, Option, RegistrationContext

SPEC = MethodSpec(
    name="learned-metric", label="Rigid, learned multimodal CNN metric (Sedghi et al. 2018)", transform="rigid",
    module=__name__, inverse=True, model_kind="cnn-metric", default_model="sedghi-t1-t2", max_models=8,
    masks=frozenset({"fixed", "moving"}),
    options=(
        Option("patches", "int", 128, "patch pairs n in eq. 2", minimum=1, maximum=100000),
        Option("seed", "int", 0, "seed of the patch centres"),
        Option("max_evaluations", "int", 300, "Powell's metric evaluations per stage", minimum=1),
        Option("search_translation_mm", "float", 30.0, "search region around each stage's start, per axis",
               minimum=0.0),
        Option("search_rotation_rad", "float", 0.35, "search region around each stage's start, per angle",
               minimum=0.0),
    ))


def run(fixed, moving, ctx: RegistrationContext) -> MethodOutput:
    from .cnn_metric import CNNSettings, load_metric_models, register_cnn
    from .powell import PowellSettings, initial_rigid
    options = dict(ctx.options)
    settings = CNNSettings(powell=PowellSettings(max_evaluations=options.pop("max_evaluations")), **options)
    names = ctx.models
    stages = load_metric_models(names, ctx.device)
    transform, infos = register_cnn(fixed, moving, stages, initial_rigid(ctx.initial_transform, fixed), ctx.device,
                                    settings, ctx.progress.sub(0.0, 0.95), ctx.fixed_mask, ctx.moving_mask)
    return MethodOutput(transform, transform.inverse(), {
        "metric": "learned CNN metric (sum of log-likelihood ratios over patches, Sedghi et al. eq. 2)",
        "models": [str(n) for n in names], "stages": infos, "stage_labels": [s.label for s in stages],
        "patches": settings.patches, "evaluations": sum(i["evaluations"] for i in infos),
        "metric_before": infos[0]["metric_before"], "metric_after": infos[-1]["metric_after"]})
