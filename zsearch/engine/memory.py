"""`render.memory`: how the transformer's weights are held, so Z-Image fits 24, 16 and 12 GB cards.

- full: bf16 weights on the GPU (12.3 GB for Z-Image-Turbo's transformer).
- fp8: weights stored in float8_e4m3fn (6.2 GB), each Linear cast up to the compute dtype just
  for its own forward (diffusers' layerwise casting).
- offload: weights kept in CPU memory, one transformer block at a time streamed to the GPU,
  the next one prefetched on a side stream (diffusers' group offloading).

The side path works on top of all three: it never touches the base weights and keeps its LoRA
tensors, in the compute dtype, on the GPU. The fused way rebuilds the weights from a copy, which
neither fp8 storage nor offloaded weights allow.
The VAE always decodes one image at a time (sliced), so decoding a batch is never the peak.
"""

from __future__ import annotations

import torch
from torch import nn

from zsearch.errors import UserError

MODES = ("full", "fp8", "offload")
SETTINGS = ("auto", *MODES)

# Working memory beside the weights at 1024² batch 4 (activations, VAE decode, LoRA tensors,
# CLIP), as a fraction of the bf16 transformer's bytes. From issue 11's targets: 20 GB at
# batch 4 in bf16 with 12.3 GB of weights leaves 7.7 GB, 0.63 of them. bench/gpu.sh measures it.
WORKING_FRACTION = 0.6
FP8_STORAGE = torch.float8_e4m3fn


def needed_bytes(mode: str, weight_bytes: int) -> int | None:
    """Device memory `mode` needs for a transformer of `weight_bytes` (in the compute dtype)."""
    working = WORKING_FRACTION * weight_bytes
    if mode == "full":
        return int(weight_bytes + working)
    if mode == "fp8":
        return int(weight_bytes / 2 + working)  # one byte a weight instead of two
    return None  # offload: a block or two at a time, whatever the model


def choose_memory(free_bytes: int | None, weight_bytes: int) -> tuple[str, str]:
    """The mode `auto` picks for a GPU with `free_bytes` free, and why (one phrase).

    full if it fits, else fp8 if that fits, else offload. None (a CPU, no GPU memory to
    measure) picks full: the weights live in RAM either way.
    """
    if free_bytes is None:
        return "full", "memory full (no GPU memory to budget)"
    free = f"{free_bytes / 1e9:.1f} GB free"
    for mode in ("full", "fp8"):
        need = needed_bytes(mode, weight_bytes)
        if free_bytes >= need:
            return mode, f"memory {mode} ({free}, {mode} needs ~{need / 1e9:.1f} GB)"
    return "offload", (f"memory offload ({free}, fp8 would need ~{needed_bytes('fp8', weight_bytes) / 1e9:.1f} GB; "
                       f"blocks stream from CPU memory)")


def weight_bytes(transformer: nn.Module, dtype: torch.dtype) -> int:
    """The transformer's weights in `dtype` (they may still be stored in another one)."""
    size = torch.empty((), dtype=dtype).element_size()
    return sum(p.numel() for p in transformer.parameters()) * size


def resolve_memory(setting: str, device: torch.device, transformer: nn.Module, dtype: torch.dtype
                   ) -> tuple[str, str]:
    """(mode, why) for a config's `render.memory`; `auto` measures the device's free memory now."""
    from zsearch.engine.device import free_memory_bytes

    if setting not in SETTINGS:
        raise UserError(f"render.memory '{setting}' is unknown; use {', '.join(SETTINGS)}")
    if setting != "auto":
        return setting, f"memory {setting} (as set)"
    return choose_memory(free_memory_bytes(device), weight_bytes(transformer, dtype))


def way_for(way: str, memory: str, needs_fused: bool = False) -> str:
    """The weighting way that goes with `memory`: fp8 and offload take the side path only.
    `needs_fused`: LoKr/LoHa inputs, which only the fused way applies."""
    if memory == "full":
        return way
    if needs_fused:
        raise UserError(f"LoKr/LoHa LoRAs are applied by rebuilding the weights (way fused), which render.memory "
                        f"{memory} does not allow; use memory: full, or plain LoRAs")
    if way == "fused":
        raise UserError(f"render.way fused rebuilds the weights from a copy, which render.memory {memory} does "
                        f"not allow; use way: side (or auto), or memory: full")
    return "side"


def place_pipeline(pipe, mode: str, device: torch.device, dtype: torch.dtype) -> None:
    """Put a pipeline loaded on the CPU (in `dtype`) onto `device`, its transformer held as `mode`."""
    device = torch.device(device)
    transformer = pipe.transformer
    if mode == "fp8":
        if device.type == "mps":
            raise UserError("render.memory fp8: MPS has no float8 storage; use memory: full or offload")
        transformer.enable_layerwise_casting(storage_dtype=FP8_STORAGE, compute_dtype=dtype)
    elif mode == "offload":
        # One block per group; on CUDA the next block is copied on a side stream while this one runs.
        transformer.enable_group_offload(onload_device=device, offload_device=torch.device("cpu"),
                                         offload_type="block_level", num_blocks_per_group=1,
                                         use_stream=device.type == "cuda")
    elif mode != "full":
        raise ValueError(mode)
    pipe.to(device)  # diffusers leaves a group-offloaded transformer where its hooks put it
    pipe.vae.enable_slicing()  # decode one image at a time: a batch's decode is never the peak
