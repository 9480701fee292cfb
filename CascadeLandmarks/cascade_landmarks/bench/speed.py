"""Speed and memory of detection, measured as a user meets them: a fresh process reads a volume file, detects
with a model file and writes the ``.mrk.json``. Run with ``cascade-landmarks benchmark-speed``.

Without ``--model`` the model is the default size (cardiac-5: stage-1 grid 128^3 at 1.6 mm, U-Net width 8 and
depth 3, 64^3 stage-2 patches at 0.4 mm) with untrained weights: the computation, and so the time, is the same
as a trained model's; the points it finds mean nothing. The volume is synthetic too (an ellipse of soft tissue
in air with noise, int16 HU, 0.4 mm), written uncompressed (NRRD) and compressed (NIfTI .nii.gz).
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ..inference.detector import detect
from ..io.coordinates import Geometry
from ..io.landmark_sets import load_landmark_set
from ..io.landmarks import write_landmarks
from ..io.volumes import Volume, read_volume, write_volume
from ..model.config import CascadeConfig
from ..model.model_file import CascadeModel, load_model, save_model


def synthetic_ct(size: int, spacing_mm: float = 0.4, seed: int = 0) -> Volume:
    """A ``size``^3 int16 CT-like volume: soft tissue (40 HU) in an ellipsoid, air (-1000 HU) around it, noise."""
    rng = np.random.default_rng(seed)
    axis = (np.arange(size, dtype=np.float32) - size / 2) / (size / 2)
    inside = (axis[:, None, None] ** 2 / 0.8 + axis[None, :, None] ** 2 / 0.6 + axis[None, None, :] ** 2 / 0.9) < 1
    array = np.where(inside, np.int16(40), np.int16(-1000))
    array += rng.integers(-20, 21, size=array.shape, dtype=np.int16)
    geometry = Geometry(
        size=(size, size, size), spacing=(spacing_mm,) * 3, origin=(-size * spacing_mm / 2,) * 3, direction=np.eye(3)
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
        if model_path is None:
            model_path = folder / "default-untrained.pt"
            save_model(CascadeModel.create(CascadeConfig.default(load_landmark_set("cardiac-5"))), model_path)
            model_note = "default-size cardiac-5 model, untrained weights (timing only)"
        else:
            model_note = str(model_path)
        volume = synthetic_ct(size)
        files = {
            "NRRD, uncompressed": write_volume(volume, folder / "ct.nrrd", compress=False),
            "NIfTI, gzip": write_volume(volume, folder / "ct.nii.gz", compress=True),
        }
        del volume
        lines = [
            f"Detection from file to .mrk.json, {size}^3 int16 synthetic CT volume at 0.4 mm; {model_note};",
            f"device {device}; median of {repeats} fresh processes each. Total: from model load to file written,",
            "after Python and torch have started. Peak: the process's largest resident set.",
            "",
            f"{'file':20s}" + "".join(f"{header:>10s}" for header in _COLUMNS.values()),
        ]
        for label, path in files.items():
            runs = [_detect_in_fresh_process(model_path, path, folder / "out.mrk.json", device) for _ in range(repeats)]
            median = {key: float(np.median([run[key] for run in runs])) for key in runs[0]}
            cells = [f"{median[key]:8.2f} GB" if key == "peak_gb" else f"{median[key]:9.2f}s" for key in _COLUMNS]
            lines.append(f"{label:20s}" + "".join(cells))
        return "\n".join(lines)


def _detect_in_fresh_process(model_path, volume_path, output_path, device) -> dict:
    command = [
        sys.executable,
        "-m",
        "cascade_landmarks.bench.speed",
        str(model_path),
        str(volume_path),
        str(output_path),
        device,
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"Benchmark detection failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


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
    print(json.dumps(_detect_once(*sys.argv[1:5])))
