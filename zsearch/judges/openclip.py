"""Scoring renders with open_clip: likeness to the reference images (style) and to the prompt.

Renders arrive as tensors on the GPU; they are resized, cropped and normalised there (no PIL
round trip). The references are read and embedded once, and cached on disk when a cache folder
is given.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from zsearch.util.atomic import atomic_path
from zsearch.judges.images import read_image, reference_files
from zsearch.errors import UserError
from zsearch.engine.device import pick_device

STYLES = ("centroid", "pairwise")
_CHECKPOINT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt")
_INTERPOLATION = {"bicubic": "bicubic", "bilinear": "bilinear", "nearest": "nearest"}


class Scorer:
    """An open_clip model with its reference embeddings; `score` rates a batch of renders."""

    def __init__(self, model, tokenizer, preprocess_cfg: dict, references: torch.Tensor, style: str,
                 device: torch.device, reference_files: list[Path]):
        if style not in STYLES:
            raise UserError(f"scorer style '{style}' is unknown; use {' or '.join(STYLES)}")
        self.model = model
        self.tokenizer = tokenizer
        self.preprocess_cfg = preprocess_cfg
        self.reference_embeddings = references  # (R, E), unit length
        self.reference_files = reference_files
        self.style = style
        self.device = device
        centroid = references.mean(dim=0)
        self.centroid = centroid / centroid.norm()
        self._text_cache: dict[str, torch.Tensor] = {}

    @classmethod
    def load(cls, model: str, pretrained: str | None, references: Path, style: str = "centroid",
             device: torch.device | str | None = None, cache_dir: Path | None = None) -> "Scorer":
        """Load `model` (open_clip name + `pretrained` tag or checkpoint file, or an `hf-hub:`/
        `local-dir:` name) and embed the images in the `references` folder."""
        if style not in STYLES:
            raise UserError(f"scorer style '{style}' is unknown; use {' or '.join(STYLES)}")
        device = torch.device(device) if isinstance(device, torch.device) else pick_device(device)
        files = reference_files(Path(references))  # checked before the (slow) model load
        clip, tokenizer = _load_open_clip(model, pretrained, device)
        preprocess_cfg = dict(clip.visual.preprocess_cfg)
        embeds = _cached_reference_embeddings(clip, preprocess_cfg, files, model, pretrained, device, cache_dir)
        return cls(clip, tokenizer, preprocess_cfg, embeds, style, device, files)

    @classmethod
    def from_model(cls, clip, tokenizer, reference_images: torch.Tensor, style: str = "centroid",
                   device: torch.device | str = "cpu") -> "Scorer":
        """A scorer around an already built open_clip model, references given as tensors (benchmarks)."""
        device = torch.device(device)
        preprocess_cfg = dict(clip.visual.preprocess_cfg)
        with torch.no_grad():
            pixels = preprocess(reference_images.to(device, torch.float32), preprocess_cfg)
            embeds = F.normalize(clip.encode_image(pixels).float(), dim=-1)
        return cls(clip, tokenizer, preprocess_cfg, embeds, style, device, [])

    # -- scoring ---------------------------------------------------------------------------------
    @torch.no_grad()
    def score(self, images: torch.Tensor, prompts: list[str]) -> dict[str, torch.Tensor]:
        """{"style": (N,), "prompt": (N,)} cosines in [-1, 1] for images (N, 3, H, W) in [0, 1]."""
        if len(prompts) != len(images):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
        features = self.embed_images(images)
        return {"style": self.style_of(features), "prompt": self.prompt_of(features, prompts)}

    def style_of(self, features: torch.Tensor) -> torch.Tensor:
        """Likeness of image embeddings (N, E) to the references: to their centroid, or the mean pairwise."""
        if self.style == "centroid":
            style = features @ self.centroid
        else:
            style = (features @ self.reference_embeddings.T).mean(dim=1)
        return style.float().clamp(-1, 1)

    def prompt_of(self, features: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """Likeness of image embeddings (N, E) to their prompts."""
        return (features * self.embed_texts(prompts)).sum(dim=1).float().clamp(-1, 1)

    @torch.no_grad()
    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """Unit-length image embeddings (N, E) of images (N, 3, H, W) in [0, 1]."""
        pixels = preprocess(images.to(self.device, torch.float32), self.preprocess_cfg)
        return F.normalize(self.model.encode_image(pixels).float(), dim=-1)

    @torch.no_grad()
    def embed_texts(self, prompts: list[str]) -> torch.Tensor:
        """Unit-length text embeddings (N, E), each distinct prompt encoded once per Scorer."""
        return embed_texts_once(self.model, self.tokenizer, self.device, self._text_cache, prompts)


@torch.no_grad()
def embed_texts_once(model, tokenizer, device, cache: dict[str, torch.Tensor], prompts: list[str]) -> torch.Tensor:
    """Unit-length text embeddings (N, E) of an open_clip model; prompts not in `cache` are encoded
    (once each) and added to it."""
    missing = [p for p in dict.fromkeys(prompts) if p not in cache]
    if missing:
        tokens = tokenizer(missing).to(device)
        for prompt, feature in zip(missing, F.normalize(model.encode_text(tokens).float(), dim=-1)):
            cache[prompt] = feature
    return torch.stack([cache[p] for p in prompts])


def preprocess(images: torch.Tensor, cfg: dict) -> torch.Tensor:
    """open_clip's image transform on a tensor batch: resize, center crop (or pad), normalise.

    `cfg` is the model's preprocess config (size, mean, std, interpolation, resize_mode).
    """
    size = cfg.get("size", 224)
    target_h, target_w = (size, size) if isinstance(size, int) else tuple(size)
    mode = _INTERPOLATION.get(cfg.get("interpolation", "bicubic"), "bicubic")
    antialias = mode != "nearest"
    height, width = images.shape[-2:]
    resize_mode = cfg.get("resize_mode", "shortest")
    if resize_mode == "squash":
        out = F.interpolate(images, size=(target_h, target_w), mode=mode, antialias=antialias)
    else:
        fit = max if resize_mode == "shortest" else min  # shortest: fill then crop; longest: fit then pad
        scale = fit(target_h / height, target_w / width)
        new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
        if (new_h, new_w) != (height, width):
            images = F.interpolate(images, size=(new_h, new_w), mode=mode, antialias=antialias)
        out = _center_crop_or_pad(images, target_h, target_w, float(cfg.get("fill_color", 0)) / 255.0)
    out = out.clamp(0, 1)  # bicubic overshoots; PIL clips to the pixel range
    mean = torch.tensor(cfg["mean"], device=out.device, dtype=out.dtype).view(1, 3, 1, 1)
    std = torch.tensor(cfg["std"], device=out.device, dtype=out.dtype).view(1, 3, 1, 1)
    return (out - mean) / std


def _center_crop_or_pad(images: torch.Tensor, height: int, width: int, fill: float) -> torch.Tensor:
    h, w = images.shape[-2:]
    if h < height or w < width:
        pad_h, pad_w = max(0, height - h), max(0, width - w)
        images = F.pad(images, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2), value=fill)
        h, w = images.shape[-2:]
    top, left = int(round((h - height) / 2.0)), int(round((w - width) / 2.0))
    return images[..., top:top + height, left:left + width]


# -- references ----------------------------------------------------------------------------------

@torch.no_grad()
def _embed_files(clip, preprocess_cfg: dict, files: list[Path], device) -> torch.Tensor:
    # References come in any size: preprocess each to the model's input size, then embed in one batch.
    pixels = torch.cat([preprocess(read_image(p).unsqueeze(0).to(device), preprocess_cfg) for p in files])
    return F.normalize(clip.encode_image(pixels).float(), dim=-1)


def _cached_reference_embeddings(clip, preprocess_cfg, files, model, pretrained, device, cache_dir):
    from safetensors import SafetensorError
    from safetensors.torch import load_file, save_file

    if cache_dir is None:
        return _embed_files(clip, preprocess_cfg, files, device)
    stats = [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    key = hashlib.sha256(json.dumps([model, pretrained, str(_model_stamp(model, pretrained)), stats]).encode())
    path = Path(cache_dir) / f"clipref-{key.hexdigest()[:32]}.safetensors"
    if path.is_file():
        try:
            return load_file(str(path))["embeds"].to(device)
        except (SafetensorError, OSError, KeyError):
            pass  # damaged: recompute and rewrite
    embeds = _embed_files(clip, preprocess_cfg, files, device)
    with atomic_path(path) as tmp:
        save_file({"embeds": embeds.contiguous().cpu()}, str(tmp), metadata={"model": model})
    return embeds


def _model_stamp(model: str, pretrained: str | None):
    """Changes when local CLIP weights change (a hub/tag name is its own stamp)."""
    candidates = []
    if model.startswith("local-dir:"):
        candidates = sorted(Path(model[len("local-dir:"):]).glob("*"))
    elif pretrained and os.path.isfile(pretrained):
        candidates = [Path(pretrained)]
    return [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in candidates if p.is_file()]


# -- loading open_clip ---------------------------------------------------------------------------

def _load_open_clip(model: str, pretrained: str | None, device: torch.device):
    import open_clip

    if model.startswith("local-dir:"):
        folder = Path(model[len("local-dir:"):]).expanduser()
        if not (folder / "open_clip_config.json").is_file():
            raise UserError(f"scorer model '{model}': no open_clip_config.json in {folder}; "
                            f"point it at an open_clip model folder")
        if not any(p.suffix in _CHECKPOINT_SUFFIXES for p in folder.iterdir()):
            raise UserError(f"scorer model '{model}': no weights (.safetensors/.bin/.pth) in {folder}")
        pretrained = None
    elif model.startswith("hf-hub:"):
        pretrained = None
    else:
        name = model.replace("/", "-")
        if name not in open_clip.list_models():
            raise UserError(f"scorer model '{model}' is not an open_clip model; use a name from "
                            f"open_clip.list_models() (e.g. ViT-L-14), an hf-hub: or a local-dir: name")
        if not pretrained:
            raise UserError(f"scorer model '{model}' needs `pretrained:` (a tag such as "
                            f"{_tags_hint(open_clip, name)} or a checkpoint file); without it the model is random")
        if not os.path.isfile(os.path.expanduser(pretrained)):
            if pretrained.startswith((".", "/", "~")) or pretrained.endswith(_CHECKPOINT_SUFFIXES):
                raise UserError(f"scorer checkpoint '{pretrained}' not found; check the path")
            if pretrained not in open_clip.list_pretrained_tags_by_model(name):
                raise UserError(f"scorer pretrained tag '{pretrained}' is unknown for {model}; use one of "
                                f"{_tags_hint(open_clip, name)} or a checkpoint file")
        else:
            pretrained = os.path.expanduser(pretrained)
    try:
        clip = open_clip.create_model(model, pretrained=pretrained, device=device)
        tokenizer = open_clip.get_tokenizer(model)
    except (RuntimeError, OSError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0][:200]
        raise UserError(f"scorer model '{model}'{f' ({pretrained})' if pretrained else ''} cannot be loaded "
                        f"({first}); check the name, or download it while online") from None
    clip.eval()
    return clip, tokenizer


def _tags_hint(open_clip, name: str) -> str:
    tags = open_clip.list_pretrained_tags_by_model(name)
    return ", ".join(tags[:4]) if tags else "(none known: give a checkpoint file)"
