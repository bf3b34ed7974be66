"""Write a merged LoRA: atomically, never over an input, with its provenance in the metadata."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterable

import torch
import yaml
from safetensors.torch import save_file

from .. import __version__
from ..atomic import atomic_path
from ..errors import UserError
from ..recipe import Recipe, recipe_to_dict


def check_output(path: str | os.PathLike, inputs: Iterable[str | os.PathLike] = (), force: bool = False) -> Path:
    """Refuse an output that would lose the user's data; call it before the work, and again at save."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise UserError(f"{path}: the output must be a .safetensors file; name it e.g. merged.safetensors")
    if path.is_dir():
        raise UserError(f"{path}: is a folder; give a file name such as {path / 'merged.safetensors'}")
    for source in inputs:
        if _same_file(path, Path(source)):
            raise UserError(f"{path}: is one of the input LoRAs; choose another output name (inputs are never "
                            f"overwritten, even with --force)")
    if path.exists() and not force:
        raise UserError(f"{path}: already exists; choose another name or pass --force to replace it")
    return path


def save_lora(state_dict: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str],
              force: bool = False, inputs: Iterable[str | os.PathLike] = ()) -> Path:
    """Write `state_dict` as safetensors at `path` through a temporary file and a rename."""
    path = check_output(path, inputs, force)
    with atomic_path(path) as tmp:
        save_file(state_dict, str(tmp), metadata={"format": "pt", **metadata})
    return path


def merge_metadata(recipe: Recipe, output: str | os.PathLike, **extra: object) -> dict[str, str]:
    """Provenance: zsearch version, each source's file name and sha256, the recipe as YAML.

    Recipe paths are written relative to the output's folder, so the recipe can be saved next to
    the output and replayed with `zsearch merge --recipe`.
    """
    sources = [{"file": Path(lw.path).name, "sha256": file_sha256(lw.path)} for lw in recipe.loras]
    recipe_text = yaml.safe_dump(recipe_to_dict(recipe, relative_to=Path(output).parent), sort_keys=False)
    metadata = {
        "zsearch.version": __version__,
        "zsearch.sources": json.dumps(sources),
        "zsearch.recipe": recipe_text,
    }
    metadata.update({f"zsearch.{k}": v if isinstance(v, str) else json.dumps(v) for k, v in extra.items()})
    return metadata


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _same_file(a: Path, b: Path) -> bool:
    """True when writing `a` would replace `b` (same path, or a link to the same file)."""
    if a.resolve() == b.resolve():
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False
