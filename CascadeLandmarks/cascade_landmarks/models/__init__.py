"""The two networks of the cascade, one file each: ``heatmap_unet`` (stage 1), ``displacement_cnn`` (stage 2)."""

from __future__ import annotations

from .displacement_cnn import DisplacementCNN, DisplacementCNNConfig
from .heatmap_unet import HeatmapUNet, HeatmapUNetConfig

__all__ = ["DisplacementCNN", "DisplacementCNNConfig", "HeatmapUNet", "HeatmapUNetConfig"]
