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

from .config import CascadeConfig
from .coordinates import Geometry
from .landmark_sets import load_landmark_set
from .modelfile import CascadeModel, save_model
from .volumes import Volume, write_volume


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
        "cascade_landmarks.benchmarks",
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
    from .detector import detect
    from .landmarks import write_landmarks
    from .modelfile import load_model
    from .volumes import read_volume

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


# --- AFIDs: a model trained on the MNI template, scored on Colin27 against the human raters -----------------

COLIN27 = Path("real") / "afids-colin27"
MNI152 = Path("real") / "afids-mni152nlin2009casym"
# The AFIDs were placed on the MNI distribution of Colin27, whose origin is (-90, -126, -72) RAS; the shipped
# ch2.nii.gz header says (-90, -125, -71) (shared/data/README.md). Both are scored.
COLIN27_MNI_ORIGIN_LPS = (90.0, 126.0, -72.0)


def afids_benchmark(data: str | Path, model_path: str | Path, output: str | Path, *, device: str = "auto") -> str:
    """Score an afids-32 model on Colin27 (never used for training), beside the raters and the no-model bar.

    Writes, per header variant, ``errors.md``/``.csv``, ``errors.png`` and a QC image into ``output``; returns a
    summary table.
    """
    from .detector import detect
    from .evaluation import Evaluation, write_tables
    from .figures import quality_control_image, write_error_plot, write_png
    from .volumes import read_volume

    data, output = Path(data), Path(output)
    afids = load_landmark_set("afids-32")
    reference, raters_mm, no_model_mm = afids_reference_errors(data)
    rater_sessions = len(raters_mm)

    shipped = read_volume(data / COLIN27 / "ch2.nii.gz")
    g = shipped.geometry
    variants = {
        "header as shipped": shipped,
        "MNI origin": Volume(shipped.array, Geometry(g.size, g.spacing, COLIN27_MNI_ORIGIN_LPS, g.direction)),
    }
    lines = [
        "AFIDs on Colin27 (a brain the model never saw), 32 fiducials, errors in mm to the consensus.",
        f"Model: {model_path}. Human bar: {rater_sessions} rater sessions placing the same fiducials.",
        "",
        f"{'':34s}{'mean':>8s}{'median':>8s}{'<=2 mm':>8s}{'<=4 mm':>8s}",
        _summary_line("no model (template coordinates)", no_model_mm),
        _summary_line("human raters", raters_mm),
    ]
    for name, volume in variants.items():
        detection = detect(volume, model_path, device=device)
        errors = {
            "stage1": np.linalg.norm(detection.stage1_lps - reference.positions_lps, axis=1)[None],
            "cascade": np.linalg.norm(detection.positions_lps - reference.positions_lps, axis=1)[None],
        }
        evaluation = Evaluation(
            labels=afids.labels,
            case_names=["colin27"],
            errors_mm=errors,
            confidence=detection.confidence[None],
            flagged=detection.flagged[None],
            detections=[detection],
            references=[reference],
            raters_mm=raters_mm,
        )
        folder = output / name.replace(" ", "-")
        write_tables(evaluation, folder)
        write_error_plot(evaluation, folder / "errors.png", title=f"AFIDs on Colin27, {name}: mean error (mm)")
        write_png(folder / "qc-colin27.png", quality_control_image(volume, reference, detection))
        lines.append(_summary_line(f"stage 1, {name}", errors["stage1"]))
        lines.append(_summary_line(f"cascade, {name}", errors["cascade"]))
    return "\n".join(lines)


def afids_reference_errors(data: str | Path):
    """The Colin27 consensus fiducials (LPS), each rater placement's distance to them (placements, 32), and the
    no-model bar: the template's fiducials copied onto Colin27 at the same coordinates (32,)."""
    from .landmarks import read_landmarks

    data = Path(data)
    afids = load_landmark_set("afids-32")
    reference = afids.match(read_landmarks(data / COLIN27 / "tpl-MNIColin27_desc-groundtruth_afids.fcsv"))
    rater_files = sorted((data / COLIN27 / "raters").glob("*.fcsv"))
    raters = np.stack([afids.match(read_landmarks(p), source=p.name).positions_lps for p in rater_files])
    template = afids.match(read_landmarks(data / MNI152 / "tpl-MNI152NLin2009cAsym_res-01_desc-groundtruth_afids.fcsv"))
    raters_mm = np.linalg.norm(raters - reference.positions_lps, axis=-1)
    no_model_mm = np.linalg.norm(template.positions_lps - reference.positions_lps, axis=-1)
    return reference, raters_mm, no_model_mm


def _summary_line(name: str, errors_mm: np.ndarray) -> str:
    values = np.asarray(errors_mm).ravel()
    return (
        f"{name:34s}{values.mean():8.2f}{np.median(values):8.2f}"
        f"{100 * np.mean(values <= 2):7.0f}%{100 * np.mean(values <= 4):7.0f}%"
    )
