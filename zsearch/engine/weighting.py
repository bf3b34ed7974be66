"""Applying a LoRA weighting to the transformer, a new one every trial, exactly and without drift.

Two strategies behind one interface (`Weighting`), chosen by name:

- `SidePath` ("side"): each targeted Linear gets a side path `y = base(x) + ((x @ A^T) * s) @ B^T`,
  the ranks of all LoRAs concatenated (A = [A1; A2], B = [B1, B2]) so a module costs two thin
  matmuls whatever the number of LoRAs. Every module's `s` is a view into one flat scale buffer,
  so setting a weighting is one host-to-device copy. The base weights are never touched, so
  nothing can drift and no copy of them is kept; every forward pays the side matmuls.
- `FusedFromCopy` ("fused"): keeps a copy W0 of each targeted weight and rebuilds
  `W = W0 + B·diag(s)·A` (one addmm) each trial. No per-image cost; one extra copy of the patched
  weights. Never subtracts the old delta: in bf16 that drifts (the rounding of W + Δ is not undone).
  LoKr/LoHa modules have no thin side path; only this way applies them: `W = W0 + Σ s·ΔW`, summed
  in float32 and rounded once. `auto` picks it whenever a LoKr/LoHa is attached.

For both: all scales 0 gives the base model back bit for bit, and a weighting set again gives
bit-identical outputs however many weightings came between.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from zsearch.lora.blocks import Module, parse_module
from zsearch.errors import UserError
from zsearch.lora.model import Lora
from zsearch.lora.recipe import LoraWeights, Recipe
from zsearch.engine.device import free_memory_bytes

FUSED_HEADROOM = 1.5  # "auto" picks fused when free memory exceeds the patched weights by this factor


@dataclass
class Target:
    """One patched Linear: the LoRAs' ranks concatenated, and where its scales live in the flat buffer."""

    path: str
    linear: nn.Linear
    down: torch.Tensor  # A: (R, in), all LoRAs' ranks stacked
    up: torch.Tensor  # B: (out, R)
    start: int  # its slice of the flat scale buffer: [start, stop) for the LoRA ranks,
    stop: int
    dense: list = field(default_factory=list)  # (slot, LoKr/LoHa module on the device): one slot each, from stop

    @property
    def end(self) -> int:
        return self.stop + len(self.dense)


class ScaleTable:
    """Per-module scales of every LoRA, laid out in one flat buffer (one slot per rank).

    `write(scales)` fills the slots from per-LoRA {module path: scale} dicts, folding in each
    LoraModule's own scale (alpha / rank), then copies the buffer to the device in one go.
    """

    def __init__(self, loras: list[Lora], slots: list[tuple[int, str, int, int]], device: torch.device):
        # slots: (lora index, module path, start, stop) for each LoRA's block of ranks in the buffer
        size = max((stop for *_, stop in slots), default=0)
        self.paths: list[list[str]] = [list(lora.modules) for lora in loras]
        self._known = [set(paths) for paths in self.paths]
        positions: list[list[int]] = [[] for _ in loras]
        owners: list[list[int]] = [[] for _ in loras]
        factors: list[list[float]] = [[] for _ in loras]
        for lora_index, path, start, stop in slots:
            module_index = self.paths[lora_index].index(path)
            for slot in range(start, stop):
                positions[lora_index].append(slot)
                owners[lora_index].append(module_index)
                factors[lora_index].append(loras[lora_index].modules[path].scale)
        self._positions = [torch.tensor(p, dtype=torch.long) for p in positions]
        self._owners = [torch.tensor(o, dtype=torch.long) for o in owners]
        self._factors = [torch.tensor(f, dtype=torch.float32) for f in factors]
        pin = torch.device(device).type == "cuda"
        self.host = torch.zeros(size, dtype=torch.float32, pin_memory=pin)
        self.device_buffer = torch.zeros(size, dtype=torch.float32, device=device)

    def write(self, scales: list[dict[str, float]]) -> None:
        if len(scales) != len(self.paths):
            raise ValueError(f"{len(scales)} scale dicts for {len(self.paths)} LoRAs")
        for index, module_scales in enumerate(scales):
            unknown = module_scales.keys() - self._known[index]
            if unknown:
                raise ValueError(f"LoRA {index} has no module {sorted(unknown)[0]}")
            values = torch.tensor([module_scales.get(path, 0.0) for path in self.paths[index]],
                                  dtype=torch.float32)
            self.host[self._positions[index]] = values[self._owners[index]] * self._factors[index]
        self.device_buffer.copy_(self.host)  # blocking: the host buffer is rewritten next trial


