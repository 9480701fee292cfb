"""The two networks: shapes, normalised outputs, deep supervision, and one independent CNN per landmark."""

from __future__ import annotations

import pytest
import torch

from cascade_landmarks.model.config import DisplacementCNNConfig, HeatmapUNetConfig
from cascade_landmarks.model.displacement_cnn import DisplacementCNN
from cascade_landmarks.model.heatmap_unet import HeatmapUNet


def test_unet_gives_normalised_heatmaps_and_three_side_outputs_while_training():
    torch.manual_seed(0)
    network = HeatmapUNet(HeatmapUNetConfig(landmarks=5, width=4, depth=3))
    volume = torch.randn(2, 1, 16, 24, 8)
    heatmaps, sides = network.train()(volume)
    assert heatmaps.shape == (2, 6, 16, 24, 8)
    torch.testing.assert_close(heatmaps.sum(dim=1), torch.ones(2, 16, 24, 8))
    # Side outputs at the bottleneck (1/8), and at 1/4 and 1/2 of the input size: coarsest first.
    assert [tuple(s.shape) for s in sides] == [(2, 6, 2, 3, 1), (2, 6, 4, 6, 2), (2, 6, 8, 12, 4)]
    for side in sides:
        torch.testing.assert_close(side.sum(dim=1), torch.ones(side.shape[:1] + side.shape[2:]))
    _, sides = network.eval()(volume)
    assert sides == []


def test_unet_refuses_an_input_it_cannot_pool():
    network = HeatmapUNet(HeatmapUNetConfig(landmarks=2, width=2, depth=3))
    with pytest.raises(ValueError, match="divisible by 8"):
        network(torch.zeros(1, 1, 12, 16, 16))


@pytest.mark.parametrize(
    ("settings", "phrase"), [({"landmarks": 0}, "at least one"), ({"landmarks": 2, "patch_size": 40}, "multiple of 16")]
)
def test_displacement_settings_are_checked_when_built(settings, phrase):
    with pytest.raises(ValueError, match=phrase):
        DisplacementCNNConfig(**settings)


def test_each_landmark_has_its_own_network_that_sees_only_its_own_patch():
    torch.manual_seed(0)
    network = DisplacementCNN(DisplacementCNNConfig(landmarks=3, patch_size=16, channels=(2, 2, 4, 4), hidden=8))
    patches = torch.randn(2, 3, 16, 16, 16)
    before = network(patches)
    assert before.shape == (2, 3, 3)
    changed = patches.clone()
    changed[:, 1] = torch.randn(2, 16, 16, 16)
    after = network(changed)
    torch.testing.assert_close(after[:, [0, 2]], before[:, [0, 2]])
    assert not torch.allclose(after[:, 1], before[:, 1])
