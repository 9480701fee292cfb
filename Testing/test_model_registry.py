"""The model registry: shipped models checked by checksum, the user's own models added and versioned."""

from __future__ import annotations

import json

import pytest

from cascade_landmarks.model.registry import available_models, file_sha256, register_model, resolve_model


@pytest.fixture(autouse=True)
def _user_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("CASCADE_LANDMARKS_HOME", str(tmp_path / "home"))


def test_a_shipped_model_is_used_only_while_its_file_matches_the_checksum(tmp_path, trained_model_path, monkeypatch):
    from cascade_landmarks.model import registry as model_registry

    shipped = tmp_path / "Models"
    shipped.mkdir()
    (shipped / "spheres.pt").write_bytes(trained_model_path.read_bytes())
    record = {"name": "spheres", "landmark_set": "spheres-3", "file": "spheres.pt",
              "sha256": file_sha256(trained_model_path), "version": 1}  # fmt: skip
    (shipped / "registry.json").write_text(json.dumps({"models": [record]}))
    monkeypatch.setattr(model_registry, "shipped_registry", lambda: tmp_path / "Models" / "registry.json")
    assert [(e.name, e.bundled) for e in available_models()] == [("spheres", True)]
    assert resolve_model("spheres") == shipped / "spheres.pt"
    with open(shipped / "spheres.pt", "ab") as handle:
        handle.write(b"tampered")
    with pytest.raises(ValueError, match="does not match its checksum"):
        resolve_model("spheres")
    with pytest.raises(ValueError, match="name of a shipped model"):
        register_model(trained_model_path, name="spheres")


def test_a_model_added_from_a_file_and_its_fine_tuned_version(tmp_path, trained_model_path):
    entry = register_model(trained_model_path)
    assert (entry.name, entry.landmark_set, entry.version, entry.bundled) == ("model", "spheres-3", 1, False)
    assert resolve_model("model") == trained_model_path.resolve()
    copy = tmp_path / "tuned.pt"
    copy.write_bytes(trained_model_path.read_bytes())
    tuned = register_model(copy, parent="model")
    assert (tuned.name, tuned.version) == ("model-v2", 2)
    again = register_model(copy, parent="model-v2")
    assert (again.name, again.version) == ("model-v3", 3)
    # A second fine-tuning of the same model is added beside the first, never over it.
    other = tmp_path / "tuned-again.pt"
    other.write_bytes(trained_model_path.read_bytes())
    beside = register_model(other, parent="model")
    assert (beside.name, beside.version) == ("model-v4", 4)
    saved = json.loads((tmp_path / "home" / "registry.json").read_text())
    assert [m["name"] for m in saved["models"]] == ["model", "model-v2", "model-v3", "model-v4"]
    assert resolve_model("model-v3") == copy.resolve()


def test_shipping_a_new_file_under_a_shipped_name_gives_it_the_next_version(tmp_path, trained_model_path, monkeypatch):
    from cascade_landmarks.bench.bundling import add_bundled_model
    from cascade_landmarks.model import registry as model_registry
    from cascade_landmarks.model.model_file import load_model, save_model

    (tmp_path / "Models").mkdir()
    (tmp_path / "Models" / "registry.json").write_text(json.dumps({"description": "test", "models": []}))
    monkeypatch.setattr(model_registry, "shipped_registry", lambda: tmp_path / "Models" / "registry.json")
    first = add_bundled_model(trained_model_path, "spheres", "card", description="d")
    assert add_bundled_model(trained_model_path, "spheres", "card", description="d").version == first.version == 1
    model = load_model(trained_model_path)
    model.training = {**model.training, "seconds": model.training["seconds"] + 1}
    retrained = save_model(model, tmp_path / "retrained.pt")  # another file
    assert add_bundled_model(retrained, "spheres", "new card", description="d").version == 2
    assert [(e.name, e.version) for e in available_models()] == [("spheres", 2)]
    assert (tmp_path / "Models" / "spheres.md").read_text() == "new card"


def test_unknown_names_and_missing_files_are_explained(tmp_path):
    with pytest.raises(ValueError, match="No model named 'heart'"):
        resolve_model("heart")
    with pytest.raises(ValueError, match="does not exist"):
        resolve_model(tmp_path / "gone.pt")
