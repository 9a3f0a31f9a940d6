"""``--method cnn``: rigid registration maximizing a learned CNN metric (Sedghi et al. 2018, eq. 2).

``ctx.options['models']``: bundled names or model files; each is a metric set whose stages are applied
coarse to fine, several are applied in the order given. Without models the bundled T1↔T2 set is used
and the report's ``model_note`` says so. Each stage resamples both images to its own spacing, so
inputs of any spacing work; the transform is in the images' physical space.
"""
from __future__ import annotations

from ..api import MethodOutput, RegistrationContext
from ..core.errors import InputError
from ..core.image import Image
from .cnn_metric import CNNSettings, load_metric_models, register_cnn
from .mi_method import initial_rigid
from .powell import PowellSettings

DEFAULT_MODEL = "sedghi-t1-t2"
OPTIONS = {"patches": int, "seed": int, "max_evaluations": int, "search_translation_mm": float,
           "search_rotation_rad": float}


def settings_from_options(options: dict) -> CNNSettings:
    unknown = set(options) - set(OPTIONS) - {"models"}
    if unknown:
        raise InputError(f"unknown option(s) for --method cnn: {', '.join(sorted(unknown))} "
                         f"(known: {', '.join(OPTIONS)})")
    try:
        values = {k: OPTIONS[k](options[k]) for k in OPTIONS if k in options}
    except ValueError as err:
        raise InputError(f"--method cnn: bad option value ({err})") from None
    s = CNNSettings(powell=PowellSettings(max_evaluations=values.pop("max_evaluations", 300)))
    for k, v in values.items():
        setattr(s, k, v)
    if s.patches < 1:
        raise InputError("--method cnn: patches must be at least 1")
    return s


def run(fixed: Image, moving: Image, ctx: RegistrationContext) -> MethodOutput:
    settings = settings_from_options(ctx.options)
    names = ctx.options.get("models") or []
    if isinstance(names, str):
        names = [names]
    note = None
    if not names:
        names = [DEFAULT_MODEL]
        note = (f"--method cnn: no --model given; used the bundled metric set '{DEFAULT_MODEL}' "
                "(T1 fixed <-> T2 moving, trained on SPM avg152-derived subjects)")
    stages = load_metric_models(names, ctx.device)
    transform, infos = register_cnn(fixed, moving, stages, initial_rigid(ctx.initial_transform, fixed), ctx.device,
                                    settings, ctx.progress.sub(0.0, 0.95), ctx.fixed_mask,
                                    ctx.moving_mask)
    report = {"metric": "learned CNN metric (sum of log-likelihood ratios over patches, Sedghi et al. eq. 2)",
              "models": [str(n) for n in names], "stages": infos, "stage_labels": [s.label for s in stages],
              "patches": settings.patches, "evaluations": sum(i["evaluations"] for i in infos),
              "metric_before": infos[0]["metric_before"], "metric_after": infos[-1]["metric_after"]}
    if note:
        report["model_note"] = note
    return MethodOutput(transform, transform.inverse(), report)
