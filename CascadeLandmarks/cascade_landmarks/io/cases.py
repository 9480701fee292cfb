"""Cases on disk: a folder of volumes with landmark files, or a CSV manifest, found and checked.

A folder holds one volume per case and a landmark file of the same name beside it (``case7.nii.gz`` with
``case7.mrk.json`` or ``case7.fcsv``). A CSV manifest with columns ``case``, ``volume``, ``landmarks`` (paths
relative to the manifest) names the files instead. Every case is checked before training or evaluation starts
(headers and landmark files only, not the voxels), and every problem is reported with the case's name.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .coordinates import Geometry
from .landmark_sets import LandmarkSet
from .landmarks import LANDMARK_SUFFIXES, Landmarks, read_landmarks
from .volumes import case_name, is_volume_path, read_geometry


@dataclass(frozen=True)
class CaseFiles:
    """A case on disk: its name, its volume, its landmark file (None when there is none), and how often training
    draws it relative to the others (a manifest's ``weight`` column; 1 otherwise)."""

    name: str
    volume: Path
    landmarks: Path | None
    weight: float = 1.0


@dataclass
class CheckedCase:
    """A case whose files were read and whose landmarks match the set and lie inside the volume."""

    files: CaseFiles
    geometry: Geometry
    landmarks: Landmarks


def find_cases(source: str | os.PathLike) -> list[CaseFiles]:
    """The cases of a folder or CSV manifest, sorted by name (a manifest keeps its own order)."""
    source = Path(source)
    if source.is_file() and source.suffix.lower() == ".csv":
        return _cases_from_manifest(source)
    if not source.is_dir():
        raise ValueError(f"Data {source} is neither a folder of cases nor a CSV manifest.")
    cases = []
    for path in sorted(source.iterdir()):
        # Hidden files are not cases: a write cut short leaves ".partial-..." behind, macOS leaves "._case.nrrd".
        if path.is_file() and is_volume_path(path) and not path.name.startswith("."):
            name = case_name(path)
            landmarks = next(
                (source / f"{name}{s}" for s in LANDMARK_SUFFIXES if (source / f"{name}{s}").is_file()), None
            )
            cases.append(CaseFiles(name, path, landmarks))
    if not cases:
        raise ValueError(f"Folder {source} holds no volumes (.nrrd, .nii.gz, .nii, .mha).")
    return cases


def _cases_from_manifest(manifest: Path) -> list[CaseFiles]:
    columns = ("case", "volume", "landmarks")
    with open(manifest, newline="", encoding="utf-8-sig") as handle:  # -sig: Excel's "CSV UTF-8" starts with a BOM
        reader = csv.DictReader(handle)
        numbered = [(reader.line_num, row) for row in reader]  # line numbers as an editor shows them
    rows = [row for _, row in numbered]
    if not rows or not set(columns) <= set(rows[0]):
        raise ValueError(f"Manifest {manifest} needs the columns case, volume, landmarks and at least one row.")
    incomplete = [str(n) for n, row in numbered if not all((row[c] or "").strip() for c in columns)]
    if incomplete:
        raise ValueError(
            f"Manifest {manifest}: line(s) {', '.join(incomplete)} leave a case, volume or landmarks cell empty; "
            "give all three on every line."
        )
    root = manifest.parent
    weights = [_weight(row.get("weight"), manifest, line) for line, row in numbered]
    return [
        CaseFiles(row["case"].strip(), root / row["volume"].strip(), root / row["landmarks"].strip(), weight)
        for row, weight in zip(rows, weights, strict=True)
    ]


def _weight(cell: str | None, manifest: Path, line: int) -> float:
    """A manifest's optional weight cell: a positive number (empty or absent: 1)."""
    if not (cell or "").strip():
        return 1.0
    try:
        weight = float(cell)
    except ValueError:
        weight = float("nan")
    if not (np.isfinite(weight) and weight > 0):
        raise ValueError(
            f"Manifest {manifest}, line {line}: weight {cell.strip()!r} is not a positive number; give how often "
            "training draws the case relative to the others (1 for as often, 5 for five times as often)."
        )
    return weight


def check_cases(cases: list[CaseFiles], landmark_set: LandmarkSet, *, purpose: str = "training") -> list[CheckedCase]:
    """Read every case's header and landmarks; raise one ValueError listing every problem by case name
    (``purpose``: "training", "evaluation" or "calibration", what the message says the data is for).

    A case may be annotated in part: a landmark absent from its file, or unplaced there, is not known; one marked
    missing is known not to be in the image. Each case must place at least one landmark of the set, inside its
    volume.
    """
    problems, checked = [], []
    names = [case.name for case in cases]
    for repeated in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"{repeated}: more than one case has this name")
    for case in cases:
        if case.landmarks is None:
            problems.append(f"{case.name}: no landmark file ({case.name}.mrk.json or {case.name}.fcsv) beside it")
            continue
        try:
            geometry = read_geometry(case.volume)
            landmarks = landmark_set.match(read_landmarks(case.landmarks), source=case.landmarks.name, partial=True)
        except ValueError as error:
            problems.append(f"{case.name}: {error}")
            continue
        if not landmarks.defined.any():
            problems.append(f"{case.name}: {case.landmarks.name} places none of the landmarks of {landmark_set.name}")
            continue
        inside = geometry.contains_lps(landmarks.positions_lps) | ~landmarks.defined
        outside = [label for label, within in zip(landmarks.labels, inside, strict=True) if not within]
        if outside:
            problems.append(f"{case.name}: landmarks outside the volume: {', '.join(outside)}")
            continue
        checked.append(CheckedCase(case, geometry, landmarks))
    if problems:
        listing = "\n  ".join(problems)
        again = "train again" if purpose == "training" else f"run the {purpose} again"
        layout = (
            "A case is a volume with a landmark file of the same name beside it (case7.nrrd, case7.mrk.json), or a "
            "line of a CSV manifest with columns case, volume, landmarks."
        )
        raise ValueError(
            f"{len(problems)} problem(s) in the {purpose} data; fix them and {again}:\n  {listing}\n{layout}"
        )
    return checked


def split_cases(names: list[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Training and validation names: a seeded shuffle, at least one case left for training."""
    order = list(np.random.default_rng(seed).permutation(len(names)))
    count = min(round(fraction * len(names)), len(names) - 1) if fraction > 0 else 0
    if fraction > 0 and count == 0 and len(names) >= 2:
        count = 1
    validation = sorted(names[i] for i in order[:count])
    return [n for n in names if n not in validation], validation
