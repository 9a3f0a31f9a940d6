"""The quality figures ``register`` reports with every result.

NMI (64 bins, hard binning, :mod:`.sampled_nmi`) before and after registration; for a deformable
transform also the Jacobian determinant map of the forward transform on the fixed grid with its
statistics, and the
inverse-consistency error ‖φ⁻¹(φ(x)) − x‖ over the fixed voxels x whose image φ(x) lies within the
moving image, where φ⁻¹ is defined (elsewhere a field reads as zero and the error would be the
displacement itself). NMI and inverse consistency read one sample of fixed voxels (all of them up to
2^22, else 2^22 drawn with a fixed seed), whose images under the forward transform are computed once.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from ..core.image import Grid, Image
from ..core.jacobian import jacobian_determinant, jacobian_statistics
from ..core.transforms import CompositeTransform, DisplacementField, LinearTransform
from ..core.warp import inside_mask
from .sampled_nmi import SampledNMI

#: Fixed voxels at which NMI and inverse consistency are read (all of them below this count).
REPORT_POINTS = 2 ** 22


def jacobian_map(transform, grid: Grid) -> Optional[np.ndarray]:
    """det Dφ at the voxels of ``grid`` (z-first); None for a linear transform.

    A registration's transform is a field on the fixed grid followed by the initial pose A:
    D(A∘φ) = A (I + ∇u), so det = det A · det(I + ∇u) is read from the field as it is.
    """
    parts = transform.transforms if isinstance(transform, CompositeTransform) else [transform]
    if (parts and isinstance(parts[0], DisplacementField) and parts[0].grid.same_as(grid)
            and all(isinstance(t, LinearTransform) for t in parts[1:])):
        det_linear = np.prod([np.linalg.det(t.matrix4()[:3, :3]) for t in parts[1:]])
        return jacobian_determinant(parts[0]) * np.float32(det_linear)
    if isinstance(transform, (DisplacementField, CompositeTransform)):
        return jacobian_determinant(DisplacementField.from_transform(transform, grid))
    return None


def mapped_sample(transform, grid: Grid, points: torch.Tensor) -> torch.Tensor:
    """T at the sample ``points`` of ``grid``; when they are all its voxels (in order), through
    ``map_voxel_centres``, which reads a field on ``grid`` without interpolating it."""
    with torch.no_grad():
        if points.shape[0] == grid.num_voxels:
            return transform.map_voxel_centres(grid, points.device).reshape(-1, 3).to(points.dtype)
        return transform.transform_points_torch(points)


def inverse_consistency_mm(inverse, mapped: torch.Tensor, points: torch.Tensor, inside: torch.Tensor) -> dict:
    """Mean and max of ‖φ⁻¹(φ(x)) − x‖ in mm over the points x whose images φ(x) are ``inside`` the moving
    image, and the fraction of points that are (mean and max None when none is)."""
    if not bool(inside.any()):
        return {"mean": None, "max": None, "fraction_of_voxels": 0.0}
    with torch.no_grad():
        err = (inverse.transform_points_torch(mapped[inside]) - points[inside]).norm(dim=-1)
    return {"mean": float(err.mean()), "max": float(err.max()), "fraction_of_voxels": float(inside.double().mean())}


def folding_warning(report: dict) -> Optional[str]:
    """The warning for a result that folds (Jacobian determinant <= 0 on the fixed grid), or None."""
    if not report.get("folding_voxels"):
        return None
    return (f"the deformation folds: {report['folding_voxels']} voxels ({report['folding_percent']:.4f} %) of the "
            "fixed grid have a Jacobian determinant <= 0 (see the Jacobian map)")


def quality_report(fixed: Image, moving: Image, initial, transform, inverse=None, device="cpu",
                   deformable: bool = True) -> tuple:
    """(report entries, Jacobian determinant image or None) for ``transform`` (fixed -> moving)."""
    nmi = SampledNMI.on_grid(fixed, moving, 64, REPORT_POINTS, seed=0, device=device, linear=False)
    mapped = mapped_sample(transform, fixed.grid, nmi.points)
    inside = inside_mask(moving.grid, mapped)
    report = {"nmi64_before": nmi(initial), "nmi64_after": nmi.at_points(mapped)}
    det = jacobian_map(transform, fixed.grid) if deformable else None
    if det is None:
        return report, None
    report.update(jacobian_statistics(det))
    if inverse is not None:
        report["inverse_consistency_mm"] = inverse_consistency_mm(inverse, mapped, nmi.points, inside)
    return report, Image(det, fixed.grid)
