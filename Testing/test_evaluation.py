"""Evaluation: statistics checked by hand, and the evaluate command's tables, plot and quality-control images."""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cascade_landmarks.evaluation.errors import Evaluation

BIN = Path(sys.executable).parent


def _evaluation(stage1: np.ndarray, cascade: np.ndarray, confidence: np.ndarray) -> Evaluation:
    return Evaluation(
        labels=["a", "b"],
        case_names=[f"case{n}" for n in range(len(stage1))],
        errors_mm={"stage1": stage1, "cascade": cascade},
        confidence=confidence,
        flagged=confidence < 0.5,
        detections=[],
        references=[],
    )


def test_statistics_and_success_rates_by_hand():
    cascade = np.array([[1.0, 2.0], [3.0, 5.0], [2.5, 0.5]])
    evaluation = _evaluation(cascade * 2, cascade, np.array([[0.9, 0.8], [0.4, 0.1], [0.7, 0.95]]))
    rows = {row["landmark"]: row for row in evaluation.rows()}
    assert rows["a"]["cascade_mean"] == pytest.approx(6.5 / 3)
    assert rows["a"]["cascade_median"] == pytest.approx(2.5)
    assert rows["a"]["cascade_max"] == pytest.approx(3.0)
    assert rows["a"]["cascade_std"] == pytest.approx(np.std([1.0, 3.0, 2.5]))
    assert rows["all"]["cascade_within_2mm"] == pytest.approx(3 / 6)  # 1.0, 2.0, 0.5
    assert rows["all"]["cascade_within_2.5mm"] == pytest.approx(4 / 6)
    assert rows["all"]["cascade_within_4mm"] == pytest.approx(5 / 6)
    assert rows["b"]["stage1_mean"] == pytest.approx(2 * 7.5 / 3)
    check = evaluation.confidence_check()
    assert check["spearman_confidence_vs_error"] == pytest.approx(-1.0)  # here confidence ranks errors exactly
    assert check["flagged"] == 2
    assert check["mean_error_flagged_mm"] == pytest.approx(4.0)
    table = evaluation.markdown()
    assert "| a | 3 | 2.17 +- 0.85 | 2.50 | 3.00 | 33% | 67% | 100% | 100% |" in table


def test_tied_confidences_give_one_correlation_whatever_the_case_order():
    # Confidence 0 is common (a flat heatmap, or stage 2 moving the whole radius): ties share their average rank.
    confidence = np.array([[0.0, 0.0], [0.0, 0.9], [0.5, 0.7]])
    cascade = np.array([[4.0, 1.0], [3.0, 0.5], [2.0, 0.8]])
    correlations = {
        _evaluation(cascade[order], cascade[order], confidence[order]).confidence_check()[
            "spearman_confidence_vs_error"
        ]
        for order in ([0, 1, 2], [2, 1, 0], [1, 2, 0])
    }
    assert len({round(c, 12) for c in correlations}) == 1
    # By hand: confidence ranks 1, 1, 1 (the three zeros), 5, 3, 4 against error ranks 5, 2, 4, 0, 3, 1.
    assert correlations.pop() == pytest.approx(-13.5 / np.sqrt(15.5 * 17.5))


def test_a_label_with_a_pipe_stays_in_its_markdown_cell():
    evaluation = _evaluation(np.ones((3, 2)), np.ones((3, 2)), np.full((3, 2), 0.9))
    evaluation.labels = ["left | upper", "b"]
    row = next(line for line in evaluation.markdown().splitlines() if line.startswith("| left"))
    assert row.startswith("| left \\| upper | 3 | 1.00 +- 0.00 |")
    assert row.replace("\\|", "").count("|") == 10  # the header's nine cells


def _png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", header[16:24])


