"""``--method diffeo``: patch-wise diffeomorphic registration with a momentum U-Net (the thesis' method).

The registration itself is in :mod:`.diffeo_registration`. Option defaults: ``tile`` 48 and ``precision``
``auto`` were chosen by benchmarks/diffeo_tiles.py; ``auto`` is bfloat16 on a CPU with bfloat16
instructions and float32 elsewhere; smoothing and integration are always float32.
"""
from __future__ import annotations

from ..method_spec import MethodOutput, MethodSpec, Option, RegistrationContext

SPEC = MethodSpec(
    name="diffeo", label="Deformable, diffeomorphic patch-wise (LDDMM momentum network)", transform="deformable",
    module=__name__, inverse=True, model_kind="diffeo", default_model="diffeo_brain_t1",
    options=(
        Option("tile", "int", 48, "prediction tile side in voxels (a multiple of 4)", minimum=8, maximum=512),
        Option("discard", "int", 12, "voxels dropped at each tile side", minimum=0),
        Option("tile_batch", "int", None, "tiles per network call (default: about 1 M voxels' worth, at least 2)",
               minimum=1),
        Option("precision", "str", "auto", "the network's arithmetic", choices=("auto", "float32", "bfloat16")),
    ))


def run(fixed, moving, ctx: RegistrationContext) -> MethodOutput:
    from .diffeo_registration import register_diffeo
    return register_diffeo(fixed, moving, ctx)
