"""Detection: stage 1 (heatmaps on the whole downsampled volume) -> stage 2 (displacements from full-resolution
patches) -> points in LPS and RAS with a confidence each.

Stage 2 may run more than once (the model's ``stage2_passes``; the paper runs it once): each pass takes a new
patch centred where the last one left the point, so a point that stage 1 placed near the edge of stage 2's reach
is finished from the middle of a patch, where stage 2 is most precise. With the model's ``stage2_tolerance_mm``
the passes stop early, once none moves a point farther than that.

Confidence combines two signals a clinician can read: how high the stage-1 heatmap peak is (relative to the
training target's height), and how far the last stage-2 pass still moved the point (relative to the most it may
move). Both close to their best give a confidence near 1; a landmark below the model's ``flag_below`` is flagged
for checking.

A landmark is in view when its point lies in the volume and its heatmap peak reaches the model's
``presence_threshold``; one that is not is flagged, and reported as missing (no point).

Confidence cannot see a scan unlike any the model was trained on: a stage 1 with a fixed grid ("whole" and
"patch" modes) reads a landmark's position from the whole field of view, so on a scan cropped much tighter (or
wider) than the training scans it can put a point far off with a high heatmap peak. Detection with such a model
warns when the field of view differs from its stage-1 grid (fitted to the training scans) by more than
:data:`FIELD_OF_VIEW_FACTOR` along an axis. An "extent" model covers each scan's own field of view.
"""

from __future__ import annotations

import dataclasses
import os
import time

import numpy as np
import torch

from ..io.coordinates import Geometry
from ..io.volumes import Volume, read_volume
from ..model.config import CascadeConfig
from ..model.devices import computes_bfloat16_natively, select_device
from ..model.heatmap_unet import HeatmapUNet
from ..model.heatmaps import decode_peaks
from ..model.model_file import CascadeModel, load_model
from ..progress import ProgressCallback
from .detection import Detection
from .preprocessing import Sampler, stage1_geometry

FIELD_OF_VIEW_FACTOR = 1.5


def detect(
    volume: Volume | str | os.PathLike,
    model: CascadeModel | str | os.PathLike,
    *,
    device: str = "auto",
    progress: ProgressCallback | None = None,
    **settings,
) -> Detection:
    """Find the model's landmarks in ``volume`` (a :class:`Volume` or a volume file); the volume is not modified.

    Args:
        model: a loaded :class:`CascadeModel`, a model file or a registered model's name. A loaded model runs on
            ``device`` and is put back where it was afterwards.
        device: "auto", "cpu" or "cuda" (falls back to the CPU when there is no GPU).
        progress: called with (fraction done, step) as detection goes.
        settings: detection settings for this call only, in place of the model's (``stage2_passes``,
            ``stage2_tolerance_mm``, ``mirror_stage1``, ``mirror_stage2``: see :class:`CascadeConfig`); ``None``
            keeps the model's. The model itself is not changed.
    """
    report = progress or (lambda _fraction, _step: None)
    if not isinstance(volume, Volume):
        volume = read_volume(volume)
    if not isinstance(model, CascadeModel):
        model = load_model(model)
    if settings:
        model = dataclasses.replace(model, config=model.config.with_detection_settings(**settings))
    torch_device, home = select_device(device), model.device
    model.to(torch_device)
    model.stage1.to(memory_format=torch.channels_last_3d)  # the U-Net's 3-D convolutions run faster so on CPUs
    try:
        return _detect_on_device(volume, model, torch_device, report)
    finally:
        model.stage1.to(memory_format=torch.contiguous_format)
        model.to(home)


