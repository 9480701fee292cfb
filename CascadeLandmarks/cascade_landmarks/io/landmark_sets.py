"""Landmark-set definitions: which landmarks a model finds, in which order, with names and left/right twins.

The definitions are data, one JSON file each in the extension's ``Resources/LandmarkSets/``
folder (``cardiac-5``, ``aortic-9``, ``afids-32``); :func:`load_landmark_set` also takes the path of a user's own file
in the same format.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .landmarks import Landmarks
from .resources import resource_path

LANDMARK_SETS_FOLDER = "LandmarkSets"


@dataclass(frozen=True)
class LandmarkDefinition:
    """One landmark of a set.

    Attributes:
        label: the label point lists use for it (what a ``.mrk.json`` or ``.fcsv`` file says).
        name: a short human-readable name.
        description: what the landmark is, in a sentence.
        twin: label of its mirror-image landmark (left <-> right), or None.
    """

    label: str
    name: str
    description: str
    twin: str | None = None


@dataclass(frozen=True)
class LandmarkSet:
    """An ordered set of landmarks a model is trained to find."""

    name: str
    title: str
    description: str
    landmarks: tuple[LandmarkDefinition, ...]

    def __post_init__(self) -> None:
        labels = self.labels
        duplicates = sorted({label for label in labels if labels.count(label) > 1})
        if duplicates:
            raise ValueError(f"Landmark set {self.name} lists {', '.join(duplicates)} more than once.")
        for landmark in self.landmarks:
            if landmark.twin is None:
                continue
            twin = self.landmarks[labels.index(landmark.twin)] if landmark.twin in labels else None
            if twin is None or twin.twin != landmark.label:
                raise ValueError(
                    f"Landmark set {self.name}: {landmark.label!r} names {landmark.twin!r} as its twin, "
                    "but that landmark does not name it back."
                )

    @property
    def labels(self) -> list[str]:
        return [landmark.label for landmark in self.landmarks]

    def __len__(self) -> int:
        return len(self.landmarks)

    def twin_permutation(self) -> list[int]:
        """For each landmark, the index of its twin (itself when it has none): the channel order after a
        left/right mirror."""
        labels = self.labels
        return [labels.index(d.twin) if d.twin else i for i, d in enumerate(self.landmarks)]

    def match(self, landmarks: Landmarks, *, source: str = "landmarks", partial: bool = False) -> Landmarks:
        """The points of ``landmarks`` in this set's order.

        Every landmark must be placed exactly once; with ``partial``, a landmark may also be absent from
        ``landmarks``, unplaced (both: not known, a NaN row) or missing (known not to be in the image), but none
        may be repeated or unknown to the set.

        Raises:
            ValueError: naming ``source``, the missing, unplaced, repeated and unknown labels.
        """
        problems = []
        absent = [label for label in self.labels if label not in landmarks.labels]
        if absent and not partial:
            problems.append(f"missing {', '.join(absent)}")
        repeated = sorted({label for label in landmarks.labels if landmarks.labels.count(label) > 1})
        if repeated:
            problems.append(f"repeated {', '.join(repeated)}")
        extra = [label for label in landmarks.labels if label not in self.labels]
        if extra:
            problems.append(f"not in {self.name}: {', '.join(extra)}")
        if not problems:
            ordered = self._in_order(landmarks)
            unplaced = [label for label, placed in zip(ordered.labels, ordered.defined, strict=True) if not placed]
            if unplaced and not partial:
                problems.append(f"not placed: {', '.join(unplaced)}")
        if problems:
            raise ValueError(f"{source} does not match landmark set {self.name}: {'; '.join(problems)}.")
        return ordered

    def _in_order(self, landmarks: Landmarks) -> Landmarks:
        """``landmarks`` in this set's order, those it lacks as unplaced points with the set's descriptions."""
        rows = [landmarks.labels.index(label) if label in landmarks.labels else None for label in self.labels]
        positions = [landmarks.positions_lps[row] if row is not None else [np.nan] * 3 for row in rows]
        descriptions = [
            landmarks.descriptions[row] if row is not None else d.description
            for d, row in zip(self.landmarks, rows, strict=True)
        ]
        missing = [row is not None and bool(landmarks.missing[row]) for row in rows]
        return Landmarks(self.labels, positions, descriptions, missing)

    def to_landmarks(self, positions_lps) -> Landmarks:
        """Landmarks with this set's labels and descriptions at ``positions_lps`` (LPS mm, shape (N, 3))."""
        return Landmarks(self.labels, positions_lps, [d.description for d in self.landmarks])

    def to_dict(self) -> dict:
        """The JSON form of the set, as in ``Resources/LandmarkSets`` (the inverse of :meth:`from_dict`)."""
        return {
            "name": self.name,
            "title": self.title,
            "description": self.description,
            "landmarks": [asdict(d) for d in self.landmarks],
        }

    @classmethod
    def from_dict(cls, data: dict, *, source: str = "landmark set") -> LandmarkSet:
        """The set from its JSON form (see ``Resources/LandmarkSets/*.json``); ``source`` names it in errors."""
        try:
            landmarks = tuple(
                LandmarkDefinition(
                    label=str(item["label"]),
                    name=str(item.get("name", item["label"])),
                    description=str(item.get("description", "")),
                    twin=None if item.get("twin") is None else str(item["twin"]),
                )
                for item in data["landmarks"]
            )
            return cls(
                name=str(data["name"]),
                title=str(data.get("title", data["name"])),
                description=str(data.get("description", "")),
                landmarks=landmarks,
            )
        except (KeyError, TypeError) as error:
            raise ValueError(f"{source} is not a landmark-set definition: missing or malformed {error}.") from error


def available_landmark_sets() -> list[str]:
    """Names of the landmark sets shipped with the extension."""
    folder = resource_path(LANDMARK_SETS_FOLDER)
    return sorted(entry.name[: -len(".json")] for entry in folder.iterdir() if entry.name.endswith(".json"))


def load_landmark_set(name_or_path: str | os.PathLike) -> LandmarkSet:
    """A shipped landmark set by name (``"cardiac-5"``) or a user's own definition file by path."""
    text = str(name_or_path)
    if text.endswith(".json") or os.sep in text:
        source = Path(text)
        if not source.is_file():
            raise ValueError(f"Landmark-set file {source} does not exist.")
        content = source.read_text(encoding="utf-8")
    else:
        shipped = available_landmark_sets()
        if text not in shipped:
            raise ValueError(f"Unknown landmark set {text!r}; the shipped sets are {', '.join(shipped)}.")
        content = resource_path(LANDMARK_SETS_FOLDER, f"{text}.json").read_text(encoding="utf-8")
    return LandmarkSet.from_dict(json.loads(content), source=text)
