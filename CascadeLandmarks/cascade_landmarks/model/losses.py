"""Training losses of both stages (Tan et al.).

- Stage 1: mean squared error weighted per voxel by the exponential of the predicted value, which puts weight
  where the network predicts heat (the few landmark voxels among millions of background ones), plus deep
  supervision: side outputs weighted 0.3, 0.6 and 0.9 from the coarsest to the finest, each compared with the
  target averaged down to its own size.
- Stage 2: Euclidean distance between the predicted and the true displacement, in millimetres.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.nn import functional

DEEP_SUPERVISION_WEIGHTS = (0.3, 0.6, 0.9)


def exponential_weighted_mse(
    predicted: torch.Tensor, target: torch.Tensor, known: torch.Tensor | None = None
) -> torch.Tensor:
    """``mean(exp(predicted) * (predicted - target)^2)`` over every voxel and channel.

    The weight ``exp(predicted)`` is treated as a constant (no gradient flows through it), so it weights the
    squared error without adding a pull of its own towards low predictions. ``known`` (B, C), 1 or 0 per sample and
    channel, leaves out the channels of landmarks whose place is not known (a case annotated in part).
    """
    weight = torch.exp(predicted.detach())
    if known is not None:
        weight = weight * known.reshape(*known.shape, *[1] * (predicted.dim() - 2))
    return torch.mean(weight * (predicted - target) ** 2)


def heatmap_loss(
    outputs: torch.Tensor, side_outputs: Sequence[torch.Tensor], target: torch.Tensor, known: torch.Tensor | None = None
) -> torch.Tensor:
    """Main output loss plus the deep-supervision side outputs (coarsest first), each weighted as the paper
    (``known``: as for :func:`exponential_weighted_mse`)."""
    if len(side_outputs) > len(DEEP_SUPERVISION_WEIGHTS):
        raise ValueError(f"At most {len(DEEP_SUPERVISION_WEIGHTS)} side outputs, got {len(side_outputs)}.")
    # With fewer than three side outputs (a shallow network), the finest ones keep the finest weights.
    weights = DEEP_SUPERVISION_WEIGHTS[len(DEEP_SUPERVISION_WEIGHTS) - len(side_outputs) :]
    loss = exponential_weighted_mse(outputs, target, known)
    for weight, side in zip(weights, side_outputs, strict=True):
        side_target = target if side.shape == target.shape else functional.adaptive_avg_pool3d(target, side.shape[2:])
        loss = loss + weight * exponential_weighted_mse(side, side_target, known)
    return loss


def euclidean_loss(
    predicted_mm: torch.Tensor, target_mm: torch.Tensor, known: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean Euclidean distance between displacements, shape (..., 3), in mm, over those whose landmark is placed
    (``known``, shape (...), 1 or 0; all by default)."""
    distances = torch.linalg.vector_norm(predicted_mm - target_mm, dim=-1)
    if known is None:
        return distances.mean()
    return (distances * known).sum() / known.sum().clamp(min=1.0)
