"""Building blocks of the CTA phantoms: shapes given by signed distances in LPS millimetres, painted into a grid.

A shape knows its signed distance (negative inside, zero on the surface; exact for spheres and tubes, a close
approximation for ellipsoids) and a bounding box. A :class:`Canvas` paints shapes one after another, each over
what is already there, with the surface anti-aliased across one voxel; the finished volume is blurred (the
scanner's point spread), given noise and stored as int16 Hounsfield units.

Landmarks are computed from the same shapes (:func:`exit_point`: where a centreline leaves a lumen), so a label
sits exactly where its definition says, whatever the voxel grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from ...io.coordinates import Geometry
from ...io.landmark_sets import load_landmark_set
from ...io.landmarks import Landmarks
from ...io.volumes import Volume
from .realism import (
    ScanLook,
    add_streaks,
    correlated_noise,
    reconstruction_circle,
    texture_fields,
    thick_slices,
)


def unit(vector) -> np.ndarray:
    vector = np.asarray(vector, dtype=float)
    return vector / np.linalg.norm(vector)


def across(vector, axis) -> np.ndarray:
    """The unit vector along the part of ``vector`` perpendicular to ``axis``."""
    vector, axis = np.asarray(vector, dtype=float), unit(axis)
    return unit(vector - (vector @ axis) * axis)


def rotation(axis, degrees: float) -> np.ndarray:
    """The 3 x 3 matrix turning ``degrees`` about ``axis`` (right-handed)."""
    x, y, z = unit(axis)
    angle = np.radians(degrees)
    c, s = np.cos(angle), np.sin(angle)
    cross = np.array([[0, -z, y], [z, 0, -x], [-y, x, 0]])
    return c * np.eye(3) + s * cross + (1 - c) * np.outer((x, y, z), (x, y, z))


def perpendicular_frame(axis) -> tuple[np.ndarray, np.ndarray]:
    """Two unit vectors completing ``axis`` to a right-handed orthonormal frame."""
    axis = unit(axis)
    helper = np.array([1.0, 0.0, 0.0]) if abs(axis[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    first = unit(np.cross(axis, helper))
    return first, np.cross(axis, first)


class Shape:
    """A solid: signed distance in mm at points (..., 3) LPS, and a box (low, high) that holds it."""

    def distance(self, points: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def pieces(self) -> list[Shape]:
        """Parts whose union is this shape, each in a small box: painting a long vessel stays cheap."""
        return [self]


@dataclass
class Ellipsoid(Shape):
    """Semi-axes ``radii`` along the columns of ``axes`` (a rotation; default: L, P, S)."""

    centre: np.ndarray
    radii: np.ndarray
    axes: np.ndarray = None

    def __post_init__(self) -> None:
        self.centre = np.asarray(self.centre, dtype=float)
        self.radii = np.asarray(self.radii, dtype=float) * np.ones(3)
        self.axes = np.eye(3) if self.axes is None else np.asarray(self.axes, dtype=float)

    def distance(self, points):
        local = (points - self.centre) @ self.axes
        scaled = np.linalg.norm(local / self.radii, axis=-1)
        return (scaled - 1.0) * self.radii.min()

    def bounds(self):
        reach = np.abs(self.axes) @ self.radii
        return self.centre - reach, self.centre + reach


@dataclass
class Box(Shape):
    """Half-sizes ``half`` along the columns of ``axes``."""

    centre: np.ndarray
    half: np.ndarray
    axes: np.ndarray

    def __post_init__(self) -> None:
        self.centre = np.asarray(self.centre, dtype=float)
        self.half = np.asarray(self.half, dtype=float)

    def distance(self, points):
        q = np.abs((points - self.centre) @ self.axes) - self.half
        outside = np.linalg.norm(np.maximum(q, 0.0), axis=-1)
        return outside + np.minimum(q.max(axis=-1), 0.0)

    def bounds(self):
        reach = np.abs(self.axes) @ self.half
        return self.centre - reach, self.centre + reach


@dataclass
class Tube(Shape):
    """A vessel: a centreline through ``points`` (n, 3) with a radius at each point, linear in between.

    The distance is to the nearest centreline segment, less the radius there: exact for a cylinder, close for
    a tapering tube. The ends are rounded.
    """

    points: np.ndarray
    radii: np.ndarray

    def __post_init__(self) -> None:
        self.points = np.asarray(self.points, dtype=float)
        self.radii = np.asarray(self.radii, dtype=float) * np.ones(len(self.points))

    def distance(self, points):
        result = np.full(points.shape[:-1], np.inf)
        for a, b, ra, rb in zip(self.points[:-1], self.points[1:], self.radii[:-1], self.radii[1:], strict=True):
            segment = b - a
            t = np.clip(((points - a) @ segment) / max(segment @ segment, 1e-12), 0.0, 1.0)
            gap = np.linalg.norm(points - a - t[..., None] * segment, axis=-1) - (ra + t * (rb - ra))
            np.minimum(result, gap, out=result)
        return result

    def bounds(self):
        reach = self.radii[:, None]
        return (self.points - reach).min(axis=0), (self.points + reach).max(axis=0)

    def pieces(self):
        return [Tube(self.points[n : n + 2], self.radii[n : n + 2]) for n in range(len(self.points) - 1)]

    def length(self) -> float:
        return float(np.linalg.norm(np.diff(self.points, axis=0), axis=1).sum())

    def at(self, distance_mm: float) -> np.ndarray:
        """The centreline point ``distance_mm`` along from the first point."""
        steps = np.linalg.norm(np.diff(self.points, axis=0), axis=1)
        walked = np.concatenate([[0.0], np.cumsum(steps)])
        return np.array([np.interp(distance_mm, walked, self.points[:, c]) for c in range(3)])


@dataclass
class Union(Shape):
    """Several shapes as one solid (the lumen of a vessel tree, say)."""

    parts: list

    def distance(self, points):
        return np.min([part.distance(points) for part in self.parts], axis=0)

    def bounds(self):
        lows, highs = zip(*(part.bounds() for part in self.parts), strict=True)
        return np.min(lows, axis=0), np.max(highs, axis=0)

    def pieces(self):
        return [piece for part in self.parts for piece in part.pieces()]


def curve(control_points, *, step_mm: float = 1.0) -> np.ndarray:
    """A smooth centreline through ``control_points`` (Catmull-Rom), sampled about every ``step_mm``."""
    control = np.asarray(control_points, dtype=float)
    padded = np.vstack([2 * control[0] - control[1], control, 2 * control[-1] - control[-2]])
    samples = [control[:1]]
    for n in range(1, len(padded) - 2):
        p0, p1, p2, p3 = padded[n - 1 : n + 3]
        count = max(2, int(np.ceil(np.linalg.norm(p2 - p1) / step_mm)))
        t = np.linspace(0.0, 1.0, count + 1)[1:, None]
        samples.append(
            0.5
            * (2 * p1 + (-p0 + p2) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t**2 + (-p0 + 3 * p1 - 3 * p2 + p3) * t**3)
        )
    return np.vstack(samples)


def exit_point(centreline: np.ndarray, lumen: Shape, *, tolerance_mm: float = 1e-3) -> np.ndarray:
    """Where ``centreline`` (starting inside ``lumen``) first crosses the lumen's surface: an ostium.

    Raises ValueError when the centreline does not start inside or never leaves: the phantom is malformed.
    """
    distances = lumen.distance(centreline)
    if distances[0] >= 0:
        raise ValueError("The branch centreline must start inside the parent vessel's lumen.")
    outside = np.flatnonzero(distances >= 0)
    if outside.size == 0:
        raise ValueError("The branch centreline never leaves the parent vessel's lumen.")
    inside_point, outside_point = centreline[outside[0] - 1], centreline[outside[0]]
    while np.linalg.norm(outside_point - inside_point) > tolerance_mm:
        middle = (inside_point + outside_point) / 2
        if lumen.distance(middle[None])[0] < 0:
            inside_point = middle
        else:
            outside_point = middle
    return (inside_point + outside_point) / 2


class Canvas:
    """An axis-aligned LPS grid being painted, as float32 Hounsfield units; with ``fields`` (smooth random fields
    on the grid, see :func:`~.realism.texture_fields`), a painted tissue may be given a texture."""

    def __init__(self, geometry: Geometry, background_hu: float = -1000.0, fields: list | None = None) -> None:
        if not np.allclose(geometry.direction, np.eye(3)):
            raise ValueError("Phantoms are painted on an LPS-aligned grid; rotate the anatomy, not the grid.")
        self.geometry = geometry
        self.array = np.full(geometry.shape, background_hu, dtype=np.float32)
        self.fields = fields or []
        self._axes = [geometry.origin[c] + geometry.spacing[c] * np.arange(geometry.size[c]) for c in range(3)]

    def paint(self, shape: Shape, hu: float, *, inside: Shape | None = None, texture=()) -> None:
        """Fill ``shape`` with ``hu`` over what is there; with ``inside``, only where that shape is too; with
        ``texture`` (amplitudes in HU, one per field), ``hu`` varies by the canvas's fields."""
        region = self._region(*shape.bounds())
        if region is None:
            return
        cover = np.zeros(tuple(s.stop - s.start for s in region), dtype=np.float32)
        for piece in shape.pieces():
            part = self._region(*piece.bounds())
            if part is None:
                continue
            within = tuple(slice(p.start - r.start, p.stop - r.start) for p, r in zip(part, region, strict=True))
            np.maximum(cover[within], self._cover(piece, part), out=cover[within])
        if inside is not None:
            cover *= self._cover(inside, region)
        value = np.float32(hu)
        for amplitude, texture_field in zip(texture, self.fields, strict=False):
            value = value + np.float32(amplitude) * texture_field[region]
        self.array[region] += cover * (value - self.array[region])

    def _region(self, low, high) -> tuple[slice, slice, slice] | None:
        """Array slices [k, j, i] of the voxels within a voxel of the box (low, high), or None if it misses."""
        geometry = self.geometry
        slices = []
        for c in range(3):
            first = int(np.floor((low[c] - geometry.origin[c]) / geometry.spacing[c])) - 1
            last = int(np.ceil((high[c] - geometry.origin[c]) / geometry.spacing[c])) + 2
            first, last = max(first, 0), min(last, geometry.size[c])
            if first >= last:
                return None
            slices.append(slice(first, last))
        return slices[2], slices[1], slices[0]

    def _cover(self, shape: Shape, region) -> np.ndarray:
        """The share of each voxel of ``region`` inside ``shape``: 1 inside, 0 outside, linear across a voxel."""
        x, y, z = (self._axes[c][region[2 - c]] for c in range(3))
        points = np.stack(np.broadcast_arrays(x[None, None, :], y[None, :, None], z[:, None, None]), axis=-1)
        voxel = float(self.geometry.spacing.min())
        return np.clip(0.5 - shape.distance(points) / voxel, 0.0, 1.0).astype(np.float32)

    def finish(self, rng: np.random.Generator, *, blur_mm: float, noise_hu: float, look: ScanLook | None = None):
        """Blur by the scanner's point spread (Gaussian, sigma ``blur_mm``), add noise, round to int16 HU; with
        ``look``, its point spread and noise grain, slice thickness, streaks and reconstruction circle instead."""
        image = sitk.GetImageFromArray(self.array)
        spacing = tuple(float(s) for s in self.geometry.spacing)
        image.SetSpacing(spacing)
        blurred = sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(image, look.blur_mm if look else blur_mm))
        if look is None:
            blurred += rng.normal(0.0, noise_hu, size=blurred.shape).astype(np.float32)
        else:
            blurred = thick_slices(blurred, spacing[2], look.slice_mm)
            add_streaks(blurred, spacing, look.streaks_hu, rng)
            blurred += look.noise_hu * correlated_noise(blurred.shape, spacing, look.noise_mm, rng)
            reconstruction_circle(blurred, spacing, look.circle_mm)
        array = np.clip(np.rint(blurred), -1024, 3071).astype(np.int16)
        return Volume(array=array, geometry=self.geometry)