class Weighting(ABC):
    """LoRAs attached to a transformer; `set_recipe`/`set_scales` switch the weighting."""

    name: ClassVar[str]
    lora_only: ClassVar[bool] = False  # True: applies plain LoRAs only (no LoKr/LoHa)

    def __init__(self, transformer: nn.Module, loras: list[Lora], device: torch.device | None = None,
                 dtype: torch.dtype | None = None):
        self.transformer = transformer
        self.loras = loras
        # Where and in what the Linears compute; by default where their weights are. Offloaded
        # weights sit on the CPU and fp8-stored ones compute in bf16: the engine says so.
        parameter = next(transformer.parameters())
        self.device = torch.device(device) if device is not None else parameter.device
        self.dtype = dtype or parameter.dtype
        if self.lora_only:
            _refuse_lycoris(loras, self.name)
        self.targets, slots = _build_targets(transformer, loras, self.device, self.dtype)
        self.table = ScaleTable(loras, slots, self.device)
        self._slot_target = torch.repeat_interleave(
            torch.arange(len(self.targets)), torch.tensor([t.end - t.start for t in self.targets], dtype=torch.long))
        self._active = [False] * len(self.targets)
        self._attached = True
        self._modules_of = [{path: parse_module(path) for path in lora.modules} for lora in loras]
        self._attach()

    # -- the interface ------------------------------------------------------------------------
    def set_scales(self, scales: list[dict[str, float]]) -> None:
        """Per LoRA, {module path: scale}; a module left out weighs 0 for that LoRA."""
        if not self._attached:
            raise RuntimeError("this weighting was detached")
        self.table.write(scales)
        # which modules have any non-zero scale (the others get exactly their base weights/outputs)
        nonzero = torch.zeros(len(self.targets)).index_add_(0, self._slot_target, (self.table.host != 0).float())
        self._active = (nonzero > 0).tolist()
        self._apply()

    def set_recipe(self, recipe: Recipe) -> None:
        """Apply a recipe; recipe.loras[i] weighs loras[i]."""
        if len(recipe.loras) != len(self.loras):
            raise ValueError(f"recipe has {len(recipe.loras)} LoRAs, the engine {len(self.loras)}")
        self.set_scales([recipe_scales(weights, modules)
                         for weights, modules in zip(recipe.loras, self._modules_of)])

    def detach(self) -> None:
        """Give the transformer back exactly as it was before attaching."""
        if self._attached:
            self._detach()
            self._attached = False

    @property
    def lora_bytes(self) -> int:
        """Memory held for the LoRA tensors (A and B of every target)."""
        return sum(t.down.numel() * t.down.element_size() + t.up.numel() * t.up.element_size()
                   + sum(x.numel() * x.element_size() for _, m in t.dense for x in m.tensors().values())
                   for t in self.targets)

    @property
    def extra_bytes(self) -> int:
        """All memory this weighting holds beyond the transformer itself."""
        return self.lora_bytes + self.table.device_buffer.numel() * 4

    # -- what a strategy supplies -------------------------------------------------------------
    @abstractmethod
    def _attach(self) -> None: ...

    @abstractmethod
    def _apply(self) -> None: ...

    @abstractmethod
    def _detach(self) -> None: ...


