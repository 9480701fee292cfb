"""Speed and memory of detection, measured as a user meets them: a fresh process reads a volume file, detects
with a model file and writes the ``.mrk.json``. Run with ``cascade-landmarks benchmark-speed``; with ``--batch N``,
a fresh process detects over a folder of N volumes as ``cascade-landmarks detect FOLDER`` does, once with
read-ahead and once without, and reports volumes per hour and resident memory as the batch goes.

Without ``--model`` the model is the default size (cardiac-5: stage-1 grid 128^3 at 1.6 mm, U-Net width 8 and
depth 3, 64^3 stage-2 patches at 0.4 mm) with untrained weights: the computation, and so the time, is the same
as a trained model's; the points it finds mean nothing. The volume is synthetic too (an ellipse of soft tissue
in air with noise, int16 HU, 0.4 mm), written uncompressed (NRRD) and compressed (NIfTI .nii.gz); the batch's
volumes are 300 slices of 512 x 512 in gzipped NIfTI, as CTAs come from a PACS export (copies of one volume, each
read and decompressed in full).
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ..inference.batch import batch_cases, detect_batch
from ..inference.detector import detect
from ..io.coordinates import Geometry
from ..io.landmark_sets import load_landmark_set
from ..io.landmarks import write_landmarks
from ..io.volumes import Volume, read_volume, write_volume
from ..model.config import CascadeConfig
from ..model.devices import computes_bfloat16_natively, select_device
from ..model.model_file import CascadeModel, load_model, save_model

BATCH_SHAPE = (300, 512, 512)  # (k, j, i): 300 slices of 512 x 512


def synthetic_ct(size: int | tuple[int, int, int], spacing_mm: float = 0.4, seed: int = 0) -> Volume:
    """An int16 CT-like volume of ``size``^3 voxels or of shape ``size`` (k, j, i): soft tissue (40 HU) in an
    ellipsoid, air (-1000 HU) around it, noise."""
    shape = (size,) * 3 if isinstance(size, int) else tuple(size)
    rng = np.random.default_rng(seed)
    k, j, i = ((np.arange(n, dtype=np.float32) - n / 2) / (n / 2) for n in shape)
    inside = (k[:, None, None] ** 2 / 0.8 + j[None, :, None] ** 2 / 0.6 + i[None, None, :] ** 2 / 0.9) < 1
    array = np.where(inside, np.int16(40), np.int16(-1000))
    array += rng.integers(-20, 21, size=array.shape, dtype=np.int16)
    size_ijk = shape[::-1]
    geometry = Geometry(
        size=size_ijk,
        spacing=(spacing_mm,) * 3,
        origin=tuple(-n * spacing_mm / 2 for n in size_ijk),
        direction=np.eye(3),
    )
    return Volume(array=array, geometry=geometry)


_COLUMNS = {
    "model": "model",
    "read": "read",
    "stage 1 input": "st.1 in",
    "stage 1": "stage 1",
    "stage 2": "stage 2",
    "write": "write",
    "total": "total",
    "peak_gb": "peak",
}


def detection_speed(*, size: int = 512, model_path: str | None = None, device: str = "cpu", repeats: int = 3) -> str:
    """Run detection ``repeats`` times per file format in fresh processes; a report of times and peak memory."""
    with tempfile.TemporaryDirectory(prefix="cascade-benchmark-") as folder:
        folder = Path(folder)
        model_path, model_note = _model_to_time(model_path, folder)
        volume = synthetic_ct(size)
        files = {
            "NRRD, uncompressed": write_volume(volume, folder / "ct.nrrd", compress=False),
            "NIfTI, gzip": write_volume(volume, folder / "ct.nii.gz", compress=True),
        }
        del volume
        lines = [
            f"Detection from file to .mrk.json, {size}^3 int16 synthetic CT volume at 0.4 mm; {model_note};",
            f"device {device}, {_stage1_precision(model_path, device)}; median of {repeats} fresh processes each.",
            "Total: from model load to file written, after Python and torch have started. Peak: the process's",
            "largest resident set.",
            "",
            f"{'file':20s}" + "".join(f"{header:>10s}" for header in _COLUMNS.values()),
        ]
        for label, path in files.items():
            runs = [
                _in_fresh_process("single", model_path, path, folder / "out.mrk.json", device) for _ in range(repeats)
            ]
            median = {key: float(np.median([run[key] for run in runs])) for key in runs[0]}
            cells = [f"{median[key]:8.2f} GB" if key == "peak_gb" else f"{median[key]:9.2f}s" for key in _COLUMNS]
            lines.append(f"{label:20s}" + "".join(cells))
        return "\n".join(lines)


def batch_speed(*, volumes: int, model_path: str | None = None, device: str = "cpu") -> str:
    """Detect over a folder of ``volumes`` gzipped NIfTI volumes of :data:`BATCH_SHAPE`, in a fresh process with
    read-ahead and in another without; a report of volumes per hour and resident memory."""
    if volumes < 1:
        raise ValueError(f"--batch needs at least one volume, not {volumes}.")
    with tempfile.TemporaryDirectory(prefix="cascade-benchmark-") as folder:
        folder = Path(folder)
        model_path, model_note = _model_to_time(model_path, folder)
        cases = folder / "cases"
        cases.mkdir()
        first = write_volume(synthetic_ct(BATCH_SHAPE), cases / "case-0000.nii.gz", compress=True)
        for index in range(1, volumes):
            shutil.copyfile(first, cases / f"case-{index:04d}.nii.gz")
        megabytes = first.stat().st_size / 1e6
        marks = [n for n in (1, 10, 100) if n <= volumes]
        lines = [
            f"Batch detection over {volumes} synthetic {' x '.join(map(str, BATCH_SHAPE[::-1]))} int16 volumes at "
            f"0.4 mm, gzipped NIfTI ({megabytes:.0f} MB each;",
            f"copies of one volume, each read and decompressed in full); {model_note};",
            f"device {device}, {_stage1_precision(model_path, device)}.",
            "One fresh process per row, as `cascade-landmarks detect FOLDER` runs: the model loads once, then each",
            "case is read, detected and written with its record. Rate: volumes over the time from the first case's",
            "start to the last one's end. Memory: the process's resident set after that many volumes; peak: its",
            "largest.",
            "",
            f"{'':22s}{'volumes/hour':>14s}{'s/volume':>10s}"
            + "".join(f"{f'after {n}':>10s}" for n in marks)
            + f"{'peak':>10s}",
        ]
        for label, read_ahead in (("with read-ahead", True), ("without read-ahead", False)):
            output = folder / f"output-{read_ahead}"
            run = _in_fresh_process("batch", model_path, cases, output, device, str(read_ahead))
            seconds = run["ended"][-1] - run["started"]
            cells = [f"{3600 * volumes / seconds:14.0f}", f"{seconds / volumes:9.2f}s"]
            cells += [f"{run['resident_gb'][n - 1]:7.2f} GB" for n in marks] + [f"{run['peak_gb']:7.2f} GB"]
            lines.append(f"{label:22s}" + "".join(cells))
            shutil.rmtree(output)
        return "\n".join(lines)


def _model_to_time(model_path: str | None, folder: Path) -> tuple[str | Path, str]:
    """The model file to time, and how the report names it: the one given, or the default-size model with
    untrained weights, written into ``folder``."""
    if model_path is not None:
        return model_path, str(model_path)
    model_path = folder / "default-untrained.pt"
    save_model(CascadeModel.create(CascadeConfig.default(load_landmark_set("cardiac-5"))), model_path)
    return model_path, "default-size cardiac-5 model, untrained weights (timing only)"


def _stage1_precision(model_path, device: str) -> str:
    """How stage 1 computes with this model on this device, for the report."""
    precision = load_model(model_path).config.stage1_precision
    native = computes_bfloat16_natively(select_device(device))
    if precision == "auto":
        return f"stage 1 in {'bfloat16' if native else 'float32'} (auto)"
    return f"stage 1 in {precision}"


def _in_fresh_process(*arguments) -> dict:
    """This module run as a program in a new Python process, with ``arguments``; the figures it printed."""
    command = [sys.executable, "-m", "cascade_landmarks.bench.speed", *map(str, arguments)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"Benchmark detection failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _batch_once(model_path: str, cases: str, output: str, device: str, read_ahead: str) -> dict:
    """Detect over the folder ``cases`` in this process as the ``detect`` command does; the time each case ended
    and the resident memory then."""
    model = load_model(model_path)
    ended, resident = [], []

    def case_ended(name: str, detection, reason: str | None) -> None:
        if detection is None:
            raise RuntimeError(f"Case {name} failed: {reason}")
        ended.append(time.perf_counter())
        resident.append(_resident_gb())

    started = time.perf_counter()
    detect_batch(batch_cases([cases]), model, output, settings={}, device=device, read_ahead=read_ahead == "True",
                 on_case=case_ended)  # fmt: skip
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"started": started, "ended": ended, "resident_gb": resident, "peak_gb": peak_kb / 1024**2}


def _resident_gb() -> float:
    """This process's resident memory now (Linux; NaN elsewhere)."""
    try:
        with open("/proc/self/statm") as statm:
            pages = int(statm.read().split()[1])
    except OSError:
        return float("nan")
    return pages * os.sysconf("SC_PAGE_SIZE") / 1024**3


def _detect_once(model_path: str, volume_path: str, output_path: str, device: str) -> dict:
    """Read, detect, write, in this process; seconds per step and the peak resident memory."""
    started = time.perf_counter()
    model = load_model(model_path)
    loaded = time.perf_counter()
    volume = read_volume(volume_path)
    read = time.perf_counter() - loaded
    detection = detect(volume, model, device=device)
    write_started = time.perf_counter()
    write_landmarks(detection.landmarks(), output_path)
    finished = time.perf_counter()
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "model": loaded - started,
        "read": read,
        **detection.seconds,
        "write": finished - write_started,
        "total": finished - started,
        "peak_gb": peak_kb / 1024**2,
    }


if __name__ == "__main__":
    run = {"single": _detect_once, "batch": _batch_once}[sys.argv[1]]
    print(json.dumps(run(*sys.argv[2:])))
