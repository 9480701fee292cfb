"""``cascade-landmarks benchmark`` at its quick size: phantoms written, models trained, the paper's tables printed
and labelled as synthetic, the work folder reused, and a model shipped with its card.

The quick size trains for 30 iterations: its errors mean nothing and are not checked, only the machinery.
"""

import json

import pytest

from cascade_landmarks.bench.paper_tables import run_benchmark
from cascade_landmarks.model import registry as model_registry
from cascade_landmarks.model.model_file import load_model
from cascade_landmarks.model.registry import available_models, file_sha256, resolve_model

pytestmark = pytest.mark.slow  # benchmarks: phantoms written, two models trained


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("benchmark")
    report = run_benchmark(folder, kinds=("cardiac",), size="quick", progress=False)
    return folder, report


def test_the_quick_benchmark_prints_both_tables_labelled_synthetic(quick_run):
    folder, report = quick_run
    assert "Measured on synthetic phantoms, not on patients" in report
    assert "Table 1 layout" in report
    assert "Table 2 layout" in report
    for row in ("U-Net on patches (stage 1)", "U-Net on the whole image (stage 1)", "cascade (stage 1 + stage 2)"):
        assert row in report
    assert (folder / "report.md").read_text() == report
    summary = json.loads((folder / "report.json").read_text())
    cascade_mean = summary["results"]["cardiac"]["cascade"]["cascade"]["mean_mm"]
    assert f"| **mean** | {cascade_mean:.2f} +-" in report
    assert len(list((folder / "cardiac" / "train").glob("*.nrrd"))) == 4
    assert len(list((folder / "cardiac" / "test").glob("*.nrrd"))) == 2
    assert load_model(folder / "cardiac" / "cardiac-patch.pt").config.stage1_mode == "patch"


def test_a_second_run_reuses_the_phantoms_and_models(quick_run):
    folder, report = quick_run
    model = folder / "cardiac" / "cardiac-cascade.pt"
    before = model.stat().st_mtime_ns
    assert run_benchmark(folder, kinds=("cardiac",), size="quick", progress=False) == report
    assert model.stat().st_mtime_ns == before
    # A full run would take up the quick run's phantoms and models as its own: the folder is refused.
    with pytest.raises(ValueError, match="holds the phantoms and models of a `quick` benchmark, not a `full` one"):
        run_benchmark(folder, kinds=("cardiac",), size="full", progress=False)
    assert model.stat().st_mtime_ns == before
    # So is a folder from before the size was marked, which cannot say its size.
    marker = folder / "cardiac" / "size.json"
    kept = marker.read_bytes()
    marker.unlink()
    try:
        with pytest.raises(ValueError, match="unknown-size"):
            run_benchmark(folder, kinds=("cardiac",), size="full", progress=False)
    finally:
        marker.write_bytes(kept)


def test_bundling_ships_the_model_with_its_card_and_checksum(quick_run, tmp_path, monkeypatch):
    folder, _ = quick_run
    shipped = tmp_path / "Models"
    shipped.mkdir()
    (shipped / "registry.json").write_text(json.dumps({"description": "test", "models": []}))
    monkeypatch.setattr(model_registry, "shipped_registry", lambda: tmp_path / "Models" / "registry.json")
    monkeypatch.setenv(model_registry.USER_FOLDER_VARIABLE, str(tmp_path / "home"))
    run_benchmark(folder, kinds=("cardiac",), size="quick", progress=False, bundle=True)

    (entry,) = available_models()
    assert (entry.name, entry.landmark_set, entry.bundled) == ("cardiac-5-phantom", "cardiac-5", True)
    assert entry.sha256 == file_sha256(shipped / "cardiac-5-phantom.pt")
    card = (shipped / entry.card).read_text()
    assert "never seen a real patient" in card
    assert "synthetic" in card
    assert resolve_model("cardiac-5-phantom") == shipped / "cardiac-5-phantom.pt"
