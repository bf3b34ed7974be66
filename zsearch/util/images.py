"""The image files zsearch reads as references: one list of suffixes, one lister, one reader."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from zsearch.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def image_files(folder: Path) -> list[Path]:
    """The readable images directly in `folder`, sorted; [] when it is not a folder."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def reference_files(folder: Path, where: str = "references") -> list[Path]:
    """The images of a reference folder, or a one-line UserError naming `where` and the fix."""
    if not folder.is_dir():
        found = "is a file" if folder.exists() else "not found"
        raise UserError(f"{where}: {folder} is not a folder of images ({found}); point `references:` at one")
    files = image_files(folder)
    if not files:
        raise UserError(f"{where}: no .png/.jpg/.webp images in {folder}; add some reference images")
    return files


def read_rgb(path: Path) -> np.ndarray:
    """(H, W, 3) uint8; a file PIL cannot read is a UserError naming it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise UserError(f"reference image '{path}' cannot be read ({exc.__class__.__name__}); "
                        f"replace or remove it") from None
