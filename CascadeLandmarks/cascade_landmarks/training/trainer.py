"""Training both stages: from a folder of cases to a model file, resumable, reproducible, and distributed with
PyTorch's own launcher (``torchrun``, see :mod:`~cascade_landmarks.model.distributed`).

:func:`train` goes in named steps: where to start (afresh, from a model to fine-tune, or from a killed run's
checkpoint), the cases, stage 1, stage 2, the record of how the model was made.

Reproducible: each step's batch is drawn from a generator seeded by (seed, stage, step, process), and the networks
are initialised from the seed, so the same data and seed give the same model, and a resumed run (with as many
processes) the same model as an uninterrupted one, on the CPU. On a GPU they come out close but not bit-identical:
CUDA's 3-D convolutions and max-pooling gradients are not deterministic. Resumable: a checkpoint (weights,
optimiser state, step) is written atomically every ``checkpoint_every`` steps beside the output; ``resume=True``
continues from it.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import __version__
from ..inference.detector import locate_stage1, refine
from ..io.cases import CheckedCase, check_cases, find_cases, split_cases
from ..io.landmark_sets import LandmarkSet, load_landmark_set
from ..model.config import DETECTION_SETTINGS, CascadeConfig
from ..model.distributed import Process, join_process_group
from ..model.losses import euclidean_loss, heatmap_loss
from ..model.model_file import CascadeModel, load_model, model_from_state, save_model
from ..progress import Reporter, as_reporter
from .batches import Batch, TrainingCase, prepare_case, stage1_batch, stage2_batch
from .checkpoints import NO_LINEAGE, checkpoint_lineage, load_checkpoint, read_checkpoint, save_checkpoint
from .config import TrainingConfig
from .presence import calibrate_presence
from .run_files import checkpoint_path

EXTENT_CUBE_VOXELS = 48  # the largest edge of an "extent" model's default training cubes


def default_config(
    cases: list[CheckedCase],
    landmark_set: LandmarkSet,
    *,
    stage2_spacing_mm: float | None = None,
    stage1_spacing_mm: float | None = None,
    stage1_grid: tuple[int, int, int] | None = None,
    **settings,
) -> CascadeConfig:
    """A model configuration fitted to the training data.

    Stage 2 works at the data's own resolution (the median of each case's finest spacing); stage 1 at four
    times coarser, as the paper does for cardiac CTA; the stage-1 grid covers the largest field of view (in
    "extent" mode, the training cubes do, up to :data:`EXTENT_CUBE_VOXELS` voxels an edge).
    """
    if stage2_spacing_mm is None:
        stage2_spacing_mm = round(float(np.median([c.geometry.spacing.min() for c in cases])), 2)
    if stage1_spacing_mm is None:
        stage1_spacing_mm = 4 * stage2_spacing_mm
    depth = settings.get("unet_depth", 3)
    if stage1_grid is None:
        extent = np.max([c.geometry.lps_extent_mm for c in cases], axis=0)
        stage1_grid = tuple(int(math.ceil(e / stage1_spacing_mm / 2**depth) * 2**depth) for e in extent)
        if settings.get("stage1_mode") == "extent":  # the training cubes: the data's field of view, at most
            largest = int(math.ceil(EXTENT_CUBE_VOXELS / 2**depth) * 2**depth)
            stage1_grid = tuple(min(n, largest) for n in stage1_grid)
    return CascadeConfig.default(
        landmark_set,
        stage1_spacing_mm=stage1_spacing_mm,
        stage1_grid=stage1_grid,
        stage2_spacing_mm=stage2_spacing_mm,
        **settings,
    )


def train(
    data: str | os.PathLike,
    output: str | os.PathLike,
    *,
    landmark_set: str | LandmarkSet | None = None,
    config: CascadeConfig | None = None,
    training: TrainingConfig | None = None,
    init_from: str | os.PathLike | None = None,
    resume: bool = False,
    progress: bool | Reporter = True,
    config_settings: dict | None = None,
) -> CascadeModel:
    """Train (or fine-tune) a cascade on the cases in ``data`` and write it to ``output``.

    Args:
        data: a folder of cases or a CSV manifest (see :mod:`cascade_landmarks.io.cases`).
        output: the model file to write.
        landmark_set: the set to train for (a shipped name or a definition file); taken from ``init_from`` or
            the checkpoint when not given.
        config: the model configuration; by default one fitted to the data (:func:`default_config`), with
            ``config_settings`` passed on to it (with ``init_from``, only their ``DETECTION_SETTINGS``).
        training: iterations, batch size, learning rate, seed, validation, checkpoints, device.
        init_from: a model file or registered name to fine-tune: its configuration and weights are the start.
        resume: continue from the checkpoint beside ``output`` (after a kill), with its configurations.
        progress: True for progress bars on standard error, False for none, or a
            :class:`~cascade_landmarks.progress.Reporter`.

    Returns:
        the trained model (on the CPU).
    """
    output, reporter = Path(output), as_reporter(progress)
    process = join_process_group((training or TrainingConfig()).device)
    if not process.is_main:
        reporter = Reporter()  # one process shows the progress
    start = _starting_point(output, landmark_set, config, training, init_from, resume, config_settings)
    if start.checkpoint is not None:
        start.training = _resumed_settings(start.checkpoint, output, training, process, reporter)
    cases = _prepare_cases(data, start, output, reporter)
    model = _initial_model(start, cases.config, output)
    model.to(process.device)
    run = _Run(
        output=output,
        training=start.training,
        process=process,
        model=model,
        case_names=cases.names,
        reporter=reporter,
        lineage=start.lineage,
        checkpoint=start.checkpoint,
        started=cases.started,
    )
    errors = {"stage1": _train_stage1(run, cases, start.training)}
    presence = _calibrate_presence(model, cases, process, start.training)
    errors["cascade"] = _train_stage2(run, cases, start.training)
    model.to(torch.device("cpu"))
    model.stage1.eval()  # a stage that trained no steps was never switched back
    model.stage2.eval()
    model.training = _training_record(start, cases, run, errors, presence)
    if process.is_main:
        save_model(model, output)
        checkpoint_path(output).unlink(missing_ok=True)
    process.barrier()
    return model


@dataclass
class _Start:
    """Where a run starts: afresh, from a model to fine-tune (``base_model``), or from a killed run's checkpoint.

    ``config`` is None when it is to be fitted to the data; ``lineage`` names the model a fine-tuning started from.
    """

    landmark_set: LandmarkSet
    config: CascadeConfig | None
    config_settings: dict
    training: TrainingConfig
    checkpoint: dict | None
    base_model: CascadeModel | None
    lineage: dict


def _starting_point(output: Path, landmark_set, config, training, init_from, resume: bool, config_settings) -> _Start:
    """Where to start, with the model settings that then hold; refuses what cannot go together."""
    if not resume and checkpoint_path(output).exists():
        raise ValueError(
            f"An earlier run left the checkpoint {checkpoint_path(output)}: add --resume to continue it, or delete "
            "it to train afresh."
        )
    checkpoint = read_checkpoint(output) if resume else None
    base_model, lineage = None, checkpoint_lineage(checkpoint) if checkpoint is not None else None
    if checkpoint is not None:
        config = CascadeConfig.from_dict(json.loads(checkpoint["model"]["config"]))
    elif init_from is not None:
        base_model = load_model(init_from)
        changes = {k: v for k, v in (config_settings or {}).items() if k in DETECTION_SETTINGS}
        config = base_model.config.with_detection_settings(**changes)
        lineage = {"fine_tuned_from": str(init_from), "previous_training": base_model.training}
    if isinstance(landmark_set, str):
        landmark_set = load_landmark_set(landmark_set)
    if config is not None:
        if landmark_set is not None and landmark_set.labels != config.landmark_set.labels:
            raise ValueError(
                f"The model finds landmark set {config.landmark_set.name}, not {landmark_set.name}; "
                "fine-tune or resume with the model's own set."
            )
        landmark_set = config.landmark_set
    if landmark_set is None:
        raise ValueError("Say which landmarks to train for: a landmark set such as cardiac-5, or a model to fine-tune.")
    return _Start(
        landmark_set=landmark_set,
        config=config,
        config_settings=config_settings or {},
        training=training or TrainingConfig(),
        checkpoint=checkpoint,
        base_model=base_model,
        lineage=lineage or dict(NO_LINEAGE),
    )


@dataclass
class _Cases:
    """The checked cases, the configuration fitted to them, and the prepared training and validation cases."""

    checked: list[CheckedCase]
    config: CascadeConfig
    names: list[str]
    training_names: list[str]
    validation_names: list[str]
    training: list[TrainingCase]
    validation: list[TrainingCase]
    started: float  # when reading their voxels began (time.perf_counter): where the training time counts from


def _resumed_settings(
    checkpoint: dict, output: Path, given: TrainingConfig | None, process: Process, reporter: Reporter
) -> TrainingConfig:
    """A resumed run's training settings, the checkpoint's; only with as many processes as wrote it, since each
    process draws its own batches."""
    processes = int(checkpoint.get("processes", 1))
    if processes != process.world_size:
        raise ValueError(
            f"Checkpoint {checkpoint_path(output)} was written by a run of {processes} process(es); resume it "
            f"with as many (torchrun --nproc-per-node {processes}), not {process.world_size}."
        )
    resumed = TrainingConfig.from_dict(json.loads(checkpoint["training"]))
    if given is not None:
        _warn_of_ignored_settings(given, resumed, reporter)
    return resumed


def _prepare_cases(data, start: _Start, output: Path, reporter: Reporter) -> _Cases:
    """Check every case, fit the configuration when there is none, split off the validation cases, and read and
    prepare each case once."""
    checked = check_cases(find_cases(data), start.landmark_set)
    config = start.config or default_config(checked, start.landmark_set, **start.config_settings)
    names = [c.files.name for c in checked]
    if start.checkpoint is not None and json.loads(start.checkpoint["cases"]) != names:
        raise ValueError(
            f"Checkpoint {checkpoint_path(output)} was made on other cases; train afresh without --resume."
        )
    training_names, validation_names = split_cases(names, start.training.validation_fraction, start.training.seed)
    started = time.perf_counter()
    task = reporter.task("reading cases", len(checked))
    prepared = {}
    for count, case in enumerate(checked, start=1):
        keep = case.files.name in validation_names  # validation cases keep their voxels, to cut patches anywhere
        prepared[case.files.name] = prepare_case(
            case, config, keep_sampler=keep, augmentation=start.training.augmentation
        )
        task.update(count)
    task.close()
    return _Cases(
        checked=checked,
        config=config,
        names=names,
        training_names=training_names,
        validation_names=validation_names,
        training=[prepared[n] for n in training_names],
        validation=[prepared[n] for n in validation_names],
        started=started,
    )


def _initial_model(start: _Start, config: CascadeConfig, output: Path) -> CascadeModel:
    """The networks training starts from: the checkpoint's, the model to fine-tune, or new ones from the seed."""
    if start.checkpoint is not None:
        return model_from_state(start.checkpoint["model"], source=str(checkpoint_path(output)))
    if start.base_model is not None:
        start.base_model.config = config
        return start.base_model
    return CascadeModel.create(config, seed=start.training.seed)


