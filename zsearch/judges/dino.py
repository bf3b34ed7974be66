"""The identity scorer: DINOv2 image similarity of renders to a subject's reference images.

CLIP scores a look; DINOv2's CLS embedding is far more sensitive to *which* person or object is
shown, so it suits character/subject references. The score of a render is the cosine between
its normalised CLS embedding and the normalised centroid of the references' embeddings.

The model is loaded with transformers' `AutoModel` (a hub id or a local folder); the reference
embeddings are computed once and cached on disk, keyed by the model's identity, the
preprocessing and every reference file's sha256. Renders are preprocessed as tensors on the
device (resize the shorter side, centre crop, normalise with the processor's mean and std), the
same steps as the model's own image processor, without a round trip through PIL.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from zsearch.util.atomic import atomic_path
from zsearch.util.hashing import folder_identity, sha256_of
from zsearch.judges.images import read_image, reference_files
from zsearch.errors import UserError
from zsearch.engine.device import pick_device
from zsearch.engine.hub import as_user_error, how_to_get, is_local, quiet_hub

HOW_TO_GET = how_to_get("facebook/dinov2-small", "the identity scorer's model") + \
    " holding config.json, the weights and preprocessor_config.json"
ENCODE_BATCH = 16
WEIGHT_SUFFIXES = (".safetensors", ".bin")


@dataclass(frozen=True)
class Preprocess:
    """The image processor's steps, as numbers: what `preprocess` does to a [0,1] tensor."""

    shortest_edge: Optional[int]  # resize the shorter side to this (aspect kept) ...
    resize_to: Optional[tuple[int, int]]  # ... or to exactly (height, width); neither: no resize
    crop: Optional[tuple[int, int]]  # centre crop (height, width); None: no crop
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def from_processor(cls, processor) -> "Preprocess":
        size = _as_dict(getattr(processor, "size", None))
        crop = _as_dict(getattr(processor, "crop_size", None))
        shortest = resize_to = None
        if getattr(processor, "do_resize", True) and size:
            if size.get("shortest_edge"):
                shortest = int(size["shortest_edge"])
            elif size.get("height") and size.get("width"):
                resize_to = (int(size["height"]), int(size["width"]))
        crop_hw = None
        if getattr(processor, "do_center_crop", False) and crop.get("height") and crop.get("width"):
            crop_hw = (int(crop["height"]), int(crop["width"]))
        if getattr(processor, "do_normalize", True):
            mean, std = tuple(map(float, processor.image_mean)), tuple(map(float, processor.image_std))
        else:
            mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
        return cls(shortest, resize_to, crop_hw, mean, std)

    def describe(self) -> str:
        return json.dumps([self.shortest_edge, self.resize_to, self.crop, self.mean, self.std])


def _as_dict(size) -> dict:
    """A processor's size: a dict, or transformers' SizeDict (attributes, some None)."""
    if size is None:
        return {}
    if isinstance(size, dict):
        return {k: v for k, v in size.items() if v is not None}
    return {k: getattr(size, k) for k in ("height", "width", "shortest_edge") if getattr(size, k, None)}


