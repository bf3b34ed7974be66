"""The block-weight node's widgets as a recipe entry: ratio, the 8 components and 3 layer bands.

Without a recipe the widgets are the weights. With one, each widget multiplies the recipe's own
weight (1.0 leaves the night's result as it is), so "a bit less adaLN" is adaLN 0.8 whatever the
recipe held. The result is an ordinary LoraWeights: the node patches with its module scales, and
writes it back as a recipe that `zsearch merge --recipe` replays.
"""

from __future__ import annotations

from pathlib import Path

from zsearch.lora.blocks import COMPONENTS, N_LAYERS, OTHER, REFINERS, Module
from zsearch.lora.recipe import LoraWeights, layer_span

# Layers 0..29 in three contiguous bands, as the search's `layers: bands` splits them
BANDS = tuple(f"{round(i * N_LAYERS / 3)}-{round((i + 1) * N_LAYERS / 3) - 1}" for i in range(3))


def band_widget(band: str) -> str:
    """'0-9' -> 'layers_0_9', the widget's name."""
    return "layers_" + band.replace("-", "_")


def tuned_weights(path: Path, ratio: float, components: dict[str, float], bands: dict[str, float],
                  base: LoraWeights | None = None) -> LoraWeights:
    """The weighting the widgets give for the LoRA at `path` (on top of `base`, a recipe's entry)."""
    base = base or LoraWeights(path=path, ratio=1.0)
    weights = {c: base.component_weight(c) * components.get(c, 1.0) for c in COMPONENTS}
    if OTHER in base.components:  # outside the blocks: no widget, the recipe's weight is kept
        weights[OTHER] = base.components[OTHER]
    per_layer = [base.layer_weight(Module("layers", i, "to_q")) * bands.get(_band_of(i), 1.0) for i in range(N_LAYERS)]
    layers = _runs(per_layer)
    layers.update({name: base.layers[name] for name in REFINERS if name in base.layers})
    return LoraWeights(path=path, ratio=base.ratio * ratio, components=weights, layers=layers)


def _band_of(layer: int) -> str:
    return next(band for band in BANDS if layer_span(band)[0] <= layer <= layer_span(band)[1])


def _runs(per_layer: list[float]) -> dict[str, float]:
    """Equal neighbouring layers as one range: [1, 1, 2] -> {"0-1": 1, "2": 2}."""
    runs: dict[str, float] = {}
    start = 0
    for i in range(1, len(per_layer) + 1):
        if i == len(per_layer) or per_layer[i] != per_layer[start]:
            runs[f"{start}-{i - 1}" if i - 1 > start else str(start)] = per_layer[start]
            start = i
    return runs