def _train_stage1(run: _Run, cases: _Cases, training: TrainingConfig) -> float | None:
    """Stage 1, the heatmap U-Net, on whole stage-1 grids (or patches of them); its validation error in mm."""
    return run.optimise(
        1,
        run.model.stage1,
        lambda rng: stage1_batch(cases.training, training.batch_size, rng, cases.config, training.augmentation),
        lambda network, inputs, targets, known: heatmap_loss(*network(inputs), targets, known),
        lambda: _validation_error(run.model, cases.validation, run.process.device, cascade=False),
    )


def _train_stage2(run: _Run, cases: _Cases, training: TrainingConfig) -> float | None:
    """Stage 2, the displacement CNNs, on patches around the landmarks; the cascade's validation error in mm."""
    return run.optimise(
        2,
        run.model.stage2,
        lambda rng: stage2_batch(cases.training, training.batch_size, rng, cases.config, training.augmentation,
                                 training.stage2_near_share),
        lambda network, inputs, targets, known: euclidean_loss(network(inputs), targets, known),
        lambda: _validation_error(run.model, cases.validation, run.process.device, cascade=True),
    )  # fmt: skip


def _calibrate_presence(model: CascadeModel, cases: _Cases, process: Process, training: TrainingConfig) -> dict | None:
    """An "extent" model's presence threshold, set from its validation cases (the record of how, or None when the
    model has no such cases or another mode; the threshold it had then stays)."""
    if model.config.stage1_mode != "extent" or not cases.validation:
        return None
    calibration = calibrate_presence(model, cases.validation, process.device, seed=training.seed)
    if calibration is None:
        return None
    model.config = model.config.with_detection_settings(presence_threshold=calibration.thresholds)
    return calibration.to_dict()


