"""Image grids: one trial's renders, and the baseline-vs-best comparison."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image, ImageDraw
from torchvision.utils import make_grid

from zsearch.util.atomic import atomic_path


def to_pil(image: torch.Tensor) -> Image.Image:
    """(3,H,W) float in [0,1] -> PIL RGB."""
    array = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    return Image.fromarray(array.permute(1, 2, 0).cpu().numpy())


def render_grid(images: torch.Tensor, columns: int) -> Image.Image:
    """Images in row-major order (N,3,H,W) -> one picture with `columns` per row."""
    return to_pil(make_grid(images.detach().float().cpu(), nrow=columns, padding=2, pad_value=1.0))


def stack_labelled(rows: list[tuple[str, Image.Image]]) -> Image.Image:
    """Stack pictures vertically, each with a label strip above it."""
    strip = 14
    width = max(img.width for _, img in rows)
    height = sum(img.height + strip for _, img in rows)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    y = 0
    for label, img in rows:
        draw.text((2, y + 1), label, fill="black")
        canvas.paste(img, (0, y + strip))
        y += img.height + strip
    return canvas


def save_png(image: Image.Image, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


def job_grid(images: torch.Tensor, n_prompts: int) -> Image.Image:
    """A picture of one trial's renders, given prompt by prompt: one column per prompt, one row per seed."""
    n_seeds = images.shape[0] // n_prompts
    by_seed = images.view(n_prompts, n_seeds, *images.shape[1:]).transpose(0, 1).reshape(images.shape)
    return render_grid(by_seed, columns=n_prompts)


THUMB_SIDE = 256  # per image, in the per-trial dashboard grids


def shrink(images: torch.Tensor, max_side: int = THUMB_SIDE) -> torch.Tensor:
    """Images (N,3,H,W) scaled down (antialiased) so neither side exceeds `max_side`; never up."""
    height, width = images.shape[-2:]
    scale = max_side / max(height, width)
    if scale >= 1:
        return images
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    return torch.nn.functional.interpolate(images.detach().float(), size=size, mode="bilinear",
                                           antialias=True, align_corners=False).clamp(0, 1)


def save_jpeg(image: Image.Image, path: str | Path, quality: int = 85) -> None:
    with atomic_path(path) as tmp:
        image.save(tmp, format="JPEG", quality=quality)
