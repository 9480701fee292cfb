"""Spheres: small synthetic volumes with known landmarks, for tests of the machinery (not phantoms of anatomy).

Each case: noise around -100 HU, and three bright spheres of different intensities in a jittered layout; the
landmark is each sphere's centre, exactly. The origin varies between cases (and the direction on request), so a
model has to work in physical millimetres.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...io.coordinates import Geometry
from ...io.landmark_sets import LandmarkDefinition, LandmarkSet
from ...io.landmarks import Landmarks, write_landmarks
from ...io.volumes import Volume, write_volume

SPHERE_HU = (600.0, 1100.0, 1600.0)
SPHERE_RADIUS_MM = 6.0

SPHERES_SET = LandmarkSet(
    name="spheres-3",
    title="Three bright spheres (synthetic test set)",
    description="Synthetic test landmarks: sphere centres.",
    landmarks=tuple(
        LandmarkDefinition(label=f"sphere {n}", name=f"Sphere {n}", description=f"centre of the {hu:g} HU sphere")
        for n, hu in enumerate(SPHERE_HU, start=1)
    ),
)


def make_case(seed: int, *, size=(40, 40, 40), spacing=(1.5, 1.5, 1.5), direction=None) -> tuple[Volume, Landmarks]:
    """One case (int16 HU volume and its three landmarks in LPS mm); the same seed gives the same case."""
    rng = np.random.default_rng(seed)
    geometry = Geometry(
        size=size,
        spacing=spacing,
        origin=rng.uniform(-50, 50, size=3),
        direction=np.eye(3) if direction is None else direction,
    )
    k, j, i = np.indices(geometry.shape)
    voxels_lps = geometry.index_to_lps(np.stack([i, j, k], axis=-1).reshape(-1, 3)).reshape(*geometry.shape, 3)
    array = rng.normal(-100.0, 30.0, size=geometry.shape)
    # Like anatomy: the spheres keep their layout (a triangle around the volume's centre), each moved by up
    # to 5 mm along every axis, off the voxel grid.
    middle = (np.asarray(size) - 1) / 2.0 * np.asarray(spacing)
    layout_mm = np.array([[-12.0, -8.0, -6.0], [12.0, -6.0, 4.0], [0.0, 12.0, 8.0]])
    centres_mm = middle + layout_mm + rng.uniform(-5.0, 5.0, size=(3, 3))
    centres = [geometry.index_to_lps(c / np.asarray(spacing)) for c in centres_mm]
    for centre, hu in zip(centres, SPHERE_HU, strict=True):
        distance = np.linalg.norm(voxels_lps - centre, axis=-1)
        array += (hu + 100.0) * np.clip(SPHERE_RADIUS_MM + 0.5 - distance, 0.0, 1.0)
    volume = Volume(array=array.astype(np.int16), geometry=geometry)
    landmarks = Landmarks(SPHERES_SET.labels, np.array(centres), [d.description for d in SPHERES_SET.landmarks])
    return volume, landmarks


def write_cases(folder: Path, seeds, **options) -> Path:
    """Write ``case<seed>.nrrd`` and ``case<seed>.mrk.json`` for each seed: a training folder."""
    folder.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        volume, landmarks = make_case(seed, **options)
        write_volume(volume, folder / f"case{seed:03d}.nrrd")
        write_landmarks(landmarks, folder / f"case{seed:03d}.mrk.json")
    return folder


def write_set(folder: Path) -> Path:
    """The spheres set as a landmark-set definition file."""
    import json

    path = folder / "spheres-3.json"
    path.write_text(json.dumps(SPHERES_SET.to_dict()))
    return path
