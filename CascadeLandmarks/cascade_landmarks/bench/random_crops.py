"""The in-view decision on scans cut at random: ``cascade-landmarks benchmark-crops``.

Real CTAs come in every extent, from a gated cardiac scan to neck-to-pelvis. Here each held-out case is cut into
boxes of random extent and place, most of all along the body's long axis, as training calibrates the presence
thresholds (:func:`~cascade_landmarks.training.presence.random_field_of_view`), and the model detects in each
box. A landmark inside the box is expected as a point, one outside it as missing;
one within ``BORDER_MM`` of a face of the box is not scored (half a structure in view may go either way). The
report is the evaluation's: errors of the points found, and the in-view table (found, missed, absent, false).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ..evaluation.errors import Evaluation, write_tables
from ..inference.detector import detect
from ..io.atomic_files import write_text_atomically
from ..io.cases import check_cases, find_cases
from ..io.coordinates import Geometry
from ..io.landmarks import Landmarks
from ..io.volumes import crop_or_pad, read_volume
from ..model.model_file import load_model
from ..progress import as_reporter
from ..training.presence import random_field_of_view

BORDER_MM = 5.0


def crop_reference(reference: Landmarks, box: Geometry) -> Landmarks:
    """What a box holds: the placed landmarks inside it stay placed, those outside it are missing, those within
    ``BORDER_MM`` of a face (either side) and those the reference does not place are not scored."""
    positions = reference.positions_lps
    ijk = box.lps_to_index(positions)
    size = np.asarray(box.size)
    # mm to the nearest face of the box (whose faces lie half a voxel beyond its outer voxel centres); < 0 outside
    distance_in = np.min(np.minimum(ijk + 0.5, size - 0.5 - ijk) * box.spacing, axis=1)
    placed = reference.defined
    inside = placed & (distance_in >= BORDER_MM)
    outside = (placed & (distance_in <= -BORDER_MM)) | reference.missing
    kept = np.where(inside[:, None], positions, np.nan)
    return Landmarks(list(reference.labels), kept, list(reference.descriptions), outside)


def random_crop_benchmark(
    model: str,
    data: str | os.PathLike,
    output: str | os.PathLike,
    *,
    crops_per_case: int = 5,
    seed: int = 0,
    device: str = "auto",
    progress: bool = True,
) -> str:
    """Cut every case of ``data`` into ``crops_per_case`` random boxes, detect in each, and write the evaluation
    into ``output`` (``errors.md``, the CSV tables and ``crops.json``); return the report."""
    model = load_model(model)
    cases = check_cases(find_cases(data), model.config.landmark_set, purpose="evaluation")
    rng = np.random.default_rng(seed)
    task = as_reporter(progress).task("cropping", len(cases) * crops_per_case)
    detections, references, names, boxes = [], [], [], {}
    for case in cases:
        volume = read_volume(case.files.volume)
        for n in range(crops_per_case):
            start, size = random_field_of_view(volume.geometry, rng)
            crop = crop_or_pad(volume, tuple(start), tuple(size))
            name = f"{case.files.name}-crop{n}"
            detections.append(detect(crop, model, device=device))
            references.append(crop_reference(case.landmarks, crop.geometry))
            names.append(name)
            boxes[name] = {"start": start.tolist(), "size": size.tolist()}
            task.update(len(names))
    task.close()
    evaluation = Evaluation.of(detections, references, names)
    write_tables(evaluation, output)
    exact = sum(
        np.array_equal(d.in_view[r.defined | r.missing], r.defined[r.defined | r.missing])
        for d, r in zip(detections, references, strict=True)
    )
    summary = (
        f"{len(names)} random boxes of {len(cases)} cases ({crops_per_case} each, seed {seed}); model {model.name}. "
        f"Every scored landmark's in-view decision right in {exact} of {len(names)} boxes."
    )
    write_text_atomically(Path(output) / "crops.json", json.dumps(boxes, indent=2) + "\n")
    report = summary + "\n\n" + evaluation.markdown(title="Random boxes: detection error (mm) and the in-view decision")
    write_text_atomically(Path(output) / "report.md", report)
    return report
