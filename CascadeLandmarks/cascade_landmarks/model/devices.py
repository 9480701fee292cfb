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


def computes_bfloat16_natively(device: torch.device) -> bool:
    """Whether ``device`` has bfloat16 arithmetic in hardware: a CUDA GPU that supports it, or a CPU with
    AVX-512 BF16 or AMX (elsewhere bfloat16 is emulated, and slower than float32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch.cpu's own checks (torch 2.3+)
        return any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)
    return False
