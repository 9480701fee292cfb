"""The Slicer module's workflow on MRML nodes: detect in the background, show the points, follow corrections,
save corrected cases for training, fine-tune in the background.

This is the Logic's MRML work, kept here so it runs (and is tested) with the MRML core of the ``slicer-core``
wheel as well as in Slicer; the module file's Logic only adds what needs the application (the ``PythonSlicer``
interpreter, timers, dialogs). Nothing here imports ``slicer``: nodes and the scene come in as arguments, and
conversions go through :mod:`cascade_landmarks.slicer_bridge`.

What a detection leaves on its point-list node, so the table can be rebuilt from the scene alone: the attribute
``CascadeLandmarks.Detection`` (JSON: model, input volume, labels, detected RAS positions, confidence, flags).
Flagged points are shown unselected, so Slicer draws them in the display node's (unselected) colour, orange; the
others keep the selected colour. The record also guards the user's work: :func:`work_at_risk` says when detecting
into a point list would replace corrections or another volume's points, and a corrected case is saved only with
the volume it was detected on and with the detection's landmarks.
"""

from __future__ import annotations

import csv
import datetime
import io
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .atomic_files import write_text_atomically
from .background import BackgroundCommand
from .landmark_sets import LandmarkDefinition, LandmarkSet
from .landmarks import read_landmarks, write_landmarks
from .slicer_bridge import landmarks_from_node, landmarks_to_node, volume_from_node
from .volumes import write_volume

DETECTION_ATTRIBUTE = "CascadeLandmarks.Detection"
# A detected point moved farther than this (mm) counts as corrected.
CORRECTED_MM = 0.01
FLAGGED_COLOUR = (1.0, 0.55, 0.0)
CORRECTIONS_LOG = "corrections.csv"

Progress = Callable[[float, str], None]


@dataclass
class LandmarkRow:
    """One row of the module's table."""

    label: str
    description: str
    confidence: float
    flagged: bool
    moved_mm: float


class _BackgroundRun:
    """A cascade-landmarks command in a background process: start, poll for progress, cancel, wait, finish."""

    scene_bound = False  # whether its result goes into the scene (then closing the scene cancels it)

    def __init__(self, arguments, *, python=None, environment=None):
        self.command = BackgroundCommand(arguments, python=python, environment=environment)
        self.fraction = 0.0
        self.status = "starting"
        self.warnings: list[str] = []

    def start(self):
        self.command.start()
        return self

    def poll(self) -> tuple[float, str]:
        """Progress so far: (fraction done, status line). Never blocks."""
        for message in self.command.poll():
            if "fraction" in message:
                self._take_progress(message)
            elif "warning" in message:
                self.warnings.append(message["warning"])
        return self.fraction, self.status

    def _take_progress(self, message: dict) -> None:
        raise NotImplementedError

    @property
    def running(self) -> bool:
        return self.command.running

    def cancel(self) -> None:
        self.command.cancel()
        self.status = "Cancelled"
        self._cleanup()

    def wait(self, *, progress: Progress | None = None, interval: float = 0.1):
        """Block until done, reporting progress; returns what :meth:`finish` returns."""
        while self.command.running:
            fraction, status = self.poll()
            if progress:
                progress(fraction, status)
            time.sleep(interval)
        return self.finish()

    def finish(self):
        raise NotImplementedError

    def _cleanup(self) -> None:
        """Remove temporary files (nothing by default)."""


