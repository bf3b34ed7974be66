"""Writing the demo's assets safely: one builder at a time, folders and files renamed into place."""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch



@contextmanager
def one_thread():
    """Tiny models gain nothing from more threads, and on a busy machine lose a lot to them."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextmanager
def lock(path: Path):
    from filelock import FileLock  # an OS lock on every OS (fcntl is POSIX-only)

    with FileLock(str(path)):
        yield


def build_once(target: Path, build) -> None:
    """Build a folder in a temporary sibling, then rename it into place; skip if it exists."""
    if target.exists():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        build(tmp)
        _make_readable(tmp)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_atomic_file(target: Path, write) -> None:
    from zsearch.util.atomic import atomic_path

    with atomic_path(target) as tmp:
        write(tmp)
        _make_readable(tmp)


def _make_readable(path: Path) -> None:
    """Temporary files and folders are private (0600/0700); finished assets are ordinary ones."""
    paths = [path, *path.rglob("*")] if path.is_dir() else [path]
    for item in paths:
        item.chmod(0o755 if item.is_dir() else 0o644)
