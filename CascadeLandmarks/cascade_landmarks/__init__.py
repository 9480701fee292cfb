"""CascadeLandmarks engine: anatomical landmark detection with the cascade regression model of Tan et al.

Importable with no Slicer at all (numpy, SimpleITK; torch once a model is used). The pipeline, by file:

- in: ``coordinates`` (voxel index <-> LPS/RAS mm, every conversion), ``volumes`` (read, check, resample, write
  with the geometry), ``landmarks`` (``.mrk.json``, ``.fcsv``, long CSV), ``landmark_sets`` (which landmarks)
- what the networks see: ``preprocessing`` (intensity window, stage-1 grid, stage-2 patches), ``heatmaps``
  (stage-1 targets and sub-voxel decoding), ``augmentation`` (training-time transforms)
- the networks: ``models/heatmap_unet`` (stage 1), ``models/displacement_cnn`` (stage 2), ``losses``
- training: ``data`` (cases and samples), ``config`` (model and training settings as data), ``training``
- out: ``detector`` (volume -> points with confidence), ``modelfile`` (the ``.pt`` file, no pickle),
  ``model_registry`` (shipped and user models), ``evaluation`` and ``figures`` (errors, tables, plots)
- Slicer: ``slicer_bridge`` (MRML nodes <-> engine objects), ``slicer_workflow`` (the module's Logic work),
  ``background`` (commands in another process)
- benchmarks: ``phantom_benchmark`` (the paper's tables on ``phantoms``), ``afids_benchmark``, ``benchmarks``
  (speed and memory); and ``cli``, the ``cascade-landmarks`` command

``detect``, ``evaluate``, ``train``, ``load_model`` and ``save_model`` are here too, imported on first use (they
need torch).
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

_NEED_TORCH = {
    "detect": "detector",
    "evaluate": "evaluation",
    "train": "training",
    "load_model": "modelfile",
    "save_model": "modelfile",
}


def __getattr__(name: str):
    """The names of :data:`_NEED_TORCH` on first use, so that importing the package does not import torch."""
    if name in _NEED_TORCH:
        import importlib

        return getattr(importlib.import_module(f".{_NEED_TORCH[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Geometry",
    "LandmarkDefinition",
    "LandmarkSet",
    "Landmarks",
    "Volume",
    "available_landmark_sets",
    "crop_or_pad",
    "detect",
    "evaluate",
    "load_landmark_set",
    "load_model",
    "lps_to_ras",
    "ras_to_lps",
    "read_landmarks",
    "read_landmarks_csv",
    "read_volume",
    "resample",
    "save_model",
    "train",
    "write_landmarks",
    "write_landmarks_csv",
    "write_volume",
]
