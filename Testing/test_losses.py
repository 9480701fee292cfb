"""Losses of both stages, checked by hand."""

from __future__ import annotations

import math

import pytest
import torch

from cascade_landmarks.model.losses import euclidean_loss, exponential_weighted_mse, heatmap_loss


def test_exponential_weighted_mse_weights_each_voxel_by_exp_of_the_prediction():
    predicted = torch.tensor([0.0, 1.0, 0.5])
    target = torch.tensor([0.0, 0.0, 1.0])
    expected = (0.0 + math.e * 1.0 + math.exp(0.5) * 0.25) / 3
    assert exponential_weighted_mse(predicted, target).item() == pytest.approx(expected)


def test_exponential_weights_carry_no_gradient_of_their_own():
    predicted = torch.tensor([1.0], requires_grad=True)
    exponential_weighted_mse(predicted, torch.tensor([0.0])).backward()
    assert predicted.grad.item() == pytest.approx(2 * math.e)  # d/dp of e * p^2 at p = 1, weight held fixed


def test_deep_supervision_adds_the_side_outputs_weighted_point_3_6_9():
    target = torch.zeros(4)
    main = torch.full((4,), 0.1)
    sides = [torch.full((4,), value) for value in (0.2, 0.3, 0.4)]  # coarsest first
    each = [exponential_weighted_mse(x, target).item() for x in (main, *sides)]
    expected = each[0] + 0.3 * each[1] + 0.6 * each[2] + 0.9 * each[3]
    assert heatmap_loss(main, sides, target).item() == pytest.approx(expected)
    # A shallow network with one side output gives it the finest weight.
    assert heatmap_loss(main, sides[-1:], target).item() == pytest.approx(each[0] + 0.9 * each[3])


def test_coarse_side_outputs_are_compared_with_the_target_averaged_down():
    target = torch.zeros(1, 1, 4, 4, 4)
    target[0, 0, :2, :2, :2] = 1.0  # one coarse voxel's worth of heat
    main = target.clone()
    side = torch.zeros(1, 1, 2, 2, 2)
    side[0, 0, 0, 0, 0] = 1.0  # matches the averaged target exactly
    assert heatmap_loss(main, [side], target).item() == pytest.approx(0.0)
    side[0, 0, 1, 1, 1] = 0.5
    assert heatmap_loss(main, [side], target).item() == pytest.approx(0.9 * math.exp(0.5) * 0.25 / 8)


def test_euclidean_loss_is_the_mean_distance_in_mm():
    predicted = torch.tensor([[3.0, 4.0, 0.0], [0.0, 0.0, 0.0]])
    target = torch.zeros(2, 3)
    assert euclidean_loss(predicted, target).item() == pytest.approx(2.5)
