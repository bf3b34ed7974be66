"""Tiny random judges of the real classes, for the tests (nothing is downloaded): an aesthetic
head, HPSv2 and CSD checkpoints in their authors' layouts, and a DINOv2 folder."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from zsearch.util.atomic import atomic_path
from zsearch.demo.aesthetic import build_aesthetic_head
from zsearch.judges.weights import build_open_clip

TINY_OPEN_CLIP = {
    "model_cfg": {
        "embed_dim": 24, "quick_gelu": True,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    },
    "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711],
                       "interpolation": "bicubic", "resize_mode": "shortest"},
}


def tiny_open_clip_folder(folder: Path, seed: int = 0) -> str:
    """A `local-dir:` open_clip folder holding only the architecture; returns its model name."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "open_clip_config.json").write_text(json.dumps(TINY_OPEN_CLIP, indent=2))
    return f"local-dir:{folder}"


def build_tiny_aesthetic(path: Path, input_size: int, seed: int = 0) -> Path:
    """A random aesthetic head (the real MLP, `input_size` wide) as safetensors; kept if present."""
    return build_aesthetic_head(path, input_size, seed)


def build_tiny_hps(folder: Path, seed: int = 0) -> tuple[str, Path]:
    """(model, checkpoint): a tiny open_clip architecture and random weights in HPSv2's layout."""
    model_name = tiny_open_clip_folder(Path(folder) / "arch", seed)
    torch.manual_seed(seed + 1)
    model = build_open_clip(model_name, "tiny HPSv2")
    return model_name, save_checkpoint(model, Path(folder) / "hps.pt")


def build_tiny_csd(folder: Path, seed: int = 0, safetensors: bool = False) -> tuple[str, Path]:
    """(model, checkpoint): a tiny open_clip image tower and random CSD heads in CSD's layout."""
    model_name = tiny_open_clip_folder(Path(folder) / "arch", seed)
    torch.manual_seed(seed + 2)
    visual = build_open_clip(model_name, "tiny CSD").visual
    width, dim = visual.proj.shape
    visual.proj = None
    state = {f"backbone.{k}": v.contiguous() for k, v in visual.state_dict().items()}
    state["last_layer_style"] = torch.randn(width, dim) * width ** -0.5
    state["last_layer_content"] = torch.randn(width, dim) * width ** -0.5
    if safetensors:
        from safetensors.torch import save_file
        path = Path(folder) / "csd.safetensors"
        with atomic_path(path) as tmp:
            save_file(state, str(tmp))
        return model_name, path
    path = Path(folder) / "csd.pth"
    with atomic_path(path) as tmp:  # as CSD's training script saves it (DataParallel prefix)
        torch.save({"model_state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": torch.tensor(1)}, tmp)
    return model_name, path


def save_checkpoint(model, path: Path) -> Path:
    """Write an open_clip model in HPSv2's layout ({"state_dict": ...}, torch.save) — the tiny test model."""
    with atomic_path(path) as tmp:
        torch.save({"state_dict": {k: v.contiguous() for k, v in model.state_dict().items()}}, tmp)
    return Path(path)


TINY_CONFIG = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                   image_size=32, patch_size=8)
TINY_PROCESSOR = dict(size={"shortest_edge": 36}, crop_size={"height": 32, "width": 32},
                      image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])


def build_tiny_dino(out_dir: Path, seed: int = 0) -> Path:
    """Save a tiny random DINOv2 (the real `Dinov2Model` class) and its image processor to `out_dir`.

    Skipped when `out_dir` already holds one; built in a temporary folder and renamed into place, so
    a crash never leaves half a model. Nothing is downloaded.
    """
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    out_dir = Path(out_dir)
    if (out_dir / "config.json").is_file():
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        torch.manual_seed(seed)
        Dinov2Model(Dinov2Config(**TINY_CONFIG)).save_pretrained(tmp, safe_serialization=True)
        BitImageProcessor(**TINY_PROCESSOR).save_pretrained(tmp)
        try:
            os.rename(tmp, out_dir)
        except OSError:  # another process finished first
            if not (out_dir / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir
