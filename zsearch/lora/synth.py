"""Random Z-Image LoRAs at any width D, written in every key format zsearch reads.

Tests, the offline demo and the benchmark use these instead of downloaded files:
`make_random_lora` builds the canonical form, `save_in_format` writes it the way each
trainer would, so reading it back must give the same per-module delta.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import torch
from safetensors.torch import save_file

from zsearch.util.atomic import atomic_path
from zsearch.lora.blocks import COMPONENTS, N_LAYERS, Module, all_modules, expected_shape, parse_module
from zsearch.lora.model import Lora, LoraModule

FORMATS = ("ai-toolkit", "diffusers", "kohya", "kohya-fused", "comfyui", "diffsynth")
_FUSED_FORMATS = ("kohya-fused", "comfyui")


def make_random_lora(dim: int, rank: int, modules: Iterable[str | Module] | None = None, seed: int = 0,
                     alpha: float | None = None, dtype: torch.dtype = torch.float32) -> Lora:
    """A LoRA of width `dim` on `modules` (paths or Modules; None = every module of Z-Image).

    Both halves are random (unlike a freshly initialised LoRA, whose up half is zero), so every
    module has a non-zero delta. `alpha` gives scale alpha/rank, as a kohya file would.
    """
    if modules is None:
        modules = all_modules(N_LAYERS)
    generator = torch.Generator().manual_seed(seed)
    scale = alpha / rank if alpha is not None else 1.0
    result: dict[str, LoraModule] = {}
    for item in modules:
        module = item if isinstance(item, Module) else parse_module(item)
        if module is None:
            raise ValueError(f"not a Z-Image module path: {item}")
        out_features, in_features = expected_shape(module.component, dim)
        down = torch.randn(rank, in_features, generator=generator) / in_features ** 0.5
        up = torch.randn(out_features, rank, generator=generator) / rank ** 0.5
        result[module.path] = LoraModule(down=down.to(dtype), up=up.to(dtype), scale=scale)
    return Lora(path=Path(f"random-{seed}.safetensors"), format="synthetic", dim=dim, modules=result)


def save_in_format(lora: Lora, path: str | os.PathLike, format: str,
                   metadata: dict[str, str] | None = None) -> Path:
    """Write `lora` with the keys of `format` (one of FORMATS); returns the path."""
    if format not in FORMATS:
        raise ValueError(f"unknown format {format!r}; one of {FORMATS}")
    tensors: dict[str, torch.Tensor] = {}
    fused = format in _FUSED_FORMATS
    remaining = dict(lora.modules)
    if fused:
        for block_prefix in sorted({p.rsplit(".attention.", 1)[0] for p in remaining if ".attention." in p}):
            qkv = [f"{block_prefix}.{COMPONENTS[c]}" for c in ("to_q", "to_k", "to_v")]
            if all(p in remaining for p in qkv):
                down, up, scale = _fuse_qkv([remaining.pop(p) for p in qkv])
                _put(tensors, format, f"{block_prefix}.attention.qkv", down, up, scale)
    for module_path, module in remaining.items():
        name = module_path
        if fused and name.endswith(".attention.to_out.0"):
            name = name[: -len("to_out.0")] + "out"
        _put(tensors, format, name, module.down, module.up, module.scale)
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    return Path(path)


def _fuse_qkv(parts: list[LoraModule]) -> tuple[torch.Tensor, torch.Tensor, float]:
    """q, k, v -> one fused LoRA: A stacked, B block-diagonal; exact for each third of the rows."""
    scales = {m.scale for m in parts}
    common = scales.pop() if len(scales) == 1 else None
    ups = [m.up if common is not None else m.up * m.scale for m in parts]
    down = torch.cat([m.down for m in parts], dim=0)
    up = torch.block_diag(*ups)
    return down, up, (common if common is not None else 1.0)


def _put(tensors: dict[str, torch.Tensor], format: str, name: str, down: torch.Tensor, up: torch.Tensor,
         scale: float) -> None:
    """Add one module's keys; formats without alpha get the scale folded into the up half."""
    rank = down.shape[0]
    if format in ("ai-toolkit", "comfyui", "diffusers", "diffsynth"):
        prefix = {"ai-toolkit": "diffusion_model.", "comfyui": "diffusion_model.", "diffusers": "transformer.",
                  "diffsynth": ""}[format]
        a, b = ("lora_A.default.weight", "lora_B.default.weight") if format == "diffsynth" else \
            ("lora_A.weight", "lora_B.weight")
        keeps_alpha = format in ("diffusers", "comfyui")
        if scale != 1.0 and not keeps_alpha:
            up = up * scale
        tensors[f"{prefix}{name}.{a}"] = down
        tensors[f"{prefix}{name}.{b}"] = up
        if scale != 1.0 and keeps_alpha:
            tensors[f"{prefix}{name}.alpha"] = torch.tensor(scale * rank, dtype=torch.float32)
    else:  # kohya / musubi: underscores, lora_down/lora_up, alpha always written
        base = "lora_unet_" + name.replace(".", "_")
        tensors[f"{base}.lora_down.weight"] = down
        tensors[f"{base}.lora_up.weight"] = up
        tensors[f"{base}.alpha"] = torch.tensor(scale * rank, dtype=torch.float32)
