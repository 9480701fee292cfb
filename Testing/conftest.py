"""Shared fixtures: the real data beside the checkout, a real MRML scene, and a small oblique volume.

The MRML scene is the real one from the ``slicer-core`` wheel (vtkMRMLScene with volume and markups nodes and
their storage nodes), not a stand-in.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from cascade_landmarks import Geometry, Landmarks, Volume

REPOSITORY = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def private_model_registry(tmp_path_factory):
    """The suite's own user folder (the user's model registry): the tests neither see the models the person
    running them has registered nor add theirs to that person's list."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CASCADE_LANDMARKS_HOME", str(tmp_path_factory.mktemp("home")))
        yield


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the checkout (or ``$CASCADE_LANDMARKS_SHARED_DATA``)."""
    folder = Path(os.environ.get("CASCADE_LANDMARKS_SHARED_DATA", REPOSITORY.parent / "shared" / "data"))
    if not (folder / "real").is_dir():
        pytest.fail(f"The real test data is missing: expected {folder}/real (the shared/ folder beside the checkout).")
    return folder


@pytest.fixture
def mrml_scene():
    """A real, empty MRML scene from slicer-core."""
    slicer = pytest.importorskip("slicer", reason="slicer-core is installed by `make test`")
    scene = slicer.vtkMRMLScene()
    yield scene
    scene.Clear(True)


def rotation(axis, degrees: float) -> np.ndarray:
    """A 3x3 rotation about ``axis`` by ``degrees``."""
    axis = np.asarray(axis, dtype=float) / np.linalg.norm(axis)
    x, y, z = axis
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    cross = np.array([[0, -z, y], [z, 0, -x], [-y, x, 0]])
    return c * np.eye(3) + s * cross + (1 - c) * np.outer(axis, axis)


# Voxel indices (i, j, k) of the marked landmarks, and the value each marked voxel holds.
MARKED_VOXELS = np.array([[3, 4, 2], [36, 5, 3], [20, 25, 9], [4, 27, 14], [37, 28, 15]])
MARKER_VALUES = np.array([3001, 3002, 3003, 3004, 3005])


@pytest.fixture
def oblique_volume() -> Volume:
    """40 x 30 x 17 voxels, anisotropic spacing, rotated off every axis, with five marked voxels.

    Background is noise between -1000 and 1000; each voxel of ``MARKED_VOXELS`` holds its
    own ``MARKER_VALUES`` entry, so a landmark that lands on the wrong voxel after a round trip reads a wrong value.
    """
    generator = np.random.default_rng(7)
    geometry = Geometry(
        size=(40, 30, 17),
        spacing=(0.7, 0.9, 2.5),
        origin=(-103.25, 45.75, 12.125),
        direction=rotation([1.0, 2.0, 0.5], 33.0),
    )
    array = generator.integers(-1000, 1000, size=geometry.shape).astype(np.int16)
    for (i, j, k), value in zip(MARKED_VOXELS, MARKER_VALUES, strict=True):
        array[k, j, i] = value
    return Volume(array=array, geometry=geometry)


@pytest.fixture
def oblique_landmarks(oblique_volume: Volume) -> Landmarks:
    """Landmarks at the centres of the marked voxels of ``oblique_volume`` (LPS mm), with awkward text."""
    positions = oblique_volume.geometry.index_to_lps(MARKED_VOXELS)
    labels = ["apex cordis", "left, coronary", 'right "RCA" ostium', "bifurcation é LM", "NCC"]
    descriptions = ["tip of the LV", "comma, inside", 'quote " inside', "ünïcode", ""]
    return Landmarks(labels, positions, descriptions)


# --- a small trained model, shared by the tests that need one ---------------------------------------------

# Small enough to train in about half a minute on two CPU cores (the sphere cases of bench/phantoms/spheres.py).
TINY_MODEL_SETTINGS = {
    "stage1_spacing_mm": 3.0,
    "stage1_grid": (20, 20, 20),
    "patch_size": 16,
    "unet_width": 8,
    "unet_depth": 2,
    "stage2_radius_mm": 5.0,
    "heatmap_sigma": 3.0,
}


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory) -> Path:
    """``train/`` (12 cases) and ``test/`` (4 held-out cases) of synthetic sphere volumes."""
    from cascade_landmarks.bench.phantoms.spheres import write_cases

    root = tmp_path_factory.mktemp("synthetic")
    write_cases(root / "train", range(12))
    write_cases(root / "test", range(100, 104))
    return root


@pytest.fixture(scope="session")
def trained_model_path(synthetic_data) -> Path:
    """A model trained on ``synthetic_data/train`` (600 + 400 iterations, seed 0)."""
    from cascade_landmarks.bench.phantoms.spheres import SPHERES_SET
    from cascade_landmarks.training.config import TrainingConfig
    from cascade_landmarks.training.trainer import train

    path = synthetic_data / "model.pt"
    training = TrainingConfig(
        stage1_iterations=600, stage2_iterations=400, batch_size=2, validate_every=0, checkpoint_every=1000
    )
    train(
        synthetic_data / "train",
        path,
        landmark_set=SPHERES_SET,
        training=training,
        config_settings=TINY_MODEL_SETTINGS,
        progress=False,
    )
    return path
