"""The image files zsearch reads as references: one list of suffixes, one lister, one reader."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from zsearch.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def image_files(folder: Path) -> list[Path]:
    """The images in `folder`, sorted; when it holds none, those of its subfolders (a set kept as
    refs/artist1/, refs/artist2/): a subfolder beside images (rejects/, old/) is not read. [] when
    it is not a folder. Hidden names are skipped: macOS leaves `._photo.png` companions on shared
    drives that are no images, and `.thumbnails/` holds copies."""
    if not folder.is_dir():
        return []
    found: list[Path] = []
    for root, folders, files in os.walk(folder):
        folders[:] = [name for name in folders if not name.startswith(".")]
        found += [Path(root) / name for name in files
                  if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES]
        if found and Path(root) == folder:
            break  # images at the top: the folder is the set
    return sorted(found)


def reference_files(folder: Path, where: str = "references") -> list[Path]:
    """The images of a reference folder, or a one-line UserError naming `where` and the fix."""
    if not folder.is_dir():
        found = "is a file" if folder.exists() else "not found"
        raise UserError(f"{where}: {folder} is not a folder of images ({found}); point `references:` at one")
    files = image_files(folder)
    if not files:
        raise UserError(f"{where}: no .png/.jpg/.webp images in {folder} or its subfolders; add some reference images")
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
