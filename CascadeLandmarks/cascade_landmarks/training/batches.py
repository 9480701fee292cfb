"""Training samples of both stages, cut from cases read once.

Stage-2 samples follow Tan et al.: a patch centred on a point ``q`` drawn at random where stage 1 may put the
landmark, with target ``landmark - q`` in mm. Here ``q`` lies on the stage-2 voxel grid within the stage-2 radius
of the true landmark (that radius standing for stage 1's error), not around one stage-1 model's own estimates,
so stage 2 can be trained alongside stage 1 and keeps working when stage 1 is retrained; each case's patches are
cut from one region resampled once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..inference.preprocessing import Sampler, patch_geometry, stage1_geometry
from ..io.cases import CheckedCase
from ..io.coordinates import Geometry
from ..io.volumes import read_volume
from ..model.config import CascadeConfig
from ..model.heatmaps import gaussian_targets
from .augmentation import AugmentingSampler, RandomTransform, change_intensity
from .config import NO_AUGMENTATION, Augmentation

NEAR_RADIUS = 0.25  # "near" stage-2 training patches lie within this share of the stage-2 radius
REDRAWS = 10  # random transforms drawn in a row before augmentation settings that fold space are refused
Generator = np.random.Generator


@dataclass
class TrainingCase:
    """A case prepared for training.

    Attributes:
        stage1_input: the stage-1 grid's intensities, float32, shape (n_k, n_j, n_i).
        stage1_grid: where that grid lies.
        stage1_ijk: landmark positions in stage-1 voxels (i, j, k), shape (N, 3).
        regions: per landmark, the stage-2 grid around it, float32, shape (N, R, R, R) with
            ``R = patch + 2 * margin``; the landmark lies exactly at each region's centre.
        margin: how many stage-2 voxels a patch centre may lie from the landmark along each axis.
        landmarks_lps: reference positions, LPS mm, shape (N, 3).
        sampler: kept for validation cases, to cut stage-2 patches anywhere.
        augmenter: kept when training augments, to sample the volume through random transforms.
        twins: for each landmark, the index of its left/right twin (itself without one).
        centre_lps, extent_mm: the volume's centre and LPS bounding box, around which transforms are drawn.
    """

    name: str
    stage1_input: np.ndarray
    stage1_grid: Geometry
    stage1_ijk: np.ndarray
    regions: np.ndarray
    margin: int
    landmarks_lps: np.ndarray
    sampler: Sampler | None = None
    augmenter: AugmentingSampler | None = None
    twins: list[int] | None = None
    centre_lps: np.ndarray | None = None
    extent_mm: np.ndarray | None = None

    def random_view(self, augmentation: Augmentation, rng: Generator) -> tuple[RandomTransform | None, np.ndarray]:
        """A random transform of this case and where its landmarks go (LPS mm, (N, 3), in label order: a mirror
        swaps twins); no transform and the landmarks as they are without spatial augmentation.

        A draw whose elastic part folds space (so that the landmarks cannot be carried) is drawn again; the
        augmentation settings are refused when that keeps happening.
        """
        if not augmentation.spatial:
            return None, self.landmarks_lps
        for _ in range(REDRAWS):
            transform = RandomTransform(augmentation, rng, self.centre_lps, self.extent_mm)
            try:
                moved = transform.to_output(self.landmarks_lps)
            except ValueError as error:
                problem = error
                continue
            return transform, moved[self.twins] if transform.mirrored else moved
        raise ValueError(f"{self.name}: {REDRAWS} random transforms in a row folded space. {problem}")


def prepare_case(
    case: CheckedCase,
    config: CascadeConfig,
    *,
    keep_sampler: bool = False,
    augmentation: Augmentation = NO_AUGMENTATION,
) -> TrainingCase:
    """Read a checked case's voxels and cut what training needs from them."""
    volume = read_volume(case.files.volume)
    sampler = Sampler(volume, config.intensity)
    grid = stage1_geometry(volume.geometry, config.stage1_spacing_mm, config.stage1_grid)
    margin = math.ceil(config.stage2_radius_mm / config.stage2_spacing_mm)
    size = config.displacement.patch_size + 2 * margin
    regions = np.stack(
        [sampler.sample(patch_geometry(p, config.stage2_spacing_mm, size)) for p in case.landmarks.positions_lps]
    )
    return TrainingCase(
        name=case.files.name,
        stage1_input=sampler.sample(grid),
        stage1_grid=grid,
        stage1_ijk=grid.lps_to_index(case.landmarks.positions_lps),
        regions=regions,
        margin=margin,
        landmarks_lps=case.landmarks.positions_lps,
        sampler=sampler if keep_sampler else None,
        augmenter=AugmentingSampler(sampler) if augmentation.enabled else None,
        twins=config.landmark_set.twin_permutation(),
        centre_lps=volume.geometry.centre_lps,
        extent_mm=volume.geometry.lps_extent_mm,
    )


