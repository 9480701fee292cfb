"""How a cascade model is built, as plain data saved inside the model file (no torch needed to read it):
:class:`CascadeConfig` (the landmark set, both stages' grids, detection settings), the settings of each network
(:class:`HeatmapUNetConfig` for stage 1, :class:`DisplacementCNNConfig` for stage 2) and :class:`IntensityWindow`
(how the model reads intensities). How a model is trained is
:class:`~cascade_landmarks.training.config.TrainingConfig`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace

import numpy as np

from ..io.landmark_sets import LandmarkSet
from ..io.volumes import Volume

STAGE1_MODES = ("whole", "patch", "extent")
STAGE1_PRECISIONS = ("auto", "float32", "bfloat16")
# Settings that change no weights: fine-tuning (``--init-from``) may set them anew.
DETECTION_SETTINGS = (
    "stage2_passes",
    "stage2_tolerance_mm",
    "mirror_stage1",
    "mirror_stage2",
    "presence_threshold",
    "stage1_precision",
)


@dataclass(frozen=True)
class IntensityWindow:
    """Maps intensities to about [0, 1]: ``(clip(x, low, high) - low) / (high - low)``.

    ``mode="fixed"``: ``low`` and ``high`` are intensities (Hounsfield units for CT).
    ``mode="percentile"``: ``low`` and ``high`` are percentiles of each volume (for MR, whose units are arbitrary).
    """

    mode: str = "fixed"
    low: float = -1000.0
    high: float = 2000.0

    def __post_init__(self) -> None:
        if self.mode not in ("fixed", "percentile"):
            raise ValueError(f"Intensity mode must be 'fixed' or 'percentile', not {self.mode!r}.")
        if not self.low < self.high:
            raise ValueError(f"Intensity window needs low < high, got {self.low} and {self.high}.")
        if self.mode == "percentile" and not 0 <= self.low < self.high <= 100:
            raise ValueError(f"Percentiles must lie in [0, 100], got {self.low} and {self.high}.")

    def bounds(self, volume: Volume) -> tuple[float, float]:
        """The intensities that map to 0 and 1 for this volume."""
        if self.mode == "fixed":
            return self.low, self.high
        sample = volume.array[:: max(1, volume.array.shape[0] // 64)]
        low, high = np.percentile(sample, [self.low, self.high])
        return float(low), float(max(high, low + 1e-6))

    def apply(self, array: np.ndarray, bounds: tuple[float, float]) -> np.ndarray:
        """``array`` windowed to [0, 1] as float32."""
        low, high = bounds
        return ((np.clip(array.astype(np.float32), low, high) - low) / (high - low)).astype(np.float32)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class HeatmapUNetConfig:
    """Settings of the stage-1 network, checked when built.

    Attributes:
        landmarks: number of landmarks N (the network outputs N + 1 channels).
        width: channels of the first level; each deeper level doubles them.
        depth: number of poolings; the input size must be divisible by ``2 ** depth``.
        deep_supervision: whether to compute the side outputs (training only; detection skips them).
    """

    landmarks: int
    width: int = 8
    depth: int = 3
    deep_supervision: bool = True

    def __post_init__(self) -> None:
        if self.landmarks < 1:
            raise ValueError(f"The U-Net needs at least one landmark, got {self.landmarks}.")
        if self.width < 1 or self.depth < 1:
            raise ValueError(f"U-Net width and depth must be positive, got {self.width} and {self.depth}.")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class DisplacementCNNConfig:
    """Settings of the stage-2 networks, checked when built.

    Attributes:
        landmarks: number of landmarks N (one network each).
        patch_size: patch edge in voxels; must be divisible by 16 (four poolings).
        channels: output channels of the four convolution layers, per landmark.
        hidden: units of the first fully connected layer, per landmark.
    """

    landmarks: int
    patch_size: int = 64
    channels: tuple[int, int, int, int] = (8, 16, 32, 32)
    hidden: int = 64

    def __post_init__(self) -> None:
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        if self.landmarks < 1:
            raise ValueError(f"Stage 2 needs at least one landmark, got {self.landmarks}.")
        if self.patch_size < 16 or self.patch_size % 16:
            raise ValueError(f"Stage-2 patch size must be a multiple of 16 (four poolings), got {self.patch_size}.")
        if len(self.channels) != 4 or min(self.channels) < 1 or self.hidden < 1:
            raise ValueError(f"Stage 2 needs four positive channel counts and hidden units, got {self.channels}.")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class CascadeConfig:
    """Everything needed to turn a volume into inputs for both stages and their outputs into points.

    Attributes:
        landmark_set: the landmarks, in channel order.
        stage1_spacing_mm: isotropic voxel size of the stage-1 grid (the paper: 4 x 0.4 mm for cardiac CTA).
        stage1_grid: stage-1 grid size (i, j, k) in voxels, centred on the volume; each divisible by 2 ** depth. In
            "extent" mode: the size of the cubes training cuts (detection covers the volume's own extent).
        stage1_mode: "whole" (the paper's method: the downsampled volume on the fixed ``stage1_grid``, fitted to
            the training scans' field of view), "patch" (the paper's ablation: the U-Net trained and run on patches
            of ``stage1_patch_size`` voxels of the same grid) or "extent" (any field of view: the U-Net runs on
            the volume's own extent at ``stage1_spacing_mm``, and was trained on cubes cut anywhere in and across
            the edge of its training scans).
        stage1_patch_size: patch edge for ``stage1_mode="patch"`` (the paper: 48).
        heatmap_sigma: Gaussian width of the targets, in stage-1 voxels.
        heatmap_height: Gaussian peak height ``k`` of the targets.
        unet: the stage-1 network.
        stage2_spacing_mm: isotropic voxel size of the stage-2 patches (the data's own resolution).
        stage2_radius_mm: how far from the landmark training patches are centred; at detection, the largest
            correction stage 2 may make.
        displacement: the stage-2 networks (patch size included).
        stage2_passes: how many times detection runs stage 2, each pass from a patch centred where the last left
            the point (the paper: once). Changes no weights, so a trained model can be given another count.
        stage2_tolerance_mm: with a positive value, stage 2 stops once a pass moves no point farther than this,
            after at most ``stage2_passes`` passes (the AFIDs model settles in about twice the passes on a brain
            it never saw as on its training image); 0 runs exactly ``stage2_passes`` passes. Changes no weights.
        mirror_stage1: average stage 1's heatmaps with those of the left/right mirrored volume, twin channels
            swapped (test-time mirroring; for left/right symmetric anatomy such as the brain, not for CTA of the
            heart). Changes no weights either.
        mirror_stage2: average each stage-2 displacement with the one its twin's network reads from the mirrored
            patch (test-time mirroring of stage 2; the same anatomy as ``mirror_stage1``). Changes no weights.
        intensity: intensity window applied to every input.
        flag_below: a landmark whose confidence is below this is flagged for checking.
        presence_threshold: a landmark whose stage-1 heatmap peak (relative to ``heatmap_height``) is below this
            is not in view (0: every landmark whose point lies in the volume is): one number for every landmark,
            or one per landmark. A model trained in "extent" mode learnt to leave a landmark outside the image
            without heat; training sets one per landmark from its validation cases. Changes no weights.
        stage1_precision: the number format stage 1's U-Net computes in at detection: "float32", "bfloat16"
            (about half the time on a CPU with native bfloat16; heatmap peaks move by up to a few hundredths and
            stage 1's points may jump between nearby peaks, which stage 2 settles: the cascade's mean error on
            the phantoms and the AFIDs brains stays within 0.01 mm, see the README's Speed section), or "auto":
            bfloat16 where the device computes it natively, float32 elsewhere. Training always computes in
            float32. Changes no weights.
    """

    landmark_set: LandmarkSet
    stage1_spacing_mm: float
    stage1_grid: tuple[int, int, int]
    stage2_spacing_mm: float
    stage2_radius_mm: float
    unet: HeatmapUNetConfig
    displacement: DisplacementCNNConfig
    stage1_mode: str = "whole"
    stage1_patch_size: int = 48
    heatmap_sigma: float = 3.0
    heatmap_height: float = 1.0
    intensity: IntensityWindow = field(default_factory=IntensityWindow)
    flag_below: float = 0.5
    stage2_passes: int = 1
    stage2_tolerance_mm: float = 0.0
    mirror_stage1: bool = False
    mirror_stage2: bool = False
    presence_threshold: float | tuple[float, ...] = 0.0
    stage1_precision: str = "auto"

    def __post_init__(self) -> None:
        object.__setattr__(self, "stage1_grid", tuple(int(n) for n in self.stage1_grid))
        if isinstance(self.presence_threshold, (list, tuple)):  # JSON gives a list
            object.__setattr__(self, "presence_threshold", tuple(float(t) for t in self.presence_threshold))
        n = len(self.landmark_set)
        if self.unet.landmarks != n or self.displacement.landmarks != n:
            raise ValueError(f"Both networks must have {n} landmarks, as landmark set {self.landmark_set.name}.")
        divisor = 2**self.unet.depth
        sizes = (self.stage1_patch_size,) if self.stage1_mode == "patch" else self.stage1_grid
        if self.stage1_mode not in STAGE1_MODES:
            raise ValueError(f"stage1_mode must be one of {STAGE1_MODES}, not {self.stage1_mode!r}.")
        if self.stage1_precision not in STAGE1_PRECISIONS:
            raise ValueError(f"stage1_precision must be one of {STAGE1_PRECISIONS}, not {self.stage1_precision!r}.")
        if len(self.stage1_grid) != 3 or any(s < divisor or s % divisor for s in (*sizes, *self.stage1_grid)):
            raise ValueError(
                f"Stage-1 grid {self.stage1_grid} (and patch size, in patch mode) must be three multiples of "
                f"{divisor} = 2 ** U-Net depth."
            )
        if self.stage1_mode == "patch" and min(self.stage1_grid) < self.stage1_patch_size:
            raise ValueError(
                f"Stage-1 grid {self.stage1_grid} must be at least the patch size {self.stage1_patch_size}."
            )
        if self.stage1_spacing_mm <= 0 or self.stage2_spacing_mm <= 0 or self.stage2_radius_mm <= 0:
            raise ValueError("Spacings and the stage-2 radius must be positive millimetres.")
        if self.stage2_passes < 1:
            raise ValueError(f"stage2_passes must be at least 1, not {self.stage2_passes}.")
        if self.stage2_tolerance_mm < 0:
            raise ValueError(
                f"stage2_tolerance_mm must be 0 (a fixed pass count) or more, not {self.stage2_tolerance_mm}."
            )
        if not 0 < self.heatmap_height <= 1 or self.heatmap_sigma <= 0:
            raise ValueError("Heatmap height must lie in (0, 1] and sigma must be positive.")
        thresholds = self.presence_thresholds
        if len(thresholds) != n or not np.all((thresholds >= 0) & (thresholds < 1)):
            raise ValueError(
                f"presence_threshold must be a number in [0, 1) or one per landmark ({n}), not "
                f"{self.presence_threshold}."
            )

    @property
    def presence_thresholds(self) -> np.ndarray:
        """The presence threshold of each landmark, shape (N,)."""
        thresholds = np.asarray(self.presence_threshold, float)
        return np.full(len(self.landmark_set), float(thresholds)) if thresholds.ndim == 0 else thresholds

    def detection_settings(self) -> dict:
        """The ``DETECTION_SETTINGS`` and their values."""
        return {name: getattr(self, name) for name in DETECTION_SETTINGS}

    def with_detection_settings(self, **settings) -> CascadeConfig:
        """This configuration with some of its ``DETECTION_SETTINGS`` changed (``None`` keeps the current value).

        They change how a trained model detects, not what it learnt, so they may change on a trained model.
        """
        unknown = sorted(set(settings) - set(DETECTION_SETTINGS))
        if unknown:
            raise ValueError(
                f"{', '.join(unknown)}: not detection settings; those are {', '.join(DETECTION_SETTINGS)}."
            )
        return replace(self, **{name: value for name, value in settings.items() if value is not None})

    def to_dict(self) -> dict:
        data = asdict(self)
        data["landmark_set"] = self.landmark_set.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict) -> CascadeConfig:
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(
                f"settings {', '.join(unknown)} are unknown to this CascadeLandmarks: the model was made by a newer "
                "version. Update CascadeLandmarks to use it."
            )
        data = dict(data)
        data["landmark_set"] = LandmarkSet.from_dict(data["landmark_set"])
        data["unet"] = HeatmapUNetConfig(**data["unet"])
        data["displacement"] = DisplacementCNNConfig(**data["displacement"])
        data["intensity"] = IntensityWindow(**data["intensity"])
        return cls(**data)

    @classmethod
    def default(
        cls,
        landmark_set: LandmarkSet,
        *,
        stage1_spacing_mm: float = 1.6,
        stage1_grid: tuple[int, int, int] = (128, 128, 128),
        stage2_spacing_mm: float = 0.4,
        patch_size: int = 64,
        unet_width: int = 8,
        unet_depth: int = 3,
        **settings,
    ) -> CascadeConfig:
        """The default model for ``landmark_set`` (the paper's cardiac settings unless told otherwise)."""
        n = len(landmark_set)
        radius = settings.pop("stage2_radius_mm", min(3.0 * stage1_spacing_mm, 0.35 * patch_size * stage2_spacing_mm))
        return cls(
            landmark_set=landmark_set,
            stage1_spacing_mm=stage1_spacing_mm,
            stage1_grid=stage1_grid,
            stage2_spacing_mm=stage2_spacing_mm,
            stage2_radius_mm=radius,
            unet=HeatmapUNetConfig(landmarks=n, width=unet_width, depth=unet_depth),
            displacement=DisplacementCNNConfig(landmarks=n, patch_size=patch_size),
            **settings,
        )
