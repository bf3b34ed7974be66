"""Rendering a fixed list of (prompt, seed) jobs with cached prompt embeddings.

Each job's starting noise is drawn on the CPU from its own seed, so an image depends only on the
weighting and its job: not on the batch it ran in, nor on the device.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from zsearch.util.atomic import atomic_path
from zsearch.errors import UserError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Job:
    prompt_index: int  # index into the Renderer's prompt embeddings
    prompt: str
    seed: int


def initial_latents(seed: int, channels: int, height: int, width: int, vae_scale_factor: int) -> torch.Tensor:
    """Starting noise (1, C, h, w) of one image, drawn on the CPU so every device sees the same noise.

    The shape is the one ZImagePipeline.prepare_latents expects.
    """
    shape = (1, channels, 2 * (height // (vae_scale_factor * 2)), 2 * (width // (vae_scale_factor * 2)))
    return torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed), dtype=torch.float32)


class Renderer:
    """Renders jobs with a pipeline that has no text encoder, from precomputed prompt embeddings."""

    def __init__(self, pipe, prompt_embeds: list[torch.Tensor], negative_embeds: torch.Tensor | None = None,
                 device: torch.device | None = None):
        self.pipe = pipe
        self._device = device  # where the transformer computes; its weights may be offloaded elsewhere
        self.prompt_embeds = prompt_embeds
        self.negative_embeds = negative_embeds  # the empty prompt, needed only when guidance > 0
        self.batch_limit: int | None = None  # lowered after a CUDA out-of-memory, kept for later calls

    @property
    def device(self) -> torch.device:
        return self._device if self._device is not None else self.pipe.transformer.device

    def render(self, jobs: Sequence[Job], steps: int = 8, width: int = 1024, height: int = 1024, batch: int = 4,
               guidance: float = 0.0) -> torch.Tensor:
        """Images (N, 3, H, W) float32 in [0, 1] on the pipeline's device, in the order of `jobs`."""
        multiple = self.pipe.vae_scale_factor * 2
        if width % multiple or height % multiple:
            raise UserError(f"render size {width}x{height}: width and height must be multiples of {multiple}")
        if guidance > 0 and self.negative_embeds is None:
            raise UserError("guidance > 0 needs the empty prompt's embedding; Z-Image-Turbo renders with guidance 0")
        for job in jobs:
            if not 0 <= job.prompt_index < len(self.prompt_embeds):
                raise ValueError(f"job {job} names prompt {job.prompt_index} of {len(self.prompt_embeds)}")
        size = max(1, min(batch, self.batch_limit or batch))
        images, start = [], 0
        while start < len(jobs):
            chunk = list(jobs[start:start + size])
            try:
                images.append(self._render_batch(chunk, steps, width, height, guidance))
            except torch.OutOfMemoryError:
                if size == 1:
                    raise
                size = max(1, size // 2)
                self.batch_limit = size
                _release_cuda()
                log.warning("CUDA out of memory: rendering %d image(s) at a time from now on", size)
                continue
            start += len(chunk)
        return torch.cat(images) if images else torch.empty(0, 3, height, width, device=self.device)

    def _render_batch(self, jobs: list[Job], steps: int, width: int, height: int, guidance: float) -> torch.Tensor:
        pipe = self.pipe
        channels = pipe.transformer.config.in_channels
        latents = torch.cat([initial_latents(job.seed, channels, height, width, pipe.vae_scale_factor)
                             for job in jobs]).to(self.device)
        embeds = [self.prompt_embeds[job.prompt_index] for job in jobs]
        negative = [self.negative_embeds] * len(jobs) if guidance > 0 else None
        result = pipe(prompt_embeds=embeds, negative_prompt_embeds=negative, latents=latents, height=height,
                      width=width, num_inference_steps=steps, guidance_scale=guidance, output_type="pt")
        return result.images.float()


def save_pngs(images: torch.Tensor, paths: Sequence[str | Path]) -> None:
    """Write each image (3, H, W) in [0, 1] to its PNG path, atomically."""
    from PIL import Image

    if len(images) != len(paths):
        raise ValueError(f"{len(images)} images for {len(paths)} paths")
    pixels = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    for array, path in zip(pixels, paths):
        with atomic_path(path) as tmp:
            Image.fromarray(array).save(tmp, format="PNG")


def _release_cuda() -> None:
    from zsearch.engine.device import release_memory

    release_memory()