@dataclass
class Pose:
    """Where the anatomy lies in the scanner: anatomical-frame mm -> LPS mm, ``lps = centre + turn @ point``."""

    centre: np.ndarray
    turn: np.ndarray

    @classmethod
    def random(cls, rng: np.random.Generator, *, max_degrees: float, centre_mm: float) -> Pose:
        """A random tilt of up to ``max_degrees`` about any axis, and a centre within ``centre_mm`` of zero."""
        turn = rotation(rng.normal(size=3), rng.uniform(0.0, max_degrees))
        return cls(centre=rng.uniform(-centre_mm, centre_mm, size=3), turn=turn)

    def point(self, point) -> np.ndarray:
        return self.centre + np.asarray(point, dtype=float) @ self.turn.T

    def vector(self, vector) -> np.ndarray:
        return np.asarray(vector, dtype=float) @ self.turn.T

    def axes(self, axes) -> np.ndarray:
        return self.turn @ np.asarray(axes, dtype=float)


def axes_along(axis) -> np.ndarray:
    """A rotation whose first column is ``axis``: for ellipsoids and boxes elongated along it."""
    first, second = perpendicular_frame(axis)
    return np.column_stack([unit(axis), first, second])


def spine(
    pose: Pose, rng: np.random.Generator, *, top_mm: float, bottom_mm: float, posterior_mm: float, scale: float
) -> list[tuple[Shape, str]]:
    """Vertebral bodies (cortical shell, cancellous core) and discs from ``top_mm`` down to ``bottom_mm``,
    centred ``posterior_mm`` behind the anatomical origin; each part with its tissue name."""

    def column(centre, half_height, radius):
        up = np.array([0.0, 0.0, half_height])
        return Tube(pose.point([centre + up, centre - up]), radius)

    parts = []
    height, disc = 24.0 * scale, 6.0 * scale
    radius = 17.0 * scale * rng.uniform(0.92, 1.08)
    z = top_mm
    while z > bottom_mm:
        centre = np.array([0.0, posterior_mm, z - height / 2])
        spinous = Box(pose.point(centre + np.array([0, radius + 14 * scale, 0])), [4, 14 * scale, 8 * scale], pose.turn)
        parts += [
            (column(centre, height / 2, radius), "cortical bone"),
            (column(centre, height / 2 - 1.5, radius - 1.5), "cancellous bone"),
            (spinous, "cortical bone"),
            (column(centre - np.array([0, 0, (height + disc) / 2]), disc / 2, radius), "disc"),
        ]
        z -= height + disc
    return parts


