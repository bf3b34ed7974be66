"""`render.compile`: when `auto` compiles, and a compiled transformer under the side path.

The compiled checks use inductor on the CPU (gcc) on a two-block transformer whose blocks share
one graph, so the suite pays for one block's compile (about half a minute to a minute on a busy
2-core machine), once.
"""

from __future__ import annotations

import copy
import random

import pytest
import torch
from diffusers import ZImageTransformer2DModel
from torch._dynamo.utils import counters

from zsearch.lora.blocks import all_modules
from zsearch.demo.spec import TRANSFORMER_CONFIG
from zsearch.engine import Engine
from zsearch.engine.compile import (PAYBACK, SAVED_SECONDS_PER_IMAGE, WARMUP_SECONDS, compile_blocks,
                                    decide_compile, is_compiled, planned_images)
from zsearch.engine.weighting import attach_loras
from zsearch.errors import UserError
from zsearch.lora.read import load_loras
from zsearch.lora.synth import make_random_lora

pytestmark = pytest.mark.usefixtures("single_thread")

DIM = TRANSFORMER_CONFIG["dim"]


# -- when `auto` compiles: a pure function ---------------------------------------------------------

def test_auto_compiles_on_cuda_when_the_night_repays_the_warm_up():
    # break-even: images x saved seconds per image = PAYBACK x warm-up, at 1024² x 8 steps
    even = PAYBACK * WARMUP_SECONDS / SAVED_SECONDS_PER_IMAGE
    assert decide_compile("auto", "cuda", int(even) + 1)[0] is True
    assert decide_compile("auto", "cuda", int(even) - 1)[0] is False
    # a default night: 500 trials x 4 prompts x 2 seeds
    compiled, why = decide_compile("auto", "cuda", 500 * 8)
    assert compiled and why.startswith("compiled")
    # a quarter of the pixels and half the steps: each image saves 1/8 as much
    assert decide_compile("auto", "cuda", int(8 * even) - 8, steps=4, width=512, height=512)[0] is False
    assert decide_compile("auto", "cuda", int(8 * even) + 8, steps=4, width=512, height=512)[0] is True


def test_auto_never_compiles_off_cuda_nor_with_fp8_or_offload():
    assert decide_compile("auto", "cpu", 10**6) == (
        False, "not compiled (render.compile auto compiles on CUDA only, this is cpu)")
    assert decide_compile("auto", "mps", 10**6)[0] is False
    assert decide_compile("auto", "cuda", 10**6, memory="fp8")[0] is False
    assert decide_compile("auto", "cuda", 10**6, memory="offload")[0] is False


def test_true_and_false_are_obeyed_in_either_spelling():
    assert decide_compile(True, "cpu", 0) == (True, "compiled (as set)")
    assert decide_compile("true", "cpu", 0)[0] is True
    assert decide_compile(False, "cuda", 10**6) == (False, "not compiled (as set)")
    assert decide_compile("true", "cuda", 0, memory="offload")[0] is True


def test_true_with_fp8_and_unknown_settings_are_refused_in_one_line():
    with pytest.raises(UserError, match="render.compile true.*fp8.*compile: auto or false") as info:
        decide_compile(True, "cuda", 100, memory="fp8")
    assert "\n" not in str(info.value)
    with pytest.raises(UserError, match="render.compile 'sometimes' is unknown; use auto, true or false"):
        decide_compile("sometimes", "cuda", 100)


def test_planned_images_are_the_trials_left_or_what_the_hours_allow():
    assert planned_images(500, 8) == 4000
    assert planned_images(-3, 8) == 0
    assert planned_images(500, 8, hours=0.5) == 2000  # 1800 s / 0.9 s per image
    assert planned_images(10, 8, hours=8) == 80


def test_engine_compiles_its_blocks_only_when_told(demo_assets, tmp_path):
    loras = load_loras(demo_assets.loras)
    args = (str(demo_assets.model_dir), loras, demo_assets.prompt_list)
    engine = Engine(*args, device="cpu", cache_dir=tmp_path, compile=True)
    assert engine.compiled and is_compiled(engine.pipe.transformer)  # compiled lazily: no render here
    assert "compiled (as set)" in engine.placement
    engine.close()
    # (auto on a CPU leaves it eager: test_engine_memory's auto engine says "not compiled")


# -- a compiled block under the side path: one graph for every weighting ------------------------

def two_block_transformer() -> ZImageTransformer2DModel:
    torch.manual_seed(0)
    model = ZImageTransformer2DModel(**{**TRANSFORMER_CONFIG, "n_layers": 2, "n_refiner_layers": 0})
    model = model.to(torch.bfloat16).eval()
    with torch.no_grad():
        model.x_pad_token.normal_()
        model.cap_pad_token.normal_()
    return model


