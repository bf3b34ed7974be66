"""`render.memory`: what `auto` picks for a card, and fp8 / offloading wired under the side path.

The wiring runs on the CPU with the tiny demo model: fp8 storage really stores float8 and
computes in the engine's dtype; offloading installs diffusers' group-offload hooks (CPU to CPU
here, so its renders must equal the full model's bit for bit); the side path changes the output
on top of both; the fused way refuses them.
"""

from __future__ import annotations

import pytest
import torch
from diffusers.hooks.group_offloading import _is_group_offload_enabled

from zsearch.engine import Engine
from zsearch.engine.compile import is_compiled
from zsearch.engine.memory import WORKING_FRACTION, choose_memory, needed_bytes, resolve_memory, way_for
from zsearch.errors import UserError
from zsearch.lora.read import load_loras
from zsearch.lora.recipe import LoraWeights, Recipe

pytestmark = pytest.mark.usefixtures("single_thread")

GB = 10**9
Z_IMAGE_BF16 = 6.16e9 * 2  # Z-Image-Turbo's transformer in bf16: 12.3 GB


# -- what `auto` picks: a pure function of free bytes -----------------------------------------------

@pytest.mark.parametrize("free_gb, card, expected", [
    (80.0, "H100", "full"), (22.8, "RTX 4090, 24 GB", "full"), (15.2, "RTX 4080, 16 GB", "fp8"),
    (14.0, "16 GB with a desktop on it", "fp8"), (11.4, "RTX 4070, 12 GB", "offload"), (7.5, "8 GB", "offload")])
def test_auto_picks_by_free_memory_for_z_image(free_gb, card, expected):
    mode, why = choose_memory(int(free_gb * GB), int(Z_IMAGE_BF16))
    assert mode == expected, card
    assert why.startswith(f"memory {expected} ({free_gb:.1f} GB free")


def test_the_thresholds_are_the_weights_plus_working_memory():
    weights = 10 * GB
    full = weights * (1 + WORKING_FRACTION)  # bf16 weights + working memory
    fp8 = weights * (0.5 + WORKING_FRACTION)  # one byte a weight
    assert needed_bytes("full", weights) == int(full) and needed_bytes("fp8", weights) == int(fp8)
    assert choose_memory(int(full), weights)[0] == "full"
    assert choose_memory(int(full) - 1, weights)[0] == "fp8"
    assert choose_memory(int(fp8), weights)[0] == "fp8"
    assert choose_memory(int(fp8) - 1, weights)[0] == "offload"


def test_no_gpu_memory_to_measure_means_full():
    assert choose_memory(None, int(Z_IMAGE_BF16)) == ("full", "memory full (no GPU memory to budget)")


def test_fp8_and_offload_take_the_side_path_and_refuse_fused():
    assert way_for("auto", "full") == "auto" and way_for("fused", "full") == "fused"
    assert way_for("auto", "fp8") == "side" and way_for("side", "offload") == "side"
    for memory in ("fp8", "offload"):
        with pytest.raises(UserError, match=f"render.way fused .*render.memory {memory}.*use way: side") as info:
            way_for("fused", memory)
        assert "\n" not in str(info.value)


def test_lokr_loha_need_full_memory():
    assert way_for("auto", "full", needs_fused=True) == "auto"  # the weighting picks fused for them
    for memory in ("fp8", "offload"):
        with pytest.raises(UserError, match=f"LoKr/LoHa .*render.memory {memory}.*use memory: full"):
            way_for("auto", memory, needs_fused=True)


def test_unknown_memory_setting_is_refused():
    with pytest.raises(UserError, match="render.memory 'bf16' is unknown; use auto, full, fp8, offload"):
        resolve_memory("bf16", torch.device("cpu"), torch.nn.Linear(2, 2), torch.float32)


# -- the wiring, on the tiny demo model ------------------------------------------------------------

def engine_for(assets, cache, memory, way="side", **options):
    return Engine(str(assets.model_dir), load_loras(assets.loras), assets.prompt_list, device="cpu", way=way,
                  cache_dir=cache, memory=memory, **options)