class DetectionRun(_BackgroundRun):
    """Detect landmarks in a volume node in a background process; ``finish()`` puts them in a point list.

    Args:
        scene: the MRML scene.
        volume_node: the input; it is not modified.
        model_path: the model file.
        model_name: shown in the default output name ("<volume> <model>").
        output_node: a point list the user picked as output (its points are replaced; see :func:`work_at_risk`);
            None makes a new one, as does a picked list that left the scene while detection ran.
        device: "auto", "cpu" or "cuda".
        python: the interpreter for the background process (``PythonSlicer`` in Slicer).
        environment: extra environment variables for it (``PYTHONPATH`` to find the engine, in Slicer).
    """

    def __init__(
        self,
        scene,
        volume_node,
        model_path,
        *,
        model_name=None,
        output_node=None,
        device="auto",
        python=None,
        environment=None,
    ):
        volume = volume_from_node(volume_node)  # checks the node first, before any temporary file exists
        if output_node is not None and not output_node.IsA("vtkMRMLMarkupsFiducialNode"):
            raise ValueError(f"{output_node.GetName()} is not a point list; pick a point list as output, or none.")
        self.scene = scene
        self.volume_node = volume_node
        self.model_path = Path(model_path)
        self.model_name = model_name or self.model_path.name.removesuffix(".pt")
        self.output_node = output_node
        self._folder = Path(tempfile.mkdtemp(prefix="cascade-landmarks-"))
        volume_file = write_volume(volume, self._folder / "input.nrrd", compress=False)
        super().__init__(
            ["detect", self.model_path, volume_file, "-o", self._folder, "--device", device],
            python=python,
            environment=environment,
        )

    scene_bound = True

    def _take_progress(self, message: dict) -> None:
        self.fraction = float(message["fraction"])
        step = message.get("metrics", {}).get("step")
        self.status = f"Detecting: {step}" if step else "Detecting"

    def finish(self):
        """Read the results of a finished run into the output point list (or raise with the reason); returns it."""
        self.command.wait()
        self.poll()  # the last messages, warnings among them
        try:
            if self.command.returncode != 0:
                raise ValueError(f"Detection failed: {self.command.error_message()}")
            landmarks = read_landmarks(self._folder / "input.mrk.json")
            confidence, flagged = _read_confidence(self._folder / "detections.csv")
        finally:
            self._cleanup()
        name = f"{self.volume_node.GetName()} {self.model_name}"
        output = self.output_node if self.output_node is not None and self.output_node.GetScene() else None
        node = landmarks_to_node(landmarks, self.scene, name=name, node=output, locked=False)
        show_detection(node, self.model_name, landmarks.positions_ras, confidence, flagged, self.volume_node)
        self.status = f"Done: {int(np.sum(flagged))} of {len(flagged)} landmarks flagged for checking"
        if self.warnings:
            self.status += "; warning: check every point"
        self.fraction = 1.0
        return node

    def _cleanup(self) -> None:
        shutil.rmtree(self._folder, ignore_errors=True)


