"""Finding the extension's data files (``Resources/``) wherever the engine runs.

Three layouts: installed with pip (the files are package data of ``cascade_landmarks.resources``), inside a
built Slicer extension (CMake installs them the same way, next to the package), and a source checkout used
directly (the repository's top-level ``Resources/`` folder, three levels above this file).
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable


def resource_path(*parts: str) -> Traversable:
    """The shipped data file or folder at ``Resources/<parts...>``."""
    try:
        root: Traversable = importlib.resources.files("cascade_landmarks.resources")
    except ModuleNotFoundError:
        root = Path(__file__).resolve().parents[3] / "Resources"
    entry = root
    for part in parts:  # one at a time: before Python 3.12 a namespace package's root takes only one
        entry = entry.joinpath(part)
    if not entry.is_file() and not entry.is_dir():
        raise FileNotFoundError(f"Shipped resource Resources/{'/'.join(parts)} is missing from {root}.")
    return entry
