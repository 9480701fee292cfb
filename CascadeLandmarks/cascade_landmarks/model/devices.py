"""Choosing where the networks run: CUDA when asked for or available, the CPU otherwise."""

from __future__ import annotations

import warnings

import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def select_device(name: str = "auto") -> torch.device:
    """``"auto"``: the first CUDA GPU if there is one, else the CPU. ``"cuda"`` without a GPU falls back to the CPU
    with a warning; ``"cuda:1"`` picks a GPU."""
    if not (name in DEVICE_CHOICES or name.startswith("cuda:")):
        raise ValueError(f"Unknown device {name!r}: use auto, cpu, cuda or cuda:N.")
    if name == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda" if name == "auto" else name)
    if name != "auto":
        warnings.warn(f"Device {name} was asked for but no CUDA GPU is available; running on the CPU.", stacklevel=2)
    return torch.device("cpu")
