"""The offline demo assets: real classes, loadable the real way, deterministic, built once."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from safetensors import safe_open

from zsearch.blocks import all_modules
from zsearch.demo import BUILD_VERSION, HIDDEN_WEIGHTS, PROMPTS, build_demo, build_tiny_pipeline
from zsearch.lora.read import load_lora

pytestmark = pytest.mark.usefixtures("single_thread")


def test_the_tiny_pipeline_loads_and_renders_like_the_real_one(demo_assets):
    from diffusers import ZImagePipeline
    from transformers import Qwen2Tokenizer, Qwen3Model

    pipe = ZImagePipeline.from_pretrained(demo_assets.model_dir)
    assert isinstance(pipe.text_encoder, Qwen3Model) and isinstance(pipe.tokenizer, Qwen2Tokenizer)
    assert len(pipe.transformer.layers) == 30 and len(pipe.transformer.noise_refiner) == 2
    assert pipe.scheduler.config.shift == 3.0 and pipe.vae.config.latent_channels == 16
    assert pipe.vae_scale_factor == 8  # as Flux's VAE: sizes are multiples of 16
    assert pipe.transformer.x_pad_token.abs().sum() > 0 and pipe.transformer.cap_pad_token.abs().sum() > 0
    # the chat template and special tokens the pipeline's encode_prompt relies on
    text = pipe.tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                              add_generation_prompt=True, enable_thinking=True)
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    ids = pipe.tokenizer(text).input_ids
    assert ids[0] == pipe.tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert pipe.tokenizer.decode(ids) == text
    pipe.set_progress_bar_config(disable=True)
    image = pipe("a red fox", height=32, width=48, num_inference_steps=2, guidance_scale=0.0,
                 generator=torch.Generator().manual_seed(0), output_type="pt").images
    assert image.shape == (1, 3, 32, 48) and image.std() > 0.01


def test_the_loras_read_back_as_ai_toolkit_on_every_module(demo_assets):
    for path in demo_assets.loras:
        with safe_open(str(path), "pt") as handle:
            assert next(iter(handle.keys())).startswith("diffusion_model.")
        lora = load_lora(path)
        assert lora.format == "ai-toolkit" and lora.dim == 32
        assert set(lora.modules) == {m.path for m in all_modules()}
        assert all(m.rank == 4 and m.scale == 1.0 for m in lora.modules.values())


def test_references_prompts_and_hidden_recipe(demo_assets):
    assert demo_assets.prompts.read_text().splitlines()[1:] == PROMPTS
    names = sorted(p.name for p in demo_assets.references.iterdir())
    assert names == [f"ref_p{p}_s{s}.png" for p in range(3) for s in demo_assets.seeds]
    recipe = demo_assets.hidden_recipe
    assert [lw.path for lw in recipe.loras] == demo_assets.loras
    assert [lw.ratio for lw in recipe.loras] == [w["ratio"] for w in HIDDEN_WEIGHTS]
    assert demo_assets.clip_model == f"local-dir:{demo_assets.clip_dir}"
    config = json.loads((demo_assets.clip_dir / "open_clip_config.json").read_text())
    assert set(config) == {"model_cfg", "preprocess_cfg"}
    assert (demo_assets.clip_dir / "open_clip_model.safetensors").is_file()


def test_build_is_idempotent_and_deterministic(demo_assets, tmp_path):
    def digests(root):
        return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".lock"}

    before = digests(demo_assets.root)
    mtimes = {p: p.stat().st_mtime_ns for p in demo_assets.root.rglob("*")}
    again = build_demo(demo_assets.root)  # already built: nothing is touched
    assert again == demo_assets
    assert {p: p.stat().st_mtime_ns for p in demo_assets.root.rglob("*")} == mtimes
    assert (demo_assets.root / ".complete").read_text() == BUILD_VERSION
    # a second, separate build of the pipeline gives the same bytes
    build_tiny_pipeline(tmp_path / "model")
    model_files = {k: v for k, v in before.items() if k.startswith("tiny-z-image/")}
    assert {f"tiny-z-image/{k}": v for k, v in digests(tmp_path / "model").items()} == model_files
