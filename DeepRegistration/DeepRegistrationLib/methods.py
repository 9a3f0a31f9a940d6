"""The registry of registration methods, built from each method module's :class:`~.method_spec.MethodSpec`.

Torch-free (the method modules import their implementation only when they run), so the Slicer panel
and ``--help`` can list the methods and their options before anything heavy is loaded.
"""
from __future__ import annotations

from .core.errors import InputError
from .deformable import deepsim_method, diffeo_method, dirnet_method
from .method_spec import MethodSpec
from .rigid import deepsim_rigid_method, learned_metric_method, nmi_method

#: name -> spec, in the order the CLI and the Slicer panel list them.
SPECS = {m.SPEC.name: m.SPEC for m in (nmi_method, learned_metric_method, deepsim_rigid_method, diffeo_method,
                                       dirnet_method, deepsim_method)}
#: Names the methods had before 0.2, with what they are called now.
RENAMED = {"mi": "nmi", "cnn": "learned-metric"}


def method_spec(name: str) -> MethodSpec:
    """The spec of ``name``; an unknown name is refused with the known ones."""
    if name in RENAMED:
        raise InputError(f"method {name!r} is now called {RENAMED[name]!r}")
    if name not in SPECS:
        raise InputError(f"unknown method {name!r}: choose one of {', '.join(SPECS)}")
    return SPECS[name]
