"""The files a training run keeps beside its output, named here without torch, so that the Slicer module (which
starts trainings and cleans up after them) can find them without loading the training code."""

from __future__ import annotations

import os
from pathlib import Path


def checkpoint_path(output: str | os.PathLike) -> Path:
    """Where the checkpoint of a training run writing ``output`` lives: ``model.pt`` -> ``model.pt.checkpoint``."""
    output = Path(output)
    return output.with_name(output.name + ".checkpoint")


def unused_model_path(folder: str | os.PathLike, stem: str) -> Path:
    """``<folder>/<stem>.pt``, or ``<stem>-2.pt`` and so on when a model of that name (or a killed run's
    checkpoint for it) is there already, so that nothing is overwritten."""
    folder = Path(folder)
    path, number = folder / f"{stem}.pt", 1
    while path.exists() or checkpoint_path(path).exists():
        number += 1
        path = folder / f"{stem}-{number}.pt"
    return path
