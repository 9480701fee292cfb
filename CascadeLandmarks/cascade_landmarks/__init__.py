"""CascadeLandmarks engine: anatomical landmark detection with the cascade regression model of Tan et al.

Importable with no Slicer at all (numpy, SimpleITK; torch once a model is used). Its folders follow a volume from
file to points:

- ``io/``: files in and out, no torch: ``coordinates`` (voxel index <-> LPS/RAS mm, every conversion),
  ``volumes``, ``landmarks`` (``.mrk.json``, ``.fcsv``, long CSV), ``landmark_sets``, ``cases`` (folders and
  manifests of annotated volumes), ``resources``, ``atomic_files``;
- ``model/``: ``heatmap_unet`` (stage 1) and ``heatmaps``, ``displacement_cnn`` (stage 2), ``losses``, ``config``,
  ``model_file`` (the ``.pt`` file, no pickle), ``registry`` (models by name), ``devices``, ``distributed``
  (torchrun);
- ``inference/``: ``preprocessing`` (what the networks see), ``detector`` (volume -> points), ``detection`` (the
  record it gives, as JSON), ``batch`` (a cohort: resumable, failures recorded);
- ``training/``: ``config``, ``batches``, ``augmentation``, ``trainer`` (the loop), ``presence`` (in view or
  not), ``checkpoints``, ``run_files``;
- ``evaluation/``: ``errors`` (errors in mm and their tables), ``metrics``, ``figures`` (QC images, error plot);
- ``bench/``: research tooling: ``phantoms``, ``paper_tables``, ``afids``, ``real_ct``, ``random_crops``,
  ``realism_report``, ``correction_loop``, ``speed``, ``bundling``;
- ``slicer/``: ``bridge`` (MRML nodes), ``workflow`` (the module's point lists), ``runs`` and ``background``;
- ``progress`` (progress and warnings, for people and programs) and ``cli`` (the ``cascade-landmarks`` command).

``detect``, ``evaluate``, ``train``, ``load_model`` and ``save_model`` are here too, imported on first use (they
need torch).
"""

from __future__ import annotations

from .inference.detection import Detection
from .io.coordinates import Geometry, lps_to_ras, ras_to_lps
from .io.landmark_sets import LandmarkDefinition, LandmarkSet, available_landmark_sets, load_landmark_set
from .io.landmarks import (
    Landmarks,
    read_landmarks,
    read_landmarks_csv,
    write_landmarks,
    write_landmarks_csv,
)
from .io.volumes import Volume, crop_or_pad, read_volume, resample, write_volume

__version__ = "0.1.0"

_NEED_TORCH = {
    "detect": "inference.detector",
    "evaluate": "evaluation.errors",
    "train": "training.trainer",
    "load_model": "model.model_file",
    "save_model": "model.model_file",
}


def __getattr__(name: str):
    """The names of :data:`_NEED_TORCH` on first use, so that importing the package does not import torch."""
    if name in _NEED_TORCH:
        import importlib

        return getattr(importlib.import_module(f".{_NEED_TORCH[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Detection",
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
