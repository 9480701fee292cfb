"""How a model is trained, as plain data saved in the model's training record: :class:`TrainingConfig`, and how
strongly its training images are augmented, :class:`Augmentation` (the default, :data:`NO_AUGMENTATION`, changes
nothing, as the paper for CTA; the ``one-shot`` preset is for training from a single annotated image)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace


@dataclass(frozen=True)
class Augmentation:
    """How strongly to augment; zero turns a part off.

    Attributes:
        rotation_degrees: largest rotation about each axis.
        scaling: largest relative change of size (0.1: between 0.9 and 1.1, per axis).
        shear: largest off-diagonal term of the affine matrix.
        translation_mm: largest shift along each axis.
        elastic_mm: standard deviation of the elastic displacement at its control points.
        elastic_grid: control points per axis of the elastic displacement (smoothness).
        mirror_probability: chance of a left/right mirror (with paired labels swapped).
        gamma: largest |log gamma| of the intensity gamma change.
        bias_field: largest relative amplitude of the smooth multiplicative bias field.
        blur_mm: largest Gaussian blur sigma.
        noise: largest standard deviation of added Gaussian noise (in windowed units).
    """

    rotation_degrees: float = 0.0
    scaling: float = 0.0
    shear: float = 0.0
    translation_mm: float = 0.0
    elastic_mm: float = 0.0
    elastic_grid: int = 5
    mirror_probability: float = 0.0
    gamma: float = 0.0
    bias_field: float = 0.0
    blur_mm: float = 0.0
    noise: float = 0.0

    def __post_init__(self) -> None:
        values = asdict(self)
        negative = [name for name, value in values.items() if value < 0]
        if negative:
            raise ValueError(f"Augmentation settings must not be negative: {', '.join(negative)}.")
        if not 0 <= self.mirror_probability <= 1 or self.scaling >= 1 or self.elastic_grid < 2:
            raise ValueError("mirror_probability must lie in [0, 1], scaling below 1 and elastic_grid at least 2.")

    @property
    def spatial(self) -> bool:
        return any((self.rotation_degrees, self.scaling, self.shear, self.translation_mm, self.elastic_mm,
                    self.mirror_probability))  # fmt: skip

    @property
    def enabled(self) -> bool:
        return self.spatial or any((self.gamma, self.bias_field, self.blur_mm, self.noise))

    def to_dict(self) -> dict:
        return asdict(self)


NO_AUGMENTATION = Augmentation()
PRESETS = {
    "none": NO_AUGMENTATION,
    # One annotated image (the AFIDs template): strong but anatomically plausible variation.
    "one-shot": Augmentation(
        rotation_degrees=12.0,
        scaling=0.12,
        shear=0.05,
        translation_mm=8.0,
        elastic_mm=2.5,
        elastic_grid=5,
        mirror_probability=0.5,
        gamma=0.35,
        bias_field=0.25,
        blur_mm=1.0,
        noise=0.03,
    ),
}


def with_settings(augmentation: Augmentation, settings: list[str]) -> Augmentation:
    """``augmentation`` with some settings changed, each given as ``NAME=VALUE`` (``elastic_grid=9``)."""
    kinds = {f.name: f.type for f in fields(Augmentation)}
    changes = {}
    for setting in settings:
        name, _, value = setting.partition("=")
        name = name.strip().replace("-", "_")
        if name not in kinds or not value:
            raise ValueError(f"Augmentation setting {setting!r}: give NAME=VALUE with NAME one of {', '.join(kinds)}.")
        whole = kinds[name] == "int"
        try:
            changes[name] = int(value) if whole else float(value)
        except ValueError:
            kind = "whole number" if whole else "number"
            raise ValueError(f"Augmentation setting {setting!r}: {value!r} is not a {kind}.") from None
    return replace(augmentation, **changes)


# Fine-tuning starts a fresh Adam from trained weights, ten times slower than training: at the training rate its
# first steps undo much of what was learnt (README, "The command line").
FINE_TUNING_LEARNING_RATE = 1e-4
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
