"""The demo's judge: a tiny open_clip model taught, at build time, to see a render's look.

A random CLIP groups images by their layout (the seed), which no real CLIP does. A real CLIP sees
palette, contrast and texture, and matches a prompt to its image. The tiny model is taught the
same in a few seconds: its image tower regresses a layout-free description of each render's look
(`look_features`: the demo look is a texture, see zsearch.demo.build) and a code of the render's prompt;
its text tower regresses the same prompt code. It stays a plain open_clip model, saved and loaded
as any other.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F

PROMPT_WEIGHT = 1.0  # length of the prompt code beside the unit-variance look coordinates
LOOK_LIMIT = 3.0  # standardised statistics beyond this are all just "far"
RADIUS_QUANTILE = 0.9  # the look's sphere holds this share of the lessons (a smaller one scores sharper)
TRAIN_STEPS = 300  # at 100 the image tower's prompt read still leaned on the look
BATCH = 128
PATTERN_PERIOD = 16  # pixels a 2x2 latent patch spans (the demo VAE upsamples 8x)


def look_features(images: torch.Tensor) -> torch.Tensor:
    """(N, 12) the mean colour of each quarter of the image's PATTERN_PERIOD-pixel tiles, averaged
    over all tiles, less the image mean: a texture's colour pattern, whatever the layout. Images
    (N, 3, H, W) in [0, 1]. Mean colours, contrast and edges are left out: in the demo they are
    the subject's and the seed's, not the look's."""
    n, _, height, width = images.shape
    p = PATTERN_PERIOD
    tiles = images[..., :height - height % p, :width - width % p]
    tiles = tiles.reshape(n, 3, height // p, p, width // p, p).mean(dim=(2, 4))
    quarters = F.avg_pool2d(tiles, p // 2)
    return (quarters - quarters.mean(dim=(2, 3), keepdim=True)).reshape(n, 12)


def foreign_images(n: int, height: int, width: int, seed: int) -> torch.Tensor:
    """n images (N, 3, H, W) in [0, 1] that no render resembles: pixel noise, smooth random
    colour fields and flat colours, in equal parts."""
    generator = torch.Generator().manual_seed(seed)
    third = max(1, n // 3)
    noise = torch.rand(third, 3, height, width, generator=generator)
    coarse = torch.rand(third, 3, 4, 4, generator=generator)
    fields = F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
    flat = torch.rand(n - 2 * third, 3, 1, 1, generator=generator).expand(-1, -1, height, width)
    return torch.cat([noise, fields, flat])


def prompt_codes(n_prompts: int, dim: int, seed: int = 0) -> torch.Tensor:
    """One unit code (dim,) per prompt, random and well apart."""
    codes = torch.randn(n_prompts, dim, generator=torch.Generator().manual_seed(seed))
    return F.normalize(codes, dim=1)


def standardised(features: torch.Tensor, centre: torch.Tensor, spread: torch.Tensor) -> torch.Tensor:
    return ((features - centre) / spread).clamp(-LOOK_LIMIT, LOOK_LIMIT)


def targets(look: torch.Tensor, codes: torch.Tensor, embed_dim: int, radius2: float) -> torch.Tensor:
    """Target image embeddings: [standardised look, slack, prompt code], zero-padded to embed_dim.

    The slack makes every look inside the sphere of radius² `radius2` the same length, so the
    look cannot move the prompt cosine through the embedding's norm (a cosine divides by it),
    while the style cosine still falls with the distance between looks.
    """
    slack = (radius2 - look.pow(2).sum(dim=1, keepdim=True)).clamp_min(0).sqrt()
    out = torch.cat([look, slack, PROMPT_WEIGHT * codes], dim=1)
    return F.pad(out, (0, embed_dim - out.shape[1]))


@contextmanager
def training_enabled():
    """Gradients on and inference mode off, whatever the caller set (a benchmark builds the demo
    inside torch.no_grad() or torch.inference_mode()): tensors made inside can be trained."""
    with torch.inference_mode(False), torch.enable_grad():
        yield


def _trainable(model: torch.nn.Module) -> None:
    """Parameters and buffers made under inference mode cannot be updated or saved for backward
    outside it: replace them by ordinary copies (a no-op for a model made with grad on)."""
    for name, param in list(model.named_parameters()):
        if param.is_inference():
            owner, _, attr = name.rpartition(".")
            setattr(model.get_submodule(owner), attr, torch.nn.Parameter(param.clone(), param.requires_grad))
    for name, buffer in list(model.named_buffers()):
        if buffer.is_inference():
            owner, _, attr = name.rpartition(".")
            setattr(model.get_submodule(owner), attr, buffer.clone())


def _ordinary(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.clone() if tensor.is_inference() else tensor


def train_judge(model, images: torch.Tensor, look_index: torch.Tensor, prompt_index: torch.Tensor,
                prompts: list[str], tokenizer, preprocess, seed: int = 0, steps: int | None = None) -> dict:
    """Teach `model` (an open_clip CLIP) the looks of `images` and their prompts; returns fit figures.

    images (N, 3, H, W) in [0, 1]; look_index (N,) groups the images of one weighting (its
    renders of other seeds and prompts); prompt_index (N,) points into `prompts`. An image's look
    target is its group's mean statistics: what the weighting gives, with the seed averaged out.
    Works under torch.no_grad() and torch.inference_mode() too: it turns training back on.
    """
    with training_enabled():
        _trainable(model)
        return _train(model, _ordinary(images), _ordinary(look_index), _ordinary(prompt_index), prompts, tokenizer,
                      preprocess, seed, steps)


def _train(model, images, look_index, prompt_index, prompts, tokenizer, preprocess, seed, steps) -> dict:
    steps = TRAIN_STEPS if steps is None else steps
    embed_dim = model.text_projection.shape[1] if model.text_projection is not None else model.embed_dim
    per_image = look_features(images)
    groups = torch.zeros(int(look_index.max()) + 1, per_image.shape[1]).index_add_(0, look_index, per_image)
    features = (groups / torch.bincount(look_index)[:, None])[look_index]
    centre, spread = features.mean(dim=0), features.std(dim=0).clamp_min(1e-6)
    # Images unlike any render (noise, smooth colour fields, flat colours), each its own look, so
    # the judge places what it has never seen far from every render, as a real CLIP does.
    others = foreign_images(len(images) // 8, images.shape[-2], images.shape[-1], seed)
    images = torch.cat([images, others])
    features = torch.cat([features, look_features(others)])
    prompt_index = torch.cat([prompt_index, torch.randint(len(prompts), (len(others),),
                                                          generator=torch.Generator().manual_seed(seed))])
    n_look = features.shape[1]
    codes = prompt_codes(len(prompts), embed_dim - n_look - 1, seed)
    look = standardised(features, centre, spread)
    radius2 = look[:len(per_image)].pow(2).sum(dim=1).quantile(RADIUS_QUANTILE).item()  # the renders' looks
    image_target = targets(look, codes[prompt_index], embed_dim, radius2)
    text_target = F.pad(PROMPT_WEIGHT * codes, (n_look + 1, 0))
    pixels = preprocess(images)
    tokens = tokenizer(prompts)

    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=3e-3, total_steps=steps, pct_start=0.15)
    model.train()
    for _ in range(steps):
        pick = torch.randint(len(images), (min(BATCH, len(images)),), generator=generator)
        loss = F.mse_loss(model.encode_image(pixels[pick]), image_target[pick])
        loss = loss + F.mse_loss(model.encode_text(tokens), text_target)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
    model.eval()
    with torch.no_grad():
        fitted = model.encode_image(pixels)
        look_fit = F.cosine_similarity(fitted, image_target, dim=1).mean().item()
    return {"loss": loss.item(), "cosine_to_target": look_fit}
