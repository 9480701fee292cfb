"""Stage 2: the displacement-regression CNNs of Tan et al., "A Cascade Regression Model for Anatomical Landmark
Detection", one per landmark.

Each landmark's network takes a patch at full resolution centred on the stage-1 estimate and regresses the
displacement from the patch centre to the landmark: four convolution layers, each followed by max-pooling, then
two fully connected layers, ReLU after every layer but the last. All N networks run as one module: their
layers are grouped convolutions (``groups=N``), so landmark ``i`` sees only its own patch and has its own
weights, exactly N separate networks, computed in one pass.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import DisplacementCNNConfig


class DisplacementCNN(nn.Module):
    """Patches (B, N, P, P, P), one per landmark -> displacements (B, N, 3) along (L, P, S), in units of the
    training target (mm)."""

    def __init__(self, config: DisplacementCNNConfig):
        super().__init__()
        self.config = config
        n = config.landmarks
        layers: list[nn.Module] = []
        in_channels = 1
        for out_channels in config.channels:
            layers += [
                nn.Conv3d(n * in_channels, n * out_channels, 3, padding=1, groups=n),
                nn.ReLU(inplace=True),
                nn.MaxPool3d(2),
            ]
            in_channels = out_channels
        self.features = nn.Sequential(*layers)
        reduced = config.patch_size // 16
        # Fully connected layers, per landmark: a grouped convolution over the whole remaining grid, then 1x1x1.
        self.fully_connected = nn.Sequential(
            nn.Conv3d(n * in_channels, n * config.hidden, reduced, groups=n),
            nn.ReLU(inplace=True),
            nn.Conv3d(n * config.hidden, n * 3, 1, groups=n),
        )

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        batch, count, *size = patches.shape
        if count != self.config.landmarks or any(s != self.config.patch_size for s in size):
            raise ValueError(
                f"Stage 2 expects patches of shape (B, {self.config.landmarks}, {self.config.patch_size}, ...), "
                f"got {tuple(patches.shape)}."
            )
        return self.fully_connected(self.features(patches)).reshape(batch, count, 3)
