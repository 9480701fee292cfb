"""Landmark point lists in and out: Slicer markups JSON, Slicer ``.fcsv``, and a long-format CSV.

A :class:`Landmarks` holds labelled points in LPS millimetres, the engine's frame. A point may also be listed
without a position: *missing* (Slicer's ``positionStatus`` "missing": the landmark is known not to be in the
image) or merely *unplaced* ("undefined": nobody has placed it). Readers honour the
coordinate system a file names (``coordinateSystem`` in ``.mrk.json``, ``CoordinateSystem`` in ``.fcsv``) and
refuse a file that names none they know. Writers say which frame they used, and write atomically.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .atomic_files import write_text_atomically
from .coordinates import lps_to_ras, ras_to_lps

COORDINATE_SYSTEMS = ("LPS", "RAS")
LANDMARK_SUFFIXES = (".mrk.json", ".fcsv")
MARKUPS_SCHEMA = (
    "https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/Resources/Schema/"
    "markups-schema-v1.0.3.json#"
)
CSV_COLUMNS = ("case", "landmark", "x", "y", "z", "coordinate_system", "description", "status")
DEFINED, MISSING, UNDEFINED = "defined", "missing", "undefined"  # Slicer's names of a point's position status


@dataclass(eq=False)
class Landmarks:
    """Labelled points in physical space.

    Attributes:
        labels: one name per point, in order.
        positions_lps: LPS millimetres, shape (N, 3); a row of NaN marks a point without a position.
        descriptions: one free-text description per point ("" when there is none).
        missing: per point, whether it is known not to be in the image (Slicer's "missing"), shape (N,) of bool;
            its position is NaN. A NaN row that is not missing is merely unplaced (Slicer's "undefined").
    """

    labels: list[str]
    positions_lps: np.ndarray
    descriptions: list[str] = field(default_factory=list)
    missing: np.ndarray | Sequence[bool] = ()

    def __post_init__(self) -> None:
        self.labels = [str(label) for label in self.labels]
        self.positions_lps = np.array(self.positions_lps, dtype=float).reshape(-1, 3)
        if not self.descriptions:
            self.descriptions = [""] * len(self.labels)
        self.descriptions = [str(text) for text in self.descriptions]
        self.missing = np.zeros(len(self.labels), bool) if not len(self.missing) else np.array(self.missing, bool)
        if not len(self.labels) == len(self.positions_lps) == len(self.descriptions) == len(self.missing):
            raise ValueError(
                f"Landmarks need one label, position, description and missing flag each; got {len(self.labels)} "
                f"labels, {len(self.positions_lps)} positions, {len(self.descriptions)} descriptions and "
                f"{len(self.missing)} missing flags."
            )
        self.positions_lps[self.missing] = np.nan

    @classmethod
    def from_ras(
        cls,
        labels: Sequence[str],
        positions_ras: np.ndarray,
        descriptions: Sequence[str] = (),
        missing: Sequence[bool] = (),
    ) -> Landmarks:
        """Landmarks from RAS millimetres, shape (N, 3)."""
        return cls(list(labels), ras_to_lps(np.asarray(positions_ras, dtype=float)), list(descriptions), missing)

    @property
    def positions_ras(self) -> np.ndarray:
        """RAS millimetres, shape (N, 3)."""
        return lps_to_ras(self.positions_lps)

    @property
    def defined(self) -> np.ndarray:
        """Whether each point is placed, shape (N,) of bool."""
        return np.all(np.isfinite(self.positions_lps), axis=1)

    @property
    def statuses(self) -> list[str]:
        """Each point's position status as Slicer names it: "defined", "missing" or "undefined"."""
        return [
            DEFINED if placed else MISSING if gone else UNDEFINED
            for placed, gone in zip(self.defined, self.missing, strict=True)
        ]

    def __len__(self) -> int:
        return len(self.labels)

    def reordered(self, labels: Sequence[str]) -> Landmarks:
        """The points in the order of ``labels`` (each must be present exactly once)."""
        missing = [label for label in labels if label not in self.labels]
        if missing:
            raise KeyError(f"Missing landmarks: {', '.join(missing)}.")
        order = [self.labels.index(label) for label in labels]
        return Landmarks(
            [self.labels[i] for i in order],
            self.positions_lps[order],
            [self.descriptions[i] for i in order],
            self.missing[order],
        )


def read_landmarks(path: str | os.PathLike) -> Landmarks:
    """Read a Slicer markups JSON (``.mrk.json``, ``.json``) or ``.fcsv`` file into LPS millimetres."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"Landmark file {path} does not exist.")
    name = path.name.lower()
    if name.endswith(".json"):
        return read_markups_json(path)
    if name.endswith(".fcsv"):
        return read_fcsv(path)
    raise ValueError(f"Cannot read landmarks from {path}: use a Slicer .mrk.json or .fcsv file.")


def write_landmarks(landmarks: Landmarks, path: str | os.PathLike, *, coordinate_system: str = "LPS") -> Path:
    """Write ``landmarks`` as Slicer markups JSON (``.mrk.json``), atomically; returns the path."""
    path = Path(path)
    if not path.name.lower().endswith(".json"):
        raise ValueError(f"Cannot write landmarks to {path}: the engine writes Slicer markups JSON (.mrk.json).")
    return write_text_atomically(path, markups_json_text(landmarks, coordinate_system=coordinate_system))


# --- Slicer markups JSON ------------------------------------------------------------------------------


def read_markups_json(path: str | os.PathLike) -> Landmarks:
    """Read the point list (``"type": "Fiducial"``) of a Slicer markups JSON file (one; other markups ignored).

    Honours the file's ``coordinateSystem`` ("LPS" or "RAS"); Slicer writes LPS by default, and a file that
    gives none is read as LPS too, as Slicer does.
    """
    path = Path(path)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"Cannot read landmarks from {path}: not valid JSON ({error}).") from error
    markups = document.get("markups") if isinstance(document, dict) else None
    if not isinstance(markups, list):
        raise ValueError(f"{path} is not a Slicer markups file: it has no 'markups' list.")
    point_lists = [m for m in markups if isinstance(m, dict) and m.get("type") == "Fiducial"]
    if not point_lists:
        kinds = ", ".join(str(m.get("type")) for m in markups if isinstance(m, dict)) or "none"
        raise ValueError(f"{path} holds no point list (markups of type 'Fiducial'); it holds: {kinds}.")
    if len(point_lists) > 1:  # Slicer loads each as its own list; taking one would drop the others' points
        raise ValueError(
            f"{path} holds {len(point_lists)} point lists; save each landmark list to its own file (in Slicer: "
            "one point list per file)."
        )
    point_list = point_lists[0]
    system = str(point_list.get("coordinateSystem", "LPS")).upper()
    if system not in COORDINATE_SYSTEMS:
        raise ValueError(f"{path} uses coordinate system {system!r}; only LPS and RAS are supported.")
    units = point_list.get("coordinateUnits", "mm")
    if units != "mm":
        raise ValueError(f"{path} gives coordinates in {units!r}; only millimetres (mm) are supported.")
    labels, descriptions, positions, missing = [], [], [], []
    for number, point in enumerate(point_list.get("controlPoints", []), start=1):
        labels.append(str(point.get("label", number)))
        descriptions.append(str(point.get("description", "")))
        position = point.get("position")
        status = point.get("positionStatus", DEFINED)
        missing.append(status == MISSING)
        if status != DEFINED or position is None:
            positions.append([np.nan] * 3)
        elif len(position) != 3:
            raise ValueError(f"{path}: control point {number} has position {position}, not three numbers.")
        else:
            positions.append([float(v) for v in position])
    positions_array = np.asarray(positions, dtype=float).reshape(-1, 3)
    if system == "RAS":
        positions_array = ras_to_lps(positions_array)
    return Landmarks(labels, positions_array, descriptions, missing)


def markups_json_text(landmarks: Landmarks, *, coordinate_system: str = "LPS") -> str:
    """Slicer markups JSON text for one point list, with positions in ``coordinate_system`` (LPS or RAS)."""
    system = coordinate_system.upper()
    if system not in COORDINATE_SYSTEMS:
        raise ValueError(f"Unknown coordinate system {coordinate_system!r}: use LPS or RAS.")
    positions = landmarks.positions_lps if system == "LPS" else landmarks.positions_ras
    control_points = []
    for number, (label, description, position, status) in enumerate(
        zip(landmarks.labels, landmarks.descriptions, positions, landmarks.statuses, strict=True), start=1
    ):
        point = {"id": str(number), "label": label, "description": description}
        if status == DEFINED:
            point.update(position=[float(v) for v in position], positionStatus=DEFINED)
        else:
            point.update(positionStatus=status)
        point.update(locked=False, selected=True, visibility=True)
        control_points.append(point)
    document = {
        "@schema": MARKUPS_SCHEMA,
        "markups": [
            {
                "type": "Fiducial",
                "coordinateSystem": system,
                "coordinateUnits": "mm",
                "controlPoints": control_points,
            }
        ],
    }
    return json.dumps(document, indent=2) + "\n"


# --- Slicer fcsv (Slicer 4.x) -------------------------------------------------------------------------

# Slicer 4.6 to 4.10 wrote "# CoordinateSystem = 0" (0 = RAS, 1 = LPS); Slicer 4.11 and later write
# the name.
_FCSV_SYSTEMS = {"0": "RAS", "RAS": "RAS", "1": "LPS", "LPS": "LPS"}
_FCSV_DEFAULT_COLUMNS = [
    "id",
    "x",
    "y",
    "z",
    "ow",
    "ox",
    "oy",
    "oz",
    "vis",
    "sel",
    "lock",
    "label",
    "desc",
    "associatedNodeID",
]


def read_fcsv(path: str | os.PathLike) -> Landmarks:
    """Read a Slicer ``.fcsv`` point list in the frame its ``# CoordinateSystem`` line names; a file without one is
    refused (Slicer 5 reads it as LPS, the files of Slicer 4.10 and earlier held RAS: guessing mirrors half of
    them)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"Cannot read landmarks from {path}: {error}.") from error
    system, columns, rows = None, _FCSV_DEFAULT_COLUMNS, []
    for line in lines:
        if line.startswith("#"):
            key, _, value = line.lstrip("#").partition("=")
            key, value = key.strip().lower(), value.strip()
            if key == "coordinatesystem":
                if value.upper() not in _FCSV_SYSTEMS:
                    raise ValueError(f"{path} uses coordinate system {value!r}; only LPS and RAS are supported.")
                system = _FCSV_SYSTEMS[value.upper()]
            elif key == "columns":
                columns = [c.strip() for c in value.split(",")]
        elif line.strip():
            rows.append(line)
    if system is None:
        raise ValueError(
            f"{path} does not say its coordinate system (no '# CoordinateSystem' line). Add '# CoordinateSystem = "
            "RAS' (or LPS, whichever its points are in) below its first line, and read it again."
        )
    missing = {"x", "y", "z", "label"} - set(columns)
    if missing:
        raise ValueError(f"{path} lacks the fcsv columns {', '.join(sorted(missing))}.")
    labels, descriptions, positions, missing = [], [], [], []
    for number, values in enumerate(csv.reader(rows), start=1):
        record = dict(zip(columns, values, strict=False))
        try:
            positions.append([float(record[axis]) for axis in ("x", "y", "z")])
        except (KeyError, ValueError) as error:
            raise ValueError(f"{path}: point {number} has no valid x, y, z ({values}).") from error
        # Slicer 5 writes the point's position status after the named columns: 2 is placed; an unplaced point
        # (0 undefined, 1 preview, 3 missing) keeps x, y, z = 0, which is not where it is.
        status = values[len(columns)].strip() if len(values) > len(columns) else ""
        if status not in ("", "2"):
            positions[-1] = [np.nan] * 3
        missing.append(status == "3")
        labels.append(record.get("label", str(number)))
        descriptions.append(record.get("desc", ""))
    positions_array = np.asarray(positions, dtype=float).reshape(-1, 3)
    if system == "RAS":
        positions_array = ras_to_lps(positions_array)
    return Landmarks(labels, positions_array, descriptions, missing)


# --- Long-format CSV ---------------------------------------------------------------------------------


def landmarks_csv_text(
    cases: dict[str, Landmarks],
    *,
    coordinate_system: str = "LPS",
    extra_columns: dict[str, dict[str, Sequence]] | None = None,
) -> str:
    """A long-format CSV, one row per case and landmark.

    Columns: case, landmark, x, y, z, coordinate_system, description, status ("defined", "missing" or
    "undefined"), then any ``extra_columns`` (per case, a dictionary from column name to one value per landmark).
    Points without a position have empty x, y, z.
    """
    system = coordinate_system.upper()
    if system not in COORDINATE_SYSTEMS:
        raise ValueError(f"Unknown coordinate system {coordinate_system!r}: use LPS or RAS.")
    extra_columns = extra_columns or {}
    extra_names = list(dict.fromkeys(name for columns in extra_columns.values() for name in columns))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([*CSV_COLUMNS, *extra_names])
    for case, landmarks in cases.items():
        positions = landmarks.positions_lps if system == "LPS" else landmarks.positions_ras
        extras = extra_columns.get(case, {})
        for index, (label, description, position, status) in enumerate(
            zip(landmarks.labels, landmarks.descriptions, positions, landmarks.statuses, strict=True)
        ):
            coordinates = [repr(float(v)) if np.isfinite(v) else "" for v in position]
            more = [extras[name][index] if name in extras else "" for name in extra_names]
            writer.writerow([case, label, *coordinates, system, description, status, *more])
    return buffer.getvalue()


def write_landmarks_csv(
    cases: dict[str, Landmarks],
    path: str | os.PathLike,
    *,
    coordinate_system: str = "LPS",
    extra_columns: dict[str, dict[str, Sequence]] | None = None,
) -> Path:
    """Write :func:`landmarks_csv_text` to ``path`` atomically; returns the path."""
    text = landmarks_csv_text(cases, coordinate_system=coordinate_system, extra_columns=extra_columns)
    return write_text_atomically(path, text)


def read_landmarks_csv(path: str | os.PathLike) -> dict[str, Landmarks]:
    """Read a long-format CSV written by :func:`write_landmarks_csv` (cases and points in file order)."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:  # -sig: Excel's "CSV UTF-8" has a BOM
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"Cannot read landmarks from {path}: {error}.") from error
    if rows:
        missing = {"case", "landmark", "x", "y", "z", "coordinate_system"} - set(rows[0])
        if missing:
            raise ValueError(f"{path} lacks the columns {', '.join(sorted(missing))}.")
    grouped: dict[str, tuple[list, list, list, list]] = {}
    for line, row in enumerate(rows, start=2):
        system = row["coordinate_system"].strip().upper()
        if system not in COORDINATE_SYSTEMS:
            raise ValueError(f"{path}, line {line}: coordinate system {system!r} is not LPS or RAS.")
        try:
            position = np.array([float(row[a]) if row[a].strip() else np.nan for a in "xyz"])
        except ValueError as error:
            raise ValueError(f"{path}, line {line}: x, y, z must be numbers ({error}).") from error
        labels, positions, descriptions, missing = grouped.setdefault(row["case"], ([], [], [], []))
        labels.append(row["landmark"])
        positions.append(ras_to_lps(position) if system == "RAS" else position)
        descriptions.append(row.get("description") or "")
        missing.append((row.get("status") or "").strip() == MISSING)  # files from before the column: none missing
    return {case: Landmarks(*fields) for case, fields in grouped.items()}
