"""Spatial transforms mapping fixed-space LPS points (mm) to moving-space LPS points (mm).

This is ITK's resampling convention ("from parent" in Slicer): warping the moving image
with a transform T gives ``out(x) = moving(T(x))`` on the fixed grid.
Every transform has ``transform_points`` (NumPy, (..., 3)), ``transform_points_torch`` and
``map_voxel_centres`` (T at the voxel centres of a grid, what warping and field sampling need).
"""
from __future__ import annotations

import abc
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import List

import numpy as np
import SimpleITK as sitk
import torch

from .errors import InputError
from .image import Grid, Image
from .io import read_with_sitk
from .warp import affine_points, physical_grid_points, sample_at_points


def _rot_x(a):
    c, s = np.cos(a), np.sin(a)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def _rot_y(a):
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def _rot_z(a):
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


class LinearTransform(abc.ABC):
    """T(x) = A x + b."""

    @abc.abstractmethod
    def matrix4(self) -> np.ndarray:
        """Homogeneous 4x4 matrix in LPS."""

    def transform_points(self, points: np.ndarray) -> np.ndarray:
        m = self.matrix4()
        return np.asarray(points, dtype=np.float64) @ m[:3, :3].T + m[:3, 3]

    def transform_points_torch(self, points: torch.Tensor) -> torch.Tensor:
        m = torch.as_tensor(self.matrix4(), dtype=points.dtype, device=points.device)
        return affine_points(points, m[:3, :3], m[:3, 3])

    def map_voxel_centres(self, grid: Grid, device=None, z_range=None) -> torch.Tensor:
        """T(x) at the voxel centres of ``grid`` (or a z-slab), float64 (nz, ny, nx, 3)."""
        return self.transform_points_torch(physical_grid_points(grid, device, torch.float64, z_range))

    def inverse(self) -> "AffineTransform":
        return AffineTransform(np.linalg.inv(self.matrix4()))


@dataclass
class RigidTransform(LinearTransform):
    """ITK ``Euler3DTransform``: T(x) = R (x - c) + c + t, R = Rz Rx Ry (ITK's default, ComputeZYX off).

    ``angles_rad`` = (θx, θy, θz); ``translation_mm`` = (tx, ty, tz); ``center_mm`` = c (LPS).
    """

    angles_rad: np.ndarray = field(default_factory=lambda: np.zeros(3))
    translation_mm: np.ndarray = field(default_factory=lambda: np.zeros(3))
    center_mm: np.ndarray = field(default_factory=lambda: np.zeros(3))

    def __post_init__(self):
        self.angles_rad = np.asarray(self.angles_rad, dtype=np.float64).reshape(3)
        self.translation_mm = np.asarray(self.translation_mm, dtype=np.float64).reshape(3)
        self.center_mm = np.asarray(self.center_mm, dtype=np.float64).reshape(3)

    @property
    def parameters(self) -> np.ndarray:
        """ITK parameter order: (θx, θy, θz, tx, ty, tz)."""
        return np.concatenate([self.angles_rad, self.translation_mm])

    @classmethod
    def from_parameters(cls, params, center_mm) -> "RigidTransform":
        params = np.asarray(params, dtype=np.float64)
        return cls(params[:3], params[3:6], center_mm)

    def rotation_matrix(self) -> np.ndarray:
        ax, ay, az = self.angles_rad
        return _rot_z(az) @ _rot_x(ax) @ _rot_y(ay)

    def matrix4(self) -> np.ndarray:
        r = self.rotation_matrix()
        m = np.eye(4)
        m[:3, :3] = r
        m[:3, 3] = self.center_mm + self.translation_mm - r @ self.center_mm
        return m

    @classmethod
    def from_matrix4(cls, matrix: np.ndarray, center_mm=(0.0, 0.0, 0.0)) -> "RigidTransform":
        """Decompose a rigid 4x4 matrix (R = Rz Rx Ry) about the given centre."""
        matrix = np.asarray(matrix, dtype=np.float64)
        r = matrix[:3, :3]
        if not np.allclose(r @ r.T, np.eye(3), atol=1e-5) or np.linalg.det(r) < 0:
            raise InputError("the matrix is not a rigid rotation (orthonormal, determinant +1)")
        # R = Rz Rx Ry: r[2,1] = sin(ax); r[2,0] = -cos(ax) sin(ay); r[0,1] = -sin(az) cos(ax)
        ax = np.arcsin(np.clip(r[2, 1], -1.0, 1.0))
        ay = np.arctan2(-r[2, 0], r[2, 2])
        az = np.arctan2(-r[0, 1], r[1, 1])
        center = np.asarray(center_mm, dtype=np.float64)
        t = matrix[:3, 3] - center + r @ center
        return cls(np.array([ax, ay, az]), t, center)

    def to_sitk(self) -> sitk.Transform:
        t = sitk.Euler3DTransform()
        t.SetCenter(tuple(self.center_mm))
        t.SetRotation(*self.angles_rad)
        t.SetTranslation(tuple(self.translation_mm))
        return t


