"""Merge LoRAs with per-module scales into one LoRA, exactly or re-compressed to a rank.

Exact (default): for module m, ranks are concatenated, `B' = [s1 B1, s2 B2]`, `A' = [A1; A2]`,
so `B'A' = s1 B1 A1 + s2 B2 A2` with no approximation (s includes each file's alpha/rank).

Rank N: the concatenated factors are re-compressed by a truncated SVD of `B'A'` computed
without forming the out x in delta: QR of B' and of A'^T, SVD of the small R x R core.

LoKr/LoHa inputs: a module whose one input is a LoKr (LoHa) is written as that LoKr (LoHa), its
scale folded into w1 (w1_a) and alpha set so every loader reads scale 1: exact. Where kinds mix
on a module (or two LyCORIS files meet there), the summed delta is formed and a randomized
truncated SVD at `rank` (default MIXED_RANK) is written as a LoRA, its error measured and reported.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import torch

from zsearch.util.atomic import atomic_path
from zsearch.errors import UserError
from zsearch.lora.recipe import Recipe
from zsearch.lora.model import AnyModule, LohaModule, LokrModule, Lora, LoraModule
from zsearch.lora.read import load_loras, model_order
from zsearch.lora.write import check_output, write_safetensors_stream

KEY_PREFIX = "diffusion_model."  # AI-Toolkit form: loads in ComfyUI and diffusers alike
MIXED_RANK = 64  # rank of the SVD written where LoRA and LoKr/LoHa mix on a module and no rank is given
ALPHA_DTYPE = torch.float32


@dataclass
class MergeReport:
    """What a merge did: modules written, dropped, and (with a rank) the error it introduced."""

    modules: int = 0
    dropped: list[str] = field(default_factory=list)  # every LoRA's scale was 0 there
    ranks: dict[str, int] = field(default_factory=dict)  # output rank per module
    rank: int | None = None  # the requested rank, None for an exact merge
    dtype: torch.dtype | None = None  # the output's
    # Rank N only: relative Frobenius error ||dW - dW_N|| / ||dW|| per module, and the squared
    # norms needed to pool them into one figure for the whole LoRA.
    errors: dict[str, float] = field(default_factory=dict)
    kept: dict[str, str] = field(default_factory=dict)  # module -> "lokr"/"loha": written as that kind, exact
    mixed: list[str] = field(default_factory=list)  # modules whose summed delta was SVD'd to a LoRA
    sq_norm: float = 0.0  # sum over re-compressed modules of ‖ΔW‖²
    sq_error: float = 0.0  # and of ‖ΔW − its low-rank form‖²

    @property
    def relative_error(self) -> float:
        """Relative Frobenius error over all modules together (0 for an exact merge)."""
        return math.sqrt(self.sq_error / self.sq_norm) if self.sq_norm > 0 else 0.0

    @property
    def max_error(self) -> tuple[str, float] | None:
        if not self.errors:
            return None
        worst = max(self.errors, key=self.errors.get)
        return worst, self.errors[worst]

    def metadata(self) -> dict[str, str]:
        """`zsearch.merge` for the output's metadata: rank, dtype, the SVD's error overall and, for
        LoKr/LoHa deltas written as LoRA, per module; which modules kept their LoKr/LoHa kind."""
        info: dict = {"rank": self.rank, "dtype": str(self.dtype).removeprefix("torch.")}
        if self.rank is not None or self.errors:  # an SVD was made (--rank, or LoKr/LoHa written as LoRA)
            info["relative_error"] = self.relative_error
        if self.mixed:
            info["module_errors"] = {path: self.errors[path] for path in self.mixed}
        if self.kept:
            info["kept"] = dict(Counter(self.kept.values()))
        return {"zsearch.merge": json.dumps(info)}

    def summary(self) -> str:
        ranks = sorted(set(self.ranks.values()))
        rank_text = f"rank {ranks[0]}" if len(ranks) == 1 else f"ranks {ranks[0]}-{ranks[-1]}" if ranks else "no LoRA ranks"
        text = f"{self.modules} modules, {rank_text}"
        if self.kept:
            kinds = Counter(self.kept.values())
            text += ", " + ", ".join(f"{n} kept as {kind}" for kind, n in sorted(kinds.items()))
        if self.dropped:
            text += f", {len(self.dropped)} dropped (scale 0)"
        if self.mixed:
            text += f", {len(self.mixed)} LoKr/LoHa or mixed modules SVD'd to LoRA"
        if self.rank is None and not self.errors:
            return text + ", exact"
        text += f", SVD to rank {self.rank or MIXED_RANK}: relative error {self.relative_error:.3g}"
        if self.max_error:
            text += f" (worst {self.max_error[1]:.3g} in {self.max_error[0]})"
        return text


@dataclass
class ModulePlan:
    """One output module, known before any tensor is computed: its inputs and its output shapes."""

    path: str
    terms: list[tuple[float, AnyModule]]  # (scale, module) of every LoRA with a nonzero scale here
    rank: int  # output rank (LoRA outputs)
    out_features: int
    in_features: int
    how: str = "concat"  # "concat" (exact), "compress" (SVD of LoRA factors), "lycoris" (one LoKr/LoHa, exact),
    #                      "mixed" (randomized SVD of the summed delta)

    def layout(self, dtype: torch.dtype) -> list[tuple[str, torch.dtype, tuple[int, ...]]]:
        base = f"{KEY_PREFIX}{self.path}"
        if self.how == "lycoris":
            module = self.terms[0][1]
            prefix = "lokr" if module.kind == "lokr" else "hada"
            return [*((f"{base}.{prefix}_{name}", dtype, tuple(t.shape)) for name, t in module.tensors().items()),
                    (f"{base}.alpha", ALPHA_DTYPE, ())]
        return [(f"{base}.lora_A.weight", dtype, (self.rank, self.in_features)),
                (f"{base}.lora_B.weight", dtype, (self.out_features, self.rank))]


@dataclass
class MergePlan:
    modules: list[ModulePlan]
    dtype: torch.dtype
    rank: int | None
    dropped: list[str]

    def layout(self) -> list[tuple[str, torch.dtype, tuple[int, ...]]]:
        """(key, dtype, shape) of every output tensor, in the order `compute` yields them."""
        return [entry for m in self.modules for entry in m.layout(self.dtype)]

    def compute(self, report: MergeReport) -> Iterator[tuple[str, torch.Tensor]]:
        """Merge one module at a time, yielding (key, tensor) in `layout` order; fills `report`."""
        report.dropped, report.dtype = list(self.dropped), self.dtype
        for m in self.modules:
            if m.how == "lycoris":
                scale, module = m.terms[0]
                report.kept[m.path] = module.kind
                report.modules += 1
                for (key, _, _), tensor in zip(m.layout(self.dtype), lycoris_scaled(module, scale, self.dtype)):
                    yield key, tensor
                continue
            if m.how == "concat":
                down, up = concat_terms(m.terms, self.dtype)
            else:
                if m.how == "compress":
                    down, up, error, sq_norm = compress_terms(m.terms, m.rank)
                else:
                    down, up, error, sq_norm = svd_of_sum(m.terms, m.rank)
                    report.mixed.append(m.path)
                down, up = down.to(self.dtype), up.to(self.dtype)
                report.errors[m.path] = error
                report.sq_norm += sq_norm
                report.sq_error += error ** 2 * sq_norm
            if down.shape != (m.rank, m.in_features) or up.shape != (m.out_features, m.rank):
                raise AssertionError(f"{m.path}: planned rank {m.rank}, computed {tuple(down.shape)}")
            report.ranks[m.path] = m.rank
            report.modules += 1
            yield f"{KEY_PREFIX}{m.path}.lora_A.weight", down.contiguous()
            yield f"{KEY_PREFIX}{m.path}.lora_B.weight", up.contiguous()


def plan_merge(loras: list[Lora], scales: list[dict[str, float]], rank: int | None = None,
               dtype: torch.dtype | None = None, as_lora: bool = False) -> MergePlan:
    """Check the inputs and decide every output module and its shapes, without computing any.

    `as_lora`: write a lone LoKr/LoHa as an SVD LoRA too (for loaders that read LoRA keys only,
    such as diffusers' Z-Image loader), instead of keeping its kind.
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
    plan = MergePlan([], dtype or _common_dtype(loras), rank, [])
    for path in _module_union(loras):
        terms = [(scale_map.get(path, 0.0) * lora.modules[path].scale, lora.modules[path])
                 for lora, scale_map in zip(loras, scales) if path in lora.modules]
        terms = [(s, m) for s, m in terms if s != 0.0]
        if not terms:
            plan.dropped.append(path)
            continue
        out_features, in_features = terms[0][1].shape
        if all(m.kind == "lora" for _, m in terms):
            total = sum(m.rank for _, m in terms)
            # compress_terms keeps at most the core's size: min(total, out, in) singular values
            out_rank = total if rank is None else min(rank, total, out_features, in_features)
            how = "concat" if rank is None else "compress"
        elif len(terms) == 1 and not as_lora:
            out_rank, how = 0, "lycoris"
        else:
            out_rank, how = min(rank or MIXED_RANK, out_features, in_features), "mixed"
        plan.modules.append(ModulePlan(path, terms, out_rank, out_features, in_features, how))
    return plan


def merge_loras(loras: list[Lora], scales: list[dict[str, float]], rank: int | None = None,
                dtype: torch.dtype | None = None, as_lora: bool = False) -> tuple[dict[str, torch.Tensor], MergeReport]:
    """Sum `scales[i][m] * delta_i[m]` over LoRAs for every module m, as one LoRA state dict.

    Keys are `diffusion_model.<module>.lora_A/lora_B.weight` with every scale folded into B;
    a module missing from `scales[i]` weighs 0 for LoRA i. dtype defaults to the inputs'.
    """
    plan = plan_merge(loras, scales, rank, dtype, as_lora)
    report = MergeReport(rank=rank, dtype=plan.dtype)
    state = dict(plan.compute(report))
    return state, report


def merge_to_file(loras: list[Lora], scales: list[dict[str, float]], path: str | os.PathLike,
                  metadata: dict[str, str] | Callable[[MergeReport], dict[str, str]],
                  rank: int | None = None, dtype: torch.dtype | None = None, force: bool = False,
                  inputs: Iterable[str | os.PathLike] = (), as_lora: bool = False) -> MergeReport:
    """`merge_loras` written straight to `path`, one module at a time: the output is never whole
    in memory. `metadata` may be a function of the finished report (e.g. to record the error)."""
    inputs = list(inputs)
    path = check_output(path, inputs, force)
    plan = plan_merge(loras, scales, rank, dtype, as_lora)
    if not plan.modules:
        raise UserError("every module has scale 0 (check --ratio and the block weights); nothing to write")
    report = MergeReport(rank=rank, dtype=plan.dtype)
    metadata_of = metadata if callable(metadata) else (lambda _report: metadata)
    with atomic_path(path) as tmp:
        write_safetensors_stream(tmp, plan.layout(), plan.compute(report), lambda: metadata_of(report))
        check_output(path, inputs, force)  # again before the rename: it may have appeared meanwhile
    return report


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


def lycoris_scaled(module: LokrModule | LohaModule, scale: float, dtype: torch.dtype) -> list[torch.Tensor]:
    """The module's tensors (in `tensors()` order) with `scale` (the term's: recipe x the module's own)
    folded into its first factor, then its alpha: the LoKr's rank (1 when both factors are whole), the
    LoHa's rank, so that LyCORIS, ComfyUI and zsearch all read a scale of 1."""
    total = scale
    first = "w1" if module.kind == "lokr" and module.w1 is not None else "w1_a"
    out = []
    for name, tensor in module.tensors().items():
        if name == first:
            tensor = tensor.float() * total
        out.append(tensor.to(dtype).contiguous())
    alpha = module.rank if module.rank is not None else 1
    return [*out, torch.tensor(float(alpha), dtype=ALPHA_DTYPE)]


def svd_of_sum(terms: list[tuple[float, AnyModule]], rank: int, oversample: int = 8, iterations: int = 4
               ) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """A rank-`rank` LoRA of sum s_i dW_i by randomized SVD (Halko et al.): (down, up, relative error, ||dW||^2).

    The sum is formed in float32 (LoKr/LoHa deltas have no low-rank form to work on); the error
    ||dW - up @ down|| / ||dW|| is measured on that sum, not estimated.
    """
    total = None
    for scale, module in terms:
        delta = module.delta(torch.float32, scale=scale)  # the term's scale includes the module's own
        total = delta if total is None else total.add_(delta)
    small = min(total.shape)
    if rank + oversample >= small:
        u, s, vh = torch.linalg.svd(total.double(), full_matrices=False)
        u, s, vh = u.float(), s.float(), vh.float()
    else:
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(0)  # the same output for the same inputs
        u, s, v = torch.svd_lowrank(total, q=rank + oversample, niter=iterations)
        torch.random.set_rng_state(generator_state)
        vh = v.T
    keep = min(rank, s.numel())
    root = s[:keep].sqrt()
    up = u[:, :keep] * root
    down = root[:, None] * vh[:keep]
    sq_norm = float(total.double().pow(2).sum())
    residual = total.sub_(up @ down)
    error = math.sqrt(float(residual.double().pow(2).sum()) / sq_norm) if sq_norm > 0 else 0.0
    return down.contiguous(), up.contiguous(), error, sq_norm


def _common_dtype(loras: list[Lora]) -> torch.dtype:
    """The inputs' dtype; float32 when they disagree (no precision lost to either)."""
    dtypes = {m.dtype for lora in loras for m in lora.modules.values()}
    return dtypes.pop() if len(dtypes) == 1 else torch.float32


def _module_union(loras: list[Lora]) -> list[str]:
    return sorted({p for lora in loras for p in lora.modules}, key=model_order)
