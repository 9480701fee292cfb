"""``cascade-landmarks benchmark-afids``: an afids-32 model scored on Colin27 beside the human raters and the
no-model bar, with the reports a user reads, and shipped only when it clearly beats the reference points.

Most tests use a model trained for a handful of iterations on the MNI template (the real one, with augmentation):
its errors mean nothing and are not checked, only what the benchmark writes and decides. The last one scores the
shipped model, whose errors are the point.
"""

from __future__ import annotations

import csv
import json

import pytest

from cascade_landmarks.bench import afids as afids_benchmark
from cascade_landmarks.bench.afids import BUNDLED_NAME, JUDGED_VARIANT
from cascade_landmarks.model import registry as model_registry
from cascade_landmarks.model.config import IntensityWindow
from cascade_landmarks.model.registry import available_models
from cascade_landmarks.training.config import PRESETS, TrainingConfig
from cascade_landmarks.training.trainer import train

MNI = "real/afids-mni152nlin2009casym/tpl-MNI152NLin2009cAsym_res-01"

pytestmark = pytest.mark.slow  # benchmarks: a model trained on the template, scored on Colin27


@pytest.fixture(scope="module")
def afids_model(shared_data, tmp_path_factory):
    folder = tmp_path_factory.mktemp("afids")
    manifest = folder / "train.csv"
    manifest.write_text(f"case,volume,landmarks\nmni152,{shared_data / MNI}_T1w.nii.gz,"
                        f"{shared_data / MNI}_desc-groundtruth_afids.fcsv\n")  # fmt: skip
    training = TrainingConfig(stage1_iterations=3, stage2_iterations=3, batch_size=1, validation_fraction=0,
                              validate_every=0, augmentation=PRESETS["one-shot"])  # fmt: skip
    settings = {"stage1_spacing_mm": 12.0, "patch_size": 16, "unet_depth": 2, "stage2_radius_mm": 8.0,
                "intensity": IntensityWindow("percentile", 0.5, 99.5)}  # fmt: skip
    train(manifest, folder / "afids.pt", landmark_set="afids-32", training=training, config_settings=settings,
          progress=False)  # fmt: skip
    return folder / "afids.pt"


@pytest.fixture
def shipped(tmp_path, monkeypatch):
    models = tmp_path / "Models"
    models.mkdir()
    (models / "registry.json").write_text(json.dumps({"description": "test", "models": []}))
    monkeypatch.setattr(model_registry, "shipped_registry", lambda: tmp_path / "Models" / "registry.json")
    monkeypatch.setenv(model_registry.USER_FOLDER_VARIABLE, str(tmp_path / "home"))
    return models


def test_the_report_puts_the_model_beside_the_raters_and_the_no_model_bar(afids_model, shared_data, tmp_path, shipped):
    summary = afids_benchmark.afids_benchmark(shared_data, afids_model, tmp_path / "report", bundle=True)
    lines = {line[:34].strip(): line[34:].split() for line in summary.splitlines() if line[:1].strip()}
    # Each line: mean, median and shares within 2 and 4 mm over the 30 fiducials of record, then over all 32.
    assert "Figure of record: the 30 fiducials where the raters agree; all 32 beside it." in summary
    assert lines["no model (template coordinates)"][4:6] == ["4.05", "3.07"]  # measured for this pair (README)
    assert lines["human raters"][4:6] == ["1.71", "0.91"]
    assert lines["human raters"][0] == "1.11"  # over the 30 where they agree
    for variant in ("header as shipped", JUDGED_VARIANT):
        assert f"stage 1, {variant}" in lines
        assert f"cascade, {variant}" in lines
        folder = tmp_path / "report" / variant.replace(" ", "-")
        with open(folder / "errors.csv", newline="") as handle:
            rows = list(csv.DictReader(handle))
        assert len([r for r in rows if r["landmark"] not in ("all", "")]) == 32
        assert {"raters_mean"} <= set(rows[0])  # the human bar per fiducial, beside the model
        assert (folder / "errors.png").stat().st_size > 0
        assert (folder / "qc-colin27.png").stat().st_size > 0
    # Where the raters split (the occipital horns, judged out), the model's point is set against the placements.
    assert "Where the raters split: fiducials 29, 30." in summary
    # A model trained for six iterations beats nothing: it is not shipped, and the user is told why.
    assert "Not bundled" in summary
    assert available_models() == []
    assert (tmp_path / "report" / "summary.md").read_text() == summary + "\n"


def test_a_model_that_clears_the_bar_is_shipped_with_its_card(afids_model, shared_data, tmp_path, shipped, monkeypatch):
    monkeypatch.setattr(afids_benchmark, "BUNDLE_MARGIN_MM", -1000.0)  # let this untrained model through the gate
    # A last run that only changes detection settings, as the shipped model's last runs do.
    settings_only = tmp_path / "afids-32-mni152.pt"
    train(afids_model.parent / "train.csv", settings_only, init_from=afids_model, progress=False,
          training=TrainingConfig(stage1_iterations=0, stage2_iterations=0, validation_fraction=0),
          config_settings={"stage2_passes": 4, "stage2_tolerance_mm": 0.1})  # fmt: skip
    summary = afids_benchmark.afids_benchmark(shared_data, settings_only, tmp_path / "report", bundle=True)
    assert f"Bundled as {BUNDLED_NAME}" in summary
    (entry,) = available_models()
    assert (entry.name, entry.landmark_set) == (BUNDLED_NAME, "afids-32")
    card = (shipped / entry.card).read_text()
    assert "one image" in card
    assert "Colin27 was never used for training" in card
    assert "slightly optimistic" in card  # it decides what is shipped
    assert "human raters" in card  # the Colin27 figures are in the card
    assert "augmentation one-shot," in card  # each training run, with its augmentation
    assert "No training: detection settings changed to stage2_passes=4, stage2_tolerance_mm=0.1; weights kept" in card
    assert "until one moves no point farther than 0.1 mm (at most 4)" in card
    assert str(tmp_path) not in card  # the file scored is named, not where it lay on the trainer's disk
    assert (
        "target, mean at most 2.5 mm with more than 60% of the fiducials within 2 mm over the 30 where the raters "
        "agree (the figure of record), is not met" in card
    )


def test_the_shipped_model_still_clearly_beats_both_reference_points(shared_data, tmp_path):
    # By its registered name, as a user runs it (the shipped file is checked against its checksum).
    summary = afids_benchmark.afids_benchmark(shared_data, BUNDLED_NAME, tmp_path / "report")
    cascade = summary.split(f"cascade, {JUDGED_VARIANT}")[1].split()
    of_record, all_32 = cascade[:4], cascade[4:8]
    # Measured when shipped (version 3), over the 30 fiducials of record: 1.74 mm mean, 70% within 2 mm (the
    # project's target: at most 2.5 mm, more than 60%); over all 32: 2.81 mm, median 1.68 mm, 66% (its card).
    assert float(of_record[0]) <= afids_benchmark.TARGET_MEAN_MM
    assert float(of_record[2].rstrip("%")) > 100 * afids_benchmark.TARGET_WITHIN_2MM
    # It was shipped for being at least BUNDLE_MARGIN_MM below the better reference point over all 32, the
    # landmarker package's 3.77 mm; its median beats the no-model bar's too.
    assert float(all_32[0]) <= afids_benchmark.LANDMARKER_MEAN_MM - afids_benchmark.BUNDLE_MARGIN_MM
    assert float(all_32[1]) < 3.07
