"""Configuration as plain data: how a cascade model is built (:class:`CascadeConfig`, saved inside the model
file) and how it is trained (:class:`TrainingConfig`, saved beside it in the training summary)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace

from .augmentation import NO_AUGMENTATION, Augmentation
from .landmark_sets import LandmarkSet, landmark_set_from_dict
from .models import DisplacementCNNConfig, HeatmapUNetConfig
from .preprocessing import IntensityWindow

STAGE1_MODES = ("whole", "patch")
# Settings that change no weights: fine-tuning (``--init-from``) may set them anew.
DETECTION_SETTINGS = ("stage2_passes", "stage2_tolerance_mm", "mirror_stage1", "mirror_stage2")
# Fine-tuning starts a fresh Adam from trained weights; at the training rate (1e-3) its first steps undo much of
# what was learnt (seen on the test model: 0.35 mm to 2.7 mm mean error in three steps), so it goes ten times slower.
FINE_TUNING_LEARNING_RATE = 1e-4


@dataclass(frozen=True)
class CascadeConfig:
    """Everything needed to turn a volume into inputs for both stages and their outputs into points.

    Attributes:
        landmark_set: the landmarks, in channel order.
        stage1_spacing_mm: isotropic voxel size of the stage-1 grid (the paper: 4 x 0.4 mm for cardiac CTA).
        stage1_grid: stage-1 grid size (i, j, k) in voxels, centred on the volume; each divisible by 2 ** depth.
        stage1_mode: "whole" (the paper's method: the whole downsampled volume) or "patch" (the paper's ablation:
            the U-Net trained and run on patches of ``stage1_patch_size`` voxels of the same grid).
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

    def __post_init__(self) -> None:
        object.__setattr__(self, "stage1_grid", tuple(int(n) for n in self.stage1_grid))
        n = len(self.landmark_set)
        if self.unet.landmarks != n or self.displacement.landmarks != n:
            raise ValueError(f"Both networks must have {n} landmarks, as landmark set {self.landmark_set.name}.")
        divisor = 2**self.unet.depth
        sizes = (self.stage1_patch_size,) if self.stage1_mode == "patch" else self.stage1_grid
        if self.stage1_mode not in STAGE1_MODES:
            raise ValueError(f"stage1_mode must be one of {STAGE1_MODES}, not {self.stage1_mode!r}.")
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
        data["landmark_set"] = landmark_set_to_dict(self.landmark_set)
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
        data["landmark_set"] = landmark_set_from_dict(data["landmark_set"])
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


def landmark_set_to_dict(landmark_set: LandmarkSet) -> dict:
    """The JSON form of a landmark set, as in ``Resources/LandmarkSets``."""
    return {
        "name": landmark_set.name,
        "title": landmark_set.title,
        "description": landmark_set.description,
        "landmarks": [asdict(d) for d in landmark_set.landmarks],
    }


LEARNING_RATE_SCHEDULES = ("constant", "cosine")


@dataclass(frozen=True)
class TrainingConfig:
    """How a model is trained (the paper: Adam, learning rate 1e-3, batch size 4, 11,250 and 45,000 iterations).

    Attributes:
        stage1_iterations, stage2_iterations: optimisation steps per stage (0 skips the stage, when fine-tuning).
        batch_size: samples per step on each process.
        learning_rate: Adam's learning rate.
        learning_rate_schedule: "constant" (the paper), or "cosine": from ``learning_rate`` down to 0 over each
            stage along half a cosine (a step's rate depends only on the step, so a resumed run gets the same).
        seed: the same seed and data give the same model.
        validation_fraction: share of the cases held out to report the error in mm as training goes.
        validate_every: steps between validations (0: only at the end of each stage).
        checkpoint_every: steps between checkpoints.
        device: "auto" (CUDA when available, else CPU), "cpu" or "cuda".
        augmentation: random transforms and intensity changes of the training images (default: none).
        stage2_near_share: share of stage-2 training patches centred within a quarter of the stage-2 radius of
            their landmark instead of anywhere within it (default 0: uniform in the whole ball), for the
            precision of the last pass of a multi-pass detection.
    """

    stage1_iterations: int = 11250
    stage2_iterations: int = 45000
    batch_size: int = 4
    learning_rate: float = 1e-3
    learning_rate_schedule: str = "constant"
    seed: int = 0
    validation_fraction: float = 0.2
    validate_every: int = 500
    checkpoint_every: int = 200
    device: str = "auto"
    augmentation: Augmentation = NO_AUGMENTATION
    stage2_near_share: float = 0.0

    def __post_init__(self) -> None:
        if self.stage1_iterations < 0 or self.stage2_iterations < 0 or self.batch_size < 1:
            raise ValueError("Iterations must be zero or more and the batch size at least one.")
        if not 0 <= self.validation_fraction < 1:
            raise ValueError(f"validation_fraction must lie in [0, 1), got {self.validation_fraction}.")
        if not 0 <= self.stage2_near_share <= 1:
            raise ValueError(f"stage2_near_share must lie in [0, 1], got {self.stage2_near_share}.")
        if self.learning_rate <= 0 or self.checkpoint_every < 1 or self.validate_every < 0:
            raise ValueError("learning_rate and checkpoint_every must be positive, validate_every not negative.")
        if self.learning_rate_schedule not in LEARNING_RATE_SCHEDULES:
            raise ValueError(
                f"learning_rate_schedule must be one of {', '.join(LEARNING_RATE_SCHEDULES)}, "
                f"not {self.learning_rate_schedule!r}."
            )

    def learning_rate_at(self, step: int, iterations: int) -> float:
        """Adam's rate for ``step`` (from 0) of a stage of ``iterations`` steps."""
        if self.learning_rate_schedule == "cosine":
            return 0.5 * self.learning_rate * (1.0 + math.cos(math.pi * step / iterations))
        return self.learning_rate

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainingConfig:
        return cls(**{**data, "augmentation": Augmentation(**data.get("augmentation", {}))})
