"""Stage-1 heatmaps: Gaussian targets, background-fixed normalisation, and sub-voxel decoding.

Tan et al., equation 1: for landmark ``i`` at voxel ``p_i`` the target at voxel ``v`` is
``k * exp(-|v - p_i|^2 / (2 sigma^2))``; the background channel is ``1 - k * exp(-|v - p_c|^2 / (2 sigma^2))``
with ``p_c`` the landmark closest to ``v``. Channel 0 is the background; channels 1..N the landmarks in the order
of the landmark set. Positions here are stage-1 voxel indices ``(i, j, k)``; arrays are ``[..., k, j, i]``.
"""

from __future__ import annotations

import numpy as np
import torch


def gaussian_targets(
    landmarks_ijk: torch.Tensor,
    shape: tuple[int, int, int],
    *,
    sigma: float,
    height: float,
    present: torch.Tensor | None = None,
) -> torch.Tensor:
    """Target heatmaps for a batch.

    Args:
        landmarks_ijk: voxel indices ``(i, j, k)`` of each landmark, shape (B, N, 3).
        shape: the grid, ``(n_k, n_j, n_i)``.
        sigma: Gaussian width in voxels.
        height: peak height ``k`` (at most 1).
        present: whether each landmark is in the grid, shape (B, N) of bool (default: all); the channel of one
            that is not is 0 everywhere, and its position is not read.

    Returns:
        shape (B, N + 1, n_k, n_j, n_i): background first, then one channel per landmark.
    """
    if present is not None:
        landmarks_ijk = torch.where(present[..., None], landmarks_ijk, torch.full_like(landmarks_ijk, -1e6))
    device = landmarks_ijk.device
    k, j, i = (torch.arange(n, device=device, dtype=torch.float32) for n in shape)
    # Squared distance along each axis, broadcast: (B, N, n) per axis.
    di = (i[None, None, :] - landmarks_ijk[..., 0:1]) ** 2
    dj = (j[None, None, :] - landmarks_ijk[..., 1:2]) ** 2
    dk = (k[None, None, :] - landmarks_ijk[..., 2:3]) ** 2
    squared = dk[..., :, None, None] + dj[..., None, :, None] + di[..., None, None, :]
    spots = height * torch.exp(-squared / (2.0 * sigma**2))
    # The closest landmark has the largest spot, so the background is one minus the largest spot.
    background = 1.0 - spots.amax(dim=1, keepdim=True)
    return torch.cat([background, spots], dim=1)


def normalise_channels(raw: torch.Tensor) -> torch.Tensor:
    """Network output to heatmaps that sum to one over channels, by fixing the background channel.

    The background channel is kept as the network gives it, unclamped (so a channel may leave [0, 1] slightly;
    detection clips the peak height it reports). The landmark channels share the rest, ``1 - background``, in the
    proportions of a softmax over their own logits ``raw[:, 1:]``: unlike a softmax over all channels, background 0
    with one landmark channel at 1 is reachable, and where the background is 1 every landmark channel is 0.

    Args:
        raw: shape (B, N + 1, ...).
    """
    background = raw[:, :1]
    shares = torch.softmax(raw[:, 1:], dim=1)
    return torch.cat([background, (1.0 - background) * shares], dim=1)


def decode_peaks(heatmaps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sub-voxel maximum of each landmark channel.

    The arg-max alone is off by up to half a voxel along each axis. Around it, a parabola through the logarithm
    of the three values along each axis puts the peak of a Gaussian exactly; where a neighbour is zero or at the
    border, that axis keeps the arg-max.

    Args:
        heatmaps: landmark channels only, shape (N, n_k, n_j, n_i).

    Returns:
        positions ``(i, j, k)`` in voxels, shape (N, 3), and peak heights, shape (N,).
    """
    count, *shape = heatmaps.shape
    positions = np.zeros((count, 3))
    peaks = np.zeros(count)
    for channel in range(count):
        heat = heatmaps[channel]
        kji = np.array(np.unravel_index(int(np.argmax(heat)), heat.shape))
        peaks[channel] = heat[tuple(kji)]
        refined = kji.astype(float)
        for axis in range(3):
            if not 0 < kji[axis] < shape[axis] - 1:
                continue
            before, after = kji.copy(), kji.copy()
            before[axis] -= 1
            after[axis] += 1
            values = np.array([heat[tuple(before)], peaks[channel], heat[tuple(after)]], dtype=float)
            if np.any(values <= 0):
                continue
            low, mid, high = np.log(values)
            curvature = low - 2 * mid + high
            if curvature < 0:
                refined[axis] += float(np.clip(0.5 * (low - high) / curvature, -0.5, 0.5))
        positions[channel] = refined[::-1]
    return positions, peaks
