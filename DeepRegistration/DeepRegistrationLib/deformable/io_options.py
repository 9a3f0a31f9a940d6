"""The instance-optimization options every learned deformable method declares in its spec (torch-free)."""
from __future__ import annotations

from ..method_spec import Option


def io_options(iterations: int, levels: int, learning_rate: float, similarities: tuple, reg_weight: float = None,
               reg_help: str = "") -> tuple:
    """``iterations`` (per level; 0: the network alone), ``io_levels``, ``learning_rate``, ``similarity`` (the
    first of ``similarities`` is the default) and, where the method has one, ``reg_weight``."""
    out = (
        Option("iterations", "int", iterations,
               "instance optimization: Adam iterations per level (0: the network's prediction alone)", minimum=0,
               maximum=10000),
        Option("io_levels", "int", levels, "instance optimization: resolution levels, coarse to fine", minimum=1,
               maximum=5),
        Option("learning_rate", "float", learning_rate, "instance optimization: Adam step size", minimum=0.0),
        Option("similarity", "str", similarities[0], "instance optimization: similarity of the pair",
               choices=tuple(similarities)),
    )
    if reg_weight is not None:
        out += (Option("reg_weight", "float", reg_weight, f"instance optimization: {reg_help}", minimum=0.0),)
    return out
