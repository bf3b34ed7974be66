"""Reference images as the judges see them: (3, H, W) float tensors in [0, 1]."""

from __future__ import annotations

from pathlib import Path

import torch

from zsearch.util.images import read_rgb, reference_files

__all__ = ["read_image", "reference_files"]


def read_image(path: Path) -> torch.Tensor:
    """(3, H, W) float in [0, 1]; a file PIL cannot read is a UserError naming it."""
    return torch.from_numpy(read_rgb(path)).permute(2, 0, 1).float() / 255.0