@dataclass
class AffineTransform(LinearTransform):
    """A general 4x4 homogeneous matrix in LPS (fixed point -> moving point)."""

    matrix: np.ndarray = field(default_factory=lambda: np.eye(4))

    def __post_init__(self):
        self.matrix = np.asarray(self.matrix, dtype=np.float64).reshape(4, 4)

    def matrix4(self) -> np.ndarray:
        return self.matrix.copy()

    @classmethod
    def from_parameters(cls, params, center_mm) -> "AffineTransform":
        """From ITK ``AffineTransform`` parameters about ``center_mm`` = c: the matrix A (9, row-major), then
        the translation t (3); T(x) = A (x - c) + c + t."""
        params = np.asarray(params, dtype=np.float64)
        a, c = params[:9].reshape(3, 3), np.asarray(center_mm, dtype=np.float64)
        m = np.eye(4)
        m[:3, :3] = a
        m[:3, 3] = c + params[9:12] - a @ c
        return cls(m)

    def parameters(self, center_mm) -> np.ndarray:
        """ITK ``AffineTransform`` parameters about ``center_mm`` (see :meth:`from_parameters`)."""
        a, c = self.matrix[:3, :3], np.asarray(center_mm, dtype=np.float64)
        return np.concatenate([a.reshape(-1), self.matrix[:3, 3] - c + a @ c])

    def to_sitk(self) -> sitk.Transform:
        t = sitk.AffineTransform(3)
        t.SetMatrix(tuple(self.matrix[:3, :3].reshape(-1)))
        t.SetTranslation(tuple(self.matrix[:3, 3]))
        return t


@dataclass
class DisplacementField:
    """φ(x) = x + u(x), u sampled on ``grid`` (z-first array (nz, ny, nx, 3), LPS mm).

    Between voxels u is interpolated linearly; outside the grid u is zero, as in ITK's
    ``DisplacementFieldTransform``. Treat the array as read-only: a copy on the GPU is kept for reuse.
    """

    displacement_mm: np.ndarray
    grid: Grid
    _on_device: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self):
        self.displacement_mm = np.asarray(self.displacement_mm, dtype=np.float32)
        if self.displacement_mm.shape != (*self.grid.shape, 3):
            raise InputError(
                f"displacement array shape {self.displacement_mm.shape} does not match grid {self.grid.shape} + (3,)"
            )

    def _field_on(self, device) -> torch.Tensor:
        """u as a (3, nz, ny, nx) tensor on ``device`` (kept for reuse)."""
        key = str(device)
        if key not in self._on_device:
            self._on_device = {key: torch.as_tensor(self.displacement_mm, device=device).permute(3, 0, 1, 2)}
        return self._on_device[key]

    def transform_points_torch(self, points: torch.Tensor) -> torch.Tensor:
        u = sample_at_points(self._field_on(points.device), self.grid, points, mode="bilinear", padding_mode="zeros")
        return points + u.movedim(0, -1).to(points.dtype)

    def map_voxel_centres(self, grid: Grid, device=None, z_range=None) -> torch.Tensor:
        """φ(x) at the voxel centres of ``grid`` (or a z-slab), float64 (nz, ny, nx, 3). On the field's own
        grid that is x + u at the voxels themselves, which interpolation would return up to rounding."""
        pts = physical_grid_points(grid, device, torch.float64, z_range)
        if not grid.same_as(self.grid):
            return self.transform_points_torch(pts)
        z0, z1 = z_range if z_range is not None else (0, grid.size[2])
        return pts + self._field_on(pts.device).movedim(0, -1)[z0:z1]

    def transform_points(self, points: np.ndarray) -> np.ndarray:
        return self.transform_points_torch(torch.as_tensor(np.asarray(points, dtype=np.float64))).numpy()

    def to_sitk(self) -> sitk.Transform:
        img = Image(self.displacement_mm.astype(np.float64), self.grid).to_sitk()
        return sitk.DisplacementFieldTransform(img)

    def continued_onto(self, grid: Grid, device="cpu") -> "DisplacementField":
        """This field sampled on ``grid``, continued beyond its own grid by its border values: a network's field
        that covers only part of an image then has no jump (and no fold) where the network's view ends."""
        points = physical_grid_points(grid, device, torch.float64)
        u = sample_at_points(self._field_on(points.device), self.grid, points, mode="bilinear", padding_mode="border")
        return DisplacementField(u.movedim(0, -1).cpu().numpy(), grid)

    @classmethod
    def from_transform(cls, transform, grid: Grid, device="cpu") -> "DisplacementField":
        """Sample any transform on a grid: u(x) = T(x) - x."""
        u = transform.map_voxel_centres(grid, device) - physical_grid_points(grid, device, torch.float64)
        return cls(u.cpu().numpy().astype(np.float32), grid)


