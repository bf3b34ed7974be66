"""The search space: which weights a study varies, and how its parameters become a recipe.

Parameter names read like recipe keys so the dashboard is self-explanatory:
`style.ratio`, `style.attn`, `style.w1`, `style.layers.0-9`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import optuna

from zsearch.lora.blocks import COMPONENTS, GROUPS, N_LAYERS, Module
from zsearch.settings.schema import Config, LoraSearch
from zsearch.study import records
from zsearch.lora.recipe import LoraWeights, Recipe


@dataclass(frozen=True)
class Param:
    name: str  # Optuna parameter name
    lora: int  # index into config.loras
    kind: str  # "ratio", "component" or "layers"
    key: str  # component/group name, or layer key ("0-9", "5"); "" for ratio
    low: float
    high: float
    baseline: float


def band_keys(n_bands: int, n_layers: int = N_LAYERS) -> list[str]:
    """Split layers 0..n_layers-1 into n_bands contiguous ranges, e.g. 3 -> 0-9, 10-19, 20-29."""
    edges = [round(i * n_layers / n_bands) for i in range(n_bands + 1)]
    return [f"{lo}-{hi - 1}" if hi - 1 > lo else f"{lo}" for lo, hi in zip(edges, edges[1:])]


def _component_keys(search: LoraSearch) -> list[str]:
    tied = [c for g in search.tie for c in GROUPS[g]]
    return list(search.tie) + [c for c in COMPONENTS if c not in tied]


def _labels(config: Config) -> list[str]:
    """A short unique label per LoRA: its file stem, numbered on a clash."""
    stems = [lora.path.stem for lora in config.loras]
    return [s if stems.count(s) == 1 else f"{s}#{i}" for i, s in enumerate(stems)]


class SearchSpace:
    def __init__(self, config: Config, frozen: frozenset[str] = frozenset()):
        self.config = config
        self.frozen = frozenset(frozen)  # parameters held at their baseline (after screening)
        self.labels = _labels(config)
        self.params: list[Param] = []
        for i, lora in enumerate(config.loras):
            s = lora.search
            if s is None:
                continue
            label = self.labels[i]
            if s.ratio:
                self.params.append(Param(f"{label}.ratio", i, "ratio", "", *s.ratio, lora.ratio))
            if s.components:
                for key in _component_keys(s):
                    self.params.append(Param(f"{label}.{key}", i, "component", key, *s.components, 1.0))
            layer_range = s.layer_range or s.components or (0.0, 2.0)
            layer_keys = {"none": [], "bands": band_keys(config.search.bands),
                          "per_layer": [str(k) for k in range(N_LAYERS)]}[s.layers]
            for key in layer_keys:
                self.params.append(Param(f"{label}.layers.{key}", i, "layers", key, *layer_range, 1.0))

    def __len__(self) -> int:
        return len(self.params)

    def describe(self) -> dict[str, list[float]]:
        return {p.name: [p.low, p.high] for p in self.params}

    def baseline(self) -> dict[str, float]:
        """Every weight 1.0 and the given ratios: plain stacking."""
        return {p.name: p.baseline for p in self.params}

    def suggest(self, trial: optuna.Trial) -> Recipe:
        values = {p.name: trial.suggest_float(p.name, p.low, p.high)
                  for p in self.params if p.name not in self.frozen}
        return self.recipe(values)

    def recipe(self, values: Mapping[str, float]) -> Recipe:
        """The recipe of a parameter assignment; parameters not given take their baseline."""
        loras = [LoraWeights(path=lora.path, ratio=lora.ratio) for lora in self.config.loras]
        for p in self.params:
            value = float(values.get(p.name, p.baseline))
            target = loras[p.lora]
            if p.kind == "ratio":
                target.ratio = value
            elif p.kind == "component":
                target.components[p.key] = value
            else:
                target.layers[p.key] = value
        return Recipe(loras=loras)

    def params_of(self, recipe: Recipe) -> dict[str, float]:
        """The closest parameter assignment to a hand-written recipe (for `start:` recipes).

        A layer key takes the recipe's weight at the key's first layer.
        """
        values: dict[str, Any] = {}
        for p in self.params:
            weights = recipe.loras[p.lora]
            if p.kind == "ratio":
                value = weights.ratio
            elif p.kind == "component":
                group = GROUPS.get(p.key, (p.key,))
                value = weights.component_weight(group[0])
            else:
                value = weights.layer_weight(Module("layers", int(p.key.split("-")[0]), "to_q"))
            values[p.name] = min(max(value, p.low), p.high)
        return values


def screening_values(space: SearchSpace) -> list[tuple[str, dict[str, float]]]:
    """One-factor-at-a-time points: (label, params) with one parameter at its low or high end."""
    points = []
    for p in space.params:
        for end, value in (("low", p.low), ("high", p.high)):
            points.append((records.screening_role(p.name, end), dict(space.baseline(), **{p.name: value})))
    return points