class SidePath(Weighting):
    """Base weights untouched; a side path per module reads its scales from the flat buffer."""

    name = "side"
    lora_only = True

    def _attach(self) -> None:
        self._hooks = []
        for target in self.targets:
            linear = target.linear
            # Plain attributes, not buffers: `module.to(dtype)` (layerwise casting) and group
            # offloading move parameters and buffers only, so these stay put, in compute dtype,
            # and the scales stay views into the flat buffer. Under torch.compile every Linear
            # shares one hook function and reads tensors from its own module: one graph serves
            # every block, and new scale values are new data, never a recompile.
            linear.zsearch_down, linear.zsearch_up = target.down, target.up
            linear.zsearch_scales = self.table.device_buffer[target.start:target.stop]
            self._hooks.append(linear.register_forward_hook(_side_path))

    def _apply(self) -> None:
        pass  # the hooks read the buffer that set_scales just wrote

    def _detach(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        for target in self.targets:
            for name in SIDE_ATTRIBUTES:
                vars(target.linear).pop(name, None)


SIDE_ATTRIBUTES = ("zsearch_down", "zsearch_up", "zsearch_scales")


def _side_path(module: nn.Linear, inputs, output: torch.Tensor) -> torch.Tensor:
    """output += ((x @ A^T) * s) @ B^T, in place, with no branch on s.

    At s = 0 the side term is exactly zero and adding it changes no bit of the base output, so
    scale 0 needs no special case (a Python branch on the scales would recompile under compile).
    """
    hidden = F.linear(inputs[0], module.zsearch_down)
    hidden.mul_(module.zsearch_scales)  # scales stay fp32 (exact ratios); the product is rounded to x's dtype
    # output += hidden @ B^T, in place: no second (tokens x out) tensor per module
    output.view(-1, output.shape[-1]).addmm_(hidden.view(-1, hidden.shape[-1]), module.zsearch_up.t())
    return output


class FusedFromCopy(Weighting):
    """W = W0 + B·diag(s)·A rebuilt from a kept copy W0 each trial; never subtracted."""

    name = "fused"

    def _attach(self) -> None:
        self._base = [target.linear.weight.detach().clone() for target in self.targets]

    def _apply(self) -> None:
        buffer = self.table.device_buffer
        with torch.no_grad():
            for target, base, active in zip(self.targets, self._base, self._active):
                weight = target.linear.weight
                if not active:
                    weight.copy_(base)
                    continue
                if target.dense:
                    weight.copy_(_dense_sum(target, base, buffer))
                    continue
                scaled_up = (target.up * buffer[target.start:target.stop]).to(self.dtype)  # B·diag(s)
                torch.addmm(base, scaled_up, target.down, out=weight.data)

    def _detach(self) -> None:
        with torch.no_grad():
            for target, base in zip(self.targets, self._base):
                target.linear.weight.copy_(base)
        self._base = []

    @property
    def extra_bytes(self) -> int:
        return super().extra_bytes + sum(b.numel() * b.element_size() for b in self._base)


def _dense_sum(target: Target, base: torch.Tensor, buffer: torch.Tensor) -> torch.Tensor:
    """W0 + B·diag(s)·A + Σ s·ΔW (LoKr/LoHa), summed in float32 and rounded once to W0's dtype."""
    total = base.to(torch.float32, copy=True)  # never in place on the kept copy
    if target.stop > target.start:
        total.addmm_(target.up.float() * buffer[target.start:target.stop], target.down.float())
    for slot, module in target.dense:
        scale = buffer[slot]
        if bool(scale != 0):
            total.add_(module.delta(torch.float32) * scale)
    return total.to(base.dtype)


def _refuse_lycoris(loras: list[Lora], way: str) -> None:
    for lora in loras:
        if not lora.plain:
            kinds = ", ".join(sorted(lora.kinds - {"lora"}))
            raise UserError(f"{lora.path}: holds {kinds} modules, which the '{way}' way cannot apply (it adds "
                            f"LoRA side paths only); set render.way: fused (or auto)")


WAYS: dict[str, type[Weighting]] = {cls.name: cls for cls in (SidePath, FusedFromCopy)}


def attach_loras(transformer: nn.Module, loras: list[Lora], way: str = "auto", device: torch.device | None = None,
                 dtype: torch.dtype | None = None) -> Weighting:
    """Attach `loras` to `transformer` the named way ("side", "fused", or "auto" to pick by memory).

    `device`/`dtype`: where and in what the transformer computes, when its weights are stored
    elsewhere or otherwise (offloaded, fp8); default: those of its weights.
    """
    if way == "auto":
        way = choose_way(transformer, loras)
    if way not in WAYS:
        raise UserError(f"weighting way '{way}' is unknown; use auto, {', '.join(WAYS)}")
    return WAYS[way](transformer, loras, device=device, dtype=dtype)


def choose_way(transformer: nn.Module, loras: list[Lora]) -> str:
    """"fused" when a LoKr/LoHa is attached (only it applies them) or when the device has room for a
    copy of the patched weights (with headroom), else "side"."""
    if any(not lora.plain for lora in loras):
        return "fused"
    device = next(transformer.parameters()).device
    free = free_memory_bytes(device)
    if free is None:
        return "side"  # CPU: memory is shared with everything else; do not double the weights
    paths = {path for lora in loras for path in lora.modules}
    patched = sum(transformer.get_submodule(p).weight.numel() * transformer.get_submodule(p).weight.element_size()
                  for p in paths)
    return "fused" if free > patched * FUSED_HEADROOM else "side"


def recipe_scales(weights: LoraWeights, modules: dict[str, Module]) -> dict[str, float]:
    """{path: scale} for one LoRA, the same numbers as `weights.module_scales` at a fraction of the cost.

    scale = ratio x component weight x layer weight; the component and layer weights are looked up
    once each instead of once per module.
    """
    component = {}
    layer = {}
    out = {}
    for path, module in modules.items():
        c = component.get(module.component)
        if c is None:
            c = component[module.component] = weights.component_weight(module.component)
        key = (module.block, module.index)
        w = layer.get(key)
        if w is None:
            w = layer[key] = weights.layer_weight(module)
        out[path] = weights.ratio * c * w
    return out


def _build_targets(transformer: nn.Module, loras: list[Lora], device, dtype):
    """Check every LoRA module against the model, then stack each module's LoRAs (model order)."""
    by_path: dict[str, list[int]] = {}
    for index, lora in enumerate(loras):
        for path, module in lora.modules.items():
            linear = _linear(transformer, lora, path)
            out_features, in_features = linear.weight.shape
            if tuple(module.shape) != (out_features, in_features):
                raise UserError(
                    f"{lora.path}: '{path}' is {out_features}x{in_features} in this model but the LoRA's is "
                    f"{module.shape[0]}x{module.shape[1]} (made for width {lora.dim}); "
                    f"use LoRAs trained for this model")
            by_path.setdefault(path, []).append(index)
    order = {name: i for i, (name, _) in enumerate(transformer.named_modules())}
    targets, slots, offset = [], [], 0
    for path in sorted(by_path, key=order.__getitem__):
        linear = transformer.get_submodule(path)
        out_features, in_features = linear.weight.shape
        start = offset
        downs, ups, lycoris = [torch.empty(0, in_features)], [torch.empty(out_features, 0)], []  # a target may be LoKr/LoHa only
        for index in by_path[path]:
            module = loras[index].modules[path]
            if module.kind != "lora":
                lycoris.append(index)
                continue
            slots.append((index, path, offset, offset + module.rank))
            offset += module.rank
            downs.append(module.down)
            ups.append(module.up)
        down = torch.cat([d.to(device=device, dtype=dtype) for d in downs], dim=0).contiguous()
        up = torch.cat([u.to(device=device, dtype=dtype) for u in ups], dim=1).contiguous()
        stop, dense = offset, []
        for index in lycoris:  # one scale slot each, after the LoRA ranks
            slots.append((index, path, offset, offset + 1))
            dense.append((offset, _on_device(loras[index].modules[path], device)))
            offset += 1
        targets.append(Target(path, linear, down, up, start, stop, dense))
    return targets, slots


def _on_device(module, device):
    """A LoKr/LoHa module with its factors in float32 on `device`, scale 1 (the table holds its scale)."""
    factors = {name: tensor.to(device=device, dtype=torch.float32) for name, tensor in module.tensors().items()}
    return type(module)(**factors, scale=1.0)


def _linear(transformer: nn.Module, lora: Lora, path: str) -> nn.Linear:
    try:
        module = transformer.get_submodule(path)
    except AttributeError:
        module = None
    if not isinstance(module, nn.Linear):
        layers = len(getattr(transformer, "layers", []))
        raise UserError(f"{lora.path}: the LoRA targets '{path}', which this transformer ({layers} layers) "
                        f"does not have; use a LoRA made for this model")
    return module
