"""The four properties of a weighting, for both strategies, on tiny Z-Image transformers.

exact: output = the base model with W + sum_i s_i·B_i·A_i fused in (computed here independently);
reversible: all scales 0 gives the base output bit for bit; no drift: 10,000 weightings later the
first one gives the same bits again; bounded memory: the side path keeps no copy of base weights.
"""

from __future__ import annotations

import copy
import gc
import random

import pytest
import torch
from diffusers import ZImageTransformer2DModel
from torch import nn

from zsearch.lora.blocks import all_modules, parse_module
from zsearch.demo.spec import TRANSFORMER_CONFIG
from zsearch.engine.weighting import FusedFromCopy, SidePath, attach_loras, choose_way, recipe_scales
from zsearch.errors import UserError
from zsearch.lora.model import Lora, LoraModule
from zsearch.lora.synth import make_random_lora
from zsearch.lora.recipe import LoraWeights, Recipe

pytestmark = pytest.mark.usefixtures("single_thread")

WAYS = ["side", "fused"]
DIM = TRANSFORMER_CONFIG["dim"]


def tiny_transformer(n_layers: int = 30, dtype=torch.float32) -> ZImageTransformer2DModel:
    torch.manual_seed(0)
    model = ZImageTransformer2DModel(**{**TRANSFORMER_CONFIG, "n_layers": n_layers}).to(dtype).eval()
    with torch.no_grad():
        model.x_pad_token.normal_()
        model.cap_pad_token.normal_()
    return model


def modules_of(n_layers: int) -> list[str]:
    return [m.path for m in all_modules(n_layers)]


def two_loras(n_layers: int) -> list[Lora]:
    """Two LoRAs of different ranks, overlapping on some modules only, one with an alpha scale."""
    paths = modules_of(n_layers)
    a = make_random_lora(DIM, 4, paths, seed=1)
    b = make_random_lora(DIM, 3, [p for p in paths if "feed_forward" in p or "layers.1." in p], seed=2, alpha=1.5)
    return [a, b]


def inputs(batch: int = 2):
    """Fixed transformer inputs: latents (C,1,H,W), timesteps, caption features of two lengths."""
    generator = torch.Generator().manual_seed(5)
    latents = [torch.randn(16, 1, 8, 8, generator=generator) for _ in range(batch)]
    caps = [torch.randn(20 + 9 * i, TRANSFORMER_CONFIG["cap_feat_dim"], generator=generator) for i in range(batch)]
    return latents, torch.tensor([0.3, 0.8][:batch]), caps


@torch.no_grad()
def forward(model) -> torch.Tensor:
    latents, t, caps = inputs()
    dtype = next(model.parameters()).dtype
    out = model([x.to(dtype) for x in latents], t, [c.to(dtype) for c in caps], return_dict=False)[0]
    return torch.stack(out)


def random_scales(loras: list[Lora], rng: random.Random) -> list[dict[str, float]]:
    return [{path: rng.uniform(-1.5, 2.0) for path in lora.modules} for lora in loras]


def fused_by_hand(model, loras: list[Lora], scales: list[dict[str, float]]):
    """A copy of `model` with W + sum_i s_i · scale_i · B_i A_i added in float64."""
    fused = copy.deepcopy(model)
    with torch.no_grad():
        for lora, per_module in zip(loras, scales):
            for path, module in lora.modules.items():
                weight = fused.get_submodule(path).weight
                delta = per_module[path] * module.scale * (module.up.double() @ module.down.double())
                weight.copy_((weight.double() + delta).to(weight.dtype))
    return fused


@pytest.fixture(scope="module")
def model30():
    return tiny_transformer(30)


