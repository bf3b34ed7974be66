"""Recipes: per-LoRA weights (ratio x component x layer), read, written and expanded.

A recipe is the one representation of a weighting that runs through zsearch: the hand
merge reads it, the search writes it, `zsearch merge --recipe` replays it.

    loras:
      - path: loras/style.safetensors      # relative to the recipe file
        ratio: 0.8                          # required
        components: {adaLN: 1.0, attn: 0.7, w1: 1.2}
        layers: {"0-9": 0.6, "10-19": 1.0, "20-29": 1.3, noise_refiner: 1.0}

Scale of module m of LoRA i = ratio_i x component weight x layer weight; anything not
named weighs 1.0. Modules outside the blocks (embedders, final layer) weigh ratio_i x `other`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import yaml

from zsearch.util.atomic import write_text_atomic
from zsearch.util.paths import native_path
from zsearch.lora.blocks import COMPONENTS, GROUPS, N_LAYERS, OTHER, REFINERS, Module, parse_module
from zsearch.errors import UserError
from zsearch.util.yamlfile import read_yaml

LORA_KEYS = {"path", "ratio", "components", "layers"}


@dataclass
class LoraWeights:
    """The weights of one LoRA in a recipe."""

    path: Path
    ratio: float
    components: dict[str, float] = field(default_factory=dict)
    layers: dict[str, float] = field(default_factory=dict)

    def component_weight(self, component: str) -> float:
        # Larger groups first, so a smaller group (qk) overrides a larger one (attn),
        # and a specific name overrides every group.
        weight = 1.0
        for group in sorted(GROUPS, key=lambda g: -len(GROUPS[g])):
            if group in self.components and component in GROUPS[group]:
                weight = self.components[group]
        return self.components.get(component, weight)

    def layer_weight(self, module: Module) -> float:
        if module.block == OTHER:
            return 1.0  # outside the blocks: only the `other` component weighs it
        if module.block in REFINERS:
            return self.layers.get(module.block, 1.0)
        for key, weight in self.layers.items():
            span = layer_span(key)
            if span and span[0] <= module.index <= span[1]:
                return weight
        return 1.0

    def scale(self, module: Module) -> float:
        return self.ratio * self.component_weight(module.component) * self.layer_weight(module)

    def module_scales(self, paths: Iterable[str]) -> dict[str, float]:
        """Scale of every module path in `paths` (paths that are not Z-Image modules raise)."""
        scales = {}
        for path in paths:
            module = parse_module(path)
            if module is None:
                raise ValueError(f"not a Z-Image module path: {path}")
            scales[path] = self.scale(module)
        return scales


@dataclass
class Recipe:
    loras: list[LoraWeights]
    info: dict[str, Any] = field(default_factory=dict)  # score, trial, ... (free-form)


def layer_span(key: str) -> tuple[int, int] | None:
    """"0-9" -> (0, 9), "5" -> (5, 5); refiner names -> None."""
    if key in REFINERS:
        return None
    lo, _, hi = key.partition("-")
    return int(lo), int(hi or lo)


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UserError(f"{where}: {value!r} is not a number; write a finite number such as 1.0")
    return float(value)


def _parse_components(raw: Any, where: str) -> dict[str, float]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise UserError(f"{where}: must be a mapping such as {{attn: 0.7, w1: 1.2}}")
    known = [*COMPONENTS, *GROUPS]
    out = {}
    for name, value in raw.items():
        if name not in known:
            raise UserError(f"{where}: unknown component '{name}'; use one of {', '.join(known)}")
        out[name] = _number(value, f"{where}.{name}")
    return out


def _parse_layers(raw: Any, where: str, n_layers: int) -> dict[str, float]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise UserError(f"{where}: must be a mapping such as {{\"0-9\": 0.6, noise_refiner: 1.0}}")
    out: dict[str, float] = {}
    taken: dict[int, str] = {}
    for key, value in raw.items():
        key = str(key).strip()
        if key not in REFINERS:
            lo, sep, hi = key.partition("-")
            if not lo.isdigit() or (sep and not hi.isdigit()):
                raise UserError(
                    f"{where}: bad layer key '{key}'; use a range like \"0-9\", a layer like \"5\", "
                    f"or {' / '.join(REFINERS)}")
            start, end = layer_span(key)
            if start > end or end >= n_layers:
                raise UserError(f"{where}: layer range '{key}' is outside 0-{n_layers - 1}")
            for layer in range(start, end + 1):
                if layer in taken:
                    raise UserError(f"{where}: layer ranges '{taken[layer]}' and '{key}' overlap at layer {layer}")
                taken[layer] = key
        out[key] = _number(value, f"{where}.{key}")
    return out


def parse_lora_weights(raw: Any, where: str, base_dir: Path, n_layers: int = N_LAYERS) -> LoraWeights:
    if not isinstance(raw, dict):
        raise UserError(f"{where}: must be a mapping with 'path' and 'ratio'")
    unknown = set(raw) - LORA_KEYS
    if unknown:
        raise UserError(f"{where}: unknown key '{sorted(unknown)[0]}'; allowed keys: {', '.join(sorted(LORA_KEYS))}")
    if "path" not in raw or not isinstance(raw["path"], str):
        raise UserError(f"{where}: 'path' is required (the LoRA's .safetensors file)")
    if "ratio" not in raw:
        raise UserError(f"{where}: 'ratio' is required (e.g. ratio: 1.0)")
    return LoraWeights(
        path=native_path(raw["path"], base_dir),
        ratio=_number(raw["ratio"], f"{where}.ratio"),
        components=_parse_components(raw.get("components"), f"{where}.components"),
        layers=_parse_layers(raw.get("layers"), f"{where}.layers", n_layers),
    )


def parse_recipe(data: Any, source: str, base_dir: Path, n_layers: int = N_LAYERS) -> Recipe:
    """Validate a recipe mapping; `source` names it in messages, paths resolve against base_dir."""
    if not isinstance(data, dict) or not isinstance(data.get("loras"), list) or not data["loras"]:
        raise UserError(f"{source}: a recipe needs a non-empty 'loras:' list")
    unknown = set(data) - {"loras", "info"}
    if unknown:
        raise UserError(f"{source}: unknown key '{sorted(unknown)[0]}'; a recipe has 'loras' and 'info'")
    loras = [parse_lora_weights(item, f"{source}: loras[{i}]", base_dir, n_layers)
             for i, item in enumerate(data["loras"])]
    refuse_repeated_loras([lw.path for lw in loras], source)
    info = data.get("info") or {}
    if not isinstance(info, dict):
        raise UserError(f"{source}: 'info' must be a mapping (free-form notes such as score: 0.31)")
    return Recipe(loras=loras, info=dict(info))


def refuse_repeated_loras(paths: list[Path], source: str) -> None:
    """The same LoRA file twice (by another spelling or a link too) is a copy-paste slip: one
    entry's ratio and weights already set its strength, and a search would weigh two copies."""
    for i, path in enumerate(paths):
        for j in range(i):
            if _same_file(paths[j], path):
                raise UserError(f"{source}: loras[{i}].path: {path} is the LoRA of loras[{j}] again; list each "
                                f"LoRA once (its ratio and weights set its strength)")


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one is missing: the reader names it
        return os.path.normpath(os.path.abspath(a)) == os.path.normpath(os.path.abspath(b))


