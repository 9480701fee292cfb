"""Training both stages: from a folder of cases to a model file, resumable, reproducible, and distributed with
PyTorch's own launcher (``torchrun``: DistributedDataParallel, NCCL on GPUs, gloo on CPUs).

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
from torch import distributed, nn

from . import __version__
from .atomic_files import atomic_path
from .config import DETECTION_SETTINGS, CascadeConfig, TrainingConfig
from .data import (
    CheckedCase,
    TrainingCase,
    check_cases,
    find_cases,
    prepare_case,
    split_cases,
    stage1_batch,
    stage2_batch,
)
from .detector import locate_stage1, refine
from .devices import select_device
from .landmark_sets import LandmarkSet, load_landmark_set
from .losses import euclidean_loss, heatmap_loss
from .modelfile import CascadeModel, load_model, model_from_state, save_model
from .progress import ProgressBar, warn

CHECKPOINT_FORMAT = "cascade-landmarks-checkpoint"
# How a checkpoint written before checkpoints kept the lineage (the model a fine-tune started from) is read.
_NO_LINEAGE = {"fine_tuned_from": None, "previous_training": None}


def checkpoint_path(output: str | os.PathLike) -> Path:
    """Where the checkpoint of a training run writing ``output`` lives: ``model.pt`` -> ``model.pt.checkpoint``."""
    output = Path(output)
    return output.with_name(output.name + ".checkpoint")


@dataclass
class _Process:
    """This process's place in a (possibly distributed) run."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            distributed.barrier()


