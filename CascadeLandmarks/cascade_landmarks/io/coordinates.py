"""Voxel indices and physical points: the one place that converts between them.

Frames used throughout the engine:

- **Voxel index** ``(i, j, k)``: continuous, with integer values at voxel centres, in ITK's axis order
  (``i`` fastest in memory). Arrays from SimpleITK and ``slicer.util.arrayFromVolume`` are
  indexed ``[k, j, i]``; the index order used here is always ``(i, j, k)``.
- **LPS** millimetres: the patient frame of DICOM, ITK, NRRD/NIfTI as read by ITK, and ``.mrk.json`` by default.
- **RAS** millimetres: the frame of Slicer's scene; ``(x, y, z)_RAS = (-x, -y, z)_LPS``.

Every index <-> physical conversion goes through the full index-to-physical matrix (direction cosines,
spacing and origin), never through origin or spacing alone.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

_LPS_RAS_FLIP = np.array([-1.0, -1.0, 1.0])

MIN_SPACING_MM = 1e-3
MAX_SPACING_MM = 100.0


def lps_to_ras(points_lps: np.ndarray) -> np.ndarray:
    """LPS millimetres, shape (..., 3), to RAS millimetres of the same shape."""
    return np.asarray(points_lps, dtype=float) * _LPS_RAS_FLIP


def ras_to_lps(points_ras: np.ndarray) -> np.ndarray:
    """RAS millimetres, shape (..., 3), to LPS millimetres of the same shape."""
    return np.asarray(points_ras, dtype=float) * _LPS_RAS_FLIP


@dataclass(frozen=True, eq=False)
class Geometry:
    """Where a voxel grid lies in physical space, as ITK defines it.

    Attributes:
        size: voxel counts ``(n_i, n_j, n_k)``; the matching array has shape ``(n_k, n_j, n_i)``.
        spacing: voxel size in mm along ``i, j, k``, shape (3,).
        origin: LPS mm of the centre of voxel ``(0, 0, 0)``, shape (3,).
        direction: shape (3, 3); column ``c`` is the LPS unit vector along index axis ``c``.
    """

    size: tuple[int, int, int]
    spacing: np.ndarray
    origin: np.ndarray
    direction: np.ndarray

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", tuple(int(n) for n in self.size))
        object.__setattr__(self, "spacing", np.asarray(self.spacing, dtype=float).reshape(3))
        object.__setattr__(self, "origin", np.asarray(self.origin, dtype=float).reshape(3))
        object.__setattr__(self, "direction", np.asarray(self.direction, dtype=float).reshape(3, 3))
        problem = self.problem()
        if problem:
            raise ValueError(f"Invalid image geometry: {problem}")

    def problem(self) -> str | None:
        """A sentence saying what is wrong with this geometry, or None if it is usable."""
        if len(self.size) != 3 or min(self.size) < 1:
            return f"size {self.size} must be three positive voxel counts"
        if not np.all(np.isfinite(self.spacing)) or np.any(self.spacing < MIN_SPACING_MM):
            return f"spacing {self.spacing.tolist()} mm is zero, negative, under {MIN_SPACING_MM:g} mm or not finite"
        if np.any(self.spacing > MAX_SPACING_MM):
            return f"spacing {self.spacing.tolist()} mm is over {MAX_SPACING_MM:g} mm: is the header in metres?"
        if not np.all(np.isfinite(self.origin)):
            return f"origin {self.origin.tolist()} is not finite"
        if not np.allclose(self.direction.T @ self.direction, np.eye(3), atol=1e-4):
            return f"direction {self.direction.tolist()} is not a rotation (columns must be orthonormal)"
        return None

    @property
    def shape(self) -> tuple[int, int, int]:
        """Shape of the matching array, ``(n_k, n_j, n_i)``."""
        return self.size[::-1]

    @property
    def index_to_lps_matrix(self) -> np.ndarray:
        """4x4 homogeneous matrix taking ``(i, j, k, 1)`` to ``(L, P, S, 1)`` in mm."""
        matrix = np.eye(4)
        matrix[:3, :3] = self.direction * self.spacing
        matrix[:3, 3] = self.origin
        return matrix

    @property
    def index_to_ras_matrix(self) -> np.ndarray:
        """4x4 homogeneous matrix taking ``(i, j, k, 1)`` to ``(R, A, S, 1)`` in mm (Slicer's IJKToRAS)."""
        return np.diag([*_LPS_RAS_FLIP, 1.0]) @ self.index_to_lps_matrix

    def index_to_lps(self, ijk: np.ndarray) -> np.ndarray:
        """Continuous voxel indices ``(i, j, k)``, shape (..., 3), to LPS mm, shape (..., 3)."""
        ijk = np.asarray(ijk, dtype=float)
        return ijk @ (self.direction * self.spacing).T + self.origin

    def lps_to_index(self, points_lps: np.ndarray) -> np.ndarray:
        """LPS mm, shape (..., 3), to continuous voxel indices ``(i, j, k)``, shape (..., 3)."""
        points_lps = np.asarray(points_lps, dtype=float)
        # direction is orthonormal, so its inverse is its transpose.
        return ((points_lps - self.origin) @ self.direction) / self.spacing

    def index_to_ras(self, ijk: np.ndarray) -> np.ndarray:
        """Continuous voxel indices ``(i, j, k)``, shape (..., 3), to RAS mm, shape (..., 3)."""
        return lps_to_ras(self.index_to_lps(ijk))

    def ras_to_index(self, points_ras: np.ndarray) -> np.ndarray:
        """RAS mm, shape (..., 3), to continuous voxel indices ``(i, j, k)``, shape (..., 3)."""
        return self.lps_to_index(ras_to_lps(points_ras))

    def box(self, start, size) -> Geometry:
        """The grid of ``size`` voxels (i, j, k) whose first voxel is this grid's voxel ``start`` (which may lie
        outside it): same spacing and direction, its voxels on this grid's."""
        return Geometry(tuple(int(n) for n in size), self.spacing, self.index_to_lps(start), self.direction)

    def contains_lps(self, points_lps: np.ndarray) -> np.ndarray:
        """Whether each LPS point, shape (..., 3), lies in the grid (voxel edges included); shape (...)."""
        ijk = self.lps_to_index(points_lps)
        upper = np.asarray(self.size, dtype=float) - 0.5
        return np.all((ijk >= -0.5) & (ijk <= upper), axis=-1)

    @property
    def extent_mm(self) -> np.ndarray:
        """Physical edge lengths of the grid along ``i, j, k`` in mm, shape (3,)."""
        return np.asarray(self.size) * self.spacing

    @property
    def lps_extent_mm(self) -> np.ndarray:
        """Edge lengths of the grid's bounding box along L, P, S in mm (voxel edges included), shape (3,).

        What the axis-aligned stage-1 grid must cover; unlike :attr:`extent_mm` it does not depend on how the
        voxels are ordered (a sagittal MRI's i axis may run along S).
        """
        corners = self.index_to_lps(np.array(list(itertools.product(*[(-0.5, n - 0.5) for n in self.size]))))
        return corners.max(axis=0) - corners.min(axis=0)

    @property
    def centre_lps(self) -> np.ndarray:
        """The centre of the grid (the middle of its voxels), LPS mm, shape (3,)."""
        return self.index_to_lps((np.asarray(self.size, dtype=float) - 1) / 2.0)

    def axes_code(self) -> str:
        """Where the i, j, k axes point, as the nearest anatomical direction each ("LPS": i to patient left, j
        posterior, k superior; "RAS" for a NIfTI-style grid), with "oblique" when one is more than 1 degree off."""
        letters = {0: "RL", 1: "AP", 2: "IS"}  # per LPS axis: the letter for -, then for +
        code = ""
        for column in self.direction.T:
            axis = int(np.argmax(np.abs(column)))
            code += letters[axis][int(column[axis] > 0)]
        oblique = np.abs(self.direction).max(axis=0).min() < np.cos(np.radians(1.0))
        return code + (" oblique" if oblique else "")

    def describe(self) -> str:
        """One line a user can check against the header they expect."""
        size = " x ".join(str(n) for n in self.size)
        spacing = " x ".join(f"{s:.4g}" for s in self.spacing)
        origin = ", ".join(f"{o:.2f}" for o in self.origin)
        return f"{size} voxels, {spacing} mm, origin ({origin}) LPS mm, axes {self.axes_code()}"

    @classmethod
    def from_index_to_ras_matrix(cls, matrix: np.ndarray, size: tuple[int, int, int]) -> Geometry:
        """The geometry whose Slicer IJKToRAS matrix (4x4) is ``matrix``, for a grid of ``size`` (i, j, k)."""
        to_lps = np.diag([*_LPS_RAS_FLIP, 1.0]) @ np.asarray(matrix, dtype=float)
        scaled = to_lps[:3, :3]
        spacing = np.linalg.norm(scaled, axis=0)
        if np.any(spacing <= 0):
            raise ValueError(f"IJKToRAS matrix {np.asarray(matrix).tolist()} has a zero column")
        return cls(size=size, spacing=spacing, origin=to_lps[:3, 3], direction=scaled / spacing)

    def same_as(self, other: Geometry, *, tolerance_mm: float = 1e-4) -> bool:
        """Whether two grids have the same size and index-to-LPS matrix, within ``tolerance_mm``."""
        return self.size == other.size and bool(
            np.allclose(self.index_to_lps_matrix, other.index_to_lps_matrix, atol=tolerance_mm)
        )