def load_recipe(path: str | os.PathLike) -> Recipe:
    path = Path(path)
    return parse_recipe(read_yaml(path, "recipe"), str(path), path.resolve().parent)


def recipe_to_dict(recipe: Recipe, relative_to: Path | None = None) -> dict[str, Any]:
    """Plain data for YAML; LoRA paths relative to `relative_to` where that is possible."""
    loras = []
    for lw in recipe.loras:
        path = Path(lw.path)
        if relative_to is not None:
            try:
                path = Path(os.path.relpath(path.resolve(), Path(relative_to).resolve()))
            except ValueError:  # another drive on Windows
                pass
        entry: dict[str, Any] = {"path": str(path), "ratio": lw.ratio}
        if lw.components:
            entry["components"] = dict(lw.components)
        if lw.layers:
            entry["layers"] = dict(lw.layers)
        loras.append(entry)
    out: dict[str, Any] = {"loras": loras}
    if recipe.info:
        out["info"] = recipe.info
    return out


def save_recipe(recipe: Recipe, path: str | os.PathLike) -> None:
    """Write a recipe atomically, LoRA paths relative to its own folder."""
    path = Path(path)
    data = recipe_to_dict(recipe, relative_to=path.parent)
    write_text_atomic(path, yaml.safe_dump(data, sort_keys=False))
