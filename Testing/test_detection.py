"""Detection as users call it: from Python and from the command line, in physical millimetres whatever the
volume's orientation, without touching the input."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import itertools
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from cascade_landmarks import Geometry, read_landmarks, read_volume, resample
from cascade_landmarks.inference.detector import detect
from cascade_landmarks.io.volumes import resample_to_geometry
from cascade_landmarks.model.devices import select_device
from cascade_landmarks.model.model_file import load_model

from conftest import rotation

BIN = Path(sys.executable).parent


def test_detect_returns_labelled_points_in_both_frames_with_confidence(trained_model_path, synthetic_data):
    volume = read_volume(synthetic_data / "test" / "case101.nrrd")
    before = hashlib.sha256(volume.array.tobytes()).hexdigest()
    detection = detect(volume, trained_model_path)
    assert hashlib.sha256(volume.array.tobytes()).hexdigest() == before  # the input is untouched
    assert detection.labels == ["sphere 1", "sphere 2", "sphere 3"]
    np.testing.assert_allclose(detection.positions_ras, detection.positions_lps * [-1, -1, 1])
    assert detection.confidence.shape == (3,)
    assert np.all((detection.confidence >= 0) & (detection.confidence <= 1))
    np.testing.assert_array_equal(detection.flagged, detection.confidence < 0.5)
    assert detection.in_view.all()  # each sphere lies in the volume
    model_radius = 5.0
    assert np.all(detection.stage2_shift_mm <= model_radius + 1e-9)
    # The record names the model it came from, by name and by its file's checksum.
    assert detection.model_name == "model"
    assert detection.model_sha256 == hashlib.sha256(trained_model_path.read_bytes()).hexdigest()


def test_the_detection_record_travels_whole_as_json(trained_model_path, synthetic_data):
    from cascade_landmarks import Detection

    detection = detect(synthetic_data / "test" / "case101.nrrd", trained_model_path)
    detection.warnings = ["check every point"]
    back = Detection.from_json(detection.to_json())
    for field in dataclasses.fields(Detection):
        original, copied = getattr(detection, field.name), getattr(back, field.name)
        if isinstance(original, np.ndarray):
            assert copied.dtype == original.dtype, field.name
            np.testing.assert_array_equal(copied, original, err_msg=field.name)  # to the last bit: floats as repr
        else:
            assert copied == original, field.name
    record = detection.to_dict()
    with pytest.raises(ValueError, match=r"version 2; this CascadeLandmarks reads up to 1\. Update CascadeLandmarks"):
        Detection.from_dict({**record, "version": 2})
    with pytest.raises(ValueError, match="incomplete or has unknown fields"):
        Detection.from_dict({key: value for key, value in record.items() if key != "in_view"})
    with pytest.raises(ValueError, match=r"positions_lps has shape \(2, 3\); 3 landmarks need \(3, 3\)"):
        Detection.from_dict({**record, "positions_lps": record["positions_lps"][:2]})


def test_a_program_running_the_command_gets_progress_then_each_detection_as_json(trained_model_path, synthetic_data,
                                                                                 tmp_path):  # fmt: skip
    import json

    from cascade_landmarks import Detection

    volume = synthetic_data / "test" / "case100.nrrd"
    command = [str(BIN / "cascade-landmarks"), "--progress-format", "json", "detect", str(trained_model_path),
               str(volume), "-o", str(tmp_path)]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    messages = [json.loads(line) for line in result.stdout.splitlines()]  # nothing but messages on standard output
    assert {m["type"] for m in messages[:-1]} == {"progress"}
    assert messages[-1]["type"] == "result"
    assert messages[-1]["case"] == "case100"
    sent = Detection.from_dict(messages[-1]["detection"])
    np.testing.assert_array_equal(sent.positions_lps, detect(volume, trained_model_path).positions_lps)
    assert "Wrote 1 .mrk.json files" in result.stderr  # the summary, for a person reading the log


def test_the_same_anatomy_on_a_rotated_anisotropic_grid_gives_the_same_points(trained_model_path, synthetic_data):
    volume = read_volume(synthetic_data / "test" / "case102.nrrd")
    centre = volume.geometry.index_to_lps((np.asarray(volume.geometry.size) - 1) / 2)
    direction = rotation([1.0, -0.5, 0.3], 25.0)
    spacing = np.array([1.2, 1.6, 2.0])
    size = (52, 40, 32)
    origin = centre - direction @ ((np.asarray(size) - 1) / 2 * spacing)
    rotated = resample_to_geometry(volume, Geometry(size, spacing, origin, direction), interpolation="bspline")
    straight, turned = detect(volume, trained_model_path), detect(rotated, trained_model_path)
    # Same physical content, different voxel grid: the points agree to interpolation error, far below a voxel.
    assert np.linalg.norm(straight.positions_lps - turned.positions_lps, axis=1).max() < 1.0


def test_the_detect_command_writes_one_markups_file_per_volume_and_a_csv(tmp_path, trained_model_path, synthetic_data):
    volumes = [synthetic_data / "test" / f"case{n}.nrrd" for n in (100, 101)]
    result = subprocess.run(
        [str(BIN / "cascade-landmarks"), "detect", str(trained_model_path), *map(str, volumes),
         "-o", str(tmp_path / "out"), "--coordinate-system", "RAS", "--stage2-passes", "2", "--mirror-stage2",
         "--quiet"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "point(s) flagged for checking (low confidence; the flagged column)." in result.stdout
    # The detection settings given on the command line are the ones used, for this run only.
    model = load_model(trained_model_path)
    assert not model.config.mirror_stage2
    for volume in volumes:
        points = read_landmarks(tmp_path / "out" / volume.name.replace(".nrrd", ".mrk.json"))
        in_python = detect(volume, model, stage2_passes=2, mirror_stage2=True).positions_lps
        np.testing.assert_allclose(points.positions_lps, in_python, atol=1e-9)
        without_mirroring = detect(volume, trained_model_path, stage2_passes=2).positions_lps
        assert np.abs(points.positions_lps - without_mirroring).max() > 1e-3
    with open(tmp_path / "out" / "detections.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["case"] for row in rows] == ["case100"] * 3 + ["case101"] * 3
    assert {"confidence", "flagged", "in_view", "stage1_x", "stage2_shift_mm"} <= set(rows[0])
    assert {row["in_view"] for row in rows} == {"1"}  # every sphere lies in its volume
    assert rows[0]["coordinate_system"] == "RAS"
    # Results already there (in a folder of cases, its reference landmarks) are kept unless --overwrite is given.
    before = (tmp_path / "out" / "case100.mrk.json").read_bytes()
    again = [str(BIN / "cascade-landmarks"), "detect", str(trained_model_path), str(volumes[0]), "-o",
             str(tmp_path / "out"), "--quiet"]  # fmt: skip
    refused = subprocess.run(again, capture_output=True, text=True)
    assert refused.returncode != 0
    assert "case100.mrk.json" in refused.stderr
    assert "add --overwrite to replace them" in refused.stderr
    assert (tmp_path / "out" / "case100.mrk.json").read_bytes() == before
    replaced = subprocess.run([*again, "--overwrite"], capture_output=True, text=True)
    assert replaced.returncode == 0, replaced.stderr
    assert (tmp_path / "out" / "case100.mrk.json").read_bytes() != before  # one pass, no mirroring this time


def test_asking_for_a_gpu_without_one_falls_back_to_the_cpu_with_a_warning():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the fallback cannot happen here")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert select_device("cuda").type == "cpu"
    assert "no CUDA GPU" in str(caught[0].message)
    assert select_device("auto").type == "cpu"
    with pytest.raises(ValueError, match="Unknown device"):
        select_device("tpu")


def test_a_coarser_copy_of_the_volume_still_gives_the_points_within_a_millimetre(trained_model_path, synthetic_data):
    volume = read_volume(synthetic_data / "test" / "case103.nrrd")
    coarse = resample(volume, (1.5, 1.5, 2.5), interpolation="bspline")
    shift = np.linalg.norm(
        detect(volume, trained_model_path).positions_lps - detect(coarse, trained_model_path).positions_lps, axis=1
    )
    assert shift.max() < 1.5


def test_each_stage2_pass_starts_from_where_the_last_left_the_point(trained_model_path, synthetic_data):
    from cascade_landmarks.inference.detector import predict_displacements
    from cascade_landmarks.inference.preprocessing import Sampler

    model = load_model(trained_model_path)
    assert model.config.stage2_passes == 1  # the paper's single pass unless the model says otherwise
    volume = read_volume(synthetic_data / "test" / "case103.nrrd")
    once, twice = detect(volume, model), detect(volume, model, stage2_passes=2)
    np.testing.assert_array_equal(once.stage1_lps, twice.stage1_lps)
    step = predict_displacements(
        model, Sampler(volume, model.config.intensity), once.positions_lps, select_device("cpu")
    )
    np.testing.assert_allclose(twice.positions_lps, once.positions_lps + step, atol=1e-5)
    # The shift shown to the user is the whole way from stage 1's point; confidence reads the last step only.
    np.testing.assert_allclose(twice.stage2_shift_mm, np.linalg.norm(twice.positions_lps - twice.stage1_lps, axis=1))
    with pytest.raises(ValueError, match="stage2_passes must be at least 1"):
        detect(volume, model, stage2_passes=0)


def test_a_tolerance_stops_the_passes_once_none_moves_a_point_that_far(trained_model_path, synthetic_data):
    model = load_model(trained_model_path)
    volume = read_volume(synthetic_data / "test" / "case102.nrrd")
    fixed = [detect(volume, model, stage2_passes=n).positions_lps for n in range(1, 7)]
    largest_moves = [np.linalg.norm(b - a, axis=1).max() for a, b in itertools.pairwise(fixed)]
    assert largest_moves[0] > largest_moves[-1] > 0  # the passes settle, but never stop moving quite
    # A tolerance between the largest moves of passes 2 and 3 ends detection after pass 3, out of 6 allowed.
    tolerance = (largest_moves[0] + largest_moves[1]) / 2
    assert largest_moves[0] > tolerance >= largest_moves[1]
    stopped = detect(volume, model, stage2_passes=6, stage2_tolerance_mm=tolerance)
    np.testing.assert_allclose(stopped.positions_lps, fixed[2], atol=1e-6)
    # Settings given to detect are for that call: the model keeps its own.
    assert (model.config.stage2_passes, model.config.stage2_tolerance_mm) == (1, 0.0)
    # Set on the model, they last; with no tolerance, always the count given.
    model.config = model.config.with_detection_settings(stage2_passes=6, stage2_tolerance_mm=tolerance)
    np.testing.assert_allclose(detect(volume, model).positions_lps, fixed[2], atol=1e-6)
    np.testing.assert_allclose(detect(volume, model, stage2_tolerance_mm=0.0).positions_lps, fixed[5], atol=1e-6)
    with pytest.raises(ValueError, match="stage2_tolerance_mm must be 0"):
        detect(volume, model, stage2_tolerance_mm=-1.0)
    with pytest.raises(ValueError, match="stage2_radius_mm: not detection settings; those are stage2_passes"):
        detect(volume, model, stage2_radius_mm=20.0)


def test_stage1_in_bfloat16_places_the_points_as_well_as_in_float32(trained_model_path, synthetic_data):
    model = load_model(trained_model_path)
    assert model.config.stage1_precision == "auto"  # bfloat16 where the device computes it natively
    errors = {"float32": [], "bfloat16": []}
    for case in sorted((synthetic_data / "test").glob("*.nrrd")):
        volume, truth = read_volume(case), read_landmarks(case.with_suffix(".mrk.json"))
        found = {p: detect(volume, model, stage1_precision=p) for p in errors}
        for precision, detection in found.items():
            errors[precision].append(np.linalg.norm(detection.positions_lps - truth.positions_lps, axis=1))
        np.testing.assert_array_equal(found["float32"].in_view, found["bfloat16"].in_view)
        np.testing.assert_allclose(found["float32"].heatmap_peak, found["bfloat16"].heatmap_peak, atol=0.03)
    mean = {precision: np.mean(values) for precision, values in errors.items()}
    assert mean["float32"] < 1.5
    assert abs(mean["bfloat16"] - mean["float32"]) < 0.05, mean
    with pytest.raises(ValueError, match="stage1_precision must be one of"):
        detect(volume, model, stage1_precision="float16")


def test_a_model_file_carries_its_pass_count_and_older_files_read_as_one_pass(
    tmp_path, trained_model_path, synthetic_data
):
    from cascade_landmarks.model.config import CascadeConfig
    from cascade_landmarks.model.model_file import save_model

    model = load_model(trained_model_path)
    written_before_passes = model.config.to_dict()
    del written_before_passes["stage2_passes"]
    assert CascadeConfig.from_dict(written_before_passes).stage2_passes == 1
    model.config = dataclasses.replace(model.config, stage2_passes=3)
    save_model(model, tmp_path / "three-passes.pt")
    volume = synthetic_data / "test" / "case100.nrrd"
    np.testing.assert_allclose(
        detect(volume, tmp_path / "three-passes.pt").positions_lps,
        detect(volume, trained_model_path, stage2_passes=3).positions_lps,
        atol=1e-6,
    )


def test_test_time_mirroring_makes_the_cascade_exactly_mirror_symmetric(tmp_path, trained_model_path, synthetic_data):
    from cascade_landmarks import Volume

    model = load_model(trained_model_path)
    volume = read_volume(synthetic_data / "test" / "case101.nrrd")
    assert np.allclose(volume.geometry.direction, np.eye(3))  # so flipping i mirrors left/right about the centre
    mirrored = Volume(np.ascontiguousarray(volume.array[..., ::-1]), volume.geometry)
    centre = volume.geometry.index_to_lps((np.asarray(volume.geometry.size) - 1) / 2)
    twins = model.config.landmark_set.twin_permutation()  # no twins among the spheres: each is its own

    def asymmetry(stage1_only: bool, **mirroring) -> float:
        """How far the answer on the mirrored volume, mirrored back, is from the answer on the volume (mm)."""
        model.config = dataclasses.replace(model.config, **mirroring)
        answers = [detect(v, model) for v in (volume, mirrored)]
        points, points_in_mirror = [a.stage1_lps if stage1_only else a.positions_lps for a in answers]
        reflected = points_in_mirror[twins] * [-1, 1, 1] + [2 * centre[0], 0, 0]
        return float(np.abs(reflected - points).max())

    # Averaging each heatmap (stage 1) and each displacement (stage 2) with its twin's on the mirror image makes
    # the answer to the mirrored volume exactly the mirrored answer, whatever the networks learnt; without it,
    # only as well as they learnt.
    assert asymmetry(stage1_only=True, mirror_stage1=True) < 1e-3
    assert asymmetry(stage1_only=False, mirror_stage1=True, mirror_stage2=True) < 1e-3
    assert asymmetry(stage1_only=False, mirror_stage1=True, mirror_stage2=False) > 0.01


def test_a_field_of_view_unlike_the_training_scans_is_warned_about(tmp_path, trained_model_path):
    from cascade_landmarks import write_volume
    from cascade_landmarks.bench.phantoms.spheres import make_case

    # The model's stage 1 covers 60 mm along each axis (20 voxels of 3 mm), like its training cases.
    like_training, _ = make_case(7, size=(40, 40, 40))
    assert detect(like_training, trained_model_path).warnings == []
    larger, _ = make_case(7, size=(40, 40, 80))  # 120 mm along S
    [warning] = detect(larger, trained_model_path).warnings
    assert "covers 60 x 60 x 120 mm (L x P x S), much more than" in warning
    assert "Crop the volume" in warning

    tight = write_volume(make_case(7, size=(40, 40, 12))[0], tmp_path / "tight.nrrd")  # 18 mm along S
    result = subprocess.run([str(BIN / "cascade-landmarks"), "detect", str(trained_model_path), str(tight), "-o",
                             str(tmp_path / "out"), "--quiet"], capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Warning: tight: The volume covers 60 x 60 x 18 mm (L x P x S), much less than" in result.stderr
    assert "Check every point" in result.stderr


def test_a_registered_model_is_found_by_its_name(synthetic_data):
    from cascade_landmarks.model.registry import resolve_model

    volume = read_volume(synthetic_data / "test" / "case100.nrrd")
    by_name = detect(volume, "cardiac-5-phantom", device="cpu")
    by_file = detect(volume, resolve_model("cardiac-5-phantom"), device="cpu")
    assert by_name.labels == load_model(resolve_model("cardiac-5-phantom")).landmark_labels
    np.testing.assert_array_equal(by_name.positions_lps, by_file.positions_lps)
    with pytest.raises(ValueError, match="cardiac-6"):
        detect(volume, "cardiac-6", device="cpu")


def test_a_model_with_broken_weights_flags_every_point(tmp_path, trained_model_path, synthetic_data):
    # NaN weights (a diverged training saved by another tool, a damaged file) give NaN heatmaps: the points
    # then mean nothing, and each must be flagged with no confidence, never shown as certain.
    model = load_model(trained_model_path)
    with torch.no_grad():
        model.stage1.head.bias.fill_(float("nan"))
    detection = detect(read_volume(synthetic_data / "test" / "case100.nrrd"), model)
    np.testing.assert_array_equal(detection.confidence, 0.0)
    assert detection.flagged.all()