def preprocess(images: torch.Tensor, steps: Preprocess) -> torch.Tensor:
    """(N,3,H,W) in [0,1], any device/dtype -> the model's pixel values, float32 on the same device."""
    x = images.float()
    if steps.shortest_edge is not None or steps.resize_to is not None:
        height, width = x.shape[-2:]
        if steps.resize_to is not None:
            size = steps.resize_to
        else:
            short, long = (height, width) if height <= width else (width, height)
            new_short, new_long = steps.shortest_edge, int(steps.shortest_edge * long / short)
            size = (new_short, new_long) if height <= width else (new_long, new_short)
        if tuple(size) != (height, width):
            # Antialiased bicubic, as the processor (PIL or torchvision) does; clamp like its uint8 output.
            x = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    if steps.crop is not None:
        x = _centre_crop(x, *steps.crop)
    mean = torch.tensor(steps.mean, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(steps.std, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def _centre_crop(x: torch.Tensor, crop_h: int, crop_w: int) -> torch.Tensor:
    height, width = x.shape[-2:]
    if crop_h > height or crop_w > width:  # too small: pad with black around it, as the processor does
        pad_w, pad_h = max(crop_w - width, 0), max(crop_h - height, 0)
        x = F.pad(x, (pad_w // 2, (pad_w + 1) // 2, pad_h // 2, (pad_h + 1) // 2))
        height, width = x.shape[-2:]
    top, left = int((height - crop_h) / 2.0), int((width - crop_w) / 2.0)
    return x[..., top:top + crop_h, left:left + crop_w]


class DinoScorer:
    """`score(images)["identity"]`: cosine of each render to the references' centroid, in [-1, 1]."""

    def __init__(self, model, steps: Preprocess, reference_embeddings: torch.Tensor, device: torch.device,
                 name: str, encoded_references: int):
        self.model = model
        self.steps = steps
        self.device = device
        self.name = name
        self.reference_embeddings = reference_embeddings.to(device)  # (M, D), each normalised
        self.centroid = F.normalize(self.reference_embeddings.mean(dim=0), dim=0)
        self.encoded_references = encoded_references  # 0 when they came from the disk cache

    @classmethod
    def load(cls, model: str, references: Path, device=None, cache_dir: Optional[Path] = None,
             dtype: torch.dtype = torch.float32) -> "DinoScorer":
        """Load DINOv2 and the references' embeddings (from `cache_dir` when already computed)."""
        device = device if isinstance(device, torch.device) else pick_device(device)
        files = reference_files(Path(references))
        net, processor, identity = _load_model(str(model))
        net = net.to(device=device, dtype=dtype).eval()
        steps = Preprocess.from_processor(processor)
        key = _cache_key(identity, str(dtype), steps, files)
        cached = _read_cache(Path(cache_dir) / f"dino-{key}.safetensors", len(files)) if cache_dir else None
        encoded = 0
        if cached is None:
            cached = _encode(net, steps, [read_image(f) for f in files], device).cpu()
            encoded = len(files)
            if cache_dir is not None:
                with atomic_path(Path(cache_dir) / f"dino-{key}.safetensors") as tmp:
                    save_file({"embeddings": cached.contiguous()}, str(tmp),
                              metadata={"model": identity, "files": json.dumps([f.name for f in files])})
        return cls(net, steps, cached, device, str(model), encoded)

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """(N,3,H,W) in [0,1] -> (N, D) normalised CLS embeddings."""
        return _encode(self.model, self.steps, list(images), self.device)

    def score(self, images: torch.Tensor, prompts: Optional[Sequence[str]] = None) -> dict[str, torch.Tensor]:
        """{"identity": (N,)} cosines in [-1, 1]; `prompts` is accepted (and ignored) to match the CLIP scorer."""
        return {"identity": (self.embed(images) @ self.centroid).float().clamp(-1, 1)}


@torch.no_grad()
def _encode(net, steps: Preprocess, images: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """Normalised CLS embeddings; images may differ in size (references), so each is preprocessed alone."""
    dtype = next(net.parameters()).dtype
    out = []
    for at in range(0, len(images), ENCODE_BATCH):
        chunk = images[at:at + ENCODE_BATCH]
        pixels = torch.cat([preprocess(img.unsqueeze(0).to(device), steps) for img in chunk])
        cls_token = net(pixel_values=pixels.to(dtype)).pooler_output  # the layer-normed CLS token
        out.append(F.normalize(cls_token.float(), dim=-1))
    return torch.cat(out)


# ---------------------------------------------------------------- references

def _cache_key(identity: str, dtype: str, steps: Preprocess, files: list[Path]) -> str:
    parts = [identity, dtype, steps.describe(), *(f"{f.name}:{sha256_of(f)}" for f in files)]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:24]


def _read_cache(path: Path, n_files: int) -> Optional[torch.Tensor]:
    """The cached embeddings, or None when absent or damaged (then they are recomputed)."""
    if not path.is_file():
        return None
    try:
        embeddings = load_file(str(path))["embeddings"]
    except (SafetensorError, OSError, KeyError):
        return None
    return embeddings if embeddings.ndim == 2 and embeddings.shape[0] == n_files else None


# ---------------------------------------------------------------- the model

def _check_folder(model: str) -> Path:
    folder = Path(model).expanduser()
    if not folder.is_dir():
        raise UserError(f"DINOv2 model folder '{model}' not found; {HOW_TO_GET}")
    if not any(folder.iterdir()):
        raise UserError(f"DINOv2 model folder '{model}' is empty; {HOW_TO_GET}")
    for needed in ("config.json", "preprocessor_config.json"):
        if not (folder / needed).is_file():
            raise UserError(f"DINOv2 model folder '{model}' has no {needed}; {HOW_TO_GET}")
    return folder


def _load_model(model: str):
    """(model, image processor, identity string) for a hub id or a local folder."""
    from transformers import AutoConfig, AutoImageProcessor, AutoModel

    local = is_local(model)
    source = str(_check_folder(model)) if local else model
    with quiet_hub(), as_user_error(model, "DINOv2 model", HOW_TO_GET):
        config = AutoConfig.from_pretrained(source)
        if not str(getattr(config, "model_type", "")).startswith("dinov2"):
            raise UserError(f"'{model}' is a {config.model_type} model, not DINOv2; use e.g. facebook/dinov2-small")
        net = AutoModel.from_pretrained(source, dtype=torch.float32)
        processor = AutoImageProcessor.from_pretrained(source)
    return net, processor, _identity(model, source, local)


def _identity(model: str, source: str, local: bool) -> str:
    """What the embeddings depend on: the model's files, not where they lie."""
    if not local:  # the hub's cached snapshot of it
        from huggingface_hub import try_to_load_from_cache
        cached = try_to_load_from_cache(model, "config.json")
        if not isinstance(cached, str):
            return f"hub:{model}@unknown"
        source = str(Path(cached).parent)
    files = [(p.name, p) for p in sorted(Path(source).iterdir()) if p.suffix == ".json" or p.suffix in WEIGHT_SUFFIXES]
    return folder_identity(files)