@pytest.mark.parametrize("way", WAYS)
def test_exact_equals_the_fused_model(model30, way):
    loras = two_loras(30)
    scales = random_scales(loras, random.Random(0))
    expected = forward(fused_by_hand(model30, loras, scales))
    base = forward(model30)
    weighting = attach_loras(model30, loras, way)
    try:
        weighting.set_scales(scales)
        got = forward(model30)
    finally:
        weighting.detach()
    assert (expected - base).abs().max() > 0.05  # the LoRAs really change the output
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("way", WAYS)
def test_set_recipe_is_ratio_times_component_times_layer(model30, way):
    loras = two_loras(30)
    recipe = Recipe([
        LoraWeights(path=loras[0].path, ratio=0.7, components={"attn": 1.3, "w2": 0.0}, layers={"0-9": 0.5}),
        LoraWeights(path=loras[1].path, ratio=1.2, components={"ffn": 0.4}, layers={"noise_refiner": 2.0}),
    ])
    # the slow, obviously correct expansion of the recipe
    scales = [lw.module_scales(lora.modules) for lw, lora in zip(recipe.loras, loras)]
    expected = forward(fused_by_hand(model30, loras, scales))
    weighting = attach_loras(model30, loras, way)
    try:
        weighting.set_recipe(recipe)
        got = forward(model30)
    finally:
        weighting.detach()
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_recipe_scales_equal_module_scales():
    lora = make_random_lora(DIM, 2, modules_of(30), seed=3)
    weights = LoraWeights(path=lora.path, ratio=0.9, components={"attn": 1.1, "qk": 0.2, "w1": 1.7, "ffn": 0.6},
                          layers={"0-4": 0.3, "5-20": 1.4, "context_refiner": 0.1})
    modules = {path: parse_module(path) for path in lora.modules}
    assert recipe_scales(weights, modules) == weights.module_scales(lora.modules)


@pytest.mark.parametrize("way", WAYS)
def test_reversible_all_zero_is_the_base_bit_for_bit(model30, way):
    loras = two_loras(30)
    base = forward(model30)
    weights_before = {k: v.clone() for k, v in model30.state_dict().items()}
    weighting = attach_loras(model30, loras, way)
    try:
        weighting.set_scales(random_scales(loras, random.Random(1)))
        assert not torch.equal(forward(model30), base)
        weighting.set_scales([{p: 0.0 for p in lora.modules} for lora in loras])
        assert torch.equal(forward(model30), base)
    finally:
        weighting.detach()
    assert torch.equal(forward(model30), base)  # detached: the model as it was
    for key, value in model30.state_dict().items():
        assert torch.equal(value, weights_before[key]), key


@pytest.mark.parametrize("way", WAYS)
def test_no_drift_after_10000_weightings_in_bf16(way):
    # bf16 is where subtracting a delta drifts. A small transformer and LoRAs on two blocks keep
    # 10,000 rebuilds quick on a CPU (its bf16 matmuls are slow); the property is per module.
    model = tiny_transformer(2, dtype=torch.bfloat16)
    paths = [p for p in modules_of(2) if p.startswith("layers.1.attention.")] + [
        "layers.1.adaLN_modulation.0", "layers.1.feed_forward.w2"]  # square, tall and wide Linears
    loras = [make_random_lora(DIM, 4, paths, seed=1), make_random_lora(DIM, 3, paths[::2], seed=2, alpha=1.5)]
    rng = random.Random(2)
    weighting = attach_loras(model, loras, way)
    first = random_scales(loras, rng)
    weighting.set_scales(first)
    before = forward(model)
    ratios = [0.0, 0.5, 1.0, 1.5]
    for i in range(10_000):
        if i % 2:
            weighting.set_scales(random_scales(loras, rng))
        else:
            weighting.set_recipe(Recipe([
                LoraWeights(path=lora.path, ratio=rng.choice(ratios) + rng.random(),
                            components={"attn": rng.uniform(0, 2), "w1": rng.uniform(0, 2)},
                            layers={"0": rng.uniform(0, 2), "1": rng.uniform(0, 2)})
                for lora in loras]))
    weighting.set_scales(first)
    after = forward(model)
    weighting.detach()
    assert torch.equal(before, after)


