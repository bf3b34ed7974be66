"""The canonical in-memory LoRA: diffusers module path -> (A, B, scale)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch


@dataclass
class LoraModule:
    """Delta W = scale * up @ down for one Linear (down: rank x in, up: out x rank)."""

    down: torch.Tensor  # A
    up: torch.Tensor  # B
    scale: float = 1.0  # alpha / rank, already folded from the file's alpha (1.0 without alpha)

    @property
    def rank(self) -> int:
        return self.down.shape[0]

    def delta(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return self.scale * (self.up.to(dtype) @ self.down.to(dtype))


@dataclass
class Lora:
    """A LoRA file normalised to Z-Image module paths (e.g. `layers.0.attention.to_q`)."""

    path: Path
    format: str  # "ai-toolkit", "diffusers", "kohya", "diffsynth", "comfyui", ...
    dim: int  # transformer width D the file was trained for (3840 for Z-Image-Turbo)
    modules: dict[str, LoraModule] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
