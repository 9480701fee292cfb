"""Calibrating the in-view decision of an "extent" model: the stage-1 heatmap peak below which a landmark is taken
to be outside the image.

On each validation case, fields of view are cut at random as training cuts them (cubes of the model's stage-1
grid size, reaching past the volume's edge); the peak of every known landmark is read, and the threshold chosen
is the one that best tells the landmarks inside the cube from those outside it (balanced accuracy: the mean of
the shares right among those present and among those absent), halfway between the peaks it separates.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..inference.detector import locate_stage1
from ..model.model_file import CascadeModel
from .batches import TrainingCase, cut_box, random_cube

FIELDS_OF_VIEW_PER_CASE = 16


@dataclass(frozen=True)
class PresenceCalibration:
    """The chosen threshold and how well it separates the validation cases' landmarks.

    Attributes:
        threshold: heatmap peak (relative to the target height) below which a landmark is not in view.
        balanced_accuracy: the mean of the shares of present and of absent landmarks it decides right.
        present, absent: how many landmark views of each kind it was chosen on.
    """

    threshold: float
    balanced_accuracy: float
    present: int
    absent: int

    def to_dict(self) -> dict:
        return {
            "threshold": round(self.threshold, 4),
            "balanced_accuracy": round(self.balanced_accuracy, 4),
            "present": self.present,
            "absent": self.absent,
        }


def calibrate_presence(
    model: CascadeModel, cases: list[TrainingCase], device: torch.device, *, seed: int = 0
) -> PresenceCalibration | None:
    """The presence threshold that best separates present from absent landmarks in random fields of view of
    ``cases`` (None when they give no landmark of one kind or the other)."""
    config = model.config
    rng = np.random.default_rng([seed, 3])
    peaks, present = [], []
    for case in cases:
        for _ in range(FIELDS_OF_VIEW_PER_CASE):
            grid = random_cube(case.stage1_grid, config.stage1_grid, case.landmarks_lps, rng, within=False)
            start = np.rint(case.stage1_grid.lps_to_index(grid.origin)).astype(int)
            _, peak = locate_stage1(model, cut_box(case.stage1_input, start, grid.size), grid, device)
            inside = grid.contains_lps(np.nan_to_num(case.landmarks_lps)) & case.placed  # missing: never inside
            peaks.extend(peak[case.known] / config.heatmap_height)
            present.extend(inside[case.known])
    return best_threshold(np.array(peaks), np.array(present, bool))


def best_threshold(peaks: np.ndarray, present: np.ndarray) -> PresenceCalibration | None:
    """The threshold on ``peaks`` with the best balanced accuracy at telling ``present`` from absent, halfway
    between the two peaks it falls between (None without both kinds)."""
    if not present.any() or present.all():
        return None
    values = np.unique(peaks)
    candidates = np.concatenate([[values[0] / 2], (values[:-1] + values[1:]) / 2, [(values[-1] + 1) / 2]])
    candidates = candidates[(candidates > 0) & (candidates < 1)]
    scores = [(np.mean(peaks[present] >= t) + np.mean(peaks[~present] < t)) / 2 for t in candidates]
    best = int(np.argmax(scores))
    return PresenceCalibration(float(candidates[best]), float(scores[best]), int(present.sum()), int((~present).sum()))
