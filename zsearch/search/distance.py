"""How far one weighting is from another, measured on the weights they give the model.

Parameters are a poor ruler: ratio x component x layer weights can trade off against each other
(ratio 0.5 with attn 2.0 is ratio 1.0 with attn 1.0), and a weight on a module the LoRA barely
touches matters little. The distance compares what the weightings add to the model:

    d(s, s*) = || sum_i (s_i - s*_i) dW_i || / || sum_i s*_i dW_i ||

summed over every module (Frobenius norms, squared and added across modules), where s_i is the
scale of LoRA i on a module (ratio x component x layer) and dW_i = B_i A_i its delta there.
"""

from __future__ import annotations

import math

import torch

from zsearch.lora.model import Lora
from zsearch.lora.recipe import Recipe


def weight_distance(loras: list[Lora], recipe: Recipe, target: Recipe) -> float:
    """Relative weight-space distance of `recipe` to `target`; recipes list the LoRAs in `loras`' order."""
    if not (len(loras) == len(recipe.loras) == len(target.loras)):
        raise ValueError(f"{len(loras)} LoRAs, but recipes of {len(recipe.loras)} and {len(target.loras)}")
    paths = list(dict.fromkeys(path for lora in loras for path in lora.modules))
    apart = together = 0.0
    for path in paths:
        present = [(lora.modules[path], mine, theirs) for lora, mine, theirs
                   in zip(loras, recipe.loras, target.loras) if path in lora.modules]
        scales = [(module, mine.module_scales([path])[path], theirs.module_scales([path])[path])
                  for module, mine, theirs in present]
        apart += _squared_norm([(module, s - t) for module, s, t in scales])
        together += _squared_norm([(module, t) for module, _, t in scales])
    if together == 0.0:
        raise ValueError("the target weighting adds nothing to the model; a relative distance is undefined")
    return math.sqrt(apart / together)


def _squared_norm(terms) -> float:
    """||sum_k c_k B_k A_k||_F^2 without forming the (out x in) matrix: with U = [c_k s_k B_k] and
    V = [A_k] stacked along the rank, ||U V||^2 = sum((U^T U) * (V V^T))."""
    terms = [(module, c) for module, c in terms if c != 0.0]
    if not terms:
        return 0.0
    up = torch.cat([c * module.scale * module.up.double() for module, c in terms], dim=1)
    down = torch.cat([module.down.double() for module, _ in terms], dim=0)
    return float(((up.T @ up) * (down @ down.T)).sum())
