"""``--method dirnet``: one-pass deformable registration with a trained DIRNet (de Vos et al. 2017).

The registration itself is in :mod:`.dirnet_registration`. A 2D model registers every slice along the
fixed image's third index axis on its own, as the paper registers 2D slices.
"""
from __future__ import annotations

from ..method_spec import MethodOutput, MethodSpec, RegistrationContext

SPEC = MethodSpec(
    name="dirnet", label="Deformable, DIRNet B-spline ConvNet (de Vos et al. 2017)", transform="deformable",
    module=__name__, model_kind="dirnet", default_model="dirnet_brain_t1_3d")


def run(fixed, moving, ctx: RegistrationContext) -> MethodOutput:
    from .dirnet_registration import register_dirnet
    return register_dirnet(fixed, moving, ctx)
