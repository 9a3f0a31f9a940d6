"""Images with their physical geometry (ITK/LPS, millimetres).

Orders, stated once:
- ``Grid.size`` is x-first ``(nx, ny, nz)`` like SimpleITK;
- ``Grid.shape`` and ``Image.array`` are z-first ``(nz, ny, nx)`` like NumPy/torch;
- ``direction`` columns are the physical (LPS) directions of the i, j, k index axes;
- a physical point is ``origin + direction @ (spacing * index_xyz)``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import SimpleITK as sitk


@dataclass(frozen=True)
class Grid:
    """Voxel grid of an image: size (x-first), spacing (mm), origin (mm, LPS), direction."""

    size: tuple
    spacing: np.ndarray
    origin: np.ndarray
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))

    def __post_init__(self):
        object.__setattr__(self, "size", tuple(int(s) for s in self.size))
        object.__setattr__(self, "spacing", np.asarray(self.spacing, dtype=np.float64).reshape(-1))
        object.__setattr__(self, "origin", np.asarray(self.origin, dtype=np.float64).reshape(-1))
        d = len(self.size)
        object.__setattr__(self, "direction", np.asarray(self.direction, dtype=np.float64).reshape(d, d))

    @property
    def ndim(self) -> int:
        return len(self.size)

    @property
    def shape(self) -> tuple:
        """Array shape, z-first."""
        return tuple(reversed(self.size))

    @property
    def num_voxels(self) -> int:
        return int(np.prod(self.size))

    @property
    def voxel_to_mm(self) -> np.ndarray:
        """Linear part of the index → LPS map, direction · diag(spacing): column k is voxel axis k in mm, so it
        turns x-first index displacements into LPS millimetres (its inverse the other way)."""
        return self.direction @ np.diag(self.spacing)

    def index_to_physical_matrix(self) -> np.ndarray:
        """Homogeneous matrix mapping continuous (i, j, k) indices to LPS millimetres."""
        d = self.ndim
        m = np.eye(d + 1)
        m[:d, :d] = self.voxel_to_mm
        m[:d, d] = self.origin
        return m

    def index_to_physical(self, index_xyz: np.ndarray) -> np.ndarray:
        """Continuous indices (..., 3) in x-first order to LPS points (..., 3)."""
        index_xyz = np.asarray(index_xyz, dtype=np.float64)
        return index_xyz @ self.voxel_to_mm.T + self.origin

    def physical_to_index(self, points_lps: np.ndarray) -> np.ndarray:
        """LPS points (..., 3) to continuous x-first indices (..., 3)."""
        points_lps = np.asarray(points_lps, dtype=np.float64)
        inv = np.linalg.inv(self.voxel_to_mm)
        return (points_lps - self.origin) @ inv.T

    def corners_physical(self) -> np.ndarray:
        """The 2^d corner voxel centres in LPS millimetres."""
        d = self.ndim
        idx = np.array(np.meshgrid(*[[0, s - 1] for s in self.size], indexing="ij")).reshape(d, -1).T
        return self.index_to_physical(idx)

    def center_physical(self) -> np.ndarray:
        """Physical centre of the grid (centre of the voxel-centre bounding box)."""
        return self.index_to_physical((np.asarray(self.size, dtype=np.float64) - 1.0) / 2.0)

    def bounding_box_physical(self) -> tuple:
        """Axis-aligned (min, max) LPS corners of the voxel-centre box."""
        c = self.corners_physical()
        return c.min(axis=0), c.max(axis=0)

    def with_spacing(self, spacing: Sequence[float]) -> "Grid":
        """A grid covering the same physical extent at another spacing (same origin, direction)."""
        spacing = np.asarray(spacing, dtype=np.float64)
        extent = (np.asarray(self.size) - 1) * self.spacing
        size = np.maximum(np.floor(extent / spacing + 1e-6).astype(int) + 1, 1)
        return Grid(tuple(size), spacing, self.origin, self.direction)

    def widened(self, margin_mm: float) -> "Grid":
        """This grid grown by ``margin_mm`` (rounded up to whole voxels) on every side; same spacing and
        direction, so every voxel centre of this grid is a voxel centre of the wider one."""
        pad = np.ceil(margin_mm / self.spacing).astype(int)
        return Grid(tuple(np.asarray(self.size) + 2 * pad), self.spacing,
                    self.origin - self.direction @ (self.spacing * pad), self.direction)

    def same_as(self, other: "Grid", tol: float = 1e-5) -> bool:
        return (
            self.size == other.size
            and np.allclose(self.spacing, other.spacing, atol=tol)
            and np.allclose(self.origin, other.origin, atol=tol)
            and np.allclose(self.direction, other.direction, atol=tol)
        )

    def to_dict(self) -> dict:
        return {
            "size": list(self.size),
            "spacing": self.spacing.tolist(),
            "origin": self.origin.tolist(),
            "direction": self.direction.tolist(),
        }


@dataclass
class Image:
    """A scalar (or vector, last axis) voxel array with its grid. ``array`` is z-first."""

    array: np.ndarray
    grid: Grid

    def __post_init__(self):
        spatial = self.array.shape[: self.grid.ndim]
        if tuple(spatial) != self.grid.shape:
            raise ValueError(f"array shape {self.array.shape} does not match grid shape {self.grid.shape}")

    @property
    def is_vector(self) -> bool:
        return self.array.ndim == self.grid.ndim + 1

    @classmethod
    def from_sitk(cls, image: sitk.Image) -> "Image":
        grid = Grid(image.GetSize(), image.GetSpacing(), image.GetOrigin(), np.array(image.GetDirection()))
        return cls(sitk.GetArrayFromImage(image), grid)

    def to_sitk(self) -> sitk.Image:
        out = sitk.GetImageFromArray(self.array, isVector=self.is_vector)
        out.SetSpacing(tuple(self.grid.spacing))
        out.SetOrigin(tuple(self.grid.origin))
        out.SetDirection(tuple(self.grid.direction.reshape(-1)))
        return out

    def with_array(self, array: np.ndarray) -> "Image":
        """Same geometry, other voxels."""
        return Image(array, self.grid)

    def intensity_range(self) -> float:
        return float(np.max(self.array) - np.min(self.array))