def _detect_on_device(volume: Volume, model: CascadeModel, device: torch.device, report: ProgressCallback):
    config = model.config
    model.stage1.eval()
    model.stage2.eval()
    seconds = {}

    started = time.perf_counter()
    report(0.0, "preparing stage 1 input")
    sampler = Sampler(volume, config.intensity)
    grid = stage1_geometry(volume.geometry, config)
    stage1_input = sampler.sample(grid)
    seconds["stage 1 input"] = time.perf_counter() - started

    started = time.perf_counter()
    report(0.2, "stage 1: heatmaps")
    stage1_lps, peaks = locate_stage1(model, stage1_input, grid, device)
    seconds["stage 1"] = time.perf_counter() - started

    started = time.perf_counter()
    report(0.7, "stage 2: refining")
    positions_lps, last_step = refine(model, sampler, stage1_lps, device)
    seconds["stage 2"] = time.perf_counter() - started
    report(1.0, "done")

    peak = np.clip(peaks / config.heatmap_height, 0.0, 1.0)
    agreement = 1.0 - np.clip(np.linalg.norm(last_step, axis=1) / config.stage2_radius_mm, 0.0, 1.0) ** 2
    confidence = np.nan_to_num(peak * agreement, nan=0.0)  # a broken model's NaN reads as no confidence at all
    in_view = volume.geometry.contains_lps(positions_lps) & (peak >= config.presence_thresholds)
    return Detection(
        labels=config.landmark_set.labels,
        descriptions=[d.description for d in config.landmark_set.landmarks],
        positions_lps=positions_lps,
        stage1_lps=stage1_lps,
        heatmap_peak=peak,
        stage2_shift_mm=np.linalg.norm(positions_lps - stage1_lps, axis=1),
        confidence=confidence,
        flagged=(confidence < config.flag_below) | ~in_view,
        in_view=in_view,
        model_name=model.name,
        model_sha256=model.sha256,
        seconds=seconds,
        warnings=field_of_view_warnings(volume.geometry, config),
    )


def field_of_view_warnings(geometry: Geometry, config: CascadeConfig) -> list[str]:
    """A warning when the volume's field of view (its LPS bounding box) is more than :data:`FIELD_OF_VIEW_FACTOR`
    times smaller or larger than the fixed stage-1 grid of a model that has one (not in "extent" mode) along an
    axis, else nothing."""
    if config.stage1_mode == "extent":
        return []
    volume_mm = geometry.lps_extent_mm
    grid_mm = np.asarray(config.stage1_grid) * config.stage1_spacing_mm
    ratio = volume_mm / grid_mm
    if np.all((ratio >= 1 / FIELD_OF_VIEW_FACTOR) & (ratio <= FIELD_OF_VIEW_FACTOR)):
        return []
    size = " x ".join(f"{v:.0f}" for v in volume_mm)
    grid = " x ".join(f"{v:.0f}" for v in grid_mm)
    if np.any(ratio < 1 / FIELD_OF_VIEW_FACTOR):
        return [
            f"The volume covers {size} mm (L x P x S), much less than the model's stage-1 field of view ({grid} mm, "
            "fitted to its training scans). Stage 1 reads positions from the whole field of view, so it may place "
            "landmarks far off on a tight crop. Check every point."
        ]
    return [
        f"The volume covers {size} mm (L x P x S), much more than the model's stage-1 field of view ({grid} mm), "
        "which sees only the middle of it: landmarks outside the middle cannot be found. Crop the volume around "
        "the anatomy, or check every point."
    ]


def locate_stage1(
    model: CascadeModel, stage1_input: np.ndarray, grid: Geometry, device: torch.device
) -> tuple[np.ndarray, np.ndarray]:
    """Stage 1's points (LPS mm, shape (N, 3)) and heatmap peak heights (N,) for an input on ``grid``.

    With the model's ``mirror_stage1``, the heatmaps are averaged with those of the left/right mirrored input,
    mirrored back, each landmark read from its twin's channel (the grid is LPS-aligned, so i runs right to left).
    """
    config = model.config
    heatmaps = predict_heatmaps(model.stage1, stage1_input, config, device)
    if config.mirror_stage1:
        mirrored = predict_heatmaps(model.stage1, np.ascontiguousarray(stage1_input[..., ::-1]), config, device)
        twins = config.landmark_set.twin_permutation()
        heatmaps[1:] = (heatmaps[1:] + mirrored[1:][twins][..., ::-1]) / 2
    indices, peaks = decode_peaks(heatmaps[1:])
    return grid.index_to_lps(indices), peaks


