"""Augmentation: every transform moves the landmarks exactly with the image, a mirror swaps paired labels, and
the defaults leave CTA training as it was."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from cascade_landmarks import Geometry, Volume
from cascade_landmarks.inference.preprocessing import Sampler, patch_geometry
from cascade_landmarks.io.landmark_sets import LandmarkDefinition, LandmarkSet
from cascade_landmarks.model.config import CascadeConfig, IntensityWindow
from cascade_landmarks.training.augmentation import AugmentingSampler, RandomTransform, change_intensity
from cascade_landmarks.training.batches import TrainingCase, stage1_batch, stage2_batch
from cascade_landmarks.training.config import NO_AUGMENTATION, PRESETS, Augmentation, TrainingConfig, with_settings

PAIRED = LandmarkSet(
    name="pair-3",
    title="a left/right pair and a midline point",
    description="",
    landmarks=(
        LandmarkDefinition("R", "right", "right dot", twin="L"),
        LandmarkDefinition("L", "left", "left dot", twin="R"),
        LandmarkDefinition("M", "middle", "midline dot"),
    ),
)
# LPS: the patient's right is -L. Dots of different brightness, so each can be told apart.
DOTS_LPS = np.array([[-20.0, 5.0, 3.0], [18.0, 4.0, 2.0], [1.0, -15.0, 12.0]])
DOT_VALUES = np.array([1.0, 0.6, 0.3])


def _dots_volume() -> Volume:
    geometry = Geometry(size=(64, 60, 56), spacing=(1.0, 1.1, 1.2), origin=(-32.0, -33.0, -30.0), direction=np.eye(3))
    k, j, i = np.indices(geometry.shape)
    points = geometry.index_to_lps(np.stack([i, j, k], axis=-1).reshape(-1, 3)).reshape(*geometry.shape, 3)
    array = np.zeros(geometry.shape)
    for dot, value in zip(DOTS_LPS, DOT_VALUES, strict=True):
        array += value * np.exp(-np.sum((points - dot) ** 2, axis=-1) / (2 * 1.5**2))
    return Volume(array=array.astype(np.float32), geometry=geometry)


def _centroid_near(sampler: AugmentingSampler, transform, point_lps: np.ndarray) -> tuple[np.ndarray, float]:
    """Intensity-weighted centre of the augmented image in a 9 mm cube around ``point_lps``, and its peak."""
    cube = patch_geometry(point_lps, 0.5, 18)
    values = sampler.sample(cube, transform)
    k, j, i = np.indices(cube.shape)
    points = cube.index_to_lps(np.stack([i, j, k], axis=-1).reshape(-1, 3))
    weights = np.clip(values.ravel() - 0.5 * values.max(), 0, None)
    return (points * weights[:, None]).sum(0) / weights.sum(), float(values.max())


SPATIAL = {
    "rotation": Augmentation(rotation_degrees=25.0),
    "scaling": Augmentation(scaling=0.2),
    "shear": Augmentation(shear=0.15),
    "translation": Augmentation(translation_mm=10.0),
    "elastic": Augmentation(elastic_mm=3.0),
    # The strain of elastic_mm=3, elastic_grid=9 over a 200 mm brain, on this 64 mm box.
    "fine elastic": Augmentation(elastic_mm=1.0, elastic_grid=9),
    "mirror": Augmentation(mirror_probability=1.0),
    "one-shot preset": PRESETS["one-shot"],
}


def test_without_a_transform_training_reads_what_detection_reads(oblique_volume):
    """A model sees at detection what it saw in training: the augmenting sampler (torch) against the detection
    sampler (SimpleITK), on an oblique volume in Hounsfield units with a window that clips, over a patch that
    reaches past the volume's edge (all but the outermost voxel's outer half, where they are known to differ)."""
    sampler = Sampler(oblique_volume, IntensityWindow("fixed", -200.0, 300.0))
    geometry = oblique_volume.geometry
    for centre in (geometry.centre_lps, geometry.index_to_lps(np.array([2.0, 3.0, 1.0]))):
        patch = patch_geometry(centre, 0.7, 24)
        k, j, i = np.indices(patch.shape)
        index = geometry.lps_to_index(patch.index_to_lps(np.stack([i, j, k], axis=-1)))
        inside = np.all((index >= 0) & (index <= np.asarray(geometry.size) - 1), axis=-1)
        outside = np.any((index <= -1) | (index >= np.asarray(geometry.size)), axis=-1)
        compared = inside | outside
        assert compared.mean() > 0.8
        expected = sampler.sample(patch)
        assert 0.0 < expected[inside].mean() < 1.0
        np.testing.assert_allclose(
            AugmentingSampler(sampler).sample(patch, None)[compared], expected[compared], atol=2e-4
        )
        assert np.all(expected[outside] == 0.0)  # beyond the volume: the window's lower bound


@pytest.mark.parametrize("name", SPATIAL)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_each_landmark_stays_on_its_dot_under_every_transform(name, seed):
    volume = _dots_volume()
    sampler = AugmentingSampler(Sampler(volume, IntensityWindow("fixed", 0.0, 1.0)))
    rng = np.random.default_rng(seed)
    transform = RandomTransform(SPATIAL[name], rng, centre_lps=(0.0, 0.0, 0.0), extent_mm=volume.geometry.extent_mm)
    moved = transform.to_output(DOTS_LPS)
    np.testing.assert_allclose(transform.to_input(moved), DOTS_LPS, atol=1e-5)  # the inverse is exact
    for index, position in enumerate(moved):
        centroid, peak = _centroid_near(sampler, transform, position)
        assert np.linalg.norm(centroid - position) < 0.25, (name, index, centroid, position)
        assert peak == pytest.approx(DOT_VALUES[index], rel=0.25)  # and it is this landmark's own dot


def test_a_mirror_swaps_the_labels_of_paired_landmarks():
    volume = _dots_volume()
    sampler = AugmentingSampler(Sampler(volume, IntensityWindow("fixed", 0.0, 1.0)))
    case = TrainingCase(
        name="dots", stage1_input=None, stage1_grid=None, regions=None, margin=0, landmarks_lps=DOTS_LPS,
        known=np.ones(3, bool), twins=PAIRED.twin_permutation(), centre_lps=np.zeros(3),
        extent_mm=volume.geometry.extent_mm,
    )  # fmt: skip
    transform, labelled, _ = case.random_view(Augmentation(mirror_probability=1.0), np.random.default_rng(0))
    assert transform.mirrored
    # "R" is still on the patient's right (negative L), and it is the dot that was the left one.
    assert labelled[0, 0] < 0
    assert labelled[1, 0] > 0
    assert _centroid_near(sampler, transform, labelled[0])[1] == pytest.approx(DOT_VALUES[1], rel=0.25)
    assert _centroid_near(sampler, transform, labelled[1])[1] == pytest.approx(DOT_VALUES[0], rel=0.25)
    assert _centroid_near(sampler, transform, labelled[2])[1] == pytest.approx(DOT_VALUES[2], rel=0.25)


def test_a_draw_that_folds_space_is_drawn_again_and_settings_that_always_fold_are_refused():
    case = TrainingCase(
        name="dots", stage1_input=None, stage1_grid=None, regions=None, margin=0, landmarks_lps=DOTS_LPS,
        known=np.ones(3, bool), twins=PAIRED.twin_permutation(), centre_lps=np.zeros(3), extent_mm=np.full(3, 64.0),
    )  # fmt: skip
    # 4 mm control spacing on this 64 mm box: a 1.5 mm displacement folds space about one draw in five (so twenty
    # draws meet a fold with near certainty), 10 mm always does.
    rng = np.random.default_rng(0)
    for _ in range(20):
        transform, moved, _ = case.random_view(Augmentation(elastic_mm=1.5, elastic_grid=17), rng)
        np.testing.assert_allclose(transform.to_input(moved), DOTS_LPS, atol=1e-5)  # each draw used is exact
    with pytest.raises(ValueError, match=r"dots: 10 random transforms in a row folded space\..*lower elastic_mm"):
        case.random_view(Augmentation(elastic_mm=10.0, elastic_grid=17), rng)


def test_intensity_changes_keep_the_image_finite_and_vary_it():
    array = np.random.default_rng(0).random((12, 12, 12)).astype(np.float32)
    changed = change_intensity(array, PRESETS["one-shot"], np.random.default_rng(1), spacing_mm=1.0)
    assert changed.shape == array.shape
    assert np.all(np.isfinite(changed))
    assert not np.allclose(changed, array)


def test_the_bias_field_is_a_full_quadratic_polynomial():
    """Every polynomial of degree two in the voxel position is a bias field the augmentation can draw (its terms
    span the ten monomials up to degree two but the constant, which the mean-free squares stand in for)."""
    from cascade_landmarks.training.augmentation import BIAS_FIELD_TERMS, _bias_field

    shape = (7, 6, 5)
    fields = np.stack([_bias_field(shape, np.eye(BIAS_FIELD_TERMS)[n]).ravel() for n in range(BIAS_FIELD_TERMS)])
    k, j, i = (axis.ravel() for axis in np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    monomials = np.stack([np.ones_like(i), i, j, k, i * j, j * k, i * k, i**2, j**2, k**2])
    assert np.linalg.matrix_rank(np.vstack([fields, np.ones_like(i)])) == 10
    assert np.linalg.matrix_rank(np.vstack([fields, monomials])) == 10  # nothing outside the quadratics


def test_settings_of_a_preset_can_be_changed_one_by_one():
    changed = with_settings(PRESETS["one-shot"], ["elastic_grid=9", "elastic-mm=3"])
    assert changed == replace(PRESETS["one-shot"], elastic_grid=9, elastic_mm=3.0)
    with pytest.raises(ValueError, match="'elastc=3': give NAME=VALUE with NAME one of rotation_degrees, "):
        with_settings(PRESETS["one-shot"], ["elastc=3"])
    with pytest.raises(ValueError, match=r"'elastic_grid=9\.5': '9\.5' is not a whole number"):
        with_settings(PRESETS["one-shot"], ["elastic_grid=9.5"])
    with pytest.raises(ValueError, match="mirror_probability must lie in"):
        with_settings(PRESETS["none"], ["mirror_probability=2"])


def test_the_defaults_leave_cta_training_as_it_was(synthetic_data):
    from cascade_landmarks.bench.phantoms.spheres import SPHERES_SET
    from cascade_landmarks.io.cases import check_cases, find_cases
    from cascade_landmarks.training.batches import prepare_case

    assert TrainingConfig().augmentation == NO_AUGMENTATION
    assert not PRESETS["none"].enabled
    config = CascadeConfig.default(SPHERES_SET, stage1_spacing_mm=3.0, stage1_grid=(20, 20, 20),
                                   stage2_spacing_mm=1.5, patch_size=16, unet_depth=2)  # fmt: skip
    case = prepare_case(check_cases(find_cases(synthetic_data / "train"), SPHERES_SET)[0], config)
    assert case.augmenter is None
    volume, _, _ = stage1_batch([case], 1, np.random.default_rng(0), config)
    np.testing.assert_array_equal(volume[0, 0].numpy(), case.stage1_input)  # the image itself, untouched
    patches, targets, _ = stage2_batch([case], 1, np.random.default_rng(0), config)
    assert patches.shape == (1, 3, 16, 16, 16)
    assert np.all(np.abs(targets.numpy()) % 1.5 < 1e-6)  # offsets on the stage-2 voxel grid, as before


def test_augmented_batches_put_the_targets_where_the_landmarks_went(synthetic_data):
    from cascade_landmarks.bench.phantoms.spheres import SPHERES_SET
    from cascade_landmarks.io.cases import check_cases, find_cases
    from cascade_landmarks.model.heatmaps import decode_peaks
    from cascade_landmarks.training.batches import prepare_case

    config = CascadeConfig.default(SPHERES_SET, stage1_spacing_mm=3.0, stage1_grid=(20, 20, 20),
                                   stage2_spacing_mm=1.5, patch_size=16, unet_depth=2)  # fmt: skip
    augmentation = Augmentation(rotation_degrees=20.0, translation_mm=5.0)
    case = prepare_case(check_cases(find_cases(synthetic_data / "train"), SPHERES_SET)[0], config,
                        augmentation=augmentation)  # fmt: skip
    volume, targets, _ = stage1_batch([case], 1, np.random.default_rng(4), config, augmentation)
    peaks, _ = decode_peaks(targets[0, 1:].numpy())
    # The brightest sphere (landmark 3) is where its target heat peaks: bright input under the peak.
    i, j, k = np.rint(peaks[2]).astype(int)
    assert volume[0, 0, k, j, i] > 0.75
