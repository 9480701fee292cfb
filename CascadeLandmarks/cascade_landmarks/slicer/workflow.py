"""The Slicer module's work on point lists: show a detection, follow the user's corrections in the table, guard
their work, and save corrected cases for training.

This is the Logic's MRML work, kept here so it runs (and is tested) with the MRML core of the ``slicer-core``
wheel as well as in Slicer. Nothing here imports ``slicer``: nodes come in as arguments, and conversions go
through :mod:`cascade_landmarks.slicer.bridge`.

What a detection leaves on its point-list node, so the table can be rebuilt from the scene alone: the whole
:class:`~cascade_landmarks.inference.detection.Detection` record as JSON in the attribute
``CascadeLandmarks.Detection``, and a node reference (role ``CascadeLandmarks.InputVolume``) to the volume it was
detected on; scene import renames clashing node IDs in references, so the link survives. Flagged points are shown
unselected, so Slicer draws them in the display node's (unselected) colour, orange; the others keep the selected
colour. The record also guards the user's work: :func:`work_at_risk` says when detecting into a point list would
replace corrections or another volume's points, and a corrected case is saved only with the volume it was detected
on and with the detection's landmarks.
"""

from __future__ import annotations

import csv
import datetime
import io
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..inference.detection import Detection
from ..io.atomic_files import write_text_atomically
from ..io.landmark_sets import LandmarkDefinition, LandmarkSet
from ..io.landmarks import write_landmarks
from ..io.volumes import write_volume
from .bridge import landmarks_from_node, volume_from_node

DETECTION_ATTRIBUTE = "CascadeLandmarks.Detection"
VOLUME_REFERENCE = "CascadeLandmarks.InputVolume"
# A detected point moved farther than this (mm) counts as corrected.
CORRECTED_MM = 0.01
FLAGGED_COLOUR = (1.0, 0.55, 0.0)
CORRECTIONS_LOG = "corrections.csv"


@dataclass
class LandmarkRow:
    """One row of the module's table.

    ``moved_mm`` is how far the point has been moved from where it was detected; NaN once it is deleted or
    unplaced. ``in_view`` is False for a landmark detected outside the volume. ``position_ras`` is where its point
    is now (world RAS mm); NaN without a point.
    """

    label: str
    description: str
    confidence: float
    flagged: bool
    moved_mm: float
    in_view: bool = True
    position_ras: tuple[float, float, float] = (math.nan, math.nan, math.nan)


def show_detection(node, detection: Detection, volume_node=None) -> None:
    """Record ``detection`` (made on ``volume_node``) on the point list ``node`` and show its flagged points in
    the flagged colour."""
    node.SetAttribute(DETECTION_ATTRIBUTE, detection.to_json())
    node.SetNodeReferenceID(VOLUME_REFERENCE, volume_node.GetID() if volume_node is not None else None)
    for index, is_flagged in enumerate(detection.flagged):
        node.SetNthControlPointSelected(index, not bool(is_flagged))
    display = node.GetDisplayNode()
    if display is not None:
        display.SetColor(*FLAGGED_COLOUR)


def detection_of(node) -> Detection | None:
    """The detection recorded on a point list, or None for a list no detection filled (or one whose record this
    version cannot read, such as a scene saved by a version before the record: its points are then the user's)."""
    text = node.GetAttribute(DETECTION_ATTRIBUTE) if node is not None else None
    try:
        return Detection.from_json(text) if text else None
    except ValueError:
        return None


def detected_volume(node):
    """The volume node a point list's detection was made on (None when unknown or no longer in the scene)."""
    return node.GetNodeReference(VOLUME_REFERENCE) if node is not None else None


def detection_rows(node) -> list[LandmarkRow]:
    """The table: each detected landmark with its confidence, flag and how far it has been moved."""
    detection = detection_of(node)
    if detection is None:
        return []
    return [_row(detection, index, landmarks_from_node(node)) for index in range(len(detection.labels))]


def detection_row(node, label: str) -> LandmarkRow | None:
    """The table's row of the landmark ``label`` (to update one row while its point is dragged), or None."""
    detection = detection_of(node)
    if detection is None or label not in detection.labels:
        return None
    return _row(detection, detection.labels.index(label), landmarks_from_node(node))


def _row(detection: Detection, index: int, current) -> LandmarkRow:
    label = detection.labels[index]
    moved, description, now = float("nan"), detection.descriptions[index], np.full(3, np.nan)
    if label in current.labels:
        now = current.positions_ras[current.labels.index(label)]
        moved = float(np.linalg.norm(now - detection.positions_ras[index]))
        description = current.descriptions[current.labels.index(label)]
    return LandmarkRow(
        label,
        description,
        float(detection.confidence[index]),
        bool(detection.flagged[index]),
        moved,
        bool(detection.in_view[index]),
        tuple(float(v) for v in now),
    )