def stage1_batch(
    cases: list[TrainingCase],
    batch_size: int,
    rng: Generator,
    config: CascadeConfig,
    augmentation: Augmentation = NO_AUGMENTATION,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs (B, 1, D, H, W) and heatmap targets (B, N + 1, D, H, W) for stage 1.

    With augmentation, each sample is the stage-1 grid seen through a random transform, with the landmarks
    carried along. In patch mode, each sample is a random cube of ``stage1_patch_size`` voxels; two in three are
    placed to contain a landmark, so the rare landmark voxels are seen often enough.
    """
    inputs, positions = [], []
    for _ in range(batch_size):
        case = cases[int(rng.integers(len(cases)))]
        if augmentation.enabled:
            transform, landmarks = case.random_view(augmentation, rng)
            array = case.augmenter.sample(case.stage1_grid, transform)
            array = change_intensity(array, augmentation, rng, config.stage1_spacing_mm)
            ijk = case.stage1_grid.lps_to_index(landmarks)
        else:
            array, ijk = case.stage1_input, case.stage1_ijk
        if config.stage1_mode == "patch":
            patch = config.stage1_patch_size
            upper = np.maximum(np.asarray(array.shape[::-1]) - patch, 0)  # (i, j, k)
            if rng.random() < 2 / 3:
                centre = ijk[int(rng.integers(len(ijk)))]
                start = np.clip(np.round(centre - rng.integers(4, patch - 4, size=3)), 0, upper).astype(int)
            else:
                start = np.array([int(rng.integers(u + 1)) for u in upper])
            i, j, k = start
            array = array[k : k + patch, j : j + patch, i : i + patch]
            ijk = ijk - start
        inputs.append(array)
        positions.append(ijk)
    volume = torch.from_numpy(np.stack(inputs)[:, None].copy())
    landmarks = torch.from_numpy(np.stack(positions).astype(np.float32))
    targets = gaussian_targets(
        landmarks, tuple(volume.shape[2:]), sigma=config.heatmap_sigma, height=config.heatmap_height
    )
    return volume, targets


def stage2_batch(
    cases: list[TrainingCase],
    batch_size: int,
    rng: Generator,
    config: CascadeConfig,
    augmentation: Augmentation = NO_AUGMENTATION,
    near_share: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Patches (B, N, P, P, P) centred on random points ``q`` near each landmark, and targets ``landmark - q``
    (B, N, 3) in LPS mm.

    ``q`` is drawn uniformly in the ball of the stage-2 radius round the landmark; in such a ball few points lie
    near the middle (1.6% within a quarter of the radius), so a ``near_share`` of the draws is taken from the
    ball of a quarter the radius instead: that is where the last pass of a multi-pass detection works.
    """
    patch = config.displacement.patch_size
    spacing = config.stage2_spacing_mm
    patches, targets = [], []
    for _ in range(batch_size):
        case = cases[int(rng.integers(len(cases)))]
        if augmentation.enabled:
            sample_patches, sample_targets = _augmented_patches(case, augmentation, rng, config, near_share)
        else:
            margin = case.margin
            sample_patches, sample_targets = [], []
            for region in case.regions:
                radius = _draw_radius(rng, config.stage2_radius_mm, near_share) / spacing
                offset = _offset_in_ball(rng, margin, radius)  # (i, j, k) voxels
                i, j, k = offset + margin
                sample_patches.append(region[k : k + patch, j : j + patch, i : i + patch])
                sample_targets.append(-offset * spacing)  # the landmark seen from q, along L, P, S
        patches.append(np.stack(sample_patches))
        targets.append(np.stack(sample_targets))
    return torch.from_numpy(np.stack(patches)), torch.from_numpy(np.stack(targets).astype(np.float32))


def _augmented_patches(
    case: TrainingCase, augmentation: Augmentation, rng: Generator, config: CascadeConfig, near_share: float
):
    """Stage-2 patches around each landmark of one random transform of the case, and their targets (mm)."""
    transform, landmarks = case.random_view(augmentation, rng)
    patches, targets = [], []
    for position in landmarks:
        direction = rng.normal(size=3)
        radius = _draw_radius(rng, config.stage2_radius_mm, near_share)
        offset = direction / np.linalg.norm(direction) * radius * rng.random() ** (1 / 3)
        geometry = patch_geometry(position + offset, config.stage2_spacing_mm, config.displacement.patch_size)
        patch = case.augmenter.sample(geometry, transform)
        patches.append(change_intensity(patch, augmentation, rng, config.stage2_spacing_mm))
        targets.append(-offset)
    return patches, targets


def _draw_radius(rng: Generator, radius_mm: float, near_share: float) -> float:
    """The stage-2 radius, or for a ``near_share`` of the draws a quarter of it (no draw at all when the share is
    0, so that default training keeps its random sequence)."""
    return radius_mm * NEAR_RADIUS if near_share > 0 and rng.random() < near_share else radius_mm


def _offset_in_ball(rng: Generator, margin: int, radius_voxels: float) -> np.ndarray:
    while True:
        offset = rng.integers(-margin, margin + 1, size=3)
        if np.linalg.norm(offset) <= radius_voxels:
            return offset
