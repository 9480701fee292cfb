"""Training: reaches a stated error, is reproducible, resumes after a kill, runs on two processes, fine-tunes,
and reports bad training data by case name before it starts."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from cascade_landmarks import Landmarks, write_landmarks
from cascade_landmarks.bench.phantoms.spheres import SPHERES_SET, make_case, write_cases, write_set
from cascade_landmarks.inference.detector import detect
from cascade_landmarks.model.model_file import load_model, model_from_state
from cascade_landmarks.training.config import FINE_TUNING_LEARNING_RATE, TrainingConfig
from cascade_landmarks.training.run_files import checkpoint_path
from cascade_landmarks.training.trainer import train

from conftest import TINY_MODEL_SETTINGS

BIN = Path(sys.executable).parent
TINY_FLAGS = [
    "--stage1-spacing", "3", "--stage1-grid", "20", "20", "20", "--patch-size", "16", "--unet-width", "8",
    "--unet-depth", "2", "--stage2-radius", "5", "--heatmap-sigma", "3",
]  # fmt: skip


def _errors(model_path, folder: Path) -> tuple[np.ndarray, np.ndarray]:
    from cascade_landmarks import read_landmarks

    stage1, cascade = [], []
    for volume in sorted(folder.glob("*.nrrd")):
        detection = detect(volume, model_path)
        reference = read_landmarks(volume.with_name(volume.name.replace(".nrrd", ".mrk.json"))).positions_lps
        stage1.append(np.linalg.norm(detection.stage1_lps - reference, axis=1))
        cascade.append(np.linalg.norm(detection.positions_lps - reference, axis=1))
    return np.array(stage1), np.array(cascade)


def test_a_small_model_finds_held_out_landmarks_to_a_millimetre(trained_model_path, synthetic_data):
    stage1, cascade = _errors(trained_model_path, synthetic_data / "test")
    # Measured when written: stage 1 about 2.6 mm, cascade about 0.35 mm (stage-1 voxels are 3 mm).
    assert cascade.mean() < 1.0, cascade
    assert cascade.mean() < 0.5 * stage1.mean()
    assert stage1.mean() < 4.5, stage1


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state().items() if isinstance(v, torch.Tensor)}


def _assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)


def _quick_train(data, output, **training):
    settings = {"stage1_iterations": 6, "stage2_iterations": 6, "batch_size": 2, "validate_every": 0, **training}
    return train(data, output, landmark_set=SPHERES_SET, training=TrainingConfig(**settings),
                 config_settings=TINY_MODEL_SETTINGS, progress=False)  # fmt: skip


def test_the_same_seed_gives_the_same_model_and_another_seed_another(tmp_path, synthetic_data):
    first = _quick_train(synthetic_data / "train", tmp_path / "a.pt", seed=5)
    second = _quick_train(synthetic_data / "train", tmp_path / "b.pt", seed=5)
    other = _quick_train(synthetic_data / "train", tmp_path / "c.pt", seed=6)
    _assert_same_weights(_state(first), _state(second))
    assert not torch.equal(_state(first)["stage1.head.weight"], _state(other)["stage1.head.weight"])


def _train_command(data: Path, output: Path, *extra: str) -> list[str]:
    return [str(BIN / "cascade-landmarks"), "train", str(data), "-o", str(output), "--landmarks",
            str(write_set(data.parent)), "--batch-size", "2", "--validate-every", "0", "--quiet",
            *TINY_FLAGS, *extra]  # fmt: skip


@pytest.mark.slow
def test_a_killed_training_resumes_where_it_stopped_and_ends_as_if_never_stopped(
    tmp_path, synthetic_data, trained_model_path
):
    data = synthetic_data / "train"
    # A fine-tune with a cosine rate: the resumed run must pick up the model it started from and the rate's step.
    schedule = ["--stage1-iterations", "60", "--stage2-iterations", "40", "--checkpoint-every", "5",
                "--init-from", str(trained_model_path), "--learning-rate-schedule", "cosine"]  # fmt: skip
    killed = tmp_path / "killed.pt"
    process = subprocess.Popen(_train_command(data, killed, *schedule), stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not checkpoint_path(killed).exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not killed.exists(), "training finished before it could be killed"
    stopped_at = torch.load(checkpoint_path(killed), weights_only=True)
    assert stopped_at["stage"] == 1
    assert 0 < stopped_at["iteration"] < 60

    # The weights so far can be taken as a model file, leaving the checkpoint to resume from.
    early = tmp_path / "early.pt"
    export = [str(BIN / "cascade-landmarks"), "export-checkpoint", str(checkpoint_path(killed)), "-o", str(early)]
    exported = subprocess.run(export, capture_output=True, text=True)
    assert exported.returncode == 0, exported.stderr
    _assert_same_weights(_state(load_model(early)), _state(model_from_state(stopped_at["model"])))
    early_record = load_model(early).training
    assert (
        early_record["stopped"] == f"exported from its checkpoint at stage 1, iteration {stopped_at['iteration']} of 60"
    )
    assert early_record["training_config"]["stage1_iterations"] == stopped_at["iteration"]
    assert early_record["training_config"]["stage2_iterations"] == 0
    assert early_record["fine_tuned_from"] == str(trained_model_path)
    again = subprocess.run(export, capture_output=True, text=True)
    assert again.returncode == 2
    assert "exists; export to a new file name" in again.stderr

    forgot = subprocess.run(_train_command(data, killed, *schedule), capture_output=True, text=True)
    assert forgot.returncode == 2
    assert "add --resume to continue it" in forgot.stderr  # starting afresh would throw the progress away

    started = time.monotonic()
    # As the README has it: the command without its schedule, which the checkpoint keeps.
    resumed = subprocess.run([*_train_command(data, killed), "--resume"], capture_output=True, text=True)
    resume_seconds = time.monotonic() - started
    assert resumed.returncode == 0, resumed.stderr
    assert "not used" not in resumed.stderr  # no schedule given: nothing to warn of
    assert not checkpoint_path(killed).exists()

    uninterrupted = tmp_path / "uninterrupted.pt"
    subprocess.run(_train_command(data, uninterrupted, *schedule), check=True, capture_output=True)
    _assert_same_weights(_state(load_model(killed)), _state(load_model(uninterrupted)))
    # The model's record covers the whole run: the time before the kill, and the model it was fine-tuned from.
    record = load_model(killed).training
    assert stopped_at["seconds"] < record["seconds"] < stopped_at["seconds"] + resume_seconds
    assert record["fine_tuned_from"] == str(trained_model_path)
    assert record["previous_training"] == load_model(trained_model_path).training


def test_the_cosine_schedule_falls_from_the_learning_rate_to_zero_over_each_stage():
    cosine = TrainingConfig(learning_rate=1e-3, learning_rate_schedule="cosine")
    rates = [cosine.learning_rate_at(step, 100) for step in range(100)]
    assert rates[0] == pytest.approx(1e-3)
    assert rates[50] == pytest.approx(0.5e-3)
    assert rates[-1] < 1e-6
    assert np.all(np.diff(rates) <= 0)
    assert TrainingConfig(learning_rate=1e-3).learning_rate_at(99, 100) == 1e-3  # the default stays the paper's
    with pytest.raises(ValueError, match="learning_rate_schedule must be one of constant, cosine"):
        TrainingConfig(learning_rate_schedule="step")


def test_a_resumed_run_names_the_given_settings_it_does_not_use(capsys):
    from cascade_landmarks.progress import TerminalReporter
    from cascade_landmarks.training.trainer import _warn_of_ignored_settings

    checkpoint = TrainingConfig(stage2_iterations=40, learning_rate=1e-4, device="cuda")
    _warn_of_ignored_settings(TrainingConfig(stage2_iterations=40, learning_rate=1e-4), checkpoint, TerminalReporter())
    assert capsys.readouterr().err == ""  # another device is allowed: a run may resume on another machine
    _warn_of_ignored_settings(TrainingConfig(), checkpoint, TerminalReporter())
    assert capsys.readouterr().err == ""  # defaults: what the command line gives for options not typed
    _warn_of_ignored_settings(
        TrainingConfig(stage2_iterations=90000, learning_rate=1e-4), checkpoint, TerminalReporter()
    )
    assert capsys.readouterr().err == (
        "Warning: A resumed run keeps its checkpoint's training settings; not used: stage2_iterations 90000 "
        "(the checkpoint's: 40).\n"
    )


def test_resume_without_a_checkpoint_says_so(tmp_path, synthetic_data):
    result = subprocess.run([*_train_command(synthetic_data / "train", tmp_path / "m.pt"), "--resume"],
                            capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 2
    assert "Nothing to resume" in result.stderr


@pytest.mark.slow
def test_two_processes_train_with_torchrun_on_gloo(tmp_path, synthetic_data):
    output = tmp_path / "ddp.pt"
    command = [str(BIN / "torchrun"), "--standalone", "--nproc-per-node", "2", "-m", "cascade_landmarks.cli",
               *_train_command(synthetic_data / "train", output, "--stage1-iterations", "4",
                               "--stage2-iterations", "4", "--device", "cpu")[1:]]  # fmt: skip
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert result.returncode == 0, result.stderr[-3000:]
    model = load_model(output)
    assert model.training["processes"] == 2
    assert result.stdout.count("Wrote") == 1  # only the first process reports and writes


def test_fine_tuning_starts_from_the_model_and_records_it(tmp_path, trained_model_path, synthetic_data):
    new_cases = write_cases(tmp_path / "corrected", range(200, 203))
    before = load_model(trained_model_path)
    tuned = train(new_cases, tmp_path / "tuned.pt", init_from=trained_model_path,
                  training=TrainingConfig(stage1_iterations=3, stage2_iterations=3, batch_size=1, validate_every=0,
                                          validation_fraction=0, learning_rate=FINE_TUNING_LEARNING_RATE),
                  progress=False, config_settings={"stage2_passes": 2, "patch_size": 64})  # fmt: skip
    # The network settings stay the model's; the pass count, which changes no weights, may be set anew.
    assert tuned.config == dataclasses.replace(before.config, stage2_passes=2)
    # Only detection settings change on a trained model, and a misspelt one is named, not ignored.
    assert tuned.config.with_detection_settings(mirror_stage1=None).mirror_stage1 == before.config.mirror_stage1
    with pytest.raises(ValueError, match=r"patch_size: not detection settings; those are stage2_passes"):
        tuned.config.with_detection_settings(patch_size=32)
    assert tuned.training["fine_tuned_from"] == str(trained_model_path)
    assert tuned.training["previous_training"]["cases"] == before.training["cases"]
    # A few small steps from the trained weights, not a fresh start: as good as the model it came from.
    # (At the fresh-training rate, 1e-3, three Adam steps took this model from 0.35 mm to 2.7 mm.)
    _, cascade = _errors(tmp_path / "tuned.pt", synthetic_data / "test")
    assert cascade.mean() < 1.0
    with pytest.raises(ValueError, match="finds landmark set spheres-3, not cardiac-5"):
        train(new_cases, tmp_path / "x.pt", landmark_set="cardiac-5", init_from=trained_model_path, progress=False)


def test_training_data_problems_are_reported_by_case_before_training(tmp_path):
    data = write_cases(tmp_path / "data", range(4))
    (data / "case000.mrk.json").unlink()  # no landmark file
    _, landmarks = make_case(1)
    write_landmarks(Landmarks([*landmarks.labels, "extra"], np.vstack([landmarks.positions_lps, [0, 0, 0]])),
                    data / "case001.mrk.json")  # fmt: skip
    _, landmarks = make_case(2)
    outside = landmarks.positions_lps.copy()
    outside[2] += [0.0, 0.0, 500.0]
    write_landmarks(Landmarks(landmarks.labels, outside), data / "case002.mrk.json")
    (data / "case003.nrrd").write_bytes(b"not a volume")
    result = subprocess.run(_train_command(data, tmp_path / "m.pt"), capture_output=True, text=True)
    assert result.returncode == 2
    message = result.stderr
    assert "4 problem(s) in the training data" in message
    assert "case000: no landmark file" in message
    assert "case001: case001.mrk.json does not match landmark set spheres-3: not in spheres-3: extra" in message
    assert "case002: landmarks outside the volume: sphere 3" in message
    assert "case003: Cannot read volume" in message
    assert not (tmp_path / "m.pt").exists()


def test_the_patch_based_stage_one_of_the_ablation_trains_and_detects(tmp_path, synthetic_data):
    settings = {**TINY_MODEL_SETTINGS, "stage1_mode": "patch", "stage1_patch_size": 16, "stage1_grid": (24, 24, 24)}
    model = train(synthetic_data / "train", tmp_path / "patch.pt", landmark_set=SPHERES_SET,
                  training=TrainingConfig(stage1_iterations=3, stage2_iterations=2, batch_size=2, validate_every=0),
                  config_settings=settings, progress=False)  # fmt: skip
    assert model.config.stage1_mode == "patch"
    detection = detect(synthetic_data / "test" / "case100.nrrd", tmp_path / "patch.pt")
    assert np.all(np.isfinite(detection.positions_lps))


@pytest.fixture(autouse=True)
def _no_leftover_process_group():
    yield
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


@pytest.mark.parametrize("near_share", [0.0, 0.5])
def test_the_near_share_of_stage2_patches_is_centred_close_to_the_landmark(synthetic_data, near_share):
    from cascade_landmarks.io.cases import check_cases, find_cases
    from cascade_landmarks.model.config import CascadeConfig
    from cascade_landmarks.training.batches import NEAR_RADIUS, prepare_case, stage2_batch

    config = CascadeConfig.default(SPHERES_SET, stage1_spacing_mm=3.0, stage1_grid=(20, 20, 20),
                                   stage2_spacing_mm=1.5, patch_size=16, unet_depth=2)  # fmt: skip
    case = prepare_case(check_cases(find_cases(synthetic_data / "train"), SPHERES_SET)[0], config)
    rng = np.random.default_rng(0)
    targets = np.concatenate(
        [stage2_batch([case], 4, rng, config, near_share=near_share)[1].numpy() for _ in range(100)]
    )
    distance = np.linalg.norm(targets, axis=-1)
    assert distance.max() <= config.stage2_radius_mm + 1e-6
    near = np.mean(distance <= NEAR_RADIUS * config.stage2_radius_mm)
    # Uniform in the ball, about 1% of the patches lie that close (7 of ~700 grid offsets); the share adds its own.
    assert near == pytest.approx(near_share, abs=0.06)
    with pytest.raises(ValueError, match="stage2_near_share"):
        TrainingConfig(stage2_near_share=1.5)


def test_the_stage1_grid_covers_a_volume_whose_voxel_axes_are_not_l_p_s(tmp_path):
    """A sagittal MRI's i axis may run along S: the stage-1 grid (along L, P, S) must cover the volume's LPS box."""
    from cascade_landmarks.inference.detector import field_of_view_warnings
    from cascade_landmarks.io.cases import check_cases, find_cases
    from cascade_landmarks.training.trainer import default_config

    from conftest import rotation

    i_along_s = rotation([0.0, 1.0, 0.0], 90.0)
    write_cases(tmp_path / "sagittal", [5], size=(60, 30, 20), direction=i_along_s)
    cases = check_cases(find_cases(tmp_path / "sagittal"), SPHERES_SET)
    geometry = cases[0].geometry
    np.testing.assert_allclose(geometry.extent_mm, [90.0, 45.0, 30.0])  # along i, j, k
    np.testing.assert_allclose(geometry.lps_extent_mm, [30.0, 45.0, 90.0], atol=1e-9)  # along L, P, S
    config = default_config(cases, SPHERES_SET, stage1_spacing_mm=3.0, unet_depth=2)
    grid_mm = np.asarray(config.stage1_grid) * 3.0
    assert np.all(grid_mm >= geometry.lps_extent_mm)
    assert np.all(grid_mm < geometry.lps_extent_mm + 12.0)
    assert field_of_view_warnings(geometry, config) == []


def test_a_training_that_diverges_stops_with_what_to_do_and_its_checkpoint_resumes_only_as_it_ran(
    tmp_path, synthetic_data
):
    # A learning rate far too high: the weights overflow within a few steps. The run stops before a step that
    # would write non-finite weights, instead of saving a model whose every output is NaN.
    with pytest.raises(ValueError, match=r"Stage \d diverged at iteration \d+: .* lower --learning-rate") as error:
        _quick_train(synthetic_data / "train", tmp_path / "diverged.pt", learning_rate=1e30, stage1_iterations=40,
                     checkpoint_every=1)  # fmt: skip
    assert not (tmp_path / "diverged.pt").exists()
    # A resumed run would keep the rate and diverge again: the message says to delete the checkpoint first.
    checkpoint = checkpoint_path(tmp_path / "diverged.pt")
    assert checkpoint.exists()
    assert f"To train again, delete {checkpoint}, then use a lower --learning-rate" in str(error.value)
    # That checkpoint, as if torchrun had written it with two processes: each process draws its own batches, so
    # resuming it with one would make another run; it is refused.
    state = torch.load(checkpoint, weights_only=True)
    state["processes"] = 2
    torch.save(state, checkpoint)
    with pytest.raises(ValueError, match=r"written by a run of 2 process\(es\); resume it with as many"):
        train(synthetic_data / "train", tmp_path / "diverged.pt", resume=True, progress=False)
