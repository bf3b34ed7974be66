"""The image files zsearch reads as references: one list of suffixes for every reader."""

from __future__ import annotations

from pathlib import Path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def image_files(folder: Path) -> list[Path]:
    """The readable images directly in `folder`, sorted; [] when it is not a folder."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
