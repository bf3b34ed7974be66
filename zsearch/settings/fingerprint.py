"""What a study measured, by content: a resume must measure the same thing.

File contents are hashed (sha256), so a renamed or moved file still resumes and a retrained
LoRA or swapped reference images do not. Hashes of big files are cached by size and mtime.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from zsearch.lora.read import lora_files
from zsearch.util.hashing import sha256_of
from zsearch.util.images import image_files

if TYPE_CHECKING:
    from zsearch.settings.schema import Config



class FileHashes:
    """sha256 of files, remembered by (path, size, mtime) in a small JSON file."""

    def __init__(self, path: Optional[Path] = None):
        self.path, self.changed = path, False
        self.known: dict[str, dict] = {}
        if path is not None:
            try:
                self.known = json.loads(path.read_text())
            except (OSError, ValueError):
                self.known = {}

    def of(self, file: Path) -> str:
        try:
            stat = file.stat()
        except OSError:
            return "missing"
        key = str(file.resolve())
        entry = self.known.get(key)
        if entry and entry.get("size") == stat.st_size and entry.get("mtime_ns") == stat.st_mtime_ns:
            return entry["sha256"]
        digest = sha256_of(file)
        self.known[key] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest}
        self.changed = True
        return digest

    def save(self) -> None:
        if self.path is None or not self.changed:
            return
        from zsearch.util.atomic import write_text_atomic
        try:
            write_text_atomic(self.path, json.dumps(self.known))
        except OSError:
            pass  # only a cache: the next run hashes again
        self.changed = False


def fingerprint(config: "Config", hashes: Optional[FileHashes] = None) -> dict[str, Any]:
    """Everything that changes what a trial's score means; a resume must match it."""
    hashes = hashes or FileHashes()
    return {
        "model": model_identity(config.model, hashes),
        "loras": [{"sha256": "+".join(hashes.of(f) for f in lora_files(lora.path)), "ratio": lora.ratio,
                   "search": lora.search.model_dump(mode="json") if lora.search else None}
                  for lora in config.loras],
        "references": sorted(hashes.of(p) for p in image_files(config.references)),
        "prompts": config.prompt_list,
        "seeds": config.seeds,
        "render": config.render.model_dump(exclude={"batch", "way", "compile", "memory"}),  # speed, not scores
        "scorer": _scorer_identity(config, hashes),
        "identity": None if config.identity is None else {
            "model": model_identity(config.identity.model, hashes), "weight": config.identity.weight,
            "references": sorted(hashes.of(p) for p in image_files(config.identity.references))},
        "objective": config.objective.model_dump(exclude_none=True),  # no `terms`: as before it existed
        **({"judges": [_judge_identity(j.model_dump(mode="json"), hashes) for j in config.judges]}
           if getattr(config, "judges", None) else {}),
        "bands": config.search.bands,
        "screen": config.search.screen,
    }


def model_identity(model: str, hashes: FileHashes) -> dict[str, Any]:
    """A local folder by the contents of its configs and weight indexes; a hub id by id and revision."""
    folder = Path(model).expanduser()
    if folder.is_dir():
        files = sorted(p for p in folder.rglob("*.json") if p.is_file() and ".cache" not in p.parts)
        return {"configs": {p.relative_to(folder).as_posix(): hashes.of(p) for p in files}}
    return {"hub": model, "revision": _hub_revision(model)}


def _hub_revision(repo_id: str) -> Optional[str]:
    """The commit of the cached snapshot of a hub model, or None when it is not cached yet."""
    try:
        from huggingface_hub import try_to_load_from_cache
        found = try_to_load_from_cache(repo_id, "model_index.json")
    except Exception:  # noqa: BLE001 - not a hub id, or no cache: nothing to pin
        return None
    if isinstance(found, str):
        return Path(found).parent.name  # .../snapshots/<commit>/model_index.json
    return None


def _scorer_identity(config: "Config", hashes: FileHashes) -> dict[str, Any]:
    scorer = config.scorer
    if scorer.model.startswith("local-dir:"):
        folder = Path(scorer.model.removeprefix("local-dir:"))
        model: Any = {"files": {p.name: hashes.of(p) for p in sorted(folder.glob("*")) if p.is_file()}}
    else:
        model = scorer.model
    pretrained: Any = scorer.pretrained
    if pretrained and os.path.isfile(pretrained):
        pretrained = {"sha256": hashes.of(Path(pretrained))}
    return {"model": model, "pretrained": pretrained, "style": scorer.style}


def _judge_identity(judge: dict, hashes: FileHashes) -> dict:
    """A judge's settings, its local model or checkpoint by content."""
    out = dict(judge)
    for key in ("model", "checkpoint"):
        value = judge.get(key)
        if value and Path(str(value)).expanduser().is_file():
            out[key] = {"sha256": hashes.of(Path(str(value)).expanduser())}
        elif value and Path(str(value)).expanduser().is_dir():
            out[key] = model_identity(str(value), hashes)
        elif value is not None:
            out[key] = str(value)
    return out


def same_measurement(recorded: dict, current: dict) -> list[str]:
    """The parts of `current` that differ from `recorded`, named for a message ([] when equal).

    A hub model's revision is compared only when both runs knew it (the first run may download it).
    """
    changed = []
    for key, value in current.items():
        old = recorded.get(key)
        if key == "model" and isinstance(old, dict) and isinstance(value, dict) and "hub" in value:
            if old.get("hub") != value["hub"] or None not in (old.get("revision"), value["revision"]) \
                    and old.get("revision") != value["revision"]:
                changed.append("model (another hub id or revision)")
        elif key == "loras" and isinstance(old, list) and len(old) == len(value):
            for i, (a, b) in enumerate(zip(old, value)):
                if a != b:
                    what = "content" if a.get("sha256") != b.get("sha256") else "settings"
                    changed.append(f"loras[{i}] {what}")
        elif old != value:
            changed.append({"model": "model (its configs)", "references": "reference images",
                            "identity": "identity model or references"}.get(key, key))
    return changed
