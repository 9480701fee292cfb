"""Stage 1: the heatmap-regression 3D U-Net of Tan et al., "A Cascade Regression Model for Anatomical Landmark
Detection".

A customised 3D U-Net: at each level two 3x3x3 convolutions with 'same' padding and ReLU; max-pooling down,
up-convolution (transposed convolution, stride 2) up, skip connections by concatenation. The last layer maps to
N + 1 channels (background and one per landmark), normalised so that channels sum to one by fixing the
background channel (:func:`~cascade_landmarks.model.heatmaps.normalise_channels`). Deep supervision: the three
coarsest decoder levels (bottleneck included) each give a side output at their own resolution; the loss
compares each with the target averaged down to it (:func:`~cascade_landmarks.model.losses.heatmap_loss`), a
fraction of the cost of upsampling them to full size.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional

from .config import HeatmapUNetConfig
from .heatmaps import normalise_channels


def _double_convolution(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(in_channels, out_channels, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv3d(out_channels, out_channels, 3, padding=1),
        nn.ReLU(inplace=True),
    )


class HeatmapUNet(nn.Module):
    """Input (B, 1, D, H, W) -> heatmaps (B, N + 1, D, H, W), and during training the side outputs."""

    def __init__(self, config: HeatmapUNetConfig):
        super().__init__()
        self.config = config
        widths = [config.width * 2**level for level in range(config.depth + 1)]
        self.encoder = nn.ModuleList(
            _double_convolution(1 if level == 0 else widths[level - 1], widths[level]) for level in range(config.depth)
        )
        self.bottleneck = _double_convolution(widths[-2], widths[-1])
        self.upconvolutions = nn.ModuleList(
            nn.ConvTranspose3d(widths[level + 1], widths[level], 2, stride=2) for level in reversed(range(config.depth))
        )
        self.decoder = nn.ModuleList(
            _double_convolution(2 * widths[level], widths[level]) for level in reversed(range(config.depth))
        )
        self.head = nn.Conv3d(widths[0], config.landmarks + 1, 1)
        # Side outputs from the bottleneck and the decoder levels above it, coarsest first (at most three).
        side_levels = list(reversed(range(config.depth + 1)))[: min(3, config.depth)]
        self.side_levels = side_levels
        self.side_heads = nn.ModuleList(nn.Conv3d(widths[level], config.landmarks + 1, 1) for level in side_levels)

    def forward(self, volume: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Returns the normalised heatmaps (B, N + 1, D, H, W) and the side outputs (coarsest first, each at its
        level's size; empty unless training with deep supervision)."""
        size = volume.shape[2:]
        divisor = 2**self.config.depth
        if any(n % divisor for n in size):
            raise ValueError(f"U-Net input size {tuple(size)} must be divisible by {divisor} (2 ** depth).")
        # Contracting path: convolutions, keep the skip, max-pool.
        skips = []
        features = volume
        for block in self.encoder:
            features = block(features)
            skips.append(features)
            features = functional.max_pool3d(features, 2)
        features = self.bottleneck(features)
        level_features = {self.config.depth: features}
        # Expanding path: up-convolution, concatenate the skip, convolutions.
        for step, (upconvolution, block) in enumerate(zip(self.upconvolutions, self.decoder, strict=True)):
            level = self.config.depth - 1 - step
            features = block(torch.cat([skips[level], upconvolution(features)], dim=1))
            level_features[level] = features
        heatmaps = normalise_channels(self.head(features))
        side_outputs = []
        if self.training and self.config.deep_supervision:
            for level, side_head in zip(self.side_levels, self.side_heads, strict=True):
                side_outputs.append(normalise_channels(side_head(level_features[level])))
        return heatmaps, side_outputs
