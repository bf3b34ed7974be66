"""The engine: Z-Image-Turbo loaded once, LoRAs attached once, a new weighting per trial, rendering.

The only part of zsearch that knows diffusers and open_clip. Typical use:

    engine = Engine(model, loras, prompts, cache_dir=cache)
    engine.set_recipe(recipe)
    images = engine.render(jobs, steps=8, width=1024, height=1024, batch=4)
    scores = scorer.score(images, [job.prompt for job in jobs])

Must not import judges/, settings/, study/ or optuna: it renders what it is given.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import torch

from zsearch.lora.model import Lora
from zsearch.lora.recipe import Recipe
from zsearch.engine.compile import compile_blocks, decide_compile
from zsearch.engine.device import default_dtype, pick_device
from zsearch.engine.memory import place_pipeline, resolve_memory, way_for
from zsearch.engine.pipeline import load_pipeline
from zsearch.engine.prompts import encode_prompts
from zsearch.engine.render import Job, Renderer, save_pngs
from zsearch.engine.weighting import Weighting, attach_loras

__all__ = ["Engine", "Job", "save_pngs"]


class Engine:
    """A pipeline without its text encoder, the prompts' embeddings, and the LoRAs attached."""

    def __init__(self, model: str, loras: list[Lora], prompts: list[str], device: str | torch.device | None = None,
                 way: str = "auto", cache_dir: Path = Path(".zsearch-cache"), dtype: torch.dtype | None = None,
                 memory: str = "auto", compile: str | bool = "auto", planned_images: int = 0,
                 render_size: tuple[int, int, int] = (8, 1024, 1024)):
        """`memory`, `compile`: render.memory / render.compile (see engine/memory.py, engine/compile.py);
        `planned_images` and `render_size` (steps, width, height) tell `compile: auto` what the
        warm-up would be spread over. `placement` says, in one line, what was picked and why."""
        self.device = device if isinstance(device, torch.device) else pick_device(device)
        self.dtype = dtype or default_dtype(self.device)
        self.prompts = list(prompts)
        self.last_timings: dict[str, float] = {}
        started = time.perf_counter()
        # Encode first: the text encoder is loaded (only on a cache miss) and freed before the
        # transformer arrives, so the two never share the GPU.
        embeds = encode_prompts(model, [*self.prompts, ""], Path(cache_dir), self.device, self.dtype)
        encoded = time.perf_counter()
        self.pipe = load_pipeline(model, self.device, self.dtype, with_text_encoder=False, place=False)
        self.memory, memory_why = resolve_memory(memory, self.device, self.pipe.transformer, self.dtype)
        # decided before placing: a refused combination costs no GPU time
        way = way_for(way, self.memory, needs_fused=any(not lora.plain for lora in loras))
        steps, width, height = render_size
        self.compiled, compile_why = decide_compile(compile, self.device.type, planned_images, steps, width,
                                                    height, self.memory)
        place_pipeline(self.pipe, self.memory, self.device, self.dtype)
        self.weighting: Weighting = attach_loras(self.pipe.transformer, loras, way, device=self.device,
                                                 dtype=self.dtype)
        if self.compiled:
            compile_blocks(self.pipe.transformer)  # lazily: the first render compiles
        self.placement = f"{memory_why}; weighting {self.weighting.name}; {compile_why}"
        self.renderer = Renderer(self.pipe, embeds[:-1], negative_embeds=embeds[-1], device=self.device)
        self.load_timings = {"encode_prompts": encoded - started, "load": time.perf_counter() - encoded}

    @property
    def way(self) -> str:
        """"side" or "fused": how the weighting is applied."""
        return self.weighting.name

    def set_recipe(self, recipe: Recipe) -> None:
        started = time.perf_counter()
        self.weighting.set_recipe(recipe)
        self._synchronize()
        self.last_timings = {"set_weighting": time.perf_counter() - started}

    def set_scales(self, scales: list[dict[str, float]]) -> None:
        started = time.perf_counter()
        self.weighting.set_scales(scales)
        self._synchronize()
        self.last_timings = {"set_weighting": time.perf_counter() - started}

    def render(self, jobs: Sequence[Job], steps: int = 8, width: int = 1024, height: int = 1024, batch: int = 4,
               guidance: float = 0.0) -> torch.Tensor:
        """Images (N, 3, H, W) in [0, 1] on the engine's device, one per job, in order."""
        started = time.perf_counter()
        images = self.renderer.render(jobs, steps=steps, width=width, height=height, batch=batch, guidance=guidance)
        self._synchronize()
        self.last_timings["render"] = time.perf_counter() - started
        return images

    def jobs(self, seeds: Sequence[int]) -> list[Job]:
        """Every prompt with every seed, prompt-major: the fixed job list of a search."""
        return [Job(index, prompt, seed) for index, prompt in enumerate(self.prompts) for seed in seeds]

    def close(self) -> None:
        """Detach the LoRAs and drop the pipeline (frees GPU memory for whatever runs next)."""
        from zsearch.engine.device import release_memory

        self.weighting.detach()
        del self.renderer, self.pipe
        release_memory()

    def _synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
