"""Synthetic volumes with exactly known landmarks, for training, benchmarks, the demo and tests.

- ``cardiac`` (:mod:`.cardiac`): cardiac CTA phantoms with the ``cardiac-5`` landmarks;
- ``aortic`` (:mod:`.aortic`): thoraco-abdominal aortic CTA phantoms with the ``aortic-9`` landmarks;
- ``spheres`` (:mod:`.spheres`): three bright spheres in noise; small and fast, for tests of the machinery.

Every figure measured on these volumes is a figure on synthetic data, and says so.
"""

from __future__ import annotations

import os
from pathlib import Path

from ...io.landmarks import write_landmarks
from ...io.volumes import write_volume
from . import aortic, cardiac

PHANTOMS = {"cardiac": cardiac, "aortic": aortic}
FORMATS = {"nrrd": ".nrrd", "nifti": ".nii.gz"}


def phantom(kind: str):
    """The phantom module for ``kind`` (``cardiac`` or ``aortic``): ``make_case``, ``LANDMARK_SET``, defaults."""
    if kind not in PHANTOMS:
        raise ValueError(f"Unknown phantom {kind!r}: choose one of {', '.join(PHANTOMS)}.")
    return PHANTOMS[kind]


def write_phantoms(
    kind: str,
    folder: str | os.PathLike,
    seeds,
    *,
    spacing_mm=None,
    file_format: str = "nrrd",
    realistic: bool = False,
    on_case=None,
) -> list[Path]:
    """Write one case per seed into ``folder`` as ``<kind>-<seed>.nrrd`` (or ``.nii.gz``) and
    ``<kind>-<seed>.mrk.json`` (LPS), a training folder; returns the volume paths. ``realistic``: the phantoms
    with what a clinical CTA also shows (see :mod:`.realism`). ``on_case(count)`` is called after each case is
    written, with the number written so far."""
    module = phantom(kind)
    spacing_mm = module.DEFAULT_SPACING_MM if spacing_mm is None else spacing_mm
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for seed in seeds:
        volume, landmarks = module.make_case(seed, spacing_mm=spacing_mm, realistic=realistic)
        name = f"{kind}-{seed:04d}"
        written.append(write_volume(volume, folder / f"{name}{FORMATS[file_format]}"))
        write_landmarks(landmarks, folder / f"{name}.mrk.json")
        if on_case is not None:
            on_case(len(written))
    return written
