"""``--method deepsim``: one-pass deformable registration with a U-Net trained with DeepSim (Czolbe et al. 2021).

The registration itself is in :mod:`.deepsim_registration`. The same method runs the paper's baselines: a
model trained with MSE, NCC or NCC_sup instead of DeepSim has the same architecture, and its metadata
(and the report) says which similarity trained it.
"""
from __future__ import annotations

from ..method_spec import MethodOutput, MethodSpec, RegistrationContext

SPEC = MethodSpec(
    name="deepsim", label="Deformable, U-Net trained with DeepSim (Czolbe et al. 2021)", transform="deformable",
    module=__name__, model_kind="deepsim", default_model="deepsim_brain_t1_3d")


def run(fixed, moving, ctx: RegistrationContext) -> MethodOutput:
    from .deepsim_registration import register_deepsim
    return register_deepsim(fixed, moving, ctx)