def point_index(node, label: str) -> int | None:
    """The index of the placed point labelled ``label`` in the list (the first such), or None when it has none
    (deleted, or unplaced: its position means nothing)."""
    for index in range(node.GetNumberOfControlPoints()):
        placed = node.GetNthControlPointPositionStatus(index) == node.PositionDefined
        if placed and node.GetNthControlPointLabel(index) == label:
            return index
    return None


def work_at_risk(node, volume_node) -> str | None:
    """Why detecting on ``volume_node`` into the point list ``node`` would lose work, as a sentence; None when
    the list is empty or holds only an uncorrected detection of that same volume.

    The work: points the user placed or moved, or the points of another volume (whose list would then carry the
    new volume's points under the old volume's name).
    """
    if node is None or node.GetNumberOfControlPoints() == 0:
        return None
    name = node.GetName()
    if detection_of(node) is None:
        return f"{name} holds points that no detection placed."
    detected_on = detected_volume(node)
    if volume_node is not None and detected_on is not None and detected_on.GetID() != volume_node.GetID():
        return f"{name} holds the points detected on {detected_on.GetName()}."
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
    each once; a landmark may lack (a deleted point: not known) or be unplaced. A landmark the detection found out of
    view, whose point the user did not place, is saved unplaced rather than missing: that was the model's claim,
    and fine-tuning learns nothing from it. A list no detection filled is saved as it is.

    Raises:
        CaseExistsError: the case is in the folder and ``overwrite`` is False.
        ValueError: nothing to save, another volume's points, or points that do not match the detection's labels.
    """
    volume = volume_from_node(volume_node)  # checks the node, and copies the voxels in the world frame
    if point_list_node is None or point_list_node.GetNumberOfControlPoints() == 0:
        raise ValueError("There are no points to save: detect landmarks (or place them) first.")
    points = landmarks_from_node(point_list_node)
    detection = detection_of(point_list_node)
    if detection is not None:
        _check_detected_points(point_list_node, points, detection, volume_node)
        claimed = {label for label, seen in zip(detection.labels, detection.in_view, strict=True) if not seen}
        points.missing &= np.array([label not in claimed for label in points.labels], bool)
    if not points.defined.any():
        raise ValueError("None of the points is placed: place at least one landmark, then save again.")
    folder = Path(folder)
    case = _CASE_NAME.sub("_", case_name or volume_node.GetName()).strip("_") or "case"
    volume_path, points_path = folder / f"{case}.nrrd", folder / f"{case}.mrk.json"
    if not overwrite and (volume_path.exists() or points_path.exists()):
        raise CaseExistsError(case, folder)
    write_volume(volume, volume_path)
    write_landmarks(points, points_path)
    _log_corrections(folder / CORRECTIONS_LOG, case, point_list_node)
    return volume_path, points_path


def _check_detected_points(point_list_node, points, detection: Detection, volume_node) -> None:
    """Refuse to save a detection's points with another volume, or other than the detection's landmarks once each."""
    detected_on = detected_volume(point_list_node)
    if detected_on is not None and detected_on.GetID() != volume_node.GetID():
        raise ValueError(
            f"{point_list_node.GetName()} holds the points detected on {detected_on.GetName()}, not on "
            f"{volume_node.GetName()}: pick that volume (or the point list of this one) to save the case."
        )
    landmarks = tuple(LandmarkDefinition(label, label, "") for label in detection.labels)
    detected = LandmarkSet(detection.model_name, "", "", landmarks)
    try:
        detected.match(points, source=f"Point list {point_list_node.GetName()}", partial=True)
    except ValueError as error:
        raise ValueError(
            f"{error} Give each point the label of the landmark it marks, one point each, then save again: "
            "fine-tuning learns each landmark by its label."
        ) from None


def _log_corrections(path: Path, case: str, node) -> None:
    detection = detection_of(node)
    saved = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    if not path.exists():
        writer.writerow(["saved", "case", "model", "landmark", "moved_mm", "confidence", "flagged"])
    model = detection.model_name if detection is not None else ""
    for row in detection_rows(node):
        writer.writerow([saved, case, model, row.label, f"{row.moved_mm:.2f}", f"{row.confidence:.3f}",
                         int(row.flagged)])  # fmt: skip
    previous = path.read_text(encoding="utf-8") if path.exists() else ""
    write_text_atomically(path, previous + buffer.getvalue())
