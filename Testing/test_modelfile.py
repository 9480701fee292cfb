"""The model file: reloads to identical predictions, and refuses what it cannot trust."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cascade_landmarks.bench.phantoms.spheres import SPHERES_SET
from cascade_landmarks.inference.detector import detect
from cascade_landmarks.model.config import CascadeConfig
from cascade_landmarks.model.model_file import FORMAT_VERSION, CascadeModel, load_model, save_model


class Payload:
    """Stands for any object a malicious file could carry."""


@pytest.fixture
def small_model() -> CascadeModel:
    config = CascadeConfig.default(
        SPHERES_SET,
        stage1_spacing_mm=3.0,
        stage1_grid=(16, 16, 16),
        stage2_spacing_mm=1.5,
        patch_size=16,
        unet_width=2,
        unet_depth=2,
    )
    return CascadeModel.create(config, seed=3)


def test_a_saved_model_reloads_to_identical_predictions(tmp_path, trained_model_path, synthetic_data):
    model = load_model(trained_model_path)
    again_path = save_model(model, tmp_path / "again.pt")
    again = load_model(again_path)
    volume = synthetic_data / "test" / "case100.nrrd"
    first, second = detect(volume, model), detect(volume, again)
    np.testing.assert_array_equal(first.positions_lps, second.positions_lps)
    np.testing.assert_array_equal(first.confidence, second.confidence)
    assert again.config == model.config
    assert again.training["landmark_set"] == "spheres-3"
    assert again.training["cases"]["training"]


def test_the_file_says_how_the_model_was_made(tmp_path, small_model):
    state = torch.load(save_model(small_model, tmp_path / "m.pt"), weights_only=True)
    config = json.loads(state["config"])
    assert config["landmark_set"]["name"] == "spheres-3"
    assert [d["label"] for d in config["landmark_set"]["landmarks"]] == SPHERES_SET.labels
    assert {"stage1_spacing_mm", "stage2_spacing_mm", "intensity", "unet", "displacement"} <= set(config)
    assert state["format_version"] == FORMAT_VERSION


def test_a_truncated_file_is_refused(tmp_path, small_model):
    path = save_model(small_model, tmp_path / "m.pt")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError, match="truncated or not a CascadeLandmarks model"):
        load_model(path)


def test_a_file_from_a_newer_version_is_refused(tmp_path, small_model):
    state = small_model.state()
    state["format_version"] = FORMAT_VERSION + 1
    torch.save(state, tmp_path / "new.pt")
    with pytest.raises(ValueError, match="Update CascadeLandmarks"):
        load_model(tmp_path / "new.pt")


def test_a_setting_from_a_newer_version_is_named_and_refused(tmp_path, small_model):
    state = small_model.state()
    state["config"] = json.dumps({**json.loads(state["config"]), "mirror_stage3": True})
    torch.save(state, tmp_path / "new.pt")
    with pytest.raises(ValueError, match=r"settings mirror_stage3 are unknown .* Update CascadeLandmarks"):
        load_model(tmp_path / "new.pt")


def test_a_model_for_another_landmark_set_is_refused(tmp_path, small_model):
    path = save_model(small_model, tmp_path / "m.pt")
    with pytest.raises(ValueError, match="finds landmark set spheres-3, not cardiac-5"):
        load_model(path, landmark_set="cardiac-5")


def test_pickled_objects_are_never_unpickled(tmp_path, small_model):
    state = small_model.state()
    state["payload"] = Payload()  # an arbitrary object: loading it would need a full unpickler
    torch.save(state, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="Refusing model"):
        load_model(tmp_path / "evil.pt")


def test_a_file_that_asks_for_far_more_than_it_holds_is_refused_without_allocating_it(tmp_path, small_model):
    # A few KB whose configuration asks for a U-Net 128 times as wide as the weights it holds (those of the small
    # model): it must be refused for its weights, not allocated first.
    import subprocess
    import sys

    state = small_model.state()
    config = json.loads(state["config"])
    config["unet"]["width"] = 256
    state["config"] = json.dumps(config)
    torch.save(state, tmp_path / "greedy.pt")
    probe = (
        "import resource; from cascade_landmarks.model.model_file import load_model\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "try:\n    load_model(r'" + str(tmp_path / "greedy.pt") + "')\n"
        "except ValueError as error:\n    print(error)\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    message, grown_kb = result.stdout.strip().splitlines()
    assert "the stage1 weights do not fit its configuration (size mismatch for encoder.0.0.weight" in message
    assert int(grown_kb) < 100_000  # a few MB (building that U-Net first took 342 MB more)


def test_other_files_are_refused(tmp_path):
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a CascadeLandmarks model file"):
        load_model(tmp_path / "other.pt")
    with pytest.raises(ValueError, match="does not exist"):
        load_model(tmp_path / "missing.pt")
