"""Training checkpoints: what a run writes every ``checkpoint_every`` steps beside its output, atomically, so that
a run killed at any moment can be resumed (``train --resume``) or its weights so far exported.

A checkpoint is a flat dictionary of tensors and plain values (read with ``weights_only=True``): the format tag,
the stage and step reached, the training settings, case names, history, lineage and time as JSON, the number of
processes and the device, the model's state (as in a model file) and the optimiser's.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..io.atomic_files import atomic_path
from .run_files import checkpoint_path

CHECKPOINT_FORMAT = "cascade-landmarks-checkpoint"
# How a checkpoint written before checkpoints kept the lineage (the model a fine-tune started from) is read.
NO_LINEAGE = {"fine_tuned_from": None, "previous_training": None}


def save_checkpoint(output: Path, state: dict) -> None:
    """Write ``state`` (with the format tag added) as the checkpoint of the run writing ``output``."""
    with atomic_path(checkpoint_path(output)) as temporary:
        torch.save({"format": CHECKPOINT_FORMAT, **state}, temporary)


def read_checkpoint(output: Path) -> dict:
    """The checkpoint of the run writing ``output``, to resume it."""
    path = checkpoint_path(output)
    if not path.is_file():
        raise ValueError(f"Nothing to resume: no checkpoint {path}. Train without --resume.")
    return load_checkpoint(path, "resume from")


def load_checkpoint(path: Path, purpose: str) -> dict:
    """A checkpoint file's contents; ValueError saying what could not be done (``purpose``) and why."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(f"Cannot {purpose} {path}: the checkpoint is damaged ({error}).") from error
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a CascadeLandmarks training checkpoint.")
    return state


def checkpoint_lineage(state: dict) -> dict:
    """The model the checkpointed run had been started from (``fine_tuned_from``, ``previous_training``)."""
    return json.loads(state["lineage"]) if "lineage" in state else NO_LINEAGE
