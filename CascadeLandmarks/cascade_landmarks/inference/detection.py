"""The detection record: what detecting landmarks in one volume gives, passed as one typed object between the
engine, the command line, the Slicer module and files.

:class:`Detection` holds every field a caller may want (points of both stages, confidence and why, flags, which
landmarks are in view, timings, warnings, the model's name and checksum) and travels as JSON
(:meth:`Detection.to_json`, :meth:`Detection.from_json`): the background process of the Slicer module writes it
and the module reads it back whole. Needs no torch.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..io.coordinates import lps_to_ras
from ..io.landmarks import Landmarks, write_landmarks_csv

RECORD_FORMAT = "cascade-landmarks-detection"
RECORD_VERSION = 1
_ARRAYS = {  # the per-landmark fields and their element type
    "positions_lps": float,
    "stage1_lps": float,
    "heatmap_peak": float,
    "stage2_shift_mm": float,
    "confidence": float,
    "flagged": bool,
    "in_view": bool,
}


@dataclass
class Detection:
    """Detected landmarks of one volume, in the landmark set's order.

    Attributes:
        labels, descriptions: from the landmark set, one each per landmark.
        positions_lps: the cascade's answer, LPS mm, shape (N, 3) (for a landmark not in view, where it would be).
        stage1_lps: stage 1 alone, LPS mm, shape (N, 3).
        heatmap_peak: stage-1 peak height relative to the training target's height, in [0, 1], shape (N,).
        stage2_shift_mm: how far stage 2 moved each point from stage 1's, over all its passes, mm, shape (N,).
        confidence: in [0, 1], shape (N,).
        flagged: the points to check first: low confidence, or not in view; bool, shape (N,).
        in_view: whether each landmark is in the volume (its point inside, its heatmap peak at least the model's
            presence threshold), bool, shape (N,).
        model_name: the model's registered name or file name.
        model_sha256: the checksum of the model's file ("" for a model made in memory).
        seconds: time per step ("stage 1 input", "stage 1", "stage 2").
        warnings: sentences for the user about the volume (a field of view unlike the model's training scans).
    """

    labels: list[str]
    descriptions: list[str]
    positions_lps: np.ndarray
    stage1_lps: np.ndarray
    heatmap_peak: np.ndarray
    stage2_shift_mm: np.ndarray
    confidence: np.ndarray
    flagged: np.ndarray
    in_view: np.ndarray
    model_name: str = ""
    model_sha256: str = ""
    seconds: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        count = len(self.labels)
        self.seconds = {str(step): float(value) for step, value in self.seconds.items()}
        for name, kind in _ARRAYS.items():
            value = getattr(self, name)
            if kind is float:  # JSON's null stands for NaN
                value = np.array(value, dtype=object)
                value = np.where(value == None, np.nan, value)  # noqa: E711 (elementwise)
            value = np.asarray(value, dtype=kind)
            shape = (count, 3) if name.endswith("_lps") else (count,)
            if value.shape != shape:
                raise ValueError(f"Detection.{name} has shape {value.shape}; {count} landmarks need {shape}.")
            setattr(self, name, value)
        if len(self.descriptions) != count:
            raise ValueError(f"Detection has {count} labels but {len(self.descriptions)} descriptions.")

    @property
    def positions_ras(self) -> np.ndarray:
        """The cascade's points in RAS mm, shape (N, 3)."""
        return lps_to_ras(self.positions_lps)

    @property
    def stage1_ras(self) -> np.ndarray:
        """Stage 1's points in RAS mm, shape (N, 3)."""
        return lps_to_ras(self.stage1_lps)

    def landmarks(self, *, stage: str = "cascade") -> Landmarks:
        """The points as :class:`~cascade_landmarks.io.landmarks.Landmarks` ("cascade" or "stage1"); a landmark not
        in view is missing (Slicer's "missing": no position)."""
        positions = {"cascade": self.positions_lps, "stage1": self.stage1_lps}[stage]
        return Landmarks(list(self.labels), positions, list(self.descriptions), missing=~self.in_view)

    def errors_mm(self, reference_lps: np.ndarray) -> dict[str, np.ndarray]:
        """Distance of each stage's points to reference points (LPS mm, shape (N, 3)): ``{"stage1": (N,),
        "cascade": (N,)}`` in mm."""
        reference = np.asarray(reference_lps, dtype=float)
        return {
            "stage1": np.linalg.norm(self.stage1_lps - reference, axis=1),
            "cascade": np.linalg.norm(self.positions_lps - reference, axis=1),
        }

    def to_dict(self) -> dict:
        """The record as JSON-able data: arrays as lists, NaN as None (strict JSON has no NaN)."""
        data = asdict(self)
        for name, kind in _ARRAYS.items():
            values = getattr(self, name)
            data[name] = np.where(np.isnan(values), None, values).tolist() if kind is float else values.tolist()
        return {"format": RECORD_FORMAT, "version": RECORD_VERSION, **data}

    @classmethod
    def from_dict(cls, data: dict) -> Detection:
        """The record from :meth:`to_dict`'s data; ValueError when it is not one this version reads."""
        if not isinstance(data, dict) or data.get("format") != RECORD_FORMAT:
            raise ValueError("Not a CascadeLandmarks detection record.")
        if not isinstance(data.get("version"), int):
            raise ValueError(f"The detection record's version {data.get('version')!r} is not a whole number.")
        if data["version"] > RECORD_VERSION:
            raise ValueError(
                f"The detection record has version {data['version']}; this CascadeLandmarks reads up to "
                f"{RECORD_VERSION}. Update CascadeLandmarks."
            )
        fields = {key: value for key, value in data.items() if key not in ("format", "version")}
        try:
            return cls(**fields)
        except TypeError as error:
            raise ValueError(f"The detection record is incomplete or has unknown fields ({error}).") from error

    def to_json(self) -> str:
        """The record as one line of strict JSON."""
        return json.dumps(self.to_dict(), allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> Detection:
        """The record from :meth:`to_json`'s text."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"The detection record is not valid JSON ({error}).") from error
        return cls.from_dict(data)


def write_detections_csv(
    detections: dict[str, Detection], path: str | os.PathLike, *, coordinate_system: str = "LPS"
) -> Path:
    """One row per case and landmark: the cascade's point, then confidence, flag, whether it is in view, the
    stage-2 shift and the stage-1 point (in the same frame)."""
    extra = {}
    for case, detection in detections.items():
        stage1 = detection.stage1_lps if coordinate_system.upper() == "LPS" else detection.stage1_ras
        extra[case] = {
            "confidence": [f"{c:.3f}" for c in detection.confidence],
            "flagged": [int(f) for f in detection.flagged],
            "in_view": [int(v) for v in detection.in_view],
            "stage2_shift_mm": [f"{s:.3f}" for s in detection.stage2_shift_mm],
            "stage1_x": [repr(float(v)) for v in stage1[:, 0]],
            "stage1_y": [repr(float(v)) for v in stage1[:, 1]],
            "stage1_z": [repr(float(v)) for v in stage1[:, 2]],
        }
    cases = {case: detection.landmarks() for case, detection in detections.items()}
    return write_landmarks_csv(cases, path, coordinate_system=coordinate_system, extra_columns=extra)