def _training_record(start: _Start, cases: _Cases, run: _Run, errors: dict, presence: dict | None) -> dict:
    """How the model was made, saved in its file: when, on what, with which settings, from which model, how well."""
    return {
        **_record_header(start.landmark_set.name, cases.training_names, cases.validation_names),
        "spacing_mm": _spacing_summary(cases.checked),
        "weights": {case.files.name: case.files.weight for case in cases.checked if case.files.weight != 1},
        "training_config": start.training.to_dict(),
        "detection_settings": run.model.config.detection_settings(),
        **start.lineage,
        "validation_error_mm": errors,
        "presence_calibration": presence,
        "history": run.history,
        "processes": run.process.world_size,
        "device": str(run.process.device),
        "seconds": round(run.seconds(), 1),
    }


@dataclass
class _Run:
    """The optimisation loop shared by both stages, with validation, checkpoints and progress.

    ``checkpoint`` is the killed run's, when resuming (used up by the stage it stopped in); ``history`` the
    validation record so far; ``seconds_before`` the killed run's training time up to its checkpoint, so that a
    resumed model reports the whole; ``started`` when this process began reading the cases' voxels
    (``time.perf_counter``).
    """

    output: Path
    training: TrainingConfig
    process: Process
    model: CascadeModel
    case_names: list[str]
    reporter: Reporter
    lineage: dict
    checkpoint: dict | None
    started: float
    history: list[dict] = field(default_factory=list)
    seconds_before: float = 0.0

    def __post_init__(self) -> None:
        if self.checkpoint is not None:
            self.history = json.loads(self.checkpoint["history"])
            self.seconds_before = float(self.checkpoint.get("seconds", 0.0))

    def seconds(self) -> float:
        """Training time so far, including the time of a killed run up to its checkpoint."""
        return self.seconds_before + time.perf_counter() - self.started

    def optimise(
        self,
        stage: int,
        network: nn.Module,
        batch: Callable[[np.random.Generator], Batch],
        loss_of: Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
        validation_error: Callable[[], float | None],
    ) -> float | None:
        """Run the stage's iterations of Adam on ``network``; returns the validation error (mm) at the end."""
        iterations = self.training.stage1_iterations if stage == 1 else self.training.stage2_iterations
        start = 0
        optimizer = torch.optim.Adam(network.parameters(), lr=self.training.learning_rate)
        if self.checkpoint is not None:
            if self.checkpoint["stage"] > stage:
                return self._last_error(stage)
            start = self.checkpoint["iteration"]
            optimizer.load_state_dict(self.checkpoint["optimizer"])
            self.checkpoint = None
        if start >= iterations:
            return self._last_error(stage) if iterations else None
        trained = network
        if self.process.world_size > 1:
            device_ids = [self.process.device.index] if self.process.device.type == "cuda" else None
            trained = nn.parallel.DistributedDataParallel(network, device_ids=device_ids)
        network.train()
        task = self.reporter.task(f"stage {stage}", iterations, start=start)
        error = None
        for step in range(start, iterations):
            rng = np.random.default_rng([self.training.seed, stage, step, self.process.rank])
            inputs, targets, known = (tensor.to(self.process.device) for tensor in batch(rng))
            for group in optimizer.param_groups:
                group["lr"] = self.training.learning_rate_at(step, iterations)
            optimizer.zero_grad(set_to_none=True)
            loss = loss_of(trained, inputs, targets, known)
            loss.backward()
            done = step + 1
            _refuse_divergence(network, stage, done, checkpoint_path(self.output))
            optimizer.step()
            metrics: dict[str, float | str] = {"loss": float(loss.item())}
            every = self.training.validate_every
            if self.process.is_main and ((every and done % every == 0) or done == iterations):
                network.eval()
                error = validation_error()
                network.train()
                if error is not None:
                    metrics["val"] = f"{error:.2f} mm"
                self.history.append({"stage": stage, "iteration": done, "loss": metrics["loss"], "val_mm": error})
            if done % self.training.checkpoint_every == 0 and done < iterations:
                self._save_checkpoint(stage, done, optimizer)
            task.update(done, **metrics)
        task.close()
        network.eval()
        return error

    def _last_error(self, stage: int) -> float | None:
        errors = [h["val_mm"] for h in self.history if h["stage"] == stage]
        return errors[-1] if errors else None

    def _save_checkpoint(self, stage: int, iteration: int, optimizer: torch.optim.Optimizer) -> None:
        if self.process.is_main:
            state = {
                "stage": stage,
                "iteration": iteration,
                "training": json.dumps(self.training.to_dict()),
                "cases": json.dumps(self.case_names),
                "history": json.dumps(self.history),
                "lineage": json.dumps(self.lineage),
                "seconds": self.seconds(),
                "processes": self.process.world_size,
                "device": str(self.process.device),
                "model": self.model.state(),
                "optimizer": optimizer.state_dict(),
            }
            save_checkpoint(self.output, state)
        self.process.barrier()