def _read_confidence(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return np.array([float(r["confidence"]) for r in rows]), np.array([r["flagged"] == "1" for r in rows])


def show_detection(node, model_name: str, positions_ras, confidence, flagged, volume_node=None) -> None:
    """Record the detection (made on ``volume_node``) on the node and show flagged points in the flagged colour."""
    record = {
        "model": model_name,
        "volume_id": volume_node.GetID() if volume_node is not None else None,
        "volume_name": volume_node.GetName() if volume_node is not None else None,
        "labels": [node.GetNthControlPointLabel(i) for i in range(node.GetNumberOfControlPoints())],
        "positions_ras": np.asarray(positions_ras, dtype=float).tolist(),
        "confidence": [float(c) for c in confidence],
        "flagged": [bool(f) for f in flagged],
    }
    node.SetAttribute(DETECTION_ATTRIBUTE, json.dumps(record))
    for index, is_flagged in enumerate(flagged):
        node.SetNthControlPointSelected(index, not bool(is_flagged))
    display = node.GetDisplayNode()
    if display is not None:
        display.SetColor(*FLAGGED_COLOUR)


def _detection_record(node) -> dict | None:
    """What :func:`show_detection` recorded on the node, or None for a list no detection filled."""
    text = node.GetAttribute(DETECTION_ATTRIBUTE) if node is not None else None
    return json.loads(text) if text else None


def detection_rows(node) -> list[LandmarkRow]:
    """The table: each detected landmark with its confidence, flag and how far it has been moved (mm; NaN once
    its point is deleted or unplaced)."""
    record = _detection_record(node)
    if record is None:
        return []
    current = landmarks_from_node(node)
    rows = []
    for index, label in enumerate(record["labels"]):
        moved = float("nan")
        if label in current.labels:
            now = current.positions_ras[current.labels.index(label)]
            moved = float(np.linalg.norm(now - np.asarray(record["positions_ras"][index])))
        description = current.descriptions[current.labels.index(label)] if label in current.labels else ""
        rows.append(LandmarkRow(label, description, record["confidence"][index], record["flagged"][index], moved))
    return rows


def point_index(node, label: str) -> int | None:
    """The index of the point labelled ``label`` in the list (the first such), or None."""
    labels = [node.GetNthControlPointLabel(i) for i in range(node.GetNumberOfControlPoints())]
    return labels.index(label) if label in labels else None


def work_at_risk(node, volume_node) -> str | None:
    """Why detecting on ``volume_node`` into the point list ``node`` would lose work, as a sentence; None when
    the list is empty or holds only an uncorrected detection of that same volume.

    The work: points the user placed or moved, or the points of another volume (whose list would then carry the
    new volume's points under the old volume's name).
    """
    if node is None or node.GetNumberOfControlPoints() == 0:
        return None
    record = _detection_record(node)
    name = node.GetName()
    if record is None:
        return f"{name} holds points that no detection placed."
    if volume_node is not None and record.get("volume_id") not in (None, volume_node.GetID()):
        return f"{name} holds the points detected on {record.get('volume_name')}."
    rows = detection_rows(node)
    moved = [row.label for row in rows if not row.moved_mm < CORRECTED_MM]
    if moved or node.GetNumberOfControlPoints() != len(rows):
        changed = f" ({', '.join(moved)})" if moved else ""
        return f"{name} holds corrections{changed}."
    return None


class CaseExistsError(ValueError):
    """A corrected case is already in the training folder (and overwriting was not asked for)."""

    def __init__(self, case: str, folder: Path):
        super().__init__(f"Case {case} is already in {folder}; choose another case name or allow overwriting.")
        self.case = case
        self.folder = folder


_CASE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def save_corrected_case(
    volume_node, point_list_node, folder: str | os.PathLike, *, case_name: str | None = None, overwrite: bool = False
) -> tuple[Path, Path]:
    """Write the volume and the (corrected) points into a training folder, as ``cascade-landmarks train`` reads it:
    ``<case>.nrrd`` and ``<case>.mrk.json``; append which landmarks were moved, and by how much, to
    ``corrections.csv``. Returns the two paths.

    A detected list is saved only with the volume it was detected on, and only with the detection's landmarks,
    each placed once (what fine-tuning the model needs); a list no detection filled is saved as it is.

    Raises:
        CaseExistsError: the case is in the folder and ``overwrite`` is False.
        ValueError: nothing to save, another volume's points, or points that do not match the detection's labels.
    """
    volume = volume_from_node(volume_node)  # checks the node, and copies the voxels in the world frame
    if point_list_node is None or point_list_node.GetNumberOfControlPoints() == 0:
        raise ValueError("There are no points to save: detect landmarks (or place them) first.")
    points = landmarks_from_node(point_list_node)
    record = _detection_record(point_list_node)
    if record is not None:
        if record.get("volume_id") not in (None, volume_node.GetID()):
            raise ValueError(
                f"{point_list_node.GetName()} holds the points detected on {record.get('volume_name')}, not on "
                f"{volume_node.GetName()}: pick that volume (or the point list of this one) to save the case."
            )
        detected = LandmarkSet(record["model"], "", "", tuple(LandmarkDefinition(x, x, "") for x in record["labels"]))
        try:
            detected.match(points, source=f"Point list {point_list_node.GetName()}")
        except ValueError as error:
            raise ValueError(
                f"{error} Give each point the label of the landmark it marks, one point each, then save again: "
                "fine-tuning needs every landmark of the model."
            ) from None
    folder = Path(folder)
    case = _CASE_NAME.sub("_", case_name or volume_node.GetName()).strip("_") or "case"
    volume_path, points_path = folder / f"{case}.nrrd", folder / f"{case}.mrk.json"
    if not overwrite and (volume_path.exists() or points_path.exists()):
        raise CaseExistsError(case, folder)
    write_volume(volume, volume_path)
    write_landmarks(points, points_path)
    _log_corrections(folder / CORRECTIONS_LOG, case, point_list_node)
    return volume_path, points_path


def _log_corrections(path: Path, case: str, node) -> None:
    rows = detection_rows(node)
    record = json.loads(node.GetAttribute(DETECTION_ATTRIBUTE) or "{}")
    saved = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    if not path.exists():
        writer.writerow(["saved", "case", "model", "landmark", "moved_mm", "confidence", "flagged"])
    for row in rows:
        writer.writerow([saved, case, record.get("model", ""), row.label, f"{row.moved_mm:.2f}",
                         f"{row.confidence:.3f}", int(row.flagged)])  # fmt: skip
    previous = path.read_text(encoding="utf-8") if path.exists() else ""
    write_text_atomically(path, previous + buffer.getvalue())


class FineTuneRun(_BackgroundRun):
    """Fine-tune a model on a training folder in a background process; ``finish()`` registers the new version.

    Args:
        folder: the training folder (corrected cases).
        base_model: the registered model name (or file) to start from.
        output: the new model file (default: ``<folder>/<base>-fine-tuned.pt``, or ``-fine-tuned-2.pt`` and so on
            when an earlier fine-tuning has that name, so none is overwritten).
        stage1_iterations, stage2_iterations: how long to train each stage.
        device, python, environment: as for :class:`DetectionRun`.
    """

    def __init__(self, folder, base_model: str, *, output=None, stage1_iterations=500, stage2_iterations=2000,
                 device="auto", python=None, environment=None):  # fmt: skip
        from .model_registry import resolve_model

        self.folder = Path(folder)
        self.base_model = base_model
        base_path = resolve_model(base_model)
        self.output = Path(output) if output else _unused_model_path(self.folder, Path(base_model).name)
        # Every corrected case is trained on: holding one out for validation would leave a few cases' work unused.
        super().__init__(
            ["train", self.folder, "-o", self.output, "--init-from", base_path, "--stage1-iterations",
             stage1_iterations, "--stage2-iterations", stage2_iterations, "--device", device,
             "--validation-fraction", 0],
            python=python,
            environment=environment,
        )  # fmt: skip

    def _take_progress(self, message: dict) -> None:
        task = message.get("task", "")
        stage = 0.5 if task.startswith("stage 2") else 0.0
        self.fraction = stage + 0.5 * float(message["fraction"]) if task.startswith("stage") else 0.0
        left = message.get("seconds_left")
        self.status = f"Fine-tuning: {task}" + (f", about {int(left)} s left" if left else "")

    def finish(self):
        """Register the fine-tuned model as a new version of its base; returns its registry entry."""
        from .model_registry import register_model

        self.command.wait()
        if self.command.returncode != 0:
            raise ValueError(f"Fine-tuning failed: {self.command.error_message()}")
        parent = None if Path(self.base_model).suffix == ".pt" else self.base_model
        entry = register_model(self.output, parent=parent)
        self.status = f"Done: registered {entry.name}"
        self.fraction = 1.0
        return entry

    def _cleanup(self) -> None:
        """A cancelled fine-tuning leaves no checkpoint behind (the next one would refuse to start beside it)."""
        from .training import checkpoint_path

        checkpoint_path(self.output).unlink(missing_ok=True)


def _unused_model_path(folder: Path, base_model: str) -> Path:
    """``<folder>/<base>-fine-tuned.pt``, numbered from 2 when that model (or a killed run's checkpoint) is there."""
    from .training import checkpoint_path

    stem = f"{base_model.removesuffix('.pt')}-fine-tuned"
    path, number = folder / f"{stem}.pt", 1
    while path.exists() or checkpoint_path(path).exists():
        number += 1
        path = folder / f"{stem}-{number}.pt"
    return path
