"""Training-time augmentation: random spatial transforms that move the landmarks exactly with the image, and
random intensity changes.

A draw is one :class:`RandomTransform`: a smooth elastic displacement followed by an affine map (rotation,
scaling, shear, translation, and optionally a left/right mirror) about the volume's centre, all in LPS mm. It maps
each point of the augmented image to the point of the original it shows, ``x_in = A(x_out + d(x_out))``; an image
is sampled through it, and each landmark is carried the other way, ``x_out = T^-1(p_in)`` (exact for the affine
part, a converging fixed-point iteration for the elastic one). A mirror also swaps the labels of paired
landmarks (left and right twins), so the augmented left landmark is the mirrored right one.

Intensity changes act on the windowed image (values about [0, 1]): gamma, a smooth multiplicative bias field,
Gaussian blur and Gaussian noise.

How strongly to augment is :class:`~cascade_landmarks.training.config.Augmentation`, with its presets.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional

from ..inference.preprocessing import Sampler
from ..io.coordinates import Geometry
from .config import Augmentation

# Landmarks are carried into the augmented image by a fixed-point iteration; it converges while the elastic
# displacement stretches no region by as much as its own size (fine grids with large displacements fold space).
INVERSE_TOLERANCE_MM = 1e-6
INVERSE_ITERATIONS = 200


def _rotation(angles_degrees: np.ndarray) -> np.ndarray:
    x, y, z = np.radians(angles_degrees)
    rx = np.array([[1, 0, 0], [0, np.cos(x), -np.sin(x)], [0, np.sin(x), np.cos(x)]])
    ry = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
    rz = np.array([[np.cos(z), -np.sin(z), 0], [np.sin(z), np.cos(z), 0], [0, 0, 1]])
    return rz @ ry @ rx


class RandomTransform:
    """One random spatial transform around ``centre_lps`` over a box of ``extent_mm`` (see the module docstring)."""

    def __init__(self, augmentation: Augmentation, rng: np.random.Generator, centre_lps, extent_mm):
        self.centre = np.asarray(centre_lps, dtype=float)
        self.extent = np.asarray(extent_mm, dtype=float)
        a = augmentation
        matrix = _rotation(rng.uniform(-a.rotation_degrees, a.rotation_degrees, 3))
        matrix = matrix @ np.diag(1.0 + rng.uniform(-a.scaling, a.scaling, 3))
        shear = np.eye(3)
        shear[np.triu_indices(3, 1)] = rng.uniform(-a.shear, a.shear, 3)
        matrix = matrix @ shear
        self.mirrored = bool(rng.random() < a.mirror_probability)
        if self.mirrored:
            matrix = matrix @ np.diag([-1.0, 1.0, 1.0])  # L <-> R in LPS
        self.matrix = matrix
        self.translation = rng.uniform(-a.translation_mm, a.translation_mm, 3)
        # Elastic displacement (mm) at a coarse grid of control points spanning the box, zero at its border.
        grid = a.elastic_grid
        controls = rng.normal(0.0, a.elastic_mm, size=(3, grid, grid, grid)) if a.elastic_mm else None
        if controls is not None:
            controls[:, [0, -1], :, :] = 0.0
            controls[:, :, [0, -1], :] = 0.0
            controls[:, :, :, [0, -1]] = 0.0
            self._controls = torch.from_numpy(controls)[None]  # float64: landmarks are carried in full precision
        else:
            self._controls = None

    def displacement(self, points_lps: np.ndarray) -> np.ndarray:
        """The elastic displacement (mm) at points (N, 3), smooth (trilinear between control points), float64."""
        points = np.asarray(points_lps, dtype=float).reshape(-1, 3)
        return self.displacement_tensor(torch.from_numpy(points)).numpy()

    def displacement_tensor(self, points_lps: torch.Tensor) -> torch.Tensor:
        """:meth:`displacement` for a tensor of points (N, 3), in its precision; zeros without an elastic part."""
        if self._controls is None:
            return torch.zeros_like(points_lps)
        dtype = points_lps.dtype
        centre = torch.as_tensor(self.centre, dtype=dtype)
        half = torch.as_tensor(self.extent / 2.0, dtype=dtype)
        grid = ((points_lps - centre) / half).reshape(1, -1, 1, 1, 3)  # [-1, 1] over the box, (L, P, S)
        # grid_sample wants (x, y, z) = last, middle, first array axis; the controls are [c, L, P, S] -> permute.
        controls = self._controls.to(dtype).permute(0, 1, 4, 3, 2)  # [1, 3, S, P, L]
        values = functional.grid_sample(controls, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        return values.reshape(3, -1).T

    @property
    def affine_matrix(self) -> np.ndarray:
        """The affine part as a 4x4 homogeneous matrix (LPS mm to LPS mm), about the box's centre."""
        affine = np.eye(4)
        affine[:3, :3] = self.matrix
        affine[:3, 3] = self.centre + self.translation - self.matrix @ self.centre
        return affine

    def to_input(self, points_out: np.ndarray) -> np.ndarray:
        """Where each point of the augmented image comes from in the original (LPS mm, (..., 3))."""
        points = np.asarray(points_out, dtype=float)
        shape = points.shape
        flat = points.reshape(-1, 3)
        moved = flat + self.displacement(flat)
        affine = self.affine_matrix
        return (moved @ affine[:3, :3].T + affine[:3, 3]).reshape(shape)

    def to_output(self, points_in: np.ndarray) -> np.ndarray:
        """Where original points (LPS mm, (N, 3)) appear in the augmented image: the inverse of :meth:`to_input`,
        to :data:`INVERSE_TOLERANCE_MM`."""
        inverse = np.linalg.inv(self.affine_matrix)
        target = np.asarray(points_in, dtype=float) @ inverse[:3, :3].T + inverse[:3, 3]
        points = target.copy()
        displacement = self.displacement(points)
        for _ in range(INVERSE_ITERATIONS):  # solve x + d(x) = target
            points = target - displacement
            displacement = self.displacement(points)
            miss = np.abs(points + displacement - target).max(initial=0.0)
            if miss < INVERSE_TOLERANCE_MM:
                return points
        raise ValueError(
            f"The elastic deformation is too strong for its grid to carry the landmarks with the image (still "
            f"{miss:.3g} mm off after {INVERSE_ITERATIONS} steps): lower elastic_mm or elastic_grid."
        )