def test_the_evaluate_command_writes_tables_plot_and_quality_control(tmp_path, trained_model_path, synthetic_data):
    result = subprocess.run(
        [str(BIN / "cascade-landmarks"), "evaluate", str(trained_model_path), str(synthetic_data / "test"),
         "-o", str(tmp_path), "--quiet"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    table = (tmp_path / "errors.md").read_text()
    assert "## Stage 1 alone" in table
    assert "## Cascade" in table
    assert "| **all** |" in table
    csv_lines = (tmp_path / "errors.csv").read_text().splitlines()
    assert csv_lines[0].startswith("landmark,stage1_mean,stage1_std,stage1_median,stage1_max,stage1_within_2mm")
    assert [line.split(",")[0] for line in csv_lines[1:]] == ["sphere 1", "sphere 2", "sphere 3", "all"]
    assert len((tmp_path / "errors_per_case.csv").read_text().splitlines()) == 1 + 4 * 3
    width, height = _png_size(tmp_path / "errors.png")
    assert width >= 480
    assert height == 620  # room for the landmark names, written upwards
    qc = sorted((tmp_path / "qc").glob("*.png"))
    assert [p.name for p in qc] == ["case100.png", "case101.png", "case102.png", "case103.png"]
    assert _png_size(qc[0]) == (3 * 96 + 2 * 2, 3 * 96 + 2 * 2)  # three views by three landmarks


def test_a_png_holds_the_image_it_was_given(tmp_path):
    import SimpleITK as sitk

    from cascade_landmarks.evaluation.figures import write_png

    image = np.random.default_rng(3).integers(0, 256, size=(17, 29, 3), dtype=np.uint8)
    write_png(tmp_path / "image.png", image)
    assert (tmp_path / "image.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "image.png"))), image)
    assert [p.name for p in tmp_path.iterdir()] == ["image.png"]  # written atomically, nothing left beside it


def test_quality_control_draws_the_reference_on_the_bright_sphere(trained_model_path, synthetic_data):
    from cascade_landmarks import read_landmarks, read_volume
    from cascade_landmarks.evaluation.figures import REFERENCE_COLOUR, quality_control_image
    from cascade_landmarks.inference.detector import detect

    volume = read_volume(synthetic_data / "test" / "case100.nrrd")
    reference = read_landmarks(synthetic_data / "test" / "case100.mrk.json")
    image = quality_control_image(volume, reference, detect(volume, trained_model_path))
    tile = 96 + 2  # three rows (landmarks) of three 96-pixel views, 2-pixel gaps
    for row in range(3):
        for column in range(3):
            centre_row, centre_column = row * tile + 48, column * tile + 48
            assert tuple(image[centre_row, centre_column]) == REFERENCE_COLOUR  # the reference at each view's centre
    # Off the cross, inside the brightest sphere (landmark 3, radius 6 mm = 9.6 pixels), it is bright;
    # 30 pixels away it is the dark background.
    assert image[2 * tile + 48 + 5, 48 + 5].mean() > 200
    assert image[2 * tile + 48 + 30, 48 + 30].mean() < 100


def test_without_vtk_evaluate_says_so_first_and_still_writes_the_tables(tmp_path, trained_model_path, synthetic_data):
    # The engine's own install has no VTK (it is the "report" extra); a Python that cannot import it stands in.
    no_vtk = "import sys; sys.modules['vtk'] = None; from cascade_landmarks.cli import main; sys.exit(main())"
    result = subprocess.run(
        [sys.executable, "-c", no_vtk, "evaluate", str(trained_model_path), str(synthetic_data / "test"),
         "-o", str(tmp_path), "--quiet", "--no-qc"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stderr.startswith("Warning: The error plot needs VTK")
    assert "| **all** |" in result.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["errors.csv", "errors.md", "errors_per_case.csv"]


def test_evaluation_data_with_a_problem_is_named_as_such(tmp_path, trained_model_path, synthetic_data):
    from cascade_landmarks.evaluation.errors import evaluate

    (tmp_path / "case100.nrrd").write_bytes((synthetic_data / "test" / "case100.nrrd").read_bytes())
    with pytest.raises(ValueError, match=r"evaluation data; fix them and run the evaluation again:\n  case100: no "):
        evaluate(trained_model_path, tmp_path, progress=False)


def test_quality_control_draws_a_cross_for_a_point_within_the_volumes_slice_thickness():
    """3 mm slices: a detection 2 mm above the reference is within a slice of the axial plane (a cross, as in the
    slice a reader scrolls to), 5 mm above it is not (a small square)."""
    from cascade_landmarks import Geometry, Landmarks, Volume
    from cascade_landmarks.evaluation.figures import CASCADE_COLOUR, quality_control_image
    from cascade_landmarks.inference.detection import Detection

    geometry = Geometry((40, 40, 20), (1.0, 1.0, 3.0), (-20.0, -20.0, -30.0), np.eye(3))
    volume = Volume(np.zeros(geometry.shape, np.int16), geometry)
    reference = Landmarks(["a"], [[0.0, 0.0, 0.0]])
    arm_pixels = 4  # a cross's arm: the pixel 4 to the right of the point is red only for a cross
    for above_mm, cross in ((2.0, True), (5.0, False)):
        point = np.array([[10.0, 0.0, above_mm]])  # 10 mm to the left: 16 pixels (0.625 mm) right of the centre
        detection = Detection(
            ["a"], [""], point, point, np.ones(1), np.zeros(1), np.ones(1), np.zeros(1, bool), np.ones(1, bool)
        )
        axial = quality_control_image(volume, reference, detection)[:96, :96]
        assert (tuple(axial[48, 48 + 16 + arm_pixels]) == CASCADE_COLOUR) == cross
