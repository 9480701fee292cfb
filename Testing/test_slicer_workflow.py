"""The Slicer module's workflow (the Logic's MRML work) on a real MRML scene from slicer-core: detect in the
background, inspect, correct, save the corrected case, fine-tune and register the new version."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cascade_landmarks import Geometry, read_landmarks, read_volume, write_volume
from cascade_landmarks.io.cases import check_cases, find_cases
from cascade_landmarks.io.volumes import resample_to_geometry
from cascade_landmarks.model.model_file import load_model
from cascade_landmarks.slicer.bridge import landmarks_to_node
from cascade_landmarks.slicer.runs import DetectionRun, FineTuneRun
from cascade_landmarks.slicer.workflow import (
    DETECTION_ATTRIBUTE,
    CaseExistsError,
    detection_of,
    detection_rows,
    point_index,
    save_corrected_case,
    work_at_risk,
)
from cascade_landmarks.training.run_files import checkpoint_path

from conftest import rotation

slicer = pytest.importorskip("slicer", reason="slicer-core is installed by `make test`")
BIN = Path(sys.executable).parent


@pytest.fixture
def oblique_case_file(tmp_path, synthetic_data) -> Path:
    """A held-out synthetic case resampled onto a rotated, anisotropic grid (a non-identity direction)."""
    volume = read_volume(synthetic_data / "test" / "case101.nrrd")
    centre = volume.geometry.index_to_lps((np.asarray(volume.geometry.size) - 1) / 2)
    direction, spacing, size = rotation([0.2, 1.0, -0.4], 20.0), np.array([1.3, 1.5, 1.9]), (46, 40, 32)
    origin = centre - direction @ ((np.asarray(size) - 1) / 2 * spacing)
    oblique = resample_to_geometry(volume, Geometry(size, spacing, origin, direction), interpolation="bspline")
    return write_volume(oblique, tmp_path / "oblique.nrrd")


def _load_volume_node(scene, path: Path):
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", path.name.split(".")[0])
    storage = scene.AddNode(slicer.vtkMRMLVolumeArchetypeStorageNode())
    storage.SetFileName(str(path))
    assert storage.ReadData(node) == 1
    return node


def test_detect_gives_a_labelled_point_list_equal_to_the_cli_output(
    mrml_scene, oblique_case_file, trained_model_path, tmp_path
):
    volume_node = _load_volume_node(mrml_scene, oblique_case_file)
    progress = []
    node = (
        DetectionRun(mrml_scene, volume_node, trained_model_path)
        .start()
        .wait(progress=lambda fraction, status: progress.append(fraction))
    )
    assert node.GetName() == "oblique model"  # the volume's name and the model's
    labels = [node.GetNthControlPointLabel(i) for i in range(node.GetNumberOfControlPoints())]
    assert labels == load_model(trained_model_path).landmark_labels
    assert node.GetNthControlPointDescription(0) == "centre of the 600 HU sphere"

    cli = subprocess.run([str(BIN / "cascade-landmarks"), "detect", str(trained_model_path), str(oblique_case_file),
                          "-o", str(tmp_path / "cli"), "--quiet"], capture_output=True, text=True)  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    expected_ras = read_landmarks(tmp_path / "cli" / "oblique.mrk.json").positions_ras
    positions = np.array([node.GetNthControlPointPositionWorld(i) for i in range(3)])
    np.testing.assert_allclose(positions, expected_ras, atol=1e-3)
    assert progress
    assert all(0.0 <= f <= 1.0 for f in progress)


def test_a_tight_field_of_view_is_reported_with_the_points(mrml_scene, trained_model_path, tmp_path):
    from cascade_landmarks.bench.phantoms.spheres import make_case

    tight = write_volume(make_case(7, size=(40, 40, 12))[0], tmp_path / "tight.nrrd")  # 18 mm; the model sees 60
    run = DetectionRun(mrml_scene, _load_volume_node(mrml_scene, tight), trained_model_path).start()
    node = run.wait()
    assert node.GetNumberOfControlPoints() == 3
    [warning] = run.warnings
    assert warning.startswith("The volume covers 60 x 60 x 18 mm")
    assert run.status.endswith("warning: check every point")


def test_flagged_points_are_shown_unselected_and_the_table_follows_corrections(
    mrml_scene, oblique_case_file, trained_model_path
):
    volume_node = _load_volume_node(mrml_scene, oblique_case_file)
    node = DetectionRun(mrml_scene, volume_node, trained_model_path).start().wait()
    rows = detection_rows(node)
    assert [r.label for r in rows] == ["sphere 1", "sphere 2", "sphere 3"]
    assert all(r.moved_mm == pytest.approx(0.0, abs=1e-9) for r in rows)
    for index, row in enumerate(rows):
        assert bool(node.GetNthControlPointSelected(index)) == (not row.flagged)
        assert not node.GetNthControlPointLocked(index)
    # The user drags sphere 2 by 3 mm along R.
    position = np.array(node.GetNthControlPointPositionWorld(1))
    node.SetNthControlPointPositionWorld(1, *(position + np.array([3.0, 0.0, 0.0])))
    assert [round(r.moved_mm, 6) for r in detection_rows(node)] == [0.0, 3.0, 0.0]


def test_a_users_own_point_list_is_left_alone_unless_picked(mrml_scene, oblique_case_file, trained_model_path):
    from cascade_landmarks import Landmarks

    volume_node = _load_volume_node(mrml_scene, oblique_case_file)
    mine = landmarks_to_node(Landmarks(["my point"], [[1.0, 2.0, 3.0]]), mrml_scene, name="my points")
    DetectionRun(mrml_scene, volume_node, trained_model_path).start().wait()
    assert mine.GetNumberOfControlPoints() == 1
    assert mine.GetNthControlPointLabel(0) == "my point"
    picked = DetectionRun(mrml_scene, volume_node, trained_model_path, output_node=mine).start().wait()
    assert picked is mine
    assert mine.GetNumberOfControlPoints() == 3
    assert mine.GetAttribute(DETECTION_ATTRIBUTE)


def test_bad_choices_get_a_sentence_a_clinician_can_act_on(mrml_scene, trained_model_path):
    with pytest.raises(ValueError, match="Pick an input volume"):
        DetectionRun(mrml_scene, None, trained_model_path)
    labels = mrml_scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "segmentation")
    with pytest.raises(ValueError, match="not a greyscale volume"):
        DetectionRun(mrml_scene, labels, trained_model_path)


def test_a_failed_detection_says_why(mrml_scene, oblique_case_file, tmp_path):
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a model")
    volume_node = _load_volume_node(mrml_scene, oblique_case_file)
    with pytest.raises(ValueError, match=r"Detection failed: Cannot load model .*broken\.pt"):
        DetectionRun(mrml_scene, volume_node, broken).start().wait()


def test_cancel_stops_the_background_process(mrml_scene, oblique_case_file, trained_model_path):
    volume_node = _load_volume_node(mrml_scene, oblique_case_file)
    run = DetectionRun(mrml_scene, volume_node, trained_model_path).start()
    run.cancel()
    assert not run.running
    assert run.status == "Cancelled"


@pytest.mark.slow
def test_saved_corrected_cases_are_accepted_by_train_and_logged(
    mrml_scene, oblique_case_file, trained_model_path, tmp_path, monkeypatch
):
    monkeypatch.setenv("CASCADE_LANDMARKS_HOME", str(tmp_path / "home"))
    volume_node = _load_volume_node(mrml_scene, oblique_case_file)
    node = DetectionRun(mrml_scene, volume_node, trained_model_path).start().wait()
    shifted = np.array(node.GetNthControlPointPositionWorld(0)) + np.array([0.0, 2.0, 0.0])
    node.SetNthControlPointPositionWorld(0, *shifted)
    folder = tmp_path / "corrected"
    volume_path, points_path = save_corrected_case(volume_node, node, folder, case_name="patient 7")
    assert (volume_path.name, points_path.name) == ("patient_7.nrrd", "patient_7.mrk.json")
    with pytest.raises(ValueError, match="already in"):
        save_corrected_case(volume_node, node, folder, case_name="patient 7")
    save_corrected_case(volume_node, node, folder, case_name="patient 8")
    log = (folder / "corrections.csv").read_text().splitlines()
    assert log[0] == "saved,case,model,landmark,moved_mm,confidence,flagged"
    assert ",patient_7,model,sphere 1,2.00," in log[1]
    assert len(log) == 1 + 2 * 3
    # The folder is what `cascade-landmarks train` reads: the check passes, landmarks inside the volume.
    from cascade_landmarks.bench.phantoms.spheres import SPHERES_SET

    assert [c.files.name for c in check_cases(find_cases(folder), SPHERES_SET)] == ["patient_7", "patient_8"]

    # What a save killed half-way leaves behind (a hidden temporary file) is not taken for a case.
    (folder / ".partial-1234abcd-patient_9.nrrd").write_bytes(b"half a volume")
    run = FineTuneRun(folder, str(trained_model_path), stage1_iterations=2, stage2_iterations=2, device="cpu")
    entry = run.start().finish()
    assert entry.name == "model-fine-tuned"
    assert entry.landmark_set == "spheres-3"
    record = load_model(entry.file).training
    assert record["fine_tuned_from"] == str(trained_model_path)
    assert record["cases"] == {"training": ["patient_7", "patient_8"], "validation": []}  # every correction used
    # Fine-tuning the same model again writes a new file and a new entry; the first stays as it was.
    first = Path(entry.file).read_bytes()
    again = FineTuneRun(folder, str(trained_model_path), stage1_iterations=2, stage2_iterations=2, device="cpu")
    second = again.start().finish()
    assert (second.name, Path(second.file).name) == ("model-fine-tuned-2", "model-fine-tuned-2.pt")
    assert Path(entry.file).read_bytes() == first


def test_detecting_again_is_told_when_it_would_replace_corrections_or_another_volumes_points(
    mrml_scene, oblique_case_file, trained_model_path, synthetic_data
):
    from cascade_landmarks import Landmarks

    volume_node = _load_volume_node(mrml_scene, oblique_case_file)
    other_volume = _load_volume_node(mrml_scene, synthetic_data / "test" / "case102.nrrd")
    node = DetectionRun(mrml_scene, volume_node, trained_model_path).start().wait()
    # An uncorrected detection of the same volume may be replaced (detecting again, say with another model).
    assert work_at_risk(node, volume_node) is None
    assert work_at_risk(node, other_volume) == f"{node.GetName()} holds the points detected on oblique."
    node.SetNthControlPointPositionWorld(1, *(np.array(node.GetNthControlPointPositionWorld(1)) + 0.5))
    assert work_at_risk(node, volume_node) == f"{node.GetName()} holds corrections (sphere 2)."
    node.SetNthControlPointPositionWorld(1, *(np.array(node.GetNthControlPointPositionWorld(1)) - 0.5))
    assert work_at_risk(node, volume_node) is None
    node.RemoveNthControlPoint(2)
    assert work_at_risk(node, volume_node) == f"{node.GetName()} holds corrections (sphere 3)."
    mine = landmarks_to_node(Landmarks(["my point"], [[1.0, 2.0, 3.0]]), mrml_scene, name="my points")
    assert work_at_risk(mine, volume_node) == "my points holds points that no detection placed."
    assert work_at_risk(mrml_scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode"), volume_node) is None


def test_a_case_is_saved_only_with_its_own_volume_and_the_detections_landmarks(
    mrml_scene, oblique_case_file, trained_model_path, synthetic_data, tmp_path
):
    volume_node = _load_volume_node(mrml_scene, oblique_case_file)
    other_volume = _load_volume_node(mrml_scene, synthetic_data / "test" / "case102.nrrd")
    node = DetectionRun(mrml_scene, volume_node, trained_model_path).start().wait()
    folder = tmp_path / "corrected"
    with pytest.raises(ValueError, match=r"holds the points detected on oblique, not on case102: pick that volume"):
        save_corrected_case(other_volume, node, folder)
    # The user deletes a point and places a new one: Slicer labels it by the list's name, not the landmark's.
    position = np.array(node.GetNthControlPointPositionWorld(1))
    node.RemoveNthControlPoint(1)
    node.AddControlPoint(*(position + 1.0), "pts-4")
    assert point_index(node, "sphere 3") == 1  # the table finds the points by label, not by row
    with pytest.raises(ValueError, match=r"not in model: pts-4\. Give each point the label of the landmark"):
        save_corrected_case(volume_node, node, folder)
    assert not folder.exists()
    node.SetNthControlPointLabel(point_index(node, "pts-4"), "sphere 2")
    _, points_path = save_corrected_case(volume_node, node, folder)
    assert read_landmarks(points_path).labels == ["sphere 1", "sphere 3", "sphere 2"]
    with pytest.raises(CaseExistsError, match="already in") as exists:
        save_corrected_case(volume_node, node, folder)
    assert (exists.value.case, exists.value.folder) == ("oblique", folder)
    node.SetNthControlPointPositionWorld(0, *(np.array(node.GetNthControlPointPositionWorld(0)) + 2.0))
    save_corrected_case(volume_node, node, folder, overwrite=True)
    np.testing.assert_allclose(
        read_landmarks(points_path).positions_ras[0], node.GetNthControlPointPositionWorld(0), atol=1e-6
    )


def test_a_case_saved_in_part_keeps_what_the_user_placed_and_not_the_models_out_of_view_claims(
    mrml_scene, oblique_case_file, trained_model_path, tmp_path
):
    from cascade_landmarks.slicer.workflow import DETECTION_ATTRIBUTE

    volume_node = _load_volume_node(mrml_scene, oblique_case_file)
    node = DetectionRun(mrml_scene, volume_node, trained_model_path).start().wait()
    # As if the model had found sphere 3 out of view: its point is missing, and so the record says.
    detection = detection_of(node)
    detection.in_view[2] = False
    node.SetAttribute(DETECTION_ATTRIBUTE, detection.to_json())
    node.SetNthControlPointPositionMissing(2)
    node.RemoveNthControlPoint(1)  # the user deletes sphere 2: it is left out, not known
    _, points_path = save_corrected_case(volume_node, node, tmp_path / "corrected")
    saved = read_landmarks(points_path)
    assert saved.labels == ["sphere 1", "sphere 3"]
    assert saved.statuses == ["defined", "undefined"]  # the model's claim is not taught as the user's
    node.SetNthControlPointPositionMissing(0)
    with pytest.raises(ValueError, match="None of the points is placed"):
        save_corrected_case(volume_node, node, tmp_path / "corrected", case_name="none")


def test_a_cancelled_fine_tuning_leaves_no_checkpoint_to_block_the_next(
    mrml_scene, trained_model_path, synthetic_data, tmp_path
):
    folder = synthetic_data / "train"
    run = FineTuneRun(
        folder, str(trained_model_path), output=tmp_path / "tuned.pt", stage1_iterations=0, stage2_iterations=100000
    )
    run.start()
    # What a run killed after its first checkpoint leaves beside its output (training writes one every 200 steps).
    checkpoint_path(run.output).write_bytes(b"checkpoint")
    run.cancel()
    assert not run.running
    assert not checkpoint_path(run.output).exists()
    # A checkpoint left by a run that was killed outright (Slicer closed) keeps its name from being reused.
    checkpoint_path(tmp_path / "model-fine-tuned.pt").write_bytes(b"checkpoint")
    again = FineTuneRun(tmp_path, str(trained_model_path), stage1_iterations=1, stage2_iterations=1)
    assert again.output == tmp_path / "model-fine-tuned-2.pt"
