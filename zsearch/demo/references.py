"""The demo's reference images: renders at the hidden weighting, with seeds of their own."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import torch

from zsearch.demo.loras import read_demo_lora
from zsearch.demo.pipeline import load_pipeline, render_batch
from zsearch.demo.spec import DemoAssets


def render_references(assets: DemoAssets, out_dir: Path) -> None:
    """Render the reference prompts and seeds at the hidden weighting, fused straight into the weights.

    Deliberately independent of zsearch.engine: the weights are W + sum_i s_i·B_i·A_i, the very
    definition the engine must reproduce.
    """
    from PIL import Image

    pipe = load_pipeline(assets.model_dir)
    loras = [read_demo_lora(path) for path in assets.loras]
    scales = [weights.module_scales(lora) for weights, lora in zip(assets.hidden_recipe.loras, loras)]
    prompts = assets.reference_prompts
    jobs = [(p, seed) for p in range(len(prompts)) for seed in assets.reference_seeds]
    out_dir.mkdir(parents=True, exist_ok=True)
    with fused(pipe.transformer, loras, scales):
        images = render_batch(pipe, [prompts[p] for p, _ in jobs], [s for _, s in jobs])
    for (p, seed), image in zip(jobs, images):
        array = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        Image.fromarray(array).save(out_dir / f"ref_p{p}_s{seed}.png")


@contextmanager
def fused(transformer, loras: list[dict[str, tuple[torch.Tensor, torch.Tensor]]], scales: list[dict[str, float]]):
    """The LoRAs fused into the weights at per-module `scales` (one dict per LoRA), then undone."""
    original = {path: transformer.get_submodule(path).weight.detach().clone()
                for lora in loras for path in lora}
    with torch.no_grad():
        for lora, per_module in zip(loras, scales):
            for path, (down, up) in lora.items():
                transformer.get_submodule(path).weight += per_module[path] * (up @ down)
    try:
        yield
    finally:
        with torch.no_grad():
            for path, weight in original.items():
                transformer.get_submodule(path).weight.copy_(weight)
