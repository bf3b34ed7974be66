"""The canonical in-memory LoRA: module path -> one weight update (LoRA, LoKr or LoHa) and its scale.

Every kind gives its update as `delta()` = scale x (its product of factors); a LoRA also gives
its two factors (`down`, `up`), which the side path and the exact rank-concatenating merge need.

    kind   factors                                    delta / scale
    lora   down (r x in), up (out x r)                up @ down
    lokr   w1 or w1_a @ w1_b, w2 or w2_a @ w2_b        kron(w1, w2)                  (LyCORIS lokr.py)
    loha   w1_a (out x r), w1_b (r x in), w2_a, w2_b  (w1_a @ w1_b) * (w2_a @ w2_b) (LyCORIS loha.py)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch


@dataclass
class LoraModule:
    """Delta W = scale * up @ down for one Linear (down: rank x in, up: out x rank)."""

    down: torch.Tensor  # A
    up: torch.Tensor  # B
    scale: float = 1.0  # alpha / rank, already folded from the file's alpha (1.0 without alpha)
    kind: ClassVar[str] = "lora"

    @property
    def rank(self) -> int:
        return self.down.shape[0]

    @property
    def shape(self) -> tuple[int, int]:
        return self.up.shape[0], self.down.shape[1]

    @property
    def dtype(self) -> torch.dtype:
        return self.up.dtype

    def delta(self, dtype: torch.dtype = torch.float32, scale: float | None = None) -> torch.Tensor:
        """scale x up @ down; `scale` replaces the module's own (e.g. by a merge's total)."""
        return (self.scale if scale is None else scale) * (self.up.to(dtype) @ self.down.to(dtype))


def _product(full: torch.Tensor | None, a: torch.Tensor | None, b: torch.Tensor | None,
             dtype: torch.dtype) -> torch.Tensor:
    return full.to(dtype) if full is not None else a.to(dtype) @ b.to(dtype)


@dataclass
class LokrModule:
    """Delta W = scale * kron(w1, w2); each factor is given whole (`w1`) or as a pair (`w1_a @ w1_b`)."""

    w1: torch.Tensor | None = None
    w1_a: torch.Tensor | None = None
    w1_b: torch.Tensor | None = None
    w2: torch.Tensor | None = None
    w2_a: torch.Tensor | None = None
    w2_b: torch.Tensor | None = None
    scale: float = 1.0
    kind: ClassVar[str] = "lokr"

    def factor_shape(self, which: int) -> tuple[int, int]:
        full, a, b = (self.w1, self.w1_a, self.w1_b) if which == 1 else (self.w2, self.w2_a, self.w2_b)
        return tuple(full.shape) if full is not None else (a.shape[0], b.shape[1])

    @property
    def shape(self) -> tuple[int, int]:
        (a, b), (c, d) = self.factor_shape(1), self.factor_shape(2)
        return a * c, b * d

    @property
    def rank(self) -> int | None:
        """The LyCORIS `lora_dim` of the low-rank factor (w1's first, as LyCORIS reads it); None if both whole."""
        if self.w1_b is not None:
            return self.w1_b.shape[0]
        return self.w2_b.shape[0] if self.w2_b is not None else None

    @property
    def dtype(self) -> torch.dtype:
        return next(t for t in self.tensors().values()).dtype

    def tensors(self) -> dict[str, torch.Tensor]:
        names = ("w1", "w1_a", "w1_b", "w2", "w2_a", "w2_b")
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}

    def delta(self, dtype: torch.dtype = torch.float32, scale: float | None = None) -> torch.Tensor:
        w1 = _product(self.w1, self.w1_a, self.w1_b, dtype)
        w2 = _product(self.w2, self.w2_a, self.w2_b, dtype)
        return (self.scale if scale is None else scale) * torch.kron(w1, w2)


@dataclass
class LohaModule:
    """Delta W = scale * (w1_a @ w1_b) * (w2_a @ w2_b), a Hadamard product of two low-rank products."""

    w1_a: torch.Tensor
    w1_b: torch.Tensor
    w2_a: torch.Tensor
    w2_b: torch.Tensor
    scale: float = 1.0
    kind: ClassVar[str] = "loha"

    @property
    def shape(self) -> tuple[int, int]:
        return self.w1_a.shape[0], self.w1_b.shape[1]

    @property
    def rank(self) -> int:
        return self.w1_b.shape[0]

    @property
    def dtype(self) -> torch.dtype:
        return self.w1_a.dtype

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"w1_a": self.w1_a, "w1_b": self.w1_b, "w2_a": self.w2_a, "w2_b": self.w2_b}

    def delta(self, dtype: torch.dtype = torch.float32, scale: float | None = None) -> torch.Tensor:
        product = (self.w1_a.to(dtype) @ self.w1_b.to(dtype)) * (self.w2_a.to(dtype) @ self.w2_b.to(dtype))
        return (self.scale if scale is None else scale) * product


AnyModule = LoraModule | LokrModule | LohaModule


@dataclass
class Lora:
    """A LoRA file normalised to Z-Image module paths (e.g. `layers.0.attention.to_q`)."""

    path: Path
    format: str  # "ai-toolkit", "diffusers", "kohya", "diffsynth", "comfyui", ...
    dim: int  # transformer width D the file was trained for (3840 for Z-Image-Turbo)
    modules: dict[str, AnyModule] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    scale_source: str = ""  # where the modules' scale was read (the file's alpha, a PEFT config, none)

    @property
    def kinds(self) -> set[str]:
        return {m.kind for m in self.modules.values()}

    @property
    def plain(self) -> bool:
        """True when every module is a plain LoRA (what the side path can apply)."""
        return all(m.kind == "lora" for m in self.modules.values())
