"""Write a merged LoRA: atomically, never over an input, with its provenance in the metadata."""

from __future__ import annotations

import json
import os
import shutil
import struct
import sys
from pathlib import Path
from typing import Callable, Iterable

import torch
import yaml
from safetensors.torch import save_file

from zsearch import __version__
from zsearch.util.atomic import atomic_path, check_can_create
from zsearch.util.hashing import sha256_of
from zsearch.errors import UserError
from zsearch.lora.read import lora_files
from zsearch.lora.recipe import Recipe, recipe_to_dict


def check_output(path: str | os.PathLike, inputs: Iterable[str | os.PathLike] = (), force: bool = False) -> Path:
    """Refuse an output that would lose the user's data; call it before the work, and again at save."""
    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise UserError(f"{path}: the output must be a .safetensors file; name it e.g. merged.safetensors")
    check_can_create(path)  # a special file system, a path through a file, a name too long, no permission
    if path.is_dir():
        raise UserError(f"{path}: is a folder; give a file name such as {path / 'merged.safetensors'}")
    read = [file for source in inputs for file in (Path(source), *lora_files(source))]  # a folder: its files
    for source in read:
        if _same_file(path, source):
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


SAFETENSORS_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64"}
HEADER_SLACK = 256  # room kept in the header for metadata known only at the end (e.g. the SVD error)


def write_safetensors_stream(path: str | os.PathLike, layout: list[tuple[str, torch.dtype, tuple[int, ...]]],
                             tensors: Iterable[tuple[str, torch.Tensor]],
                             metadata: Callable[[], dict[str, str]]) -> None:
    """Write a safetensors file whose tensors arrive one at a time, in `layout` order.

    The header (8-byte little-endian length, then JSON padded with spaces to a multiple of 8)
    depends only on names, dtypes and shapes, so it is sized first and each tensor is written as
    it comes. `metadata()` is called before (to size the header) and after (the final values);
    if the final header outgrows the room kept, the data are copied behind a larger one.
    """
    if sys.byteorder != "little":
        raise RuntimeError("safetensors data are little-endian; this writer supports little-endian hosts only")
    entries, offset = {}, 0
    for name, dtype, shape in layout:
        size = torch.tensor([], dtype=dtype).element_size() * _numel(shape)
        entries[name] = {"dtype": SAFETENSORS_DTYPES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    room = len(_header(entries, metadata())) + HEADER_SLACK
    room += -room % 8
    expected = iter(layout)
    with open(path, "wb") as f:
        f.seek(8 + room)
        for name, tensor in tensors:
            want = next(expected, None)
            if want is None or (name, tensor.dtype, tuple(tensor.shape)) != want:
                raise AssertionError(f"tensor {name} {tensor.dtype} {tuple(tensor.shape)} does not match the layout {want}")
            f.write(tensor.contiguous().reshape(-1).view(torch.uint8).numpy())
        if next(expected, None) is not None:
            raise AssertionError("fewer tensors than the layout announced")
        header = _header(entries, metadata())
        if len(header) <= room:
            f.seek(0)
            f.write(struct.pack("<Q", room) + header.ljust(room, b" "))
            return
    _rewrite_header(Path(path), header, 8 + room)


def _header(entries: dict, metadata: dict[str, str]) -> bytes:
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise TypeError("safetensors metadata keys and values must be strings")
    return json.dumps({"__metadata__": {"format": "pt", **metadata}, **entries}, separators=(",", ":")).encode()


def _rewrite_header(path: Path, header: bytes, data_start: int) -> None:
    """Put a header larger than the room kept in front of the data (a streamed copy)."""
    header = header.ljust(len(header) + (-len(header) % 8), b" ")
    bigger = path.with_name(path.name + ".header")
    try:
        with open(path, "rb") as src, open(bigger, "wb") as dst:
            dst.write(struct.pack("<Q", len(header)) + header)
            src.seek(data_start)
            shutil.copyfileobj(src, dst, 1 << 22)
        os.replace(bigger, path)
    finally:
        bigger.unlink(missing_ok=True)


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def merge_metadata(recipe: Recipe, output: str | os.PathLike, **extra: object) -> dict[str, str]:
    """Provenance: zsearch version, each source's file name and sha256, the recipe as YAML.

    The file is shared, so it names no folder of this machine: recipe paths are file names.
    Saved beside copies of its LoRAs (found by name, checked by sha256), the recipe replays with
    `zsearch merge --recipe`.
    """
    sources = [{"file": Path(lw.path).name, "sha256": file_sha256(lw.path)} for lw in recipe.loras]
    recipe_text = yaml.safe_dump(shareable_recipe(recipe), sort_keys=False)
    metadata = {
        "zsearch.version": __version__,
        "zsearch.sources": json.dumps(sources),
        "zsearch.lora.recipe": recipe_text,
    }
    metadata.update({f"zsearch.{k}": v if isinstance(v, str) else json.dumps(v) for k, v in extra.items()})
    return metadata


def shareable_recipe(recipe: Recipe) -> dict:
    """The recipe as plain data with each LoRA by file name only (no folder of this machine)."""
    data = recipe_to_dict(recipe)
    for entry in data["loras"]:
        entry["path"] = Path(entry["path"]).name
    return data


def shareable_name(value: str) -> str:
    """A model or checkpoint as it may travel: a local path (or `local-dir:` folder) by its last
    name; a hub id or a named download (`laion2b_s34b_b79k`, `hf-hub:...`) as it is."""
    prefix = "local-dir:" if value.startswith("local-dir:") else ""
    path = value.removeprefix(prefix)
    if prefix or os.path.isabs(path) or path.startswith(("~", ".")) or Path(path).expanduser().exists():
        return prefix + Path(path).expanduser().name
    return value


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of the files a LoRA is read from (a PEFT file's adapter_config.json too), in order."""
    return sha256_of(*lora_files(path))


def _same_file(a: Path, b: Path) -> bool:
    """True when writing `a` would replace `b` (same path, or a link to the same file)."""
    if a.resolve() == b.resolve():
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False
