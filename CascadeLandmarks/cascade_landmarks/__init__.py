"""CascadeLandmarks engine: anatomical landmark detection with the cascade regression model of Tan et al.

Importable with no Slicer at all (numpy, SimpleITK, torch). The pipeline, by file:

- ``coordinates``   voxel index <-> LPS/RAS millimetres (one place for every conversion)
- ``volumes``       read, check, resample, crop/pad and write volumes with their geometry
- ``landmarks``     point lists in and out: ``.mrk.json``, ``.fcsv``, long-format CSV
- ``landmark_sets`` the landmark-set definitions shipped in ``Resources/LandmarkSets``
- ``slicer_bridge`` MRML volume and point-list nodes <-> engine objects (imports ``slicer`` lazily)
- ``cli``           the ``cascade-landmarks`` command
"""

from __future__ import annotations

from .coordinates import Geometry, lps_to_ras, ras_to_lps
from .landmark_sets import LandmarkDefinition, LandmarkSet, available_landmark_sets, load_landmark_set
from .landmarks import (
    Landmarks,
    read_landmarks,
    read_landmarks_csv,
    write_landmarks,
    write_landmarks_csv,
)
from .volumes import Volume, crop_or_pad, read_volume, resample, write_volume

__version__ = "0.1.0"

__all__ = [
    "Geometry",
    "LandmarkDefinition",
    "LandmarkSet",
    "Landmarks",
    "Volume",
    "available_landmark_sets",
    "crop_or_pad",
    "load_landmark_set",
    "lps_to_ras",
    "ras_to_lps",
    "read_landmarks",
    "read_landmarks_csv",
    "read_volume",
    "resample",
    "write_landmarks",
    "write_landmarks_csv",
    "write_volume",
]
