"""Registration as a sequence of methods: ``method="nmi+nmi-affine+diffeo"`` in one ``register`` call.

The stages run in the order given, each starting from the previous one's transform (the first from the
initial transform): a rigid stage gives a rigid pose, an affine stage refines it, a deformable stage takes
it as its linear initial transform. So the last stage's transform is the composite of the whole pipeline;
its report keeps every stage's transform and report. A single method is a pipeline of one stage.

Routing, checked before anything runs:

* options: ``KEY=VALUE`` goes to every stage whose spec has KEY, ``STAGE.KEY=VALUE`` to that stage only;
  a key no stage has is refused;
* models (``--model``): to the one stage that takes models; refused when no stage or several do;
* masks: to the stages that honour them; a mask no stage can use is refused (as for a single method).

Stages go from rigid to affine to deformable: a linear stage cannot follow a deformable one, and a rigid
stage cannot follow an affine one (it would have to drop the scaling and shears).
"""
from __future__ import annotations

import importlib
import time
from dataclasses import dataclass

import numpy as np

from .core.errors import InputError
from .core.transforms import LinearTransform, RigidTransform
from .method_spec import MethodOutput, MethodSpec, RegistrationContext
from .methods import pipeline_specs


@dataclass
class Stage:
    """One stage: its spec, its parsed options, its models and the masks it gets."""

    spec: MethodSpec
    options: dict
    models: list
    masks: tuple
    model_note: str = ""


def _route_options(specs: list, options: dict, name: str) -> dict:
    """{stage name: raw options} from ``KEY=VALUE`` (every stage with KEY) and ``STAGE.KEY=VALUE``."""
    raw = {s.name: {} for s in specs}
    for key, value in (options or {}).items():
        key = str(key)
        if "." in key:
            stage, option = key.split(".", 1)
            if stage not in raw:
                raise InputError(f"option {key}: {stage!r} is not a stage of {name!r}")
            raw[stage][option] = value
            continue
        option = key.replace("-", "_")
        targets = [s.name for s in specs if option in {o.name for o in s.options}]
        if not targets and len(specs) > 1:
            known = "; ".join(f"{s.name}: {', '.join(o.name for o in s.options) or 'none'}" for s in specs)
            raise InputError(f"option {key}: no stage of {name!r} has it (options: {known})")
        for stage in targets or [specs[0].name]:
            raw[stage][option] = value
    return raw


def plan(name: str, options: dict = None, models=None, fixed_mask=None, moving_mask=None) -> list:
    """The stages of ``name`` with their options, models and masks, all checked (see the module docstring)."""
    specs = pipeline_specs(name)
    raw = _route_options(specs, options, name)
    models = [models] if isinstance(models, str) else list(models or [])
    takers = [s for s in specs if s.model_kind]
    if models and len(takers) > 1:
        raise InputError(f"--model is ambiguous for {name!r}: stages {', '.join(s.name for s in takers)} all take "
                         "models; run them as separate calls")
    if models and not takers:
        raise InputError(f"--method {name} takes no --model")
    given = {"fixed": fixed_mask, "moving": moving_mask}
    if len(specs) == 1:
        specs[0].check_masks(fixed_mask, moving_mask)
    for kind, mask in given.items():
        if mask is not None and not any(kind in s.masks for s in specs):
            raise InputError(f"--method {name}: no stage can use a {kind} mask; leave --{kind}-mask out")
    stages = []
    for spec in specs:
        stage_models = spec.parse_models(models) if spec.model_kind else []
        note = ""
        if spec.model_kind and not stage_models:
            stage_models = [spec.default_model]
            note = (f"--method {spec.name}: no --model given; used the bundled model '{spec.default_model}' "
                    "(see its model card)")
        masks = tuple(k for k in ("fixed", "moving") if given[k] is not None and k in spec.masks)
        stages.append(Stage(spec, spec.parse_options(raw[spec.name]), stage_models, masks, note))
    return stages


def transform_report(transform) -> dict:
    """Parameters and matrix of a linear transform (LPS, fixed -> moving)."""
    if isinstance(transform, RigidTransform):
        return {"transform_type": "Euler3DTransform", "parameters": transform.parameters.tolist(),
                "angles_deg": np.degrees(transform.angles_rad).tolist(),
                "translation_mm": transform.translation_mm.tolist(),
                "center_mm": transform.center_mm.tolist(), "matrix_lps": transform.matrix4().tolist()}
    if isinstance(transform, LinearTransform):
        return {"transform_type": "AffineTransform", "matrix_lps": transform.matrix4().tolist()}
    return {"transform_type": type(transform).__name__}


def jsonable(options: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()}


def run(stages: list, fixed, moving, initial, device, progress, fixed_mask=None, moving_mask=None,
        initial_given: bool = False) -> MethodOutput:
    """Run the stages in order, each from the previous transform; the last one's output, with the report of a
    single stage as it is, or for several a ``stages`` list (each stage's method, options, transform, report
    and seconds). ``initial_given``: the caller gave ``initial`` (the first stage then makes no start of its
    own); every later stage starts from the stage before it."""
    given = {"fixed": fixed_mask, "moving": moving_mask}
    transform, entries, out = initial, [], None
    for i, stage in enumerate(stages):
        ctx = RegistrationContext(device, progress.sub(i / len(stages), (i + 1) / len(stages)), transform,
                                  stage.options, stage.models, given["fixed"] if "fixed" in stage.masks else None,
                                  given["moving"] if "moving" in stage.masks else None, initial_given or i > 0)
        t0 = time.perf_counter()
        out = importlib.import_module(stage.spec.module).run(fixed, moving, ctx)
        entries.append({"method": stage.spec.name, "method_description": stage.spec.label,
                        "options": jsonable(stage.options), "models": [str(m) for m in stage.models],
                        "masks": list(stage.masks), **transform_report(out.transform), "report": out.report,
                        "seconds": time.perf_counter() - t0})
        transform = out.transform
    if len(stages) == 1:
        return out
    return MethodOutput(out.transform, out.inverse, {"stages": entries})