def export_checkpoint(checkpoint: str | os.PathLike, output: str | os.PathLike) -> CascadeModel:
    """Write the model a training run had reached at its last checkpoint to ``output`` (a run killed, or still
    running, whose weights so far are wanted); the checkpoint is left for ``--resume``.

    The model's training record gives the iterations done (not those planned) and says where the run stopped.
    """
    checkpoint, output = Path(checkpoint), Path(output)
    if not checkpoint.is_file():
        raise ValueError(f"No checkpoint {checkpoint}; a training run writes MODEL.pt.checkpoint beside its output.")
    if output.exists():
        raise ValueError(f"{output} exists; export to a new file name, or delete it first.")
    state = load_checkpoint(checkpoint, "export")
    model = model_from_state(state["model"], source=str(checkpoint))
    planned = TrainingConfig.from_dict(json.loads(state["training"]))
    stage, iteration = int(state["stage"]), int(state["iteration"])
    planned_iterations = planned.stage1_iterations if stage == 1 else planned.stage2_iterations
    done = dataclasses.replace(
        planned,
        stage1_iterations=iteration if stage == 1 else planned.stage1_iterations,
        stage2_iterations=iteration if stage == 2 else 0,
    )
    names = json.loads(state["cases"])
    training_names, validation_names = split_cases(names, planned.validation_fraction, planned.seed)
    model.training = {
        **_record_header(model.config.landmark_set.name, training_names, validation_names),
        "training_config": done.to_dict(),
        "detection_settings": model.config.detection_settings(),
        **checkpoint_lineage(state),
        "history": json.loads(state["history"]),
        "processes": int(state.get("processes", 1)),
        "device": state.get("device", "unknown"),
        "seconds": round(float(state.get("seconds", 0.0)), 1),
        "stopped": f"exported from its checkpoint at stage {stage}, iteration {iteration} of {planned_iterations}",
    }
    save_model(model, output)
    return model


