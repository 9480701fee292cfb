"""Phantoms set against a real CTA: ``cascade-landmarks compare-phantoms``.

Measured the same way on the real arterial-phase CTA of the shared data (``cta-thorax-abdomen``) and on aortic
phantoms, plain and realistic, rendered at its voxel size (1.5 mm):

- the share of the body's voxels in each tissue class by Hounsfield units (fat -190 to -30, soft tissue -30 to
  150, contrast and bone above 150), and each class's mean and spread;
- the aortic lumen (the real scan's TotalSegmentator true-lumen mask, shrunk by two voxels; the phantom's centreline
  neighbourhood): its mean, and its noise: the standard deviation about the local mean and the correlation of
  neighbouring voxels (white noise: 0; the grain of a CT reconstruction: 0.3 to 0.7);
- a montage PNG: axial slices through the left subclavian and celiac origins and a coronal slice through the
  aorta, real scan above, phantoms below, in one window.

Figures from the phantoms are figures on synthetic data.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..evaluation.figures import write_png
from ..inference.preprocessing import Sampler
from ..io.atomic_files import write_text_atomically
from ..io.coordinates import Geometry
from ..io.landmarks import read_landmarks
from ..io.volumes import Volume, read_volume
from ..model.config import IntensityWindow
from .phantoms import aortic

REAL_CTA = Path("real") / "cta-thorax-abdomen"
CLASSES_HU = {"fat": (-190, -30), "soft tissue": (-30, 150), "contrast and bone": (150, 3000)}
WINDOW = IntensityWindow("fixed", -200.0, 600.0)
VIEW_MM, VIEW_PIXELS = 150.0, 150
MONTAGE_LANDMARKS = ("left subclavian artery origin", "celiac trunk origin")


def compare_phantoms(data: str | os.PathLike, output: str | os.PathLike, *, seeds=range(1, 5)) -> str:
    """The comparison as a Markdown report (also ``output/realism.md``) and ``output/montage.png``."""
    data, output = Path(data), Path(output)
    real = read_volume(data / REAL_CTA / "ct.nii.gz")
    # The true lumen: this patient's aorta is dissected, and its flap is no part of the lumen's noise.
    mask = sitk.GetArrayFromImage(
        sitk.BinaryErode(sitk.ReadImage(str(data / REAL_CTA / "masks" / "aorta_true_lumen.nii.gz")) > 0, [2, 2, 2])
    ).astype(bool)
    rows = {"real CTA (cta-thorax-abdomen)": _measures(real, real.array[mask].astype(float), _noise(real, mask))}
    spacing = tuple(real.geometry.spacing)
    montage = [_views(real, read_landmarks(data / REAL_CTA / "landmarks.mrk.json"))]
    for realistic in (True, False):
        kind = "realistic" if realistic else "plain"
        measures = []
        for seed in seeds:
            anatomy = aortic.anatomy(seed, realistic=realistic)
            volume, landmarks = anatomy.case(spacing, aortic.FIELD_OF_VIEW_MM, aortic.LANDMARK_SET)
            lumen = _lumen_core(volume, *anatomy.vessels["aorta"])
            measures.append(_measures(volume, volume.array[lumen].astype(float), _noise(volume, lumen)))
            if seed == seeds[0]:
                montage.append(_views(volume, landmarks))
        rows[f"{kind} phantoms ({len(measures)}, synthetic)"] = {
            key: np.mean([m[key] for m in measures]) for key in measures[0]
        }
    write_png(output / "montage.png", np.concatenate(montage, axis=0))
    report = _report(rows)
    write_text_atomically(output / "realism.md", report + "\n")
    return report


def _measures(volume: Volume, lumen: np.ndarray, noise: tuple[float, float]) -> dict:
    body = volume.array[volume.array > -500].astype(float)
    measures = {}
    for name, (low, high) in CLASSES_HU.items():
        values = body[(body >= low) & (body < high)]
        measures[f"{name} share"] = len(values) / max(len(body), 1)
        measures[f"{name} mean"] = float(values.mean()) if len(values) else float("nan")
        measures[f"{name} spread"] = float(values.std()) if len(values) else float("nan")
    measures["lumen mean"] = float(lumen.mean())
    measures["noise sd"], measures["noise correlation"] = noise
    return measures


def _noise(volume: Volume, mask: np.ndarray) -> tuple[float, float]:
    """Standard deviation about the local (3 x 3 x 3) mean inside ``mask``, and the correlation of those
    deviations between neighbours along i."""
    image = sitk.GetImageFromArray(volume.array.astype(np.float32))
    local = sitk.GetArrayFromImage(sitk.Mean(image, [1, 1, 1]))
    deviation = volume.array.astype(np.float32) - local
    inner = mask[:, :, 1:] & mask[:, :, :-1]
    a, b = deviation[:, :, 1:][inner], deviation[:, :, :-1][inner]
    return float(deviation[mask].std()), float(np.corrcoef(a, b)[0, 1])


def _lumen_core(volume: Volume, centreline: np.ndarray, tube) -> np.ndarray:
    """Voxels within half the radius of the aorta's centreline (on an LPS-aligned grid, as phantoms are)."""
    geometry = volume.geometry
    mask = np.zeros(geometry.shape, bool)
    for point, radius in zip(centreline, tube.radii, strict=True):
        reach = radius / 2
        low = np.maximum(np.floor(geometry.lps_to_index(point - reach)).astype(int), 0)
        high = np.minimum(np.ceil(geometry.lps_to_index(point + reach)).astype(int) + 1, geometry.size)
        if np.any(high <= low):
            continue
        k, j, i = np.meshgrid(*[np.arange(low[c], high[c]) for c in (2, 1, 0)], indexing="ij")
        near = np.linalg.norm(geometry.index_to_lps(np.stack([i, j, k], axis=-1)) - point, axis=-1) <= reach
        mask[k[near], j[near], i[near]] = True
    return mask


