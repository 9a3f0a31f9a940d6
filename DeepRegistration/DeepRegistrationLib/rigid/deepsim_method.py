"""``--method deepsim-rigid``: rigid registration maximizing DeepSim (Czolbe et al. 2021, eq. 2) with Powell.

The paper proposes DeepSim as a drop-in similarity for other registration methods; this is the rigid
Powell path of :mod:`.mi_method` with DeepSim as the objective (:mod:`.deepsim_objective`). The feature
extractor is a 3D DeepSim model (``--model``; the bundled brain-T1 one by default, which the report
says). Unimodal: the extractor was trained on T1 segmentation.
"""
from __future__ import annotations

from ..api import MethodOutput, RegistrationContext
from ..core.errors import InputError
from ..core.image import Image
from ..metrics.deepsim import load_deepsim
from .deepsim_objective import register_rigid_deepsim
from .mi_method import initial_rigid
from .powell import PowellSettings

DEFAULT_MODEL = "deepsim_features_brain_t1_3d"
OPTIONS = {"max_evaluations": int}


def run(fixed: Image, moving: Image, ctx: RegistrationContext) -> MethodOutput:
    unknown = set(ctx.options) - set(OPTIONS) - {"models"}
    if unknown:
        raise InputError(f"unknown option(s) for --method deepsim-rigid: {', '.join(sorted(unknown))} "
                         f"(known: {', '.join(OPTIONS)})")
    models = ctx.options.get("models") or []
    if len(models) > 1:
        raise InputError(f"--method deepsim-rigid takes one --model (a DeepSim feature extractor), got {len(models)}")
    try:
        max_evaluations = int(ctx.options.get("max_evaluations", PowellSettings.max_evaluations))
    except ValueError as err:
        raise InputError(f"--method deepsim-rigid: bad option value ({err})") from None
    report = {}
    name = models[0] if models else DEFAULT_MODEL
    if not models:
        report["model_note"] = (f"no --model given: using the bundled 3D brain-T1 DeepSim feature extractor "
                                f"'{DEFAULT_MODEL}'")
    ctx.progress(0.02, "loading the feature extractor")
    deepsim = load_deepsim(name, ctx.device)
    transform, info = register_rigid_deepsim(fixed, moving, deepsim, initial_rigid(ctx.initial_transform, fixed),
                                             PowellSettings(max_evaluations=max_evaluations),
                                             ctx.progress.sub(0.05, 0.95), ctx.device)
    report.update({"metric": "DeepSim (Czolbe et al. 2021, eq. 2), mean cosine similarity of U-Net features",
                   "model": str(name), "feature_spacing_mm": deepsim.metadata.get("spacing_mm"),
                   "evaluations": info["evaluations"], "metric_before": info["metric_before"],
                   "metric_after": info["metric_after"]})
    return MethodOutput(transform, transform.inverse(), report)
