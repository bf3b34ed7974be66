"""The weight-space distance of one weighting to another, against a hand computation."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from zsearch.lora.model import Lora, LoraModule
from zsearch.lora.recipe import LoraWeights, Recipe
from zsearch.search.distance import weight_distance

Q, W1 = "layers.0.attention.to_q", "layers.12.feed_forward.w1"


def lora(modules: dict[str, tuple[list, list, float]]) -> Lora:
    return Lora(path=Path("x.safetensors"), format="ai-toolkit", dim=2,
                modules={p: LoraModule(torch.tensor(d), torch.tensor(u), s) for p, (d, u, s) in modules.items()})


# Rank-1 deltas chosen so every B·A is easy to write out by hand.
A = lora({Q: ([[1.0, 0.0]], [[1.0], [0.0]], 1.0),  # dW = [[1, 0], [0, 0]]
          W1: ([[0.0, 1.0]], [[2.0], [0.0]], 0.5)})  # dW = 0.5 * [[0, 2], [0, 0]] = [[0, 1], [0, 0]]
B = lora({Q: ([[1.0, 1.0]], [[0.0], [1.0]], 1.0)})  # dW = [[0, 0], [1, 1]]


def test_distance_matches_a_hand_computation():
    target = Recipe([LoraWeights(Path("a"), 1.0, components={"w1": 2.0}), LoraWeights(Path("b"), 0.5)])
    recipe = Recipe([LoraWeights(Path("a"), 0.5, layers={"10-19": 3.0}), LoraWeights(Path("b"), 1.0)])
    # target: to_q: 1*[[1,0],[0,0]] + 0.5*[[0,0],[1,1]] = [[1,0],[.5,.5]] (norm^2 1.5);
    #         w1:   2*[[0,1],[0,0]]                                        (norm^2 4)
    # recipe minus target: to_q: -0.5*[[1,0],[0,0]] + 0.5*[[0,0],[1,1]] (norm^2 0.75);
    #                      w1: (0.5*3 - 2)*[[0,1],[0,0]]                   (norm^2 0.25)
    assert weight_distance([A, B], recipe, target) == pytest.approx(math.sqrt((0.75 + 0.25) / (1.5 + 4)), rel=1e-12)
    assert weight_distance([A, B], target, target) == 0.0


def test_weightings_that_give_the_same_weights_are_at_distance_zero():
    # ratio x component weights trade off: ratio 0.5 with every weight 2 is ratio 1.0
    a = Recipe([LoraWeights(Path("a"), 0.5, components={"attn": 2.0, "ffn": 2.0}), LoraWeights(Path("b"), 1.0)])
    b = Recipe([LoraWeights(Path("a"), 1.0), LoraWeights(Path("b"), 1.0)])
    assert weight_distance([A, B], a, b) == pytest.approx(0.0, abs=1e-12)


def test_distance_equals_the_dense_definition_on_random_loras():
    generator = torch.Generator().manual_seed(0)
    paths = [Q, W1, "noise_refiner.1.adaLN_modulation.0"]

    def random_lora(rank):
        return Lora(path=Path("r"), format="ai-toolkit", dim=8, modules={
            p: LoraModule(torch.randn(rank, 8, generator=generator), torch.randn(6, rank, generator=generator), 0.7)
            for p in paths})

    loras = [random_lora(2), random_lora(3)]
    recipe = Recipe([LoraWeights(Path("a"), 0.8, {"attn": 1.3}, {"10-19": 0.2, "noise_refiner": 1.7}),
                     LoraWeights(Path("b"), 1.1, {"adaLN": 0.0})])
    target = Recipe([LoraWeights(Path("a"), 0.6), LoraWeights(Path("b"), 0.9, {"w1": 1.5})])
    apart = together = 0.0
    for p in paths:
        s = [w.module_scales([p])[p] for w in recipe.loras]
        t = [w.module_scales([p])[p] for w in target.loras]
        deltas = [lo.modules[p].delta(torch.float64) for lo in loras]
        apart += sum((si - ti) * d for si, ti, d in zip(s, t, deltas)).pow(2).sum().item()
        together += sum(ti * d for ti, d in zip(t, deltas)).pow(2).sum().item()
    assert weight_distance(loras, recipe, target) == pytest.approx(math.sqrt(apart / together), rel=1e-9)


def test_mismatched_recipes_are_refused():
    with pytest.raises(ValueError, match="2 LoRAs, but recipes of 1 and 2"):
        weight_distance([A, B], Recipe([LoraWeights(Path("a"), 1.0)]),
                        Recipe([LoraWeights(Path("a"), 1.0), LoraWeights(Path("b"), 1.0)]))