def inputs():
    generator = torch.Generator().manual_seed(5)
    latents = [torch.randn(16, 1, 8, 8, generator=generator).bfloat16() for _ in range(2)]
    caps = [torch.randn(20 + 9 * i, TRANSFORMER_CONFIG["cap_feat_dim"], generator=generator).bfloat16()
            for i in range(2)]
    return latents, torch.tensor([0.3, 0.8]), caps


@torch.no_grad()
def forward(model) -> torch.Tensor:
    latents, t, caps = inputs()
    dtype = next(model.parameters()).dtype
    out = model([x.to(dtype) for x in latents], t, [c.to(dtype) for c in caps], return_dict=False)[0]
    return torch.stack(out).float()


@pytest.fixture(scope="module")
def compiled():
    """(model, weighting, loras) with the side path attached and the block compiled by inductor."""
    torch._dynamo.reset()
    counters.clear()
    model = two_block_transformer()
    present = {name for name, _ in model.named_modules()}
    paths = [m.path for m in all_modules(2) if m.path in present]
    loras = [make_random_lora(DIM, 4, paths, seed=1), make_random_lora(DIM, 4, paths, seed=2, alpha=2.0)]
    exact = copy.deepcopy(model).float()  # the same bf16 weights, computed in float32, eager
    exact_weighting = attach_loras(exact, loras, "side")
    weighting = attach_loras(model, loras, "side")
    compile_blocks(model)
    yield model, weighting, loras, (exact, exact_weighting)
    weighting.detach()
    torch._dynamo.reset()


def some_scales(loras, rng: random.Random, index: int) -> list[dict[str, float]]:
    """Random scales, with whole LoRAs and single modules at exactly 0 now and then (the old
    per-module `active` branch recompiled on those)."""
    scales = [{path: rng.uniform(-1.0, 2.0) for path in lora.modules} for lora in loras]
    if index % 5 == 0:
        scales[index % 2] = {path: 0.0 for path in loras[index % 2].modules}
    if index % 7 == 0:
        scales[0][next(iter(loras[0].modules))] = 0.0
    if index % 11 == 0:
        scales = [{path: 0.0 for path in lora.modules} for lora in loras]  # the base model
    return scales


def assert_within_bf16_error(got: torch.Tensor, eager: torch.Tensor, exact: torch.Tensor) -> None:
    """`got` (compiled, bf16) is as close to the float32 result as eager bf16 is: the two round in
    different places (fused kernels), so neither equals the other, but neither may be worse."""
    eager_error = (eager - exact).abs()
    error = (got - exact).abs()
    assert error.max() <= 2 * eager_error.max()
    assert error.mean() <= 1.5 * eager_error.mean()


def test_compiled_equals_eager_within_bf16_tolerance(compiled):
    model, weighting, loras, (exact, exact_weighting) = compiled
    rng = random.Random(0)
    for index in range(3):
        scales = some_scales(loras, rng, index + 1)
        weighting.set_scales(scales)
        exact_weighting.set_scales(scales)
        got = forward(model)
        with torch.compiler.set_stance("force_eager"):
            expected = forward(model)
        with torch.compiler.set_stance("force_eager"):
            weighting.set_scales([{p: 0.0 for p in lora.modules} for lora in loras])
            base = forward(model)
        assert (expected - base).abs().max() > 0.05  # the weighting really changes the output
        assert_within_bf16_error(got, expected, forward(exact))
        torch.testing.assert_close(got, expected, rtol=0.05, atol=0.05)  # and close to eager outright
    assert is_compiled(model)


def test_200_weightings_cause_no_recompile(compiled):
    model, weighting, loras, (exact, exact_weighting) = compiled
    rng = random.Random(1)
    weighting.set_scales(some_scales(loras, rng, 1))
    first = forward(model)  # compiles, if no earlier test did
    graphs = counters["stats"]["unique_graphs"]
    assert graphs == 1  # one graph serves both blocks: nothing per block is a Python constant
    outputs = []
    for index in range(200):
        scales = some_scales(loras, rng, index)
        weighting.set_scales(scales)
        outputs.append(forward(model))
    assert counters["stats"]["unique_graphs"] == graphs  # new scale values are data, not a new graph
    assert all(not torch.equal(out, first) for out in outputs)  # and they were not ignored
    with torch.compiler.set_stance("force_eager"):  # the last weighting is the one the graph used
        eager = forward(model)
    exact_weighting.set_scales(scales)
    assert_within_bf16_error(outputs[-1], eager, forward(exact))
