"""Helpers the registration tests share: a centre crop, the diffeo fields of a momentum, and a CLI run."""
import json

import numpy as np

from DeepRegistrationLib.cli import main
from DeepRegistrationLib.core.image import Grid, Image
from DeepRegistrationLib.deformable import lddmm
from DeepRegistrationLib.deformable.patchwise import integrate_velocity


def centre_crop(image: Image, shape_zyx) -> Image:
    """Centre crop keeping the physical position (origin moved)."""
    start = [(n - s) // 2 for n, s in zip(image.grid.shape, shape_zyx)]
    arr = image.array[tuple(slice(a, a + s) for a, s in zip(start, shape_zyx))]
    origin = image.grid.index_to_physical(np.asarray(list(reversed(start)), float))
    return Image(np.ascontiguousarray(arr), Grid(tuple(reversed(shape_zyx)), image.grid.spacing, origin,
                                                 image.grid.direction))


def momentum_fields(momentum, spacing_zyx, alpha: float = lddmm.ALPHA, gamma: float = lddmm.GAMMA,
                    padding: int = lddmm.PADDING, steps: int = lddmm.STEPS) -> tuple:
    """(φ, φ⁻¹) in voxels of a whole-volume momentum: v = K⁻¹ * m, then φ = exp(v), φ⁻¹ = exp(−v), as the
    diffeo method computes them after its network."""
    v = lddmm.velocity_to_voxels(lddmm.smooth(momentum, spacing_zyx, alpha, gamma, padding), spacing_zyx)
    return integrate_velocity(v, spacing_zyx, steps)[:2]


def cli_register(folder, method: str, out, capsys, *params: str) -> tuple:
    """``deepregistration register`` of ``folder``'s fixed.nii.gz and moving.nii.gz with ``method`` on the CPU
    (``params``: ``KEY=VALUE`` options), writing t.h5, w.nii.gz and r.json into ``out``: (exit code, console
    output, report)."""
    rc = main(["register", str(folder / "fixed.nii.gz"), str(folder / "moving.nii.gz"), "--method", method,
               "--out-transform", str(out / "t.h5"), "--out-volume", str(out / "w.nii.gz"),
               "--report", str(out / "r.json"), "--device", "cpu", "--quiet"]
              + [a for p in params for a in ("--param", p)])
    return rc, capsys.readouterr().out, json.loads((out / "r.json").read_text())
