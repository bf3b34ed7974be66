"""The demo's judge model: a tiny open_clip saved as a `local-dir:` folder, taught to see the look."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from zsearch.lora.recipe import LoraWeights
from zsearch.demo.loras import read_demo_lora
from zsearch.demo.pipeline import load_pipeline, render_batch
from zsearch.demo.references import fused
from zsearch.demo.spec import CLIP_CONFIG, DemoAssets, EXTRA_PROMPTS, JUDGE_SEED_BASE, JUDGE_WEIGHTINGS, PROMPTS


def build_tiny_clip(out_dir: Path, assets: DemoAssets, tick=lambda: None) -> None:
    """A tiny open_clip model taught to see the demo's looks and prompts, saved as a `local-dir:` folder.

    Its lessons are renders of every prompt (the search's and the references') at random
    weightings of the demo LoRAs, with seeds of their own.
    """
    import open_clip
    from safetensors.torch import save_file

    from zsearch.demo.judge import train_judge
    from zsearch.judges.openclip import preprocess

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "open_clip_config.json").write_text(json.dumps(CLIP_CONFIG, indent=2))
    torch.manual_seed(1)
    # A random init is the point here; open_clip warns (on the root logger) that no weights were found.
    logging.disable(logging.WARNING)
    try:
        model = open_clip.create_model(f"local-dir:{out_dir}")
    finally:
        logging.disable(logging.NOTSET)
    tokenizer = open_clip.get_tokenizer(f"local-dir:{out_dir}")

    pipe = load_pipeline(assets.model_dir)
    loras = [read_demo_lora(path) for path in assets.loras]
    prompts = [*PROMPTS, *EXTRA_PROMPTS]
    generator = torch.Generator().manual_seed(7)
    images, look_index, prompt_index = [], [], []
    for k in range(JUDGE_WEIGHTINGS):
        scales = [random_weighting(generator).module_scales(lora) for lora in loras]
        seeds = [JUDGE_SEED_BASE + k * len(prompts) + i for i in range(len(prompts))]
        with fused(pipe.transformer, loras, scales):
            images.append(render_batch(pipe, prompts, seeds))
        tick()  # one step of the demo build's progress
        prompt_index.extend(range(len(prompts)))
        look_index.extend([k] * len(prompts))
    cfg = dict(model.visual.preprocess_cfg)
    train_judge(model, torch.cat(images), torch.tensor(look_index), torch.tensor(prompt_index), prompts, tokenizer,
                lambda x: preprocess(x, cfg), seed=1)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out_dir / "open_clip_model.safetensors"))
    tick()


def random_weighting(generator: torch.Generator) -> LoraWeights:
    """A random weighting of one LoRA over the demo's search space (ratio, components, bands)."""
    def draw(low: float, high: float) -> float:
        return low + (high - low) * torch.rand((), generator=generator).item()

    components = {c: draw(0.0, 2.0) for c in ("adaLN", "attn", "w1", "w2", "w3")}
    layers = {key: draw(0.0, 2.0) for key in ("0-9", "10-19", "20-29")}
    return LoraWeights(path=Path("."), ratio=draw(0.0, 1.5), components=components, layers=layers)
