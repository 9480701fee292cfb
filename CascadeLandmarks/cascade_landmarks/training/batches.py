"""Training samples of both stages, cut from cases read once.

Each batch is (inputs, targets, known): ``known`` says, per sample and landmark, whether the landmark's place is
known, so that a case annotated in part teaches what it has. A landmark is known when it is placed, or missing
(known not to be in the image: its heatmap is 0 everywhere); one absent from the case's file, or unplaced in it, is
not known: its channel and network are left out of the loss, and so is the sample's background channel, which
would say there is no landmark where that one may be.

Stage 1 sees, per mode: the whole volume on the model's fixed grid ("whole", the paper), cubes of that grid
("patch", the paper's ablation), or cubes of the model's grid size cut at random from the volume's own extent at
the stage-1 spacing ("extent"), often reaching past its edge, so that the network learns any field of view and
that a landmark outside the cube has no heat.

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
NEAR_LANDMARK_SHARE = 2 / 3  # share of stage-1 cubes placed to hold a landmark ("patch" and "extent" modes)
SCAN_END_SHARE = 0.5  # share of "extent" cubes in which the scan ends: air outside a random field of view
# The share of each axis a field of view keeps, drawn uniformly: along head-feet from a slab to the whole scan,
# across it from a tight crop round the aorta to the whole body.
LONG_AXIS_SHARE = (0.25, 1.0)
ACROSS_SHARE = (0.6, 1.0)
Generator = np.random.Generator
Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # inputs, targets, known


@dataclass
class TrainingCase:
    """A case prepared for training.

    Attributes:
        stage1_input: the stage-1 grid's intensities, float32, shape (n_k, n_j, n_i).
        stage1_grid: where that grid lies (in "extent" mode it covers the volume).
        regions: per landmark, the stage-2 grid around it, float32, shape (N, R, R, R) with
            ``R = patch + 2 * margin``; the landmark lies exactly at each region's centre (zeros when unplaced).
        margin: how many stage-2 voxels a patch centre may lie from the landmark along each axis.
        landmarks_lps: reference positions, LPS mm, shape (N, 3); NaN where a landmark is not placed.
        known: whether each landmark's place is known (placed, or missing from the image), shape (N,).
        sampler: kept for validation cases, to cut stage-2 patches anywhere.
        augmenter: kept when training augments, to sample the volume through random transforms.
        twins: for each landmark, the index of its left/right twin (itself without one).
        centre_lps, extent_mm: the volume's centre and LPS bounding box, around which transforms are drawn.
        weight: how often batches draw the case relative to the others.
    """

    name: str
    stage1_input: np.ndarray
    stage1_grid: Geometry
    regions: np.ndarray
    margin: int
    landmarks_lps: np.ndarray
    known: np.ndarray
    sampler: Sampler | None = None
    augmenter: AugmentingSampler | None = None
    twins: list[int] | None = None
    centre_lps: np.ndarray | None = None
    extent_mm: np.ndarray | None = None
    weight: float = 1.0

    @property
    def placed(self) -> np.ndarray:
        """Whether each landmark has a position, shape (N,)."""
        return np.all(np.isfinite(self.landmarks_lps), axis=1)

    def random_view(
        self, augmentation: Augmentation, rng: Generator
    ) -> tuple[RandomTransform | None, np.ndarray, np.ndarray]:
        """A random transform of this case, where its landmarks go (LPS mm, (N, 3), NaN where unplaced, in label
        order: a mirror swaps twins) and which are known; no transform and the landmarks as they are without
        spatial augmentation.

        A draw whose elastic part folds space (so that the landmarks cannot be carried) is drawn again; the
        augmentation settings are refused when that keeps happening.
        """
        if not augmentation.spatial:
            return None, self.landmarks_lps, self.known
        placed = self.placed
        for _ in range(REDRAWS):
            transform = RandomTransform(augmentation, rng, self.centre_lps, self.extent_mm)
            moved = np.full_like(self.landmarks_lps, np.nan)
            try:
                moved[placed] = transform.to_output(self.landmarks_lps[placed])
            except ValueError as error:
                problem = error
                continue
            if transform.mirrored:
                return transform, moved[self.twins], self.known[self.twins]
            return transform, moved, self.known
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
    grid = stage1_geometry(volume.geometry, config)
    margin = math.ceil(config.stage2_radius_mm / config.stage2_spacing_mm)
    size = config.displacement.patch_size + 2 * margin
    positions = case.landmarks.positions_lps
    regions = np.stack(
        [
            sampler.sample(patch_geometry(p, config.stage2_spacing_mm, size))
            if np.all(np.isfinite(p))
            else np.zeros((size,) * 3, np.float32)
            for p in positions
        ]
    )
    return TrainingCase(
        name=case.files.name,
        stage1_input=sampler.sample(grid),
        stage1_grid=grid,
        regions=regions,
        margin=margin,
        landmarks_lps=positions,
        known=case.landmarks.defined | case.landmarks.missing,
        sampler=sampler if keep_sampler else None,
        augmenter=AugmentingSampler(sampler) if augmentation.enabled else None,
        twins=config.landmark_set.twin_permutation(),
        centre_lps=volume.geometry.centre_lps,
        extent_mm=volume.geometry.lps_extent_mm,
        weight=case.files.weight,
    )


def draw_case(cases: list[TrainingCase], rng: Generator) -> TrainingCase:
    """A case drawn at random, each as often as its weight says (all alike: uniformly, as a plain folder)."""
    weights = np.array([case.weight for case in cases])
    if np.all(weights == weights[0]):
        return cases[int(rng.integers(len(cases)))]
    return cases[int(rng.choice(len(cases), p=weights / weights.sum()))]


def stage1_batch(
    cases: list[TrainingCase],
    batch_size: int,
    rng: Generator,
    config: CascadeConfig,
    augmentation: Augmentation = NO_AUGMENTATION,
) -> Batch:
    """Inputs (B, 1, D, H, W), heatmap targets (B, N + 1, D, H, W) and known channels (B, N + 1) for stage 1.

    With augmentation, each sample is seen through a random transform, with the landmarks carried along. In
    "patch" and "extent" modes each sample is a cube; two in three are placed to hold a landmark, so the rare
    landmark voxels are seen often enough. In "extent" mode half the cubes end the scan inside them (air outside a
    random field of view, and no heat for the landmarks there), as detection pads a scan smaller than its grid.
    """
    inputs, positions, present, known = [], [], [], []
    for _ in range(batch_size):
        case = draw_case(cases, rng)
        transform, landmarks, case_known = case.random_view(augmentation, rng)
        array, grid = _stage1_view(case, transform, landmarks, rng, config, augmentation)
        ijk = grid.lps_to_index(landmarks)
        inside = grid.contains_lps(landmarks)  # NaN rows: False
        if config.stage1_mode == "extent" and rng.random() < SCAN_END_SHARE:
            array, box = _end_the_scan(array, grid, rng)
            inside = box.contains_lps(landmarks)
        inputs.append(array)
        positions.append(np.nan_to_num(ijk))
        present.append(inside)
        known.append(case_known)
    volume = torch.from_numpy(np.stack(inputs)[:, None].copy())
    targets = gaussian_targets(
        torch.from_numpy(np.stack(positions).astype(np.float32)),
        tuple(volume.shape[2:]),
        sigma=config.heatmap_sigma,
        height=config.heatmap_height,
        present=torch.from_numpy(np.stack(present)),
    )
    known = np.stack(known)
    # The background is known only where every landmark is: near a landmark of unknown place it would teach "no
    # landmark here" where there may be one.
    channels = np.concatenate([known.all(axis=1, keepdims=True), known], axis=1)
    return volume, targets, torch.from_numpy(channels.astype(np.float32))


def _end_the_scan(array: np.ndarray, grid: Geometry, rng: Generator) -> tuple[np.ndarray, Geometry]:
    """A cube whose scan ends inside it: air (0) outside a random field of view of it, as detection pads a scan
    smaller than its grid; the array and the box that is left."""
    start, size = random_field_of_view(grid, rng)
    kept = tuple(slice(low, high) for low, high in zip(start[::-1], (start + size)[::-1], strict=True))
    ended = np.zeros_like(array)
    ended[kept] = array[kept]
    return ended, grid.box(start, size)


def _stage1_view(
    case: TrainingCase, transform, landmarks: np.ndarray, rng: Generator, config: CascadeConfig, augmentation
) -> tuple[np.ndarray, Geometry]:
    """One sample's stage-1 input and the grid it lies on."""
    if config.stage1_mode == "whole":
        grid = case.stage1_grid
    else:
        size = (config.stage1_patch_size,) * 3 if config.stage1_mode == "patch" else config.stage1_grid
        grid = random_cube(case.stage1_grid, size, landmarks, rng, within=config.stage1_mode == "patch")
    if augmentation.enabled:
        array = case.augmenter.sample(grid, transform)
        return change_intensity(array, augmentation, rng, config.stage1_spacing_mm), grid
    if grid is case.stage1_grid:
        return case.stage1_input, grid
    start = np.rint(case.stage1_grid.lps_to_index(grid.origin)).astype(int)
    return cut_box(case.stage1_input, start, grid.size), grid


def random_field_of_view(geometry: Geometry, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A box (start, size), in voxels, inside ``geometry``: a random share of each axis at a random place, most
    cut along the index axis nearest head-feet."""
    long_axis = int(np.argmax(np.abs(geometry.direction[2])))  # the index axis nearest LPS z (head-feet)
    size = np.empty(3, int)
    for axis in range(3):
        low, high = LONG_AXIS_SHARE if axis == long_axis else ACROSS_SHARE
        size[axis] = max(1, round(rng.uniform(low, high) * geometry.size[axis]))
    start = np.array([int(rng.integers(0, geometry.size[axis] - size[axis] + 1)) for axis in range(3)])
    return start, size


def random_cube(grid: Geometry, size, landmarks: np.ndarray, rng: Generator, *, within: bool) -> Geometry:
    """A cube of ``size`` voxels (i, j, k) on ``grid``'s voxels, at a random place: two in three hold a placed
    landmark, four voxels or more from its faces. ``within``: inside ``grid`` ("patch" mode); otherwise its centre
    lies in ``grid`` and the rest may reach past it ("extent" mode: a field of view cut anywhere)."""
    size = np.asarray(size)
    ijk = grid.lps_to_index(landmarks[np.all(np.isfinite(landmarks), axis=1)])
    lower, upper = (
        (np.zeros(3), np.asarray(grid.size) - size) if within else (-size // 2, np.asarray(grid.size) - size // 2)
    )
    upper = np.maximum(upper, lower)
    if len(ijk) and rng.random() < NEAR_LANDMARK_SHARE:
        centre = ijk[int(rng.integers(len(ijk)))]
        start = np.clip(np.round(centre - rng.integers(4, size - 4)), lower, upper)
    else:
        start = np.array([int(rng.integers(low, high + 1)) for low, high in zip(lower, upper, strict=True)])
    return grid.box(start.astype(int), size)


def cut_box(array: np.ndarray, start: np.ndarray, size) -> np.ndarray:
    """The box of ``size`` voxels (i, j, k) from ``start`` of a [k, j, i] array; 0 where it reaches past it (the
    windowed value of what lies outside a volume)."""
    out = np.zeros(tuple(size)[::-1], np.float32)
    low = np.maximum(start, 0)
    high = np.minimum(start + np.asarray(size), array.shape[::-1])
    if np.all(high > low):
        a, b = low - start, high - start
        out[a[2] : b[2], a[1] : b[1], a[0] : b[0]] = array[low[2] : high[2], low[1] : high[1], low[0] : high[0]]
    return out


def stage2_batch(
    cases: list[TrainingCase],
    batch_size: int,
    rng: Generator,
    config: CascadeConfig,
    augmentation: Augmentation = NO_AUGMENTATION,
    near_share: float = 0.0,
) -> Batch:
    """Patches (B, N, P, P, P) centred on random points ``q`` near each landmark, targets ``landmark - q``
    (B, N, 3) in LPS mm, and whether each landmark is placed (B, N): an unplaced one gets a blank patch, left out
    of the loss.

    ``q`` is drawn uniformly in the ball of the stage-2 radius round the landmark; in such a ball few points lie
    near the middle (1.6% within a quarter of the radius), so a ``near_share`` of the draws is taken from the
    ball of a quarter the radius instead: that is where the last pass of a multi-pass detection works.
    """
    patch = config.displacement.patch_size
    spacing = config.stage2_spacing_mm
    patches, targets, placed = [], [], []
    for _ in range(batch_size):
        case = draw_case(cases, rng)
        if augmentation.enabled:
            sample_patches, sample_targets, sample_placed = _augmented_patches(
                case, augmentation, rng, config, near_share
            )
        else:
            margin = case.margin
            sample_patches, sample_targets, sample_placed = [], [], case.placed
            for region in case.regions:
                radius = _draw_radius(rng, config.stage2_radius_mm, near_share) / spacing
                offset = _offset_in_ball(rng, margin, radius)  # (i, j, k) voxels
                i, j, k = offset + margin
                sample_patches.append(region[k : k + patch, j : j + patch, i : i + patch])
                sample_targets.append(-offset * spacing)  # the landmark seen from q, along L, P, S
        patches.append(np.stack(sample_patches))
        targets.append(np.stack(sample_targets))
        placed.append(sample_placed)
    return (
        torch.from_numpy(np.stack(patches)),
        torch.from_numpy(np.stack(targets).astype(np.float32)),
        torch.from_numpy(np.stack(placed).astype(np.float32)),
    )


def _augmented_patches(
    case: TrainingCase, augmentation: Augmentation, rng: Generator, config: CascadeConfig, near_share: float
):
    """Stage-2 patches around each landmark of one random transform of the case, their targets (mm), and which
    landmarks are placed."""
    transform, landmarks, _ = case.random_view(augmentation, rng)
    size = config.displacement.patch_size
    patches, targets = [], []
    for position in landmarks:
        direction = rng.normal(size=3)
        radius = _draw_radius(rng, config.stage2_radius_mm, near_share)
        offset = direction / np.linalg.norm(direction) * radius * rng.random() ** (1 / 3)
        if not np.all(np.isfinite(position)):
            patches.append(np.zeros((size,) * 3, np.float32))
            targets.append(np.zeros(3))
            continue
        geometry = patch_geometry(position + offset, config.stage2_spacing_mm, size)
        patch = case.augmenter.sample(geometry, transform)
        patches.append(change_intensity(patch, augmentation, rng, config.stage2_spacing_mm))
        targets.append(-offset)
    return patches, targets, np.all(np.isfinite(landmarks), axis=1)


def _draw_radius(rng: Generator, radius_mm: float, near_share: float) -> float:
    """The stage-2 radius, or for a ``near_share`` of the draws a quarter of it (no draw at all when the share is
    0, so that default training keeps its random sequence)."""
    return radius_mm * NEAR_RADIUS if near_share > 0 and rng.random() < near_share else radius_mm


def _offset_in_ball(rng: Generator, margin: int, radius_voxels: float) -> np.ndarray:
    while True:
        offset = rng.integers(-margin, margin + 1, size=3)
        if np.linalg.norm(offset) <= radius_voxels:
            return offset