def predict_heatmaps(
    network: HeatmapUNet, stage1_input: np.ndarray, config: CascadeConfig, device: torch.device
) -> np.ndarray:
    """Normalised heatmaps (N + 1, n_k, n_j, n_i) for a stage-1 input (n_k, n_j, n_i), whole or by patches, in
    the model's ``stage1_precision``."""
    precision = config.stage1_precision
    bfloat16 = precision == "bfloat16" or (precision == "auto" and computes_bfloat16_natively(device))
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bfloat16):
        tensor = torch.from_numpy(stage1_input)[None, None].to(device, memory_format=torch.channels_last_3d)
        if config.stage1_mode != "patch":
            return network(tensor)[0][0].float().cpu().numpy()
        return _sliding_window(network, tensor, config.stage1_patch_size)[0].float().cpu().numpy()


def _sliding_window(network: HeatmapUNet, volume: torch.Tensor, patch: int) -> torch.Tensor:
    """Heatmaps of the patch-based stage 1: patches overlapping by half, averaged where they overlap."""
    size = volume.shape[2:]
    stride = patch // 2
    starts = [sorted({*range(0, max(n - patch, 0) + 1, stride), max(n - patch, 0)}) for n in size]
    total = torch.zeros((1, network.config.landmarks + 1, *size), device=volume.device)
    count = torch.zeros((1, 1, *size), device=volume.device)
    for z in starts[0]:
        for y in starts[1]:
            for x in starts[2]:
                window = (slice(None), slice(None), slice(z, z + patch), slice(y, y + patch), slice(x, x + patch))
                total[window] += network(volume[window])[0]
                count[window] += 1
    return total / count


def refine(
    model: CascadeModel, sampler: Sampler, stage1_lps: np.ndarray, device: torch.device
) -> tuple[np.ndarray, np.ndarray]:
    """Stage 2 run the model's ``stage2_passes`` times from stage 1's points, each pass from patches centred where
    the last left the points, or fewer once a pass moves no point farther than a positive ``stage2_tolerance_mm``;
    returns the points (LPS mm, (N, 3)) and the last pass's displacements ((N, 3))."""
    config = model.config
    points = stage1_lps
    for _ in range(config.stage2_passes):
        step = predict_displacements(model, sampler, points, device)
        points = points + step
        if np.linalg.norm(step, axis=1).max() <= config.stage2_tolerance_mm:
            break
    return points, step


def predict_displacements(
    model: CascadeModel, sampler: Sampler, centres_lps: np.ndarray, device: torch.device
) -> np.ndarray:
    """Stage-2 displacements (LPS mm, shape (N, 3)) from patches centred on ``centres_lps``, each limited to the
    model's stage-2 radius.

    With the model's ``mirror_stage2``, each displacement is averaged with the one its twin's network reads from
    the left/right mirrored patch, mirrored back (patches are LPS-aligned, so i runs right to left and the mirror
    about the patch centre flips the L component).
    """
    config = model.config
    patches = sampler.patches(centres_lps, config.stage2_spacing_mm, config.displacement.patch_size)
    displacement = _displacements(model, patches, device)
    if config.mirror_stage2:
        twins = config.landmark_set.twin_permutation()
        mirrored = _displacements(model, np.ascontiguousarray(patches[twins][..., ::-1]), device)[twins]
        mirrored[:, 0] *= -1.0
        displacement = (displacement + mirrored) / 2.0
    return limit_length(displacement, config.stage2_radius_mm)


def _displacements(model: CascadeModel, patches: np.ndarray, device: torch.device) -> np.ndarray:
    """Each landmark's network on its patch (N, P, P, P): displacements in mm, float64 (N, 3)."""
    with torch.inference_mode():
        return model.stage2(torch.from_numpy(patches)[None].to(device))[0].double().cpu().numpy()


def limit_length(vectors: np.ndarray, limit: float) -> np.ndarray:
    """``vectors`` (N, 3) scaled down where longer than ``limit``, keeping their direction."""
    length = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors * np.minimum(1.0, limit / np.maximum(length, 1e-12))
