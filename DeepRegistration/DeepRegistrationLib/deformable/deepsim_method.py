"""``--method deepsim``: one-pass deformable registration with a U-Net trained with DeepSim (Czolbe et al. 2021).

The registration itself is in :mod:`.deepsim_registration`. The same method runs the paper's baselines: a
model trained with MSE, NCC or NCC_sup instead of DeepSim has the same architecture, and its metadata
(and the report) says which similarity trained it. Instance optimization (``iterations`` > 0, the
default) refines the predicted field on the pair at hand with the model's own loss (eq. 1: its training
similarity, DeepSim with its feature extractor for the bundled model, and λ‖∇u‖²); ``iterations=0``
gives the network alone. Masks restrict its similarity.
"""
from __future__ import annotations

from ..method_spec import MethodOutput, MethodSpec, RegistrationContext
from .io_options import io_options

#: Instance optimization defaults (see docs/instance-optimization.md for how they were chosen).
ITERATIONS = 30
LEARNING_RATE = 0.1

SPEC = MethodSpec(
    name="deepsim", label="Deformable, U-Net trained with DeepSim (Czolbe et al. 2021)", transform="deformable",
    module=__name__, model_kind="deepsim", default_model="deepsim_brain_t1_3d",
    options=io_options(iterations=ITERATIONS, levels=2, learning_rate=LEARNING_RATE,
                       similarities=("model", "lncc", "nmse")),
    masks=frozenset({"fixed", "moving"}))


def run(fixed, moving, ctx: RegistrationContext) -> MethodOutput:
    from .deepsim_registration import register_deepsim
    return register_deepsim(fixed, moving, ctx)
