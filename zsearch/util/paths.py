"""Paths as a user writes them, read the same on Windows, macOS and Linux."""

from __future__ import annotations

import os
from pathlib import Path


def native_path(path: str | os.PathLike, base: Path | None = None) -> Path:
    """`path` as this OS reads it: `~` expanded, a relative one joined to `base` (when given), and
    on macOS/Linux a backslash read as a folder separator (a config or recipe written on Windows,
    `loras\\style.safetensors`) unless a file or folder of that very name exists."""
    text = os.fspath(path)
    if os.sep == "/" and "\\" in text and not _joined(text, base).exists():
        text = text.replace("\\", "/")
    return _joined(text, base)


def _joined(text: str, base: Path | None) -> Path:
    path = Path(text).expanduser()
    return path if base is None or path.is_absolute() else base / path
