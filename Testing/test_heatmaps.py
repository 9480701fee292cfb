"""Stage-1 heatmaps: Gaussian targets, the background-fixed normalisation and sub-voxel decoding, checked on tiny
arrays by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cascade_landmarks.model.heatmaps import decode_peaks, gaussian_targets, normalise_channels


def test_gaussian_targets_follow_equation_one():
    landmarks = torch.tensor([[[1.0, 2.0, 3.0], [4.0, 2.0, 3.0]]])  # (B=1, N=2, (i, j, k))
    targets = gaussian_targets(landmarks, (5, 4, 6), sigma=1.5, height=0.8)
    assert targets.shape == (1, 3, 5, 4, 6)
    # At landmark 1 (i=1, j=2, k=3): its channel holds k, the background 1 - k.
    assert targets[0, 1, 3, 2, 1].item() == pytest.approx(0.8)
    assert targets[0, 0, 3, 2, 1].item() == pytest.approx(0.2)
    # One voxel away along i: k * exp(-1 / (2 sigma^2)).
    assert targets[0, 1, 3, 2, 2].item() == pytest.approx(0.8 * math.exp(-1 / 4.5))
    # At i = 3 the closest landmark is landmark 2 (distance 1): background = 1 - k exp(-1 / (2 sigma^2)).
    assert targets[0, 0, 3, 2, 3].item() == pytest.approx(1 - 0.8 * math.exp(-1 / 4.5))


def test_normalisation_fixes_the_background_and_shares_the_rest():
    raw = torch.tensor([0.25, 0.0, math.log(3.0)]).reshape(1, 3, 1)
    out = normalise_channels(raw)[0, :, 0]
    assert out.tolist() == pytest.approx([0.25, 0.75 * 0.25, 0.75 * 0.75])
    assert out.sum().item() == pytest.approx(1.0)


def test_normalisation_keeps_a_one_hot_peak_that_a_softmax_flattens():
    # A confident output: background 0, landmark 1 certain, among five landmarks.
    raw = torch.tensor([0.0, 30.0, -30.0, -30.0, -30.0, -30.0]).reshape(1, 6, 1)
    assert normalise_channels(raw)[0, 1, 0].item() == pytest.approx(1.0)
    one_hot = torch.tensor([1.0, 0, 0, 0, 0, 0])
    assert torch.softmax(one_hot, 0)[0].item() == pytest.approx(math.e / (math.e + 5))  # 0.35: what DESIGN warns of
    random = normalise_channels(torch.randn(2, 6, 3, 3, 3))
    torch.testing.assert_close(random.sum(dim=1), torch.ones(2, 3, 3, 3))


def _gaussian(shape, centre_ijk, sigma=1.5):
    k, j, i = np.indices(shape, dtype=float)
    return np.exp(-((i - centre_ijk[0]) ** 2 + (j - centre_ijk[1]) ** 2 + (k - centre_ijk[2]) ** 2) / (2 * sigma**2))


def test_sub_voxel_decoding_finds_a_gaussian_peak_that_the_argmax_misses():
    centres = np.array([[3.3, 4.7, 5.2], [7.5, 2.25, 3.0]])
    heat = np.stack([_gaussian((9, 8, 10), c) for c in centres])
    positions, peaks = decode_peaks(heat)
    np.testing.assert_allclose(positions, centres, atol=1e-6)
    argmax = np.array([np.unravel_index(np.argmax(h), h.shape)[::-1] for h in heat])
    assert np.abs(argmax - centres).max() >= 0.45  # what decoding removes: up to half a voxel per axis
    assert peaks[0] == pytest.approx(heat[0].max())


def test_decoding_keeps_the_argmax_at_the_border_and_where_heat_is_zero():
    heat = np.zeros((1, 5, 5, 5))
    heat[0, 0, 2, 4] = 1.0  # on the border along k and i, isolated along j
    positions, peaks = decode_peaks(heat)
    np.testing.assert_array_equal(positions[0], [4.0, 2.0, 0.0])
    assert peaks[0] == 1.0