def _views(volume: Volume, landmarks) -> np.ndarray:
    """One row of the montage: axial slices through :data:`MONTAGE_LANDMARKS`, and a coronal one through the
    first, each :data:`VIEW_MM` wide, windowed with :data:`WINDOW`, as RGB."""
    sampler = Sampler(volume, WINDOW)
    tiles = []
    for label in MONTAGE_LANDMARKS:
        centre = landmarks.positions_lps[landmarks.labels.index(label)]
        tiles.append(_slice(sampler, centre, [1, 0, 0], [0, 1, 0]))
    tiles.append(_slice(sampler, landmarks.positions_lps[landmarks.labels.index(MONTAGE_LANDMARKS[0])],
                        [1, 0, 0], [0, 0, -1]))  # fmt: skip
    gap = np.full((VIEW_PIXELS, 3), 1.0)
    row = np.concatenate([part for tile in tiles for part in (tile, gap)][:-1], axis=1)
    grey = (255 * np.clip(row, 0, 1)).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)


def _slice(sampler: Sampler, centre, columns, down) -> np.ndarray:
    columns, down = np.asarray(columns, float), np.asarray(down, float)
    spacing = VIEW_MM / VIEW_PIXELS
    half = (VIEW_PIXELS - 1) / 2 * spacing
    direction = np.stack([columns, np.cross(down, columns), down], axis=1)
    plane = Geometry((VIEW_PIXELS, 1, VIEW_PIXELS), (spacing,) * 3, centre - half * columns - half * down, direction)
    return sampler.sample(plane)[:, 0, :]


def _report(rows: dict[str, dict]) -> str:
    keys = list(next(iter(rows.values())))
    lines = [
        "# Phantoms against a real CTA",
        "",
        "Body voxels (above -500 HU) by class: share, mean and spread (HU); the aortic lumen's mean (HU), noise (HU, "
        "about the 3 x 3 x 3 local mean) and the correlation of neighbouring voxels' noise. Phantoms rendered at "
        "the real scan's 1.5 mm voxels.",
        "",
        "| | " + " | ".join(keys) + " |",
        "|---|" + "---|" * len(keys),
    ]
    for name, measures in rows.items():
        cells = [f"{100 * measures[k]:.0f}%" if k.endswith("share") else f"{measures[k]:.2f}" if "correlation" in k
                 else f"{measures[k]:.0f}" for k in keys]  # fmt: skip
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
