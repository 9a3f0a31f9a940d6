"""``--method deepsim-rigid``: rigid registration maximizing DeepSim (Czolbe et al. 2021, eq. 2) with Powell.

The paper proposes DeepSim as a drop-in similarity for other registration methods; this is the rigid
Powell path of :mod:`.nmi_method` with DeepSim as the objective (:mod:`.deepsim_objective`). The feature
extractor is a 3D DeepSim model (``--model``; the bundled brain-T1 one by default, which the report
says). Unimodal: the extractor was trained on T1 segmentation.
"""
from __future__ import annotations

from ..method_spec import MethodOutput, MethodSpec, Option, RegistrationContext

SPEC = MethodSpec(
    name="deepsim-rigid", label="Rigid, DeepSim semantic similarity (Powell)", transform="rigid",
    module=__name__, inverse=True, model_kind="deepsim-features", default_model="deepsim_features_brain_t1_3d",
    options=(Option("max_evaluations", "int", 600, "Powell's metric evaluations", minimum=1),))


def run(fixed, moving, ctx: RegistrationContext) -> MethodOutput:
    from ..metrics.deepsim_similarity import load_deepsim
    from .deepsim_objective import register_rigid_deepsim
    from .powell import PowellSettings, initial_rigid
    name = ctx.models[0]
    ctx.progress(0.02, "loading the feature extractor")
    deepsim = load_deepsim(name, ctx.device)
    transform, info = register_rigid_deepsim(fixed, moving, deepsim, initial_rigid(ctx.initial_transform, fixed),
                                             PowellSettings(max_evaluations=ctx.options["max_evaluations"]),
                                             ctx.progress.sub(0.05, 0.95), ctx.device)
    return MethodOutput(transform, transform.inverse(), {
        "metric": "DeepSim (Czolbe et al. 2021, eq. 2), mean cosine similarity of U-Net features",
        "model": str(name), "feature_spacing_mm": deepsim.metadata.get("spacing_mm"),
        "evaluations": info["evaluations"], "metric_before": info["metric_before"], "metric_after": info["metric_after"]})
