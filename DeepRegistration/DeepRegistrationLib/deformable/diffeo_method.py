"""``--method diffeo``: patch-wise diffeomorphic registration with a momentum U-Net (the thesis' method).

The registration itself is in :mod:`.diffeo_registration`. Option defaults: ``tile`` 48 and ``precision``
``auto`` were chosen by benchmarks/ablations/diffeo_tiles.py; ``auto`` is bfloat16 on a CPU with bfloat16
instructions and float32 elsewhere; smoothing and integration are always float32. Instance optimization
(``iterations`` > 0, the default) refines the predicted velocity in the same LDDMM model on the pair at
hand (see :mod:`.diffeo_registration`); ``iterations=0`` gives the network alone. Masks restrict its
similarity.
"""
from __future__ import annotations

from ..method_spec import MethodOutput, MethodSpec, Option, RegistrationContext
from .io_options import io_options

#: Instance optimization defaults (see docs/instance-optimization.md for how they were chosen).
ITERATIONS = 15
LEARNING_RATE = 1.0
REG_WEIGHT = 1e-4
RESOLUTION_MM = 2.0

SPEC = MethodSpec(
    name="diffeo", label="Deformable, diffeomorphic patch-wise (LDDMM momentum network)", transform="deformable",
    module=__name__, inverse=True, model_kind="diffeo", default_model="diffeo_brain_t1",
    options=(
        Option("tile", "int", 48, "prediction tile side in voxels (a multiple of 4)", minimum=8, maximum=512),
        Option("discard", "int", 12, "voxels dropped at each tile side", minimum=0),
        Option("tile_batch", "int", None, "tiles per network call (default: about 1 M voxels' worth, at least 2)",
               minimum=1),
        Option("precision", "str", "auto", "the network's arithmetic", choices=("auto", "float32", "bfloat16")),
        *io_options(iterations=ITERATIONS, levels=2, learning_rate=LEARNING_RATE, similarities=("nmse", "lncc"),
                    reg_weight=REG_WEIGHT, reg_help="w of eq. 3.2, the weight of the LDDMM norm <v, m>"),
        Option("resolution", "float", RESOLUTION_MM, "instance optimization: voxel size (mm) of the finest level "
               "(the model's spacing at least)", minimum=0.1),
    ), masks=frozenset({"fixed", "moving"}))


def run(fixed, moving, ctx: RegistrationContext) -> MethodOutput:
    from .diffeo_registration import register_diffeo
    return register_diffeo(fixed, moving, ctx)
