"""Calibrating the in-view decision of an "extent" model: for each landmark, the stage-1 heatmap peak below which
it is taken to be outside the image.

On each validation case, fields of view are cut at random as real scans come (``random_field_of_view``:
from a slab to the whole scan along the body's long axis, from a tight crop to the whole body across it), and
stage 1 runs on each as detection would (the box padded with air to the U-Net's multiple). For each landmark the
threshold chosen is the one that best tells the views holding it from those that do not (balanced accuracy: the
mean of the shares right among those present and among those absent), halfway between the peaks it separates;
a landmark seen only present, or only absent, takes the threshold of all landmarks together.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..inference.detector import locate_stage1
from ..io.cases import check_cases, find_cases
from ..model.devices import select_device
from ..model.model_file import CascadeModel, save_model
from .batches import TrainingCase, cut_box, prepare_case, random_field_of_view

FIELDS_OF_VIEW_PER_CASE = 32


@dataclass(frozen=True)
class PresenceCalibration:
    """The chosen thresholds and how well they separate the validation cases' landmarks.

    Attributes:
        thresholds: per landmark, the heatmap peak (relative to the target height) below which it is not in view.
        balanced_accuracy: per landmark, the mean of the shares of present and of absent views it decides right
            (NaN for a landmark seen only one way).
        overall: the balanced accuracy of all landmarks' decisions together.
        present, absent: how many landmark views of each kind they were chosen on.
    """

    thresholds: tuple[float, ...]
    balanced_accuracy: tuple[float, ...]
    overall: float
    present: int
    absent: int

    def to_dict(self) -> dict:
        return {
            "thresholds": [round(t, 4) for t in self.thresholds],
            "balanced_accuracy": [None if np.isnan(a) else round(a, 4) for a in self.balanced_accuracy],
            "overall_balanced_accuracy": round(self.overall, 4),
            "present": self.present,
            "absent": self.absent,
        }


def calibrate_presence(
    model: CascadeModel, cases: list[TrainingCase], device: torch.device, *, seed: int = 0
) -> PresenceCalibration | None:
    """Per-landmark presence thresholds that best separate present from absent landmarks in random fields of view
    of ``cases`` (None when they give no landmark of one kind or the other)."""
    config = model.config
    multiple = 2**config.unet.depth
    rng = np.random.default_rng([seed, 3])
    peaks, present, known = [], [], []
    for case in cases:
        for _ in range(FIELDS_OF_VIEW_PER_CASE):
            start, size = random_field_of_view(case.stage1_grid, rng)
            padded = -(-size // multiple) * multiple
            low = (padded - size) // 2
            air = [(low[axis], padded[axis] - size[axis] - low[axis]) for axis in (2, 1, 0)]  # [k, j, i]
            view = np.pad(cut_box(case.stage1_input, start, size), air)  # as detection pads a scan
            grid = case.stage1_grid
            box, padded_grid = grid.box(start, size), grid.box(start - low, padded)
            _, peak = locate_stage1(model, view, padded_grid, device)
            peaks.append(peak / config.heatmap_height)
            present.append(box.contains_lps(np.nan_to_num(case.landmarks_lps)) & case.placed)  # missing: never
            known.append(case.known)
    return best_thresholds(np.array(peaks), np.array(present, bool), np.array(known, bool))


def best_thresholds(peaks: np.ndarray, present: np.ndarray, known: np.ndarray) -> PresenceCalibration | None:
    """Per landmark (columns of ``peaks``, ``present``, ``known``; one row per view), the threshold with the best
    balanced accuracy among the known views; the overall threshold where a landmark was seen only one way."""
    overall = best_threshold(peaks[known], present[known])
    if overall is None:
        return None
    thresholds, accuracies = [], []
    for n in range(peaks.shape[1]):
        mine = known[:, n]
        own = best_threshold(peaks[mine, n], present[mine, n])
        thresholds.append(own[0] if own else overall[0])
        accuracies.append(own[1] if own else float("nan"))
    return PresenceCalibration(tuple(thresholds), tuple(accuracies), overall[1], int(present[known].sum()),
                               int((~present[known]).sum()))  # fmt: skip


def best_threshold(peaks: np.ndarray, present: np.ndarray) -> tuple[float, float] | None:
    """The threshold on ``peaks`` with the best balanced accuracy at telling ``present`` from absent, halfway
    between the two peaks it falls between, and that accuracy (None without both kinds)."""
    if not present.any() or present.all():
        return None
    values = np.unique(peaks)
    candidates = np.concatenate([[values[0] / 2], (values[:-1] + values[1:]) / 2, [(values[-1] + 1) / 2]])
    candidates = candidates[(candidates > 0) & (candidates < 1)]
    scores = [(np.mean(peaks[present] >= t) + np.mean(peaks[~present] < t)) / 2 for t in candidates]
    best = int(np.argmax(scores))
    return float(candidates[best]), float(scores[best])


def calibrate_model(
    model: CascadeModel, data: str | os.PathLike, output: str | os.PathLike, *, device: str = "auto", seed: int = 0
) -> tuple[CascadeModel, dict]:
    """Set an "extent" model's presence thresholds from the annotated cases of ``data`` (scans it was not trained
    on: the user's own held-out cases, say) and save it to ``output``; the model and the calibration's record.

    Only the thresholds change, not the weights; the record (``presence_calibration`` in the model's training
    record) names the cases.
    """
    if model.config.stage1_mode != "extent":
        raise ValueError(
            f"Model {model.name} has a {model.config.stage1_mode!r} stage 1, which puts every landmark in view: "
            "only an extent model (train --stage1-mode extent) has presence thresholds to calibrate."
        )
    output = Path(output)
    if output.exists():
        raise ValueError(f"{output} already exists: choose another output file.")
    cases = [prepare_case(case, model.config) for case in check_cases(find_cases(data), model.config.landmark_set,
                                                                         purpose="calibration")]  # fmt: skip
    original = model.device
    calibration = calibrate_presence(model.to(select_device(device)), cases, model.device, seed=seed)
    model.to(original)
    if calibration is None:
        raise ValueError(
            f"The cases of {data} give every landmark only in view, or only out of it, in random fields of view: "
            "calibrate on whole scans whose landmarks are placed."
        )
    model.config = model.config.with_detection_settings(presence_threshold=calibration.thresholds)
    record = {**calibration.to_dict(), "cases": [case.name for case in cases]}
    model.training = {**model.training, "presence_calibration": record}
    save_model(model, output)
    return model, record
