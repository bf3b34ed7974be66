"""Merge LoRAs with per-module scales into one LoRA, exactly or re-compressed to a rank.

Exact (default): for module m, ranks are concatenated, `B' = [s1 B1, s2 B2]`, `A' = [A1; A2]`,
so `B'A' = s1 B1 A1 + s2 B2 A2` with no approximation (s includes each file's alpha/rank).

Rank N: the concatenated factors are re-compressed by a truncated SVD of `B'A'` computed
without forming the out x in delta: QR of B' and of A'^T, SVD of the small R x R core.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..errors import UserError
from ..recipe import Recipe
from .model import Lora, LoraModule
from .read import load_loras, model_order

KEY_PREFIX = "diffusion_model."  # AI-Toolkit form: loads in ComfyUI and diffusers alike


@dataclass
class MergeReport:
    """What a merge did: modules written, dropped, and (with a rank) the error it introduced."""

    modules: int = 0
    dropped: list[str] = field(default_factory=list)  # every LoRA's scale was 0 there
    ranks: dict[str, int] = field(default_factory=dict)  # output rank per module
    rank: int | None = None  # the requested rank, None for an exact merge
    # Rank N only: relative Frobenius error ||dW - dW_N|| / ||dW|| per module, and the squared
    # norms needed to pool them into one figure for the whole LoRA.
    errors: dict[str, float] = field(default_factory=dict)
    _sq_norm: float = 0.0
    _sq_error: float = 0.0

    @property
    def relative_error(self) -> float:
        """Relative Frobenius error over all modules together (0 for an exact merge)."""
        return math.sqrt(self._sq_error / self._sq_norm) if self._sq_norm > 0 else 0.0

    @property
    def max_error(self) -> tuple[str, float] | None:
        if not self.errors:
            return None
        worst = max(self.errors, key=self.errors.get)
        return worst, self.errors[worst]

    def summary(self) -> str:
        ranks = sorted(set(self.ranks.values()))
        rank_text = f"rank {ranks[0]}" if len(ranks) == 1 else f"ranks {ranks[0]}-{ranks[-1]}" if ranks else "no ranks"
        text = f"{self.modules} modules, {rank_text}"
        if self.dropped:
            text += f", {len(self.dropped)} dropped (scale 0)"
        if self.rank is None:
            return text + ", exact"
        text += f", SVD to rank {self.rank}: relative error {self.relative_error:.3g}"
        if self.max_error:
            text += f" (worst {self.max_error[1]:.3g} in {self.max_error[0]})"
        return text


def merge_loras(loras: list[Lora], scales: list[dict[str, float]], rank: int | None = None,
                dtype: torch.dtype | None = None) -> tuple[dict[str, torch.Tensor], MergeReport]:
    """Sum `scales[i][m] * delta_i[m]` over LoRAs for every module m, as one LoRA state dict.

    Keys are `diffusion_model.<module>.lora_A/lora_B.weight` with every scale folded into B;
    a module missing from `scales[i]` weighs 0 for LoRA i. dtype defaults to the inputs'.
    """
    if len(loras) != len(scales):
        raise ValueError(f"{len(loras)} LoRAs but {len(scales)} scale maps")
    if not loras:
        raise UserError("no LoRA to merge; give at least one .safetensors file")
    if len({lora.dim for lora in loras}) > 1:
        widths = ", ".join(f"{lora.path} (width {lora.dim})" for lora in loras)
        raise UserError(f"LoRAs of different models cannot be merged: {widths}")
    if rank is not None and rank < 1:
        raise UserError(f"--rank {rank}: the rank must be a positive whole number such as 32")
    dtype = dtype or _common_dtype(loras)

    report = MergeReport(rank=rank)
    state: dict[str, torch.Tensor] = {}
    for path in _module_union(loras):
        terms = [(scale_map.get(path, 0.0) * lora.modules[path].scale, lora.modules[path])
                 for lora, scale_map in zip(loras, scales) if path in lora.modules]
        terms = [(s, m) for s, m in terms if s != 0.0]
        if not terms:
            report.dropped.append(path)
            continue
        if rank is None:
            down, up = concat_terms(terms, dtype)
        else:
            down, up, error, sq_norm = compress_terms(terms, rank)
            down, up = down.to(dtype), up.to(dtype)
            report.errors[path] = error
            report._sq_norm += sq_norm
            report._sq_error += error ** 2 * sq_norm
        state[f"{KEY_PREFIX}{path}.lora_A.weight"] = down.contiguous()
        state[f"{KEY_PREFIX}{path}.lora_B.weight"] = up.contiguous()
        report.ranks[path] = down.shape[0]
        report.modules += 1
    return state, report


def merge_recipe(recipe: Recipe, rank: int | None = None, dtype: torch.dtype | None = None
                 ) -> tuple[dict[str, torch.Tensor], MergeReport]:
    """Load the recipe's LoRAs and merge them with its per-module scales."""
    loras = load_loras([lw.path for lw in recipe.loras])
    scales = [lw.module_scales(lora.modules) for lw, lora in zip(recipe.loras, loras)]
    return merge_loras(loras, scales, rank=rank, dtype=dtype)


def concat_terms(terms: list[tuple[float, LoraModule]], dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact: A' = [A1; A2; ...], B' = [s1 B1, s2 B2, ...] (s B rounded once to `dtype`)."""
    down = torch.cat([m.down.to(dtype) for _, m in terms], dim=0)
    # CPU bf16/fp16 products are computed in float32 and rounded once, like the float path
    up = torch.cat([m.up * s if m.up.dtype == dtype else (m.up.float() * s).to(dtype) for s, m in terms], dim=1)
    return down, up


def compress_terms(terms: list[tuple[float, LoraModule]], rank: int
                   ) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """Best rank-`rank` approximation of sum s_i B_i A_i: (down, up, relative error, ||dW||^2).

    With U = [s_i B_i] (out x R) and V = [A_i] (R x in): U = Qu Ru, V^T = Qv Rv, so
    dW = Qu (Ru Rv^T) Qv^T and the SVD of the R x R core gives dW's singular values and
    vectors. Cost O((out + in) R^2) instead of O(out * in * R) for the full delta.
    """
    down, up = concat_terms(terms, torch.float32)
    # QR of the tall factors in float32 (the costly part, accurate to ~1e-7 relative);
    # the small core and its SVD in float64, so the error of the truncation is measured well.
    qu, ru = torch.linalg.qr(up)
    qv, rv = torch.linalg.qr(down.T)
    u, s, vh = torch.linalg.svd(ru.double() @ rv.double().T)
    sq_norm = float((s ** 2).sum())
    keep = min(rank, s.numel())
    error = math.sqrt(float((s[keep:] ** 2).sum()) / sq_norm) if sq_norm > 0 else 0.0
    root = s[:keep].sqrt()  # split the singular values evenly between the halves
    new_up = qu @ (u[:, :keep] * root).float()
    new_down = (root[:, None] * vh[:keep]).float() @ qv.T
    return new_down, new_up, error, sq_norm


def _common_dtype(loras: list[Lora]) -> torch.dtype:
    """The inputs' dtype; float32 when they disagree (no precision lost to either)."""
    dtypes = {m.up.dtype for lora in loras for m in lora.modules.values()}
    return dtypes.pop() if len(dtypes) == 1 else torch.float32


def _module_union(loras: list[Lora]) -> list[str]:
    return sorted({p for lora in loras for p in lora.modules}, key=model_order)
