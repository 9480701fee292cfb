"""What makes a phantom look like a CT scan rather than flat grey shapes: contrast timing, tissue texture,
correlated noise, streaks from dense contrast and bone, partial volume of thick slices, the reconstruction
circle.

A :class:`ScanLook` is drawn at random per case, each part within what clinical CT shows:

- **contrast timing**, from early arterial to portal venous (:func:`realistic_tissues`): arterial blood 150-600
  HU, veins from unenhanced to as bright as the arteries, undiluted contrast (800-2500 HU) flowing in through
  one arm's veins in the arterial phases, enhancing liver, spleen and kidneys;
- **texture**: each tissue gets a smooth random field of its own amplitude at three scales (fine, 1 mm;
  medium, 3 mm; coarse, 10 mm): fat and muscle fibres, liver and spleen heterogeneity, trabecular bone, the
  lung's parenchyma;
- **noise** with the grain of filtered back-projection (white noise blurred to 0.4-1.2 mm) at 8-45 HU, as doses
  from high to low give;
- **streaks** through axial slices from dense contrast and bone, **thick slices** (0.6-3 mm reconstructed, their
  partial volume along S) and a **reconstruction circle** outside which the scanner writes air.

The same seed gives the same look.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

TEXTURE_SCALES_MM = (1.0, 3.0, 10.0)  # fine, medium, coarse
PHASES = ("early arterial", "arterial", "late arterial", "portal venous")


@dataclass(frozen=True)
class ScanLook:
    """How one scan looks, beyond its anatomy.

    Attributes:
        phase: the contrast timing (one of :data:`PHASES`).
        textures: tissue -> amplitudes (HU) of its fine, medium and coarse texture.
        noise_hu, noise_mm: the noise's standard deviation and grain (sigma of the blur of white noise).
        blur_mm: the scanner's point spread (Gaussian sigma).
        slice_mm: reconstructed slice thickness along S (0: the voxel's own).
        streaks_hu: strength of the streaks from voxels above :data:`STREAK_SOURCE_HU`.
        circle_mm: radius of the reconstruction circle in the axial plane round the field of view's centre (0:
            none), outside which the scan holds air.
    """

    phase: str
    textures: dict[str, tuple[float, float, float]] = field(default_factory=dict)
    noise_hu: float = 20.0
    noise_mm: float = 0.6
    blur_mm: float = 0.7
    slice_mm: float = 0.0
    streaks_hu: float = 0.0
    circle_mm: float = 0.0

    @classmethod
    def random(cls, rng: np.random.Generator, *, phase: str | None = None) -> ScanLook:
        """A look drawn at random within clinical ranges (``phase`` fixed if given)."""
        return cls(
            phase=phase or PHASES[int(rng.integers(len(PHASES)))],
            textures={
                "fat": (rng.uniform(5, 15), rng.uniform(4, 12), rng.uniform(0, 8)),
                "muscle": (rng.uniform(4, 12), rng.uniform(3, 10), rng.uniform(0, 8)),
                "soft tissue": (rng.uniform(4, 12), rng.uniform(4, 12), rng.uniform(0, 10)),
                "liver": (rng.uniform(2, 8), rng.uniform(3, 10), rng.uniform(2, 12)),
                "spleen": (rng.uniform(2, 8), rng.uniform(3, 10), rng.uniform(2, 15)),
                "kidney": (rng.uniform(5, 15), rng.uniform(5, 20), rng.uniform(5, 20)),
                "lung": (rng.uniform(15, 40), rng.uniform(20, 50), rng.uniform(10, 40)),
                "cancellous bone": (rng.uniform(40, 120), rng.uniform(20, 60), rng.uniform(0, 30)),
                "cortical bone": (rng.uniform(30, 80), rng.uniform(20, 60), rng.uniform(0, 30)),
                "myocardium": (rng.uniform(3, 10), rng.uniform(3, 10), rng.uniform(0, 8)),
                "bowel": (rng.uniform(10, 40), rng.uniform(10, 60), rng.uniform(10, 60)),
                "blood": (rng.uniform(2, 8), rng.uniform(0, 10), rng.uniform(0, 25)),
            },
            noise_hu=rng.uniform(8.0, 45.0),
            noise_mm=rng.uniform(0.4, 1.2),
            blur_mm=rng.uniform(0.4, 1.0),
            slice_mm=float(rng.choice([0.0, 0.0, 1.0, 1.5, 2.0, 3.0])),
            streaks_hu=rng.uniform(0.0, 60.0) if rng.random() < 0.7 else 0.0,
            circle_mm=rng.uniform(210.0, 260.0) if rng.random() < 0.6 else 0.0,
        )


def realistic_tissues(rng: np.random.Generator, phase: str) -> dict[str, float]:
    """Hounsfield units of each tissue for one scan in contrast ``phase``."""
    arterial = {"early arterial": (250, 450), "arterial": (300, 600), "late arterial": (220, 420),
                "portal venous": (140, 220)}[phase]  # fmt: skip
    blood = rng.uniform(*arterial)
    venous = {"early arterial": (40, 80), "arterial": (60, 140), "late arterial": (110, 220),
              "portal venous": (130, 200)}[phase]  # fmt: skip
    enhancement = {"early arterial": 0.2, "arterial": 0.4, "late arterial": 0.7, "portal venous": 1.0}[phase]
    return {
        "air": -1000.0,
        "lung": rng.uniform(-900.0, -780.0),
        "fat": rng.uniform(-120.0, -70.0),
        "soft tissue": rng.uniform(20.0, 60.0),
        "muscle": rng.uniform(40.0, 70.0),
        "myocardium": rng.uniform(80.0, 130.0) + 30 * enhancement,
        "blood": blood,
        "false lumen": blood * rng.uniform(0.3, 0.9),
        "venous blood": rng.uniform(*venous),
        "contrast inflow": rng.uniform(800.0, 2500.0) if phase != "portal venous" else rng.uniform(150.0, 250.0),
        "pulmonary blood": blood * rng.uniform(0.7, 1.1) if phase != "portal venous" else blood,
        "liver": rng.uniform(55.0, 70.0) + 60 * enhancement,
        "kidney": rng.uniform(120.0, 180.0) + 80 * enhancement,
        "spleen": rng.uniform(60.0, 90.0) + 60 * enhancement,
        "bowel": rng.uniform(0.0, 60.0),
        "valve": rng.uniform(60.0, 110.0),
        "disc": rng.uniform(70.0, 100.0),
        "cancellous bone": rng.uniform(150.0, 320.0),
        "cortical bone": rng.uniform(550.0, 1100.0),
        "calcium": rng.uniform(500.0, 1500.0),
        "airway": rng.uniform(-1000.0, -950.0),
        "table": rng.uniform(-300.0, 100.0),
    }


def texture_fields(shape, spacing, rng: np.random.Generator) -> list[np.ndarray]:
    """Zero-mean, unit-variance smooth random fields on an array ``shape`` ([k, j, i]) of voxel ``spacing`` (i, j,
    k) mm, one per :data:`TEXTURE_SCALES_MM`."""
    return [correlated_noise(shape, spacing, scale, rng) for scale in TEXTURE_SCALES_MM]


def correlated_noise(shape, spacing, sigma_mm: float, rng: np.random.Generator) -> np.ndarray:
    """White noise blurred by a Gaussian of ``sigma_mm``, rescaled to unit standard deviation, float32."""
    image = sitk.GetImageFromArray(rng.standard_normal(shape).astype(np.float32))
    image.SetSpacing(tuple(float(s) for s in spacing))
    if sigma_mm > 0:
        image = sitk.SmoothingRecursiveGaussian(image, sigma_mm)
    noise = sitk.GetArrayFromImage(image)
    return (noise / max(float(noise.std()), 1e-6)).astype(np.float32)


STREAK_SOURCE_HU = 1200.0  # voxels denser than this cast streaks


def add_streaks(array: np.ndarray, spacing, strength_hu: float, rng: np.random.Generator) -> None:
    """Streaks through each axial slice from its densest voxels: rays of alternating sign round the dense
    region's centre, fading with distance, as beam hardening and photon starvation draw them (in place)."""
    if strength_hu <= 0:
        return
    n_k, n_j, n_i = array.shape
    j, i = np.mgrid[0:n_j, 0:n_i].astype(np.float32)
    for k in range(n_k):
        dense = array[k] > STREAK_SOURCE_HU
        count = int(dense.sum())
        if count < 3:
            continue
        cj, ci = np.mean(np.nonzero(dense), axis=1)
        dy, dx = (j - cj) * spacing[1], (i - ci) * spacing[0]
        angle = np.arctan2(dy, dx)
        radius = np.hypot(dx, dy)
        rays = int(rng.integers(6, 24))
        pattern = np.cos(rays * angle + rng.uniform(0, 2 * np.pi)) * np.cos(0.5 * rays * angle)
        weight = strength_hu * min(1.0, count * spacing[0] * spacing[1] / 100.0)
        array[k] += (weight * pattern * np.exp(-radius / 80.0)).astype(np.float32)


def thick_slices(array: np.ndarray, spacing_s_mm: float, slice_mm: float) -> np.ndarray:
    """Each axial slice as the mean over ``slice_mm`` along S (the partial volume of thick slices)."""
    width = round(slice_mm / spacing_s_mm)
    if width <= 1:
        return array
    padded = np.pad(array, ((width // 2, width - 1 - width // 2), (0, 0), (0, 0)), mode="edge")
    cumulative = np.concatenate([np.zeros((1, *array.shape[1:])), np.cumsum(padded, axis=0, dtype=np.float64)])
    return ((cumulative[width:] - cumulative[:-width]) / width).astype(np.float32)


def reconstruction_circle(array: np.ndarray, spacing, radius_mm: float) -> None:
    """Air outside the axial circle of ``radius_mm`` round the slices' centre (in place)."""
    if radius_mm <= 0:
        return
    _, n_j, n_i = array.shape
    j, i = np.mgrid[0:n_j, 0:n_i]
    outside = np.hypot((j - (n_j - 1) / 2) * spacing[1], (i - (n_i - 1) / 2) * spacing[0]) > radius_mm
    array[:, outside] = -1024.0
