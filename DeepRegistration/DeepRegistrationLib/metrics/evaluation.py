"""Evaluation of registration results: Dice, Sedghi et al.'s rigid errors, the agreement
of two displacement fields."""
from __future__ import annotations

import numpy as np

from ..core.transforms import RigidTransform


def dice_per_label(a: np.ndarray, b: np.ndarray, labels=None) -> dict:
    """Dice 2|A∩B| / (|A| + |B|) for each non-zero label (those of ``a`` by default)."""
    if labels is None:
        labels = [int(v) for v in np.unique(a) if v != 0]
    out = {}
    for lab in labels:
        x, y = a == lab, b == lab
        denom = x.sum() + y.sum()
        out[int(lab)] = float(2.0 * np.logical_and(x, y).sum() / denom) if denom else float("nan")
    return out


def rigid_errors(estimated: RigidTransform, true: RigidTransform) -> dict:
    """Sedghi et al. Table 1 errors: ‖Δt‖, |Δt_x|, |Δt_y|, |Δt_z| (mm) and |Δθ_x|, |Δθ_y|, |Δθ_z| (degrees).

    Both transforms are expressed about the same centre (the true transform's) before differencing,
    so translation errors do not depend on where each one put its centre.
    """
    est = RigidTransform.from_matrix4(estimated.matrix4(), true.center_mm)
    dt = est.translation_mm - true.translation_mm
    dtheta = np.degrees(np.abs(np.angle(np.exp(1j * (est.angles_rad - true.angles_rad)))))
    return {
        "t_norm_mm": float(np.linalg.norm(dt)),
        "t_x_mm": float(abs(dt[0])), "t_y_mm": float(abs(dt[1])), "t_z_mm": float(abs(dt[2])),
        "theta_x_deg": float(dtheta[0]), "theta_y_deg": float(dtheta[1]), "theta_z_deg": float(dtheta[2]),
    }


FIELD_MEAN_TOLERANCE_MM = 0.05
FIELD_MAX_TOLERANCE_MM = 0.5
FIELD_RELATIVE_TOLERANCE = 0.05


def fields_agree(u_mm, reference_mm) -> tuple:
    """(agrees, mean |Δu|, max |Δu|, mean |u| of the reference) of two displacement fields (1, 3, ...) in mm
    (torch tensors). They agree when mean |Δu| < 0.05 mm and < 5 % of the reference's mean motion, and max
    |Δu| < 0.5 mm: the rule by which benchmarks/ablations/diffeo_tiles.py picks the tile size and the network precision."""
    diff = lengths(u_mm - reference_mm)
    motion = float(lengths(reference_mm).mean())
    mean, largest = float(diff.mean()), float(diff.max())
    return field_difference_within_tolerance(mean, largest, motion), mean, largest, motion


def lengths(u):
    """|u| per voxel of a field (B, 3, ...) (torch): the same as ``u.norm(dim=1)``, whose reduction across the
    channel axis is about 40x slower on the CPU."""
    return u.square().sum(dim=1).sqrt_()


def field_difference_within_tolerance(mean_mm: float, max_mm: float, motion_mm: float) -> bool:
    """The rule of :func:`fields_agree`, from the mean and max |Δu| and the reference's mean |u| (mm)."""
    return mean_mm < min(FIELD_MEAN_TOLERANCE_MM, FIELD_RELATIVE_TOLERANCE * motion_mm) and max_mm < FIELD_MAX_TOLERANCE_MM