class AugmentingSampler:
    """Samples a volume, windowed as ``sampler`` windows it, through random transforms (torch's trilinear
    interpolation).

    With no transform it reads what ``sampler`` reads (SimpleITK), so a model sees at detection what it saw in
    training: raw intensities interpolated, then windowed; outside the volume, the window's lower bound. (Only in
    the outermost voxel's outer half do they differ: SimpleITK keeps the edge voxel's value up to the volume's
    edge, torch fades it to the lower bound. Matching that costs half the sampling speed; no landmark lies there.)
    """

    def __init__(self, sampler: Sampler):
        low, high = sampler.bounds
        # Raw intensities shifted so the window's lower bound is 0: what lies beyond the volume then reads as it.
        array = sampler.volume.array.astype(np.float32) - np.float32(low)
        self.tensor = torch.from_numpy(array)[None, None]  # [1, 1, k, j, i]
        self.width = np.float32(high - low)
        self.geometry = sampler.volume.geometry

    def sample(self, geometry: Geometry, transform: RandomTransform | None) -> np.ndarray:
        """Windowed intensities on ``geometry`` (float32, shape ``geometry.shape``), seen through ``transform``.

        Computed in float32 torch in one go (training samples millions of points per step): the output grid's
        points, the elastic displacement, then one 4x4 map folding the transform's affine part, this volume's
        LPS-to-index map and grid_sample's [-1, 1] normalisation together.
        """
        k, j, i = torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in geometry.shape], indexing="ij")
        ijk = torch.stack([i, j, k], dim=-1).reshape(-1, 3)
        points = _affine(ijk, geometry.index_to_lps_matrix)
        affine = np.eye(4)
        if transform is not None:
            points = points + transform.displacement_tensor(points)
            affine = transform.affine_matrix
        volume = self.geometry
        to_grid = np.diag([*(2.0 / (np.asarray(volume.size) - 1)), 1.0])  # (i, j, k) -> grid_sample's [-1, 1]
        to_grid[:3, 3] = -1.0
        normalised = _affine(points, to_grid @ np.linalg.inv(volume.index_to_lps_matrix) @ affine)
        grid = normalised.reshape(1, -1, 1, 1, 3)  # (i, j, k) = grid_sample's (x, y, z)
        values = functional.grid_sample(self.tensor, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        return (torch.clamp(values, 0.0, float(self.width)) / self.width).reshape(geometry.shape).numpy()


def _affine(points: torch.Tensor, matrix: np.ndarray) -> torch.Tensor:
    """Points (N, 3) through a 4x4 homogeneous matrix, in float32."""
    matrix = torch.from_numpy(np.asarray(matrix, dtype=np.float32))
    return points @ matrix[:3, :3].T + matrix[:3, 3]


def change_intensity(array: np.ndarray, augmentation: Augmentation, rng: np.random.Generator, spacing_mm: float):
    """Random gamma, bias field, blur and noise on a windowed array (values about [0, 1]), float32."""
    a = augmentation
    out = np.clip(array, 0.0, None)
    if a.gamma:
        out = out ** np.exp(rng.uniform(-a.gamma, a.gamma))
    if a.bias_field:
        out = out * np.exp(_bias_field(out.shape, rng.uniform(-a.bias_field, a.bias_field, BIAS_FIELD_TERMS)))
    if a.blur_mm:
        out = _gaussian_blur(out, rng.uniform(0.0, a.blur_mm) / spacing_mm)
    if a.noise:
        out = out + rng.normal(0.0, rng.uniform(0.0, a.noise), out.shape)
    return out.astype(np.float32)


# The bias field's log is a full polynomial of degree two in the voxel position, each axis scaled to [-1, 1]: three
# linear terms, three products and three squares (less 1/3, their mean over the cube, so no term shifts the mean).
BIAS_FIELD_TERMS = 9


def _bias_field(shape: tuple[int, int, int], coefficients: np.ndarray) -> np.ndarray:
    """The log of a smooth multiplicative bias field on an array of ``shape`` ([k, j, i]), one coefficient per
    polynomial term (see :data:`BIAS_FIELD_TERMS`)."""
    k, j, i = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    terms = (i, j, k, i * j, j * k, i * k, i**2 - 1 / 3, j**2 - 1 / 3, k**2 - 1 / 3)
    return sum(c * term for c, term in zip(coefficients, terms, strict=True))


def _gaussian_blur(array: np.ndarray, sigma_voxels: float) -> np.ndarray:
    if sigma_voxels < 0.3:
        return array
    radius = int(np.ceil(3 * sigma_voxels))
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma_voxels) ** 2)
    kernel /= kernel.sum()
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None, None]
    weights = torch.from_numpy(kernel.astype(np.float32))
    for axis in range(3):
        shape = [1, 1, 1, 1, 1]
        shape[2 + axis] = len(kernel)
        padding = [0, 0, 0]
        padding[axis] = radius
        tensor = functional.conv3d(tensor, weights.reshape(shape), padding=tuple(padding))
    return tensor[0, 0].numpy()
