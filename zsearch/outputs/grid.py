"""Image grids: one trial's renders, and best.png (the references, the baseline and the best side by side)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

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


# ---------------------------------------------------------------- best.png: references, baseline, best

COMPARE_SIDE = 160  # px per image in best.png and the review's references: a night seen at a glance
SEEDS_SHOWN = 3  # renders per prompt and candidate in best.png
REFERENCES_SHOWN = 6
LABEL_H, GAP = 14, 8
CHAR_W = 6  # PIL's default font


def fit(image: Image.Image, side: int = COMPARE_SIDE) -> Image.Image:
    """Scaled down (bicubic) so its longer side is `side`; never up."""
    scale = side / max(image.size)
    if scale >= 1:
        return image.convert("RGB")
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.convert("RGB").resize(size, Image.BICUBIC)


def job_tiles(grid: Image.Image, n_prompts: int, n_seeds: int) -> Optional[list[list[Image.Image]]]:
    """The single renders of a `job_grid` picture as [prompt][seed]; None when its shape says
    it holds another number of prompts or seeds (2 px padding around each image)."""
    width, height = (grid.width - 2) / n_prompts - 2, (grid.height - 2) / n_seeds - 2
    if width < 1 or height < 1 or width != int(width) or height != int(height):
        return None
    w, h = int(width), int(height)
    return [[grid.crop((2 + p * (w + 2), 2 + s * (h + 2), 2 + p * (w + 2) + w, 2 + s * (h + 2) + h))
             for s in range(n_seeds)] for p in range(n_prompts)]


def image_row(images: list[Image.Image], side: int = COMPARE_SIDE) -> Image.Image:
    """Images fitted into `side` x `side` cells, left to right, 2 px apart."""
    fitted = [fit(image, side) for image in images]
    cell = max([side if max(image.size) > side else max(image.size) for image in images] or [1])
    row = Image.new("RGB", (max(1, len(fitted) * (cell + 2) - 2), cell), "white")
    for i, image in enumerate(fitted):
        row.paste(image, (i * (cell + 2), 0))
    return row


def _label(draw: ImageDraw.ImageDraw, xy: tuple[int, int], text: str, width: int) -> None:
    limit = max(4, width // CHAR_W)
    draw.text((xy[0] + 2, xy[1] + 1), text if len(text) <= limit else text[:limit - 1] + "…", fill="black")


def comparison(references: list[Image.Image], columns: list[tuple[str, list[list[Image.Image]]]],
               prompts: list[str]) -> Image.Image:
    """The references in a row on top; below, per prompt, each column's renders side by side
    (columns: (title, tiles[prompt][seed]), e.g. the baseline and the best)."""
    rows = [image_row(references[:REFERENCES_SHOWN])] if references else []
    blocks = [[image_row(tiles[p][:SEEDS_SHOWN]) for p in range(len(prompts))] for _, tiles in columns]
    block_w = [max(b.width for b in block) for block in blocks]
    width = max([sum(block_w) + GAP * (len(blocks) - 1), *(r.width for r in rows), 240])
    row_h = max((b.height for block in blocks for b in block), default=0)
    height = (LABEL_H + rows[0].height + GAP if rows else 0) + LABEL_H + len(prompts) * (LABEL_H + row_h)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    y = 0
    if rows:
        _label(draw, (0, y), f"references ({min(len(references), REFERENCES_SHOWN)} of {len(references)})", width)
        canvas.paste(rows[0], (0, y + LABEL_H))
        y += LABEL_H + rows[0].height + GAP
    xs = [sum(block_w[:i]) + GAP * i for i in range(len(blocks))]
    for x, (title, _), w in zip(xs, columns, block_w):
        _label(draw, (x, y), title, w)
    y += LABEL_H
    for p, prompt in enumerate(prompts):
        _label(draw, (0, y), f"{p + 1}. {prompt}", width)
        for x, block in zip(xs, blocks):
            canvas.paste(block[p], (x, y + LABEL_H))
        y += LABEL_H + row_h
    return canvas