def render_at(engine, assets, r1, r2):
    engine.set_recipe(Recipe([LoraWeights(path=assets.loras[0], ratio=r1),
                              LoraWeights(path=assets.loras[1], ratio=r2)]))
    jobs = engine.jobs(assets.seeds[:1])[:2]
    return engine.render(jobs, steps=2, width=assets.width, height=assets.height, batch=2)


@pytest.fixture(scope="module")
def full_renders(demo_assets, tmp_path_factory):
    engine = engine_for(demo_assets, tmp_path_factory.mktemp("cache"), "full")
    assert engine.pipe.vae.use_slicing  # every mode decodes one image at a time
    renders = {w: render_at(engine, demo_assets, *w) for w in [(0.0, 0.0), (1.0, 0.6)]}
    engine.close()
    return renders


def test_fp8_stores_float8_computes_in_the_engine_dtype_and_the_weighting_acts(demo_assets, tmp_path,
                                                                                full_renders):
    engine = engine_for(demo_assets, tmp_path, "fp8")
    try:
        assert engine.memory == "fp8" and engine.placement.startswith("memory fp8 (as set); weighting side")
        linear = engine.pipe.transformer.layers[0].attention.to_q
        assert linear.weight.dtype == torch.float8_e4m3fn  # stored in one byte
        assert linear.zsearch_down.dtype == torch.float32  # the side path computes in the engine's dtype
        base, weighted = render_at(engine, demo_assets, 0.0, 0.0), render_at(engine, demo_assets, 1.0, 0.6)
        assert linear.weight.dtype == torch.float8_e4m3fn  # cast back after each forward
        assert (weighted - base).abs().mean() > 0.01  # the weighting changes the image on top of fp8
        # fp8 rounding changes the renders a little, not beyond recognition
        error = (base - full_renders[(0.0, 0.0)]).abs().mean()
        assert 0 < error < 0.1 * (full_renders[(1.0, 0.6)] - full_renders[(0.0, 0.0)]).abs().mean() + 0.02
        assert torch.equal(render_at(engine, demo_assets, 0.0, 0.0), base)  # deterministic, no drift
    finally:
        engine.close()


def test_offload_streams_blocks_and_renders_the_full_models_pixels(demo_assets, tmp_path, full_renders):
    engine = engine_for(demo_assets, tmp_path, "offload")
    try:
        assert engine.memory == "offload" and _is_group_offload_enabled(engine.pipe.transformer)
        for weights, expected in full_renders.items():
            assert torch.equal(render_at(engine, demo_assets, *weights), expected)
    finally:
        engine.close()


def test_fused_with_fp8_is_refused_before_loading_anything_on_the_device(demo_assets, tmp_path):
    with pytest.raises(UserError, match="render.way fused .*render.memory fp8"):
        engine_for(demo_assets, tmp_path, "fp8", way="fused")


def test_auto_on_a_cpu_holds_the_weights_whole(demo_assets, tmp_path):
    engine = engine_for(demo_assets, tmp_path, "auto", way="auto", planned_images=10**6)
    try:
        assert engine.memory == "full" and engine.way == "side"
        assert engine.placement == ("memory full (no GPU memory to budget); weighting side; not compiled "
                                    "(render.compile auto compiles on CUDA only, this is cpu)")
        assert not is_compiled(engine.pipe.transformer)
    finally:
        engine.close()


# -- the config keys -------------------------------------------------------------------------------

def _config(tmp_path, render):
    import yaml

    from zsearch.settings.load import load_config

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"name": "t", "loras": [{"path": "a.safetensors", "search": {"ratio": [0.0, 1.5]}}], "references": "refs",
                                    "prompts": ["a cat"], "render": render}))
    return load_config(path)


def test_render_memory_and_compile_parse_and_leave_the_fingerprint_alone(tmp_path):
    default = _config(tmp_path, {})
    assert default.render.memory == "auto" and default.render.compile == "auto"
    chosen = _config(tmp_path, {"memory": "fp8", "compile": True})
    assert chosen.render.memory == "fp8" and chosen.render.compile is True
    assert _config(tmp_path, {"compile": False}).render.compile is False
    assert chosen.fingerprint_hash() == default.fingerprint_hash()  # a study resumes with either


def test_a_wrong_memory_value_names_the_key(tmp_path):
    with pytest.raises(UserError, match="render.memory") as info:
        _config(tmp_path, {"memory": "bf16"})
    assert "\n" not in str(info.value)
