"""What the networks see: intensity normalisation, the stage-1 grid and the stage-2 patches.

Training and detection both go through these functions, so a model sees at detection exactly what it saw in
training. Both grids are axis-aligned in LPS (identity direction), whatever the volume's own orientation, so a
model does not depend on how a scanner or a converter ordered the voxels:

- **Stage-1 grid**: the whole volume resampled to ``stage1_spacing_mm`` (isotropic), centred on the volume's
  centre: on a fixed grid of ``stage1_grid`` voxels (cropping or padding the field of view), or, in "extent"
  mode, on a grid just covering the volume.
- **Stage-2 patch**: ``patch_size`` voxels at ``stage2_spacing_mm`` centred on a physical point.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from ..io.coordinates import Geometry
from ..io.volumes import Volume, resampler_onto
from ..model.config import CascadeConfig, IntensityWindow

_IDENTITY = np.eye(3)


def stage1_geometry(volume_geometry: Geometry, config: CascadeConfig) -> Geometry:
    """The stage-1 grid for a volume: LPS-aligned, isotropic at the model's stage-1 spacing, centred on the
    volume's centre; of the model's fixed size (``stage1_grid``, i, j, k), or in "extent" mode just covering the
    volume's LPS bounding box (each edge a multiple of the U-Net's ``2 ** depth``)."""
    spacing = config.stage1_spacing_mm
    if config.stage1_mode != "extent":
        return _centred_grid(volume_geometry.centre_lps, spacing, config.stage1_grid)
    multiple = 2**config.unet.depth
    size = np.maximum(np.ceil(volume_geometry.lps_extent_mm / spacing / multiple), 1).astype(int) * multiple
    return _centred_grid(volume_geometry.centre_lps, spacing, tuple(size))


def patch_geometry(centre_lps: np.ndarray, spacing_mm: float, size: int) -> Geometry:
    """An LPS-aligned cube of ``size`` voxels at ``spacing_mm`` centred on ``centre_lps`` (mm)."""
    return _centred_grid(np.asarray(centre_lps, dtype=float), spacing_mm, (size, size, size))


def _centred_grid(centre_lps: np.ndarray, spacing_mm: float, size) -> Geometry:
    half = (np.asarray(size, dtype=float) - 1) / 2.0 * spacing_mm
    return Geometry(size=tuple(size), spacing=(spacing_mm,) * 3, origin=centre_lps - half, direction=_IDENTITY)


class Sampler:
    """Resamples one volume onto stage-1 grids and stage-2 patches, with its intensity window applied.

    Holds the SimpleITK image of the volume once, so many patches cost no copy of the whole volume.
    Voxels outside the volume read as the window's lower bound (air for CT).
    """

    def __init__(self, volume: Volume, window: IntensityWindow):
        self.volume = volume
        self.bounds = window.bounds(volume)
        self._window = window
        self._image = volume.to_sitk()

    def sample(self, geometry: Geometry) -> np.ndarray:
        """Windowed intensities on ``geometry``, float32, shape ``geometry.shape`` ([k, j, i])."""
        resampler = resampler_onto(geometry, fill_value=self.bounds[0], as_float=True)
        return self.windowed(sitk.GetArrayFromImage(resampler.Execute(self._image)))

    def windowed(self, array: np.ndarray) -> np.ndarray:
        """``array`` (intensities of this volume) mapped through its intensity window, float32."""
        return self._window.apply(array, self.bounds)

    def patches(self, centres_lps: np.ndarray, spacing_mm: float, size: int) -> np.ndarray:
        """One patch per centre (LPS mm, shape (N, 3)), float32, shape (N, size, size, size)."""
        return np.stack([self.sample(patch_geometry(c, spacing_mm, size)) for c in np.asarray(centres_lps)])
