"""Tiny random judges of the real classes, for the tests and the demo (nothing is downloaded).

- an aesthetic head (the real MLP) for an embedding width of choice;
- an HPSv2-layout checkpoint (`{"state_dict": ...}`) of a tiny open_clip model;
- a CSD-layout checkpoint (`{"model_state_dict": {"module.backbone.*", "module.last_layer_style",
  ...}}`) of a tiny open_clip image tower.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from zsearch.util.atomic import atomic_path
from zsearch.judges.aesthetic import AestheticHead, save_head
from zsearch.judges.hps import save_checkpoint
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
    path = Path(path)
    if path.is_file():
        return path
    torch.manual_seed(seed)
    return save_head(AestheticHead(input_size), path)


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


def build_demo_judge(path: Path, embed_dim: int) -> Path:
    """The demo's extra judge: a random aesthetic head for the demo's tiny CLIP (its embedding width)."""
    return build_tiny_aesthetic(Path(path), embed_dim, seed=12)
