"""The demo config's extra judge: a random aesthetic head (the real MLP) for the demo's tiny CLIP."""

from __future__ import annotations

from pathlib import Path

import torch

from zsearch.judges.aesthetic import AestheticHead, save_head


def build_aesthetic_head(path: Path, embed_dim: int, seed: int = 12) -> Path:
    """A random aesthetic head `embed_dim` wide (the demo CLIP's embedding), as safetensors; kept if present."""
    path = Path(path)
    if path.is_file():
        return path
    torch.manual_seed(seed)
    return save_head(AestheticHead(embed_dim), path)