def _tensors_held(obj) -> dict[int, torch.Tensor]:
    """Every tensor reachable from `obj` without entering nn.Modules (the transformer itself)."""
    seen, found, stack = set(), {}, [obj]
    while stack:
        item = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, torch.Tensor):
            found[item.untyped_storage().data_ptr()] = item
            continue
        if isinstance(item, nn.Module) or isinstance(item, type):
            continue
        stack.extend(gc.get_referents(item))
    return found


@pytest.mark.parametrize("way", WAYS)
def test_memory_side_path_holds_only_the_lora_tensors(model30, way):
    loras = two_loras(30)
    weight_ptrs = {p.untyped_storage().data_ptr() for p in model30.parameters()}
    lora_bytes = sum(m.rank * (m.down.shape[1] + m.up.shape[0]) * 4 for lora in loras for m in lora.modules.values())
    patched_bytes = sum(model30.get_submodule(p).weight.numel() * 4 for p in {p for l in loras for p in l.modules})
    ranks = sum(m.rank for lora in loras for m in lora.modules.values())
    weighting = attach_loras(model30, loras, way)
    try:
        weighting.set_scales(random_scales(loras, random.Random(3)))
        held = {ptr: t for ptr, t in _tensors_held(weighting).items()
                if all(t is not m.down and t is not m.up for l in loras for m in l.modules.values())}
        held_bytes = sum(t.untyped_storage().nbytes() for t in held.values())
        # the model's own weights are used in place, never held as a second storage
        assert {p.untyped_storage().data_ptr() for p in model30.parameters()} == weight_ptrs
        buffers = 2 * ranks * 4  # the flat scale buffer on the device and its host copy
        if way == "side":
            assert held_bytes <= lora_bytes + buffers + 64 * 1024  # + small index tables
            assert weighting.extra_bytes == lora_bytes + ranks * 4
        else:
            assert held_bytes >= lora_bytes + patched_bytes  # fused keeps the base copy, by design
            assert weighting.extra_bytes == lora_bytes + ranks * 4 + patched_bytes
    finally:
        weighting.detach()


def test_auto_picks_side_on_cpu(model30):
    assert choose_way(model30, two_loras(30)) == "side"
    weighting = attach_loras(model30, two_loras(30))
    assert isinstance(weighting, SidePath)
    weighting.detach()
    assert isinstance(attach_loras(model30, two_loras(30), "fused"), FusedFromCopy)


def test_a_lora_for_another_width_is_refused(model30):
    wide = make_random_lora(64, 2, ["layers.0.attention.to_q"], seed=0)
    with pytest.raises(UserError, match=r"layers.0.attention.to_q.*32x32.*64x64"):
        attach_loras(model30, [wide])


def test_a_lora_naming_a_missing_layer_is_refused():
    model = tiny_transformer(2)
    lora = make_random_lora(DIM, 2, ["layers.5.feed_forward.w1"], seed=0)
    with pytest.raises(UserError, match=r"layers.5.feed_forward.w1.*2 layers") as info:
        attach_loras(model, [lora])
    assert "\n" not in str(info.value)


def test_unknown_way_is_refused(model30):
    with pytest.raises(UserError, match="weighting way 'merged' is unknown; use auto, side, fused"):
        attach_loras(model30, two_loras(30), "merged")


def test_set_scales_rejects_a_module_the_lora_lacks(model30):
    loras = [Lora(path=__import__("pathlib").Path("x.safetensors"), format="t", dim=DIM, modules={
        "layers.0.attention.to_q": LoraModule(torch.randn(2, DIM), torch.randn(DIM, 2))})]
    weighting = attach_loras(model30, loras, "side")
    with pytest.raises(ValueError, match="layers.0.attention.to_k"):
        weighting.set_scales([{"layers.0.attention.to_k": 1.0}])
    weighting.detach()
