"""Which device and dtype the engine runs on."""

from __future__ import annotations

import torch

from zsearch.errors import UserError


def pick_device(name: str | None = None) -> torch.device:
    """"auto" (or None) -> the first CUDA GPU if there is one, else the CPU; otherwise as named."""
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise UserError(f"device '{name}' is not a device name; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device '{name}': CUDA is not available on this machine; use device: cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"device '{name}': this machine has {torch.cuda.device_count()} CUDA device(s); "
                            f"use cuda:0..cuda:{torch.cuda.device_count() - 1}")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"device '{name}': MPS is not available on this machine; use device: cpu or auto")
    return device


def default_dtype(device: torch.device) -> torch.dtype:
    """bf16 on CUDA (Z-Image-Turbo's native precision), fp32 elsewhere (CPUs are slow and inexact in bf16)."""
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


def free_memory_bytes(device: torch.device) -> int | None:
    """Free memory on a CUDA device; None where it cannot be known (CPU)."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    free, _total = torch.cuda.mem_get_info(device)
    return free


def release_memory() -> None:
    """Give freed tensors back: Python garbage first, then the CUDA cache."""
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