def _join_process_group(device_name: str) -> _Process:
    """Join the process group torchrun describes in the environment (WORLD_SIZE, RANK, LOCAL_RANK), if any."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return _Process(device=select_device(device_name))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = select_device(device_name)
    if device.type == "cuda":
        device = torch.device(f"cuda:{local_rank}")
        torch.cuda.set_device(device)
    else:
        # Processes sharing a CPU each get their share of the cores.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", world_size))))
    if not distributed.is_initialized():
        distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return _Process(rank=distributed.get_rank(), world_size=world_size, device=device)


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
    times coarser, as the paper does for cardiac CTA; the stage-1 grid covers the largest field of view.
    """
    if stage2_spacing_mm is None:
        stage2_spacing_mm = round(float(np.median([c.geometry.spacing.min() for c in cases])), 2)
    if stage1_spacing_mm is None:
        stage1_spacing_mm = 4 * stage2_spacing_mm
    depth = settings.get("unet_depth", 3)
    if stage1_grid is None:
        extent = np.max([c.geometry.lps_extent_mm for c in cases], axis=0)
        stage1_grid = tuple(int(math.ceil(e / stage1_spacing_mm / 2**depth) * 2**depth) for e in extent)
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
    progress: bool = True,
    config_settings: dict | None = None,
) -> CascadeModel:
    """Train (or fine-tune) a cascade on the cases in ``data`` and write it to ``output``.

    Args:
        data: a training folder or CSV manifest (see :mod:`cascade_landmarks.data`).
        output: the model file to write.
        landmark_set: the set to train for (a shipped name or a definition file); taken from ``init_from`` or
            the checkpoint when not given.
        config: the model configuration; by default one fitted to the data (:func:`default_config`), with
            ``config_settings`` passed on to it (with ``init_from``, only their ``DETECTION_SETTINGS``).
        training: iterations, batch size, learning rate, seed, validation, checkpoints, device.
        init_from: a model file to fine-tune: its configuration and weights are the starting point.
        resume: continue from the checkpoint beside ``output`` (after a kill), with its configurations.
        progress: show progress bars on standard error.

    Returns:
        the trained model (on the CPU).
    """
    output = Path(output)
    given_training, training = training, training or TrainingConfig()
    process = _join_process_group(training.device)
    if not resume and checkpoint_path(output).exists():
        raise ValueError(
            f"An earlier run left the checkpoint {checkpoint_path(output)}: add --resume to continue it, or delete "
            "it to train afresh."
        )
    checkpoint = _read_checkpoint(output) if resume else None
    if checkpoint is not None:
        resumed = TrainingConfig.from_dict(json.loads(checkpoint["training"]))
        if given_training is not None:
            _warn_of_ignored_settings(given_training, resumed, process.is_main)
        training = resumed
        config = CascadeConfig.from_dict(json.loads(checkpoint["model"]["config"]))
        processes = int(checkpoint.get("processes", 1))
        if processes != process.world_size:  # each process draws its own batches: another count, another run
            raise ValueError(
                f"Checkpoint {checkpoint_path(output)} was written by a run of {processes} process(es); resume it "
                f"with as many (torchrun --nproc-per-node {processes}), not {process.world_size}."
            )
    base_model = load_model(init_from) if init_from is not None and checkpoint is None else None
    if base_model is not None:
        config = base_model.config
        changes = {k: v for k, v in (config_settings or {}).items() if k in DETECTION_SETTINGS}
        config = config.with_detection_settings(**changes)

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

    checked = check_cases(find_cases(data), landmark_set)
    if config is None:
        config = default_config(checked, landmark_set, **(config_settings or {}))
    names = [c.files.name for c in checked]
    training_names, validation_names = split_cases(names, training.validation_fraction, training.seed)
    if checkpoint is not None and json.loads(checkpoint["cases"]) != names:
        raise ValueError(
            f"Checkpoint {checkpoint_path(output)} was made on other cases; train afresh without --resume."
        )

    started = time.perf_counter()
    prepared = {
        c.files.name: prepare_case(
            c, config, keep_sampler=c.files.name in validation_names, augmentation=training.augmentation
        )
        for c in _progress_over(checked, "reading cases", process.is_main and progress)
    }
    training_cases = [prepared[n] for n in training_names]
    validation_cases = [prepared[n] for n in validation_names]

    if checkpoint is not None:
        model = model_from_state(checkpoint["model"], source=str(checkpoint_path(output)))
    elif base_model is not None:
        model = base_model
        model.config = config
    else:
        model = CascadeModel.create(config, seed=training.seed)
    model.to(process.device)

    if checkpoint is None:
        lineage = {
            "fine_tuned_from": None if init_from is None else str(init_from),
            "previous_training": None if base_model is None else base_model.training,
        }
    else:
        lineage = _checkpoint_lineage(checkpoint)
    run = _Run(output, config, training, process, model, names, progress, checkpoint, lineage, started)
    history = run.history
    stage1_error = run.optimise(
        1,
        model.stage1,
        training.stage1_iterations,
        lambda rng: stage1_batch(training_cases, training.batch_size, rng, config, training.augmentation),
        lambda network, inputs, targets: heatmap_loss(*network(inputs), targets),
        lambda: _validation_error(model, validation_cases, process.device, cascade=False),
    )
    cascade_error = run.optimise(
        2,
        model.stage2,
        training.stage2_iterations,
        lambda rng: stage2_batch(
            training_cases, training.batch_size, rng, config, training.augmentation, training.stage2_near_share
        ),
        lambda network, inputs, targets: euclidean_loss(network(inputs), targets),
        lambda: _validation_error(model, validation_cases, process.device, cascade=True),
    )

    model.to(torch.device("cpu"))
    model.stage1.eval()
    model.stage2.eval()
    model.training = {
        **_record_header(landmark_set.name, training_names, validation_names),
        "spacing_mm": _spacing_summary(checked),
        "training_config": training.to_dict(),
        "detection_settings": config.detection_settings(),
        **lineage,
        "validation_error_mm": {"stage1": stage1_error, "cascade": cascade_error},
        "history": history,
        "processes": process.world_size,
        "device": str(process.device),
        "seconds": round(run.seconds(), 1),
    }
    if process.is_main:
        save_model(model, output)
        checkpoint_path(output).unlink(missing_ok=True)
    process.barrier()
    return model


