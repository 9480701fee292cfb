"""Detection over a cohort: folders and manifests in, a failed case recorded and passed over, a second run
skipping exactly the finished cases, and a run killed with SIGKILL resumed with nothing lost or done twice."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cascade_landmarks import read_landmarks
from cascade_landmarks.inference.batch import batch_cases, detect_batch
from cascade_landmarks.inference.detector import detect
from cascade_landmarks.model.model_file import load_model

BIN = Path(sys.executable).parent


def _detect(model: Path, *inputs, output: Path, **options) -> subprocess.CompletedProcess:
    command = [str(BIN / "cascade-landmarks"), "detect", str(model), *map(str, inputs), "-o", str(output), "--quiet"]
    return subprocess.run(command, capture_output=True, text=True, **options)


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _cut_short_copy(source: Path, target: Path) -> Path:
    data = source.read_bytes()
    target.write_bytes(data[: len(data) // 3])
    return target


def _cohort_of_copies(synthetic_data: Path, cohort: Path, names: list[str]) -> Path:
    """A folder of volumes named ``names``, copies of the four held-out sphere cases in turn."""
    cohort.mkdir()
    for n, name in enumerate(names):
        shutil.copy(synthetic_data / "test" / f"case{100 + n % 4}.nrrd", cohort / f"{name}.nrrd")
    return cohort


def test_a_folder_and_a_manifest_are_detected_case_by_case_and_a_bad_case_does_not_stop_the_batch(
    tmp_path, trained_model_path, synthetic_data
):
    cohort = shutil.copytree(synthetic_data / "test", tmp_path / "cohort", ignore=shutil.ignore_patterns("*.mrk.json"))
    _cut_short_copy(cohort / "case101.nrrd", cohort / "broken.nrrd")
    manifest = tmp_path / "more.csv"
    manifest.write_text("case,volume\nextra,cohort/case100.nrrd\n")
    output = tmp_path / "out"
    result = _detect(trained_model_path, cohort, manifest, output=output)
    assert result.returncode == 1, result.stderr  # the exit status counts the failed cases
    assert "broken: failed: Cannot read volume" in result.stderr
    failures = _rows(output / "failures.csv")
    assert [(row["case"], Path(row["volume"]).name) for row in failures] == [("broken", "broken.nrrd")]
    assert "shorter than its header says" in failures[0]["reason"]
    done = ["case100", "case101", "case102", "case103", "extra"]
    assert sorted({row["case"] for row in _rows(output / "detections.csv")}) == done
    checksum = load_model(trained_model_path).sha256
    for name in done:
        record = json.loads((output / "records" / f"{name}.json").read_text())
        assert record["model_sha256"] == checksum
        assert len(read_landmarks(output / f"{name}.mrk.json").labels) == 3
    # The manifest's case is the same volume as case100: the same points.
    assert read_landmarks(output / "extra.mrk.json").positions_lps.tolist() == (
        read_landmarks(output / "case100.mrk.json").positions_lps.tolist()
    )


@pytest.mark.parametrize("read_ahead", [True, False])
def test_each_case_gets_the_points_of_its_own_volume_with_or_without_read_ahead(
    tmp_path, trained_model_path, synthetic_data, read_ahead
):
    model = load_model(trained_model_path)
    cases = batch_cases([synthetic_data / "test"])
    result = detect_batch(cases, model, tmp_path / "out", settings={}, device="cpu", read_ahead=read_ahead)
    assert list(result.detections) == [case.name for case in cases]
    for case in cases:
        alone = detect(case.volume, model, device="cpu")
        np.testing.assert_array_equal(result.detections[case.name].positions_lps, alone.positions_lps)


@pytest.mark.slow
def test_a_second_run_skips_the_finished_cases_and_redoes_a_changed_or_failed_one(
    tmp_path, trained_model_path, synthetic_data
):
    cohort = shutil.copytree(synthetic_data / "test", tmp_path / "cohort", ignore=shutil.ignore_patterns("*.mrk.json"))
    _cut_short_copy(cohort / "case101.nrrd", cohort / "broken.nrrd")
    output = tmp_path / "out"
    assert _detect(trained_model_path, cohort, output=output).returncode == 1
    written = {p.name: p.stat().st_mtime_ns for p in output.glob("*.mrk.json")}
    shutil.copy(cohort / "case101.nrrd", cohort / "broken.nrrd")  # the copy made whole
    os.utime(cohort / "case102.nrrd")  # touched: it may have changed, so it is done again
    again = _detect(trained_model_path, cohort, output=output)
    assert again.returncode == 0, again.stderr
    assert "(3 done by an earlier run, skipped)" in again.stdout
    now = {p.name: p.stat().st_mtime_ns for p in output.glob("*.mrk.json")}
    assert {name for name in now if now[name] != written.get(name)} == {"broken.mrk.json", "case102.mrk.json"}
    assert _rows(output / "failures.csv") == []
    assert len({row["case"] for row in _rows(output / "detections.csv")}) == 5
    # Killed between a case's points and its record: that case is done again, not taken for someone else's file.
    (output / "records" / "case103.json").unlink()
    (output / "records" / "case103.pending").touch()
    resumed = _detect(trained_model_path, cohort, output=output)
    assert resumed.returncode == 0, resumed.stderr
    assert "(4 done by an earlier run, skipped)" in resumed.stdout
    assert not (output / "records" / "case103.pending").exists()
    # Another model's (or other settings') results are not skipped, nor replaced without --overwrite.
    other = _detect(trained_model_path, cohort, "--stage2-passes", "1", output=output)
    assert other.returncode == 2
    assert "add --overwrite to replace them" in other.stderr


@pytest.mark.slow
def test_a_batch_killed_with_sigkill_resumes_without_losing_or_repeating_a_case(
    tmp_path, trained_model_path, synthetic_data
):
    cohort = _cohort_of_copies(synthetic_data, tmp_path / "cohort", [f"ct{n:02d}" for n in range(30)])
    output = tmp_path / "out"
    command = [str(BIN / "cascade-landmarks"), "detect", str(trained_model_path), str(cohort), "-o", str(output),
               "--quiet"]  # fmt: skip
    run = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(list((output / "records").glob("*.json"))) < 5 and time.monotonic() < deadline and run.poll() is None:
        time.sleep(0.05)
    run.send_signal(signal.SIGKILL)
    run.wait()
    finished = {p.stem: p.stat().st_mtime_ns for p in (output / "records").glob("*.json")}
    assert 5 <= len(finished) < 30, "the batch was not killed part-way"
    resumed = _detect(trained_model_path, cohort, output=output)
    assert resumed.returncode == 0, resumed.stderr
    assert f"({len(finished)} done by an earlier run, skipped)" in resumed.stdout
    # None done twice: the records of the cases finished before the kill are the ones written then.
    assert all((output / "records" / f"{name}.json").stat().st_mtime_ns == t for name, t in finished.items())
    # None lost, none half-written: every case has its points and its record, and each reads whole.
    for n in range(30):
        assert len(read_landmarks(output / f"ct{n:02d}.mrk.json").labels) == 3
        json.loads((output / "records" / f"ct{n:02d}.json").read_text())
    assert len(_rows(output / "detections.csv")) == 30 * 3


@pytest.mark.slow
def test_two_torchrun_processes_share_a_batch_and_do_each_case_exactly_once(
    tmp_path, trained_model_path, synthetic_data
):
    cohort = _cohort_of_copies(synthetic_data, tmp_path / "cohort", [f"ct{n}" for n in range(7)])
    _cut_short_copy(synthetic_data / "test" / "case100.nrrd", cohort / "ct9.nrrd")
    output = tmp_path / "out"
    command = [str(BIN / "torchrun"), "--standalone", "--nproc-per-node", "2", "-m", "cascade_landmarks.cli",
               "detect", str(trained_model_path), str(cohort), "-o", str(output), "--device", "cpu"]  # fmt: skip
    single_threaded = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([*command, "--quiet"], capture_output=True, text=True, timeout=300, env=single_threaded)
    assert result.returncode == 1, result.stderr[-3000:]  # the one failed case, counted by the first process
    assert result.stdout.count("Wrote") == 1  # only the first process reports
    # The cases in name order, every second one to each process; each done once, by the process it fell to.
    names = [f"ct{n}" for n in (0, 1, 2, 3, 4, 5, 6, 9)]
    processes = {name: json.loads((output / "records" / f"{name}.json").read_text())["process"] for name in names[:-1]}
    assert processes == {name: index % 2 for index, name in enumerate(names[:-1])}
    assert [row["case"] for row in _rows(output / "failures.csv")] == ["ct9"]
    assert not list(output.glob("failures.process*.csv"))
    assert sorted({row["case"] for row in _rows(output / "detections.csv")}) == names[:-1]


def test_a_disk_that_fills_stops_the_batch_with_a_message_and_keeps_the_finished_cases(
    tmp_path, trained_model_path, synthetic_data
):
    import resource

    cohort = shutil.copytree(synthetic_data / "test", tmp_path / "cohort", ignore=shutil.ignore_patterns("*.mrk.json"))
    output = tmp_path / "out"
    # No file may grow past 2 kB: each case's files fit (about 1.5 kB each), the summary of all four does not.
    limit = 2_000

    def small_disk() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    full = _detect(trained_model_path, cohort, output=output, preexec_fn=small_disk)
    assert full.returncode == 1
    assert "detections.csv: File too large. Every file is written whole or not at all" in full.stderr
    assert "run the same command again" in full.stderr
    assert not (output / "detections.csv").exists()
    assert not list(output.glob(".partial-*"))  # no half-written file left behind
    finished = {p.name: p.read_bytes() for p in output.glob("*.mrk.json")}
    assert len(finished) == 4
    again = _detect(trained_model_path, cohort, output=output)
    assert again.returncode == 0, again.stderr
    assert "(4 done by an earlier run, skipped)" in again.stdout
    assert {p.name: p.read_bytes() for p in output.glob("*.mrk.json")} == finished
    assert len(_rows(output / "detections.csv")) == 4 * 3