def tissue_values(rng: np.random.Generator) -> dict[str, float]:
    """Hounsfield units of each tissue for one scan, within the ranges contrast-enhanced CT shows."""
    blood = rng.uniform(280.0, 550.0)
    return {
        "air": -1000.0,
        "lung": rng.uniform(-880.0, -800.0),
        "fat": rng.uniform(-110.0, -70.0),
        "soft tissue": rng.uniform(30.0, 60.0),
        "muscle": rng.uniform(45.0, 70.0),
        "myocardium": rng.uniform(90.0, 140.0),
        "blood": blood,
        "venous blood": blood * rng.uniform(0.45, 0.95),
        "liver": rng.uniform(90.0, 140.0),
        "kidney": rng.uniform(150.0, 250.0),
        "spleen": rng.uniform(100.0, 150.0),
        "bowel": rng.uniform(0.0, 40.0),
        "valve": rng.uniform(60.0, 110.0),
        "disc": rng.uniform(70.0, 100.0),
        "cancellous bone": rng.uniform(180.0, 320.0),
        "cortical bone": rng.uniform(600.0, 1000.0),
    }


@dataclass
class Anatomy:
    """One phantom's anatomy, before it meets a voxel grid.

    Attributes:
        layers: (shape, tissue, clip) painted in order, each over the ones before; ``clip`` (or None) limits
            a layer to the inside of another shape.
        tissues: Hounsfield units of each tissue name (see :func:`tissue_values`).
        background: the tissue outside every layer.
        landmarks: label -> LPS mm.
        vessels: name -> (centreline (n, 3) LPS mm, lumen shape), for checks of the landmark definitions.
        centre: LPS mm of the field of view's centre.
        blur_mm, noise_hu: the scanner's point spread (Gaussian sigma) and noise (standard deviation).
        seed: for the noise.
        look: how the scan looks beyond its anatomy (texture, noise grain, streaks, thick slices, the
            reconstruction circle; see :mod:`.realism`), or None for flat tissues and white noise.
    """

    layers: list
    tissues: dict[str, float]
    background: str
    landmarks: dict[str, np.ndarray]
    vessels: dict[str, tuple[np.ndarray, Shape]]
    centre: np.ndarray
    blur_mm: float
    noise_hu: float
    seed: int
    look: ScanLook | None = None

    def render(self, spacing_mm, field_of_view_mm, *, holding: np.ndarray | None = None) -> Volume:
        """The CT volume (int16 HU) on an LPS-aligned grid of ``spacing_mm`` voxels round ``centre``; moved, if
        need be, just enough to hold the LPS points ``holding`` (N, 3) a voxel inside its edges."""
        spacing = np.asarray(spacing_mm, dtype=float) * np.ones(3)
        size = np.round(np.asarray(field_of_view_mm) / spacing).astype(int)
        geometry = Geometry(
            size=size, spacing=spacing, origin=self.centre - (size - 1) / 2 * spacing, direction=np.eye(3)
        )
        if holding is not None and not geometry.contains_lps(holding).all():
            # A landmark near the edge of a randomly placed field of view: the rest of the seeds stay as they were.
            low = geometry.origin + spacing / 2  # a voxel inside the grid's edges, which lie half a voxel out
            high = geometry.origin + (size - 1.5) * spacing
            shift = np.minimum(holding.min(axis=0) - low, 0) + np.maximum(holding.max(axis=0) - high, 0)
            geometry = Geometry(size=size, spacing=spacing, origin=geometry.origin + shift, direction=np.eye(3))
        rng = np.random.default_rng([self.seed, 1])
        fields = texture_fields(geometry.shape, geometry.spacing, rng) if self.look else None
        canvas = Canvas(geometry, background_hu=self.tissues[self.background], fields=fields)
        textures = self.look.textures if self.look else {}
        for shape, tissue, clip in self.layers:
            canvas.paint(shape, self.tissues[tissue], inside=clip, texture=textures.get(tissue, ()))
        return canvas.finish(rng, blur_mm=self.blur_mm, noise_hu=self.noise_hu, look=self.look)

    def case(self, spacing_mm, field_of_view_mm, landmark_set: str) -> tuple[Volume, Landmarks]:
        """The rendered volume and the landmarks of ``landmark_set`` (its order and descriptions)."""
        landmarks = self.landmarks_of(load_landmark_set(landmark_set))
        return self.render(spacing_mm, field_of_view_mm, holding=landmarks.positions_lps), landmarks

    def landmarks_of(self, landmark_set) -> Landmarks:
        """The landmarks in the set's order, with its descriptions."""
        return Landmarks(
            landmark_set.labels,
            np.array([self.landmarks[label] for label in landmark_set.labels]),
            [d.description for d in landmark_set.landmarks],
        )