class _Run:
    """The optimisation loop shared by both stages, with validation, checkpoints and progress."""

    def __init__(self, output, config, training, process, model, case_names, progress, checkpoint, lineage, started):
        self.output = output
        self.config = config
        self.training = training
        self.process = process
        self.model = model
        self.case_names = case_names
        self.progress = progress and process.is_main
        self.checkpoint = checkpoint
        self.history: list[dict] = [] if checkpoint is None else json.loads(checkpoint["history"])
        self.lineage = lineage
        # Training time counts the killed run's time up to its checkpoint, so a resumed model reports the whole.
        self._seconds_before = 0.0 if checkpoint is None else float(checkpoint.get("seconds", 0.0))
        self._started = started

    def seconds(self) -> float:
        """Training time so far, including the time of a killed run up to its checkpoint."""
        return self._seconds_before + time.perf_counter() - self._started

    def optimise(
        self,
        stage: int,
        network: nn.Module,
        iterations: int,
        batch: Callable[[np.random.Generator], tuple[torch.Tensor, torch.Tensor]],
        loss_of: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor],
        validation_error: Callable[[], float | None],
    ) -> float | None:
        """Run ``iterations`` steps of Adam on ``network``; returns the validation error (mm) at the end."""
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
        bar = ProgressBar(iterations, f"stage {stage}", start=start, enabled=self.progress)
        error = None
        for step in range(start, iterations):
            rng = np.random.default_rng([self.training.seed, stage, step, self.process.rank])
            inputs, targets = batch(rng)
            for group in optimizer.param_groups:
                group["lr"] = self.training.learning_rate_at(step, iterations)
            optimizer.zero_grad(set_to_none=True)
            loss = loss_of(trained, inputs.to(self.process.device), targets.to(self.process.device))
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
            bar.update(done, **metrics)
        bar.close()
        network.eval()
        return error

    def _last_error(self, stage: int) -> float | None:
        errors = [h["val_mm"] for h in self.history if h["stage"] == stage]
        return errors[-1] if errors else None

    def _save_checkpoint(self, stage: int, iteration: int, optimizer: torch.optim.Optimizer) -> None:
        if self.process.is_main:
            state = {
                "format": CHECKPOINT_FORMAT,
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
            with atomic_path(checkpoint_path(self.output)) as temporary:
                torch.save(state, temporary)
        self.process.barrier()


def _read_checkpoint(output: Path) -> dict:
    path = checkpoint_path(output)
    if not path.is_file():
        raise ValueError(f"Nothing to resume: no checkpoint {path}. Train without --resume.")
    return _load_checkpoint(path, "resume from")


def _load_checkpoint(path: Path, purpose: str) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(f"Cannot {purpose} {path}: the checkpoint is damaged ({error}).") from error
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a CascadeLandmarks training checkpoint.")
    return state


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
    state = _load_checkpoint(checkpoint, "export")
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
        **_checkpoint_lineage(state),
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


def _warn_of_ignored_settings(given: TrainingConfig, resumed: TrainingConfig, is_main: bool) -> None:
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
    if ignored and is_main:
        warn(f"A resumed run keeps its checkpoint's training settings; not used: {'; '.join(ignored)}.")


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


def _checkpoint_lineage(state: dict) -> dict:
    """The model the checkpointed run had been started from (``fine_tuned_from``, ``previous_training``)."""
    return json.loads(state["lineage"]) if "lineage" in state else _NO_LINEAGE


def _validation_error(
    model: CascadeModel, cases: list[TrainingCase], device: torch.device, *, cascade: bool
) -> float | None:
    """Mean error in mm on the validation cases of stage 1 alone, or of the cascade (None without cases)."""
    if not cases:
        return None
    errors = []
    for case in cases:
        points, _ = locate_stage1(model, case.stage1_input, case.stage1_grid, device)
        if cascade:
            points, _ = refine(model, case.sampler, points, device)
        errors.append(np.linalg.norm(points - case.landmarks_lps, axis=1))
    return float(np.mean(errors))


def _spacing_summary(cases: list[CheckedCase]) -> dict:
    spacings = np.array([c.geometry.spacing for c in cases])
    return {
        "min": spacings.min(axis=0).tolist(),
        "median": np.median(spacings, axis=0).tolist(),
        "max": spacings.max(axis=0).tolist(),
    }


def _progress_over(items: list, description: str, enabled: bool):
    bar = ProgressBar(len(items), description, enabled=enabled)
    for count, item in enumerate(items, start=1):
        yield item
        bar.update(count)
    bar.close()