@dataclass
class CompositeTransform:
    """Applies ``transforms`` in list order to points: T(x) = T_n(...T_2(T_1(x))).

    For resampling this means T_1 acts on fixed-space points first (e.g. a deformable field
    defined on the fixed grid), followed by the rigid/affine part toward the moving space.
    """

    transforms: List = field(default_factory=list)

    def transform_points(self, points: np.ndarray) -> np.ndarray:
        for t in self.transforms:
            points = t.transform_points(points)
        return points

    def transform_points_torch(self, points: torch.Tensor) -> torch.Tensor:
        for t in self.transforms:
            points = t.transform_points_torch(points)
        return points

    def map_voxel_centres(self, grid: Grid, device=None, z_range=None) -> torch.Tensor:
        """T(x) at the voxel centres of ``grid`` (or a z-slab), float64 (nz, ny, nx, 3)."""
        if not self.transforms:
            return physical_grid_points(grid, device, torch.float64, z_range)
        points = self.transforms[0].map_voxel_centres(grid, device, z_range)
        for t in self.transforms[1:]:
            points = t.transform_points_torch(points)
        return points

    def to_sitk(self) -> sitk.Transform:
        # ITK's CompositeTransform applies the last added transform first.
        out = sitk.CompositeTransform(3)
        for t in reversed(self.transforms):
            out.AddTransform(t.to_sitk())
        return out


def compose(*transforms) -> CompositeTransform:
    """``compose(A, B)`` maps x to B(A(x)): A is applied first."""
    flat = []
    for t in transforms:
        flat.extend(t.transforms if isinstance(t, CompositeTransform) else [t])
    return CompositeTransform(flat)


def from_sitk(transform: sitk.Transform):
    """Library transform from a SimpleITK transform (Euler3D, affine-like, displacement field, composite)."""
    name = transform.GetName()
    if name == "CompositeTransform":
        comp = sitk.CompositeTransform(transform)
        parts = [from_sitk(comp.GetNthTransform(i)) for i in range(comp.GetNumberOfTransforms())]
        return compose(*reversed(parts)) if len(parts) > 1 else parts[0]
    if transform.GetDimension() != 3:
        raise InputError(f"a 3D transform is needed, got a {transform.GetDimension()}D {name}")
    if name == "Euler3DTransform":
        t = sitk.Euler3DTransform(transform)
        return RigidTransform(np.array([t.GetAngleX(), t.GetAngleY(), t.GetAngleZ()]), t.GetTranslation(), t.GetCenter())
    if name == "DisplacementFieldTransform":
        field_img = sitk.DisplacementFieldTransform(transform).GetDisplacementField()
        img = Image.from_sitk(field_img)
        return DisplacementField(img.array, img.grid)
    if name in ("AffineTransform", "Similarity3DTransform", "VersorRigid3DTransform", "ScaleVersor3DTransform",
                "ScaleSkewVersor3DTransform", "TranslationTransform", "ScaleTransform", "ComposeScaleSkewVersor3DTransform"):
        pts = np.vstack([np.zeros(3), np.eye(3)])
        mapped = np.array([transform.TransformPoint(tuple(p)) for p in pts])
        m = np.eye(4)
        m[:3, 3] = mapped[0]
        m[:3, :3] = (mapped[1:] - mapped[0]).T
        return AffineTransform(m)
    raise InputError(f"unsupported transform type {name}")


def read_transform(path):
    """Read an ITK transform file (.tfm, .txt, .h5) into a library transform."""
    return from_sitk(read_with_sitk(sitk.ReadTransform, path, "transform", "an ITK transform"))


def write_transform(transform, path) -> None:
    """Write a transform as an ITK transform file (.tfm/.txt/.h5), or a field as .nrrd for Slicer."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    if path.suffix.lower() == ".nrrd":
        if not isinstance(transform, DisplacementField):
            raise InputError("only displacement fields are written as .nrrd; use .h5 or .tfm for other transforms")
        write_displacement_nrrd(transform, tmp)
    else:
        sitk.WriteTransform(transform.to_sitk(), str(tmp))
    os.replace(tmp, path)


def write_displacement_nrrd(field: DisplacementField, path) -> None:
    """NRRD vector image with Slicer's displacement-field metadata (resampling convention, LPS mm)."""
    img = Image(field.displacement_mm.astype(np.float32), field.grid).to_sitk()
    img.SetMetaData("intent_code", "1006")
    img.SetMetaData("displacement field type", "resampling")
    sitk.WriteImage(img, str(path), True)
