"""``--method dirnet``: one-pass deformable registration with a trained DIRNet (de Vos et al. 2017).

The registration itself is in :mod:`.dirnet_registration`. A 2D model registers every slice along the
fixed image's third index axis on its own, as the paper registers 2D slices. Instance optimization
(``iterations`` > 0, the default) refines the predicted B-spline control points on the pair at hand;
``iterations=0`` gives the network alone. Masks restrict its similarity.
"""
from __future__ import annotations

from ..method_spec import MethodOutput, MethodSpec, RegistrationContext
from .io_options import io_options

#: Instance optimization defaults (see docs/instance-optimization.md for how they were chosen).
ITERATIONS = 20
LEARNING_RATE = 0.05

SPEC = MethodSpec(
    name="dirnet", label="Deformable, DIRNet B-spline ConvNet (de Vos et al. 2017)", transform="deformable",
    module=__name__, model_kind="dirnet", default_model="dirnet_brain_t1_3d",
    options=io_options(iterations=ITERATIONS, levels=2, learning_rate=LEARNING_RATE, similarities=("lncc", "nmse")),
    masks=frozenset({"fixed", "moving"}))


def run(fixed, moving, ctx: RegistrationContext) -> MethodOutput:
    from .dirnet_registration import register_dirnet
    return register_dirnet(fixed, moving, ctx)