def _record_header(landmark_set_name: str, training_names: list[str], validation_names: list[str]) -> dict:
    """The first entries of a model's training record: when, with which versions, for which set, on which cases."""
    return {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cascade_landmarks": __version__,
        "torch": torch.__version__,
        "landmark_set": landmark_set_name,
        "cases": {"training": training_names, "validation": validation_names},
    }


def _warn_of_ignored_settings(given: TrainingConfig, resumed: TrainingConfig, reporter: Reporter) -> None:
    """A resumed run keeps its checkpoint's schedule: name the given settings it does not use, so none is lost
    without a word. Those left at their defaults count as not given (the command line always gives them all), and
    so does the device: a run may resume on another machine."""
    defaults = TrainingConfig()
    ignored = [
        f"{name} {getattr(given, name)!r} (the checkpoint's: {getattr(resumed, name)!r})"
        for name in (f.name for f in dataclasses.fields(TrainingConfig))
        if name != "device"
        and getattr(given, name) != getattr(defaults, name)  # given on purpose
        and getattr(given, name) != getattr(resumed, name)  # and not what the resumed run uses
    ]
    if ignored:
        reporter.warn(f"A resumed run keeps its checkpoint's training settings; not used: {'; '.join(ignored)}.")


def _refuse_divergence(network: nn.Module, stage: int, iteration: int, checkpoint: Path) -> None:
    """Stop before a step that would make the weights NaN or infinite (every process sees the same averaged
    gradients, so all stop together)."""
    norms = [torch.linalg.vector_norm(p.grad) for p in network.parameters() if p.grad is not None]
    if norms and not torch.isfinite(torch.linalg.vector_norm(torch.stack(norms))):
        # A resumed run keeps its checkpoint's learning rate and would diverge again at the same step.
        again = f"delete {checkpoint}, then " if checkpoint.exists() else ""
        raise ValueError(
            f"Stage {stage} diverged at iteration {iteration}: its gradients are no longer finite. To train again, "
            f"{again}use a lower --learning-rate (the paper's is 1e-3), or check the cases' intensities and window."
        )


def _validation_error(
    model: CascadeModel, cases: list[TrainingCase], device: torch.device, *, cascade: bool
) -> float | None:
    """Mean error in mm over the placed landmarks of the validation cases, of stage 1 alone or of the cascade
    (None without any)."""
    errors = []
    for case in cases:
        points, _ = locate_stage1(model, case.stage1_input, case.stage1_grid, device)
        if cascade:
            points, _ = refine(model, case.sampler, points, device)
        errors.extend(np.linalg.norm(points - case.landmarks_lps, axis=1)[case.placed])
    return float(np.mean(errors)) if errors else None


def _spacing_summary(cases: list[CheckedCase]) -> dict:
    spacings = np.array([c.geometry.spacing for c in cases])
    return {
        "min": spacings.min(axis=0).tolist(),
        "median": np.median(spacings, axis=0).tolist(),
        "max": spacings.max(axis=0).tolist(),
    }
