"""Hashes of files: whole contents (sha256), and a model folder's identity.

A model folder's identity is what its outputs depend on: its small text files by content, its
weights by size and modification time (hashing gigabytes at every start would cost minutes).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterable

CHUNK = 1 << 22  # 4 MiB reads: a LoRA of several GB is hashed in constant memory


def sha256_of(*files: Path) -> str:
    """sha256 of the files' contents, one after the other."""
    digest = hashlib.sha256()
    for file in files:
        with open(file, "rb") as handle:
            while block := handle.read(CHUNK):
                digest.update(block)
    return digest.hexdigest()


def folder_identity(files: Iterable[tuple[str, Path]], by_content=lambda path: path.suffix == ".json") -> str:
    """'local:<sha256>' over (label, file) pairs: files `by_content` says to hash, by their contents;
    the others (weights) by size and modification time."""
    parts = []
    for label, path in files:
        if by_content(path):
            parts.append(f"{label}:{sha256_of(path)}")
        elif path.is_file():
            stat = path.stat()
            parts.append(f"{label}:{stat.st_size}:{stat.st_mtime_ns}")
    return "local:" + hashlib.sha256("\n".join(parts).encode()).hexdigest()
