"""The registry of registration methods, built from each method module's :class:`~.method_spec.MethodSpec`.

Torch-free (the method modules import their implementation only when they run), so the Slicer panel
and ``--help`` can list the methods and their options before anything heavy is loaded.
"""
from __future__ import annotations

from .core.errors import InputError
from .deformable import deepsim_method, diffeo_method, dirnet_method
from .method_spec import MethodSpec
from .rigid import deepsim_rigid_method, learned_metric_method, nmi_affine_method, nmi_method

#: name -> spec, in the order the CLI and the Slicer panel list them.
SPECS = {m.SPEC.name: m.SPEC for m in (nmi_method, nmi_affine_method, learned_metric_method, deepsim_rigid_method,
                                       diffeo_method, dirnet_method, deepsim_method)}
#: Joins the stages of a pipeline: ``nmi+nmi-affine+diffeo`` (see :mod:`.pipeline`).
SEPARATOR = "+"
#: Pipelines offered as presets (the Slicer panel lists them beside the single methods).
PIPELINE_PRESETS = ("nmi+nmi-affine", "nmi+diffeo", "nmi+nmi-affine+diffeo")
#: Order of the transform kinds along a pipeline.
KIND_ORDER = {"rigid": 0, "affine": 1, "deformable": 2}
#: Names the methods had before 0.2, with what they are called now.
RENAMED = {"mi": "nmi", "cnn": "learned-metric"}


def method_spec(name: str) -> MethodSpec:
    """The spec of ``name``; an unknown name is refused with the known ones."""
    if name in RENAMED:
        raise InputError(f"method {name!r} is now called {RENAMED[name]!r}")
    if name not in SPECS:
        raise InputError(f"unknown method {name!r}: choose one of {', '.join(SPECS)}")
    return SPECS[name]


def pipeline_specs(name: str) -> list:
    """The specs of the stages of ``name`` ('nmi', 'nmi+nmi-affine+diffeo'), in order; a bad order is refused:
    a deformable stage only last, and a rigid stage not after an affine one (it would drop scaling and shears)."""
    names = [n.strip() for n in str(name).split(SEPARATOR)]
    if any(not n for n in names):
        raise InputError(f"method {name!r}: empty stage name (stages are joined by '{SEPARATOR}')")
    if len(set(names)) != len(names):
        raise InputError(f"method {name!r}: a stage appears twice")
    specs = [method_spec(n) for n in names]
    for before, after in zip(specs, specs[1:]):
        if before.deformable:
            raise InputError(f"method {name!r}: {before.name} is deformable, so it must be the last stage")
        if KIND_ORDER[after.transform] < KIND_ORDER[before.transform]:
            raise InputError(f"method {name!r}: the {after.transform} stage {after.name} cannot follow the "
                             f"{before.transform} stage {before.name} (order stages rigid, affine, deformable)")
    return specs
