"""A config file made ready to use: read, validated, its paths resolved, its inputs checked.

Relative paths resolve against the config file's folder, so a project folder can be moved.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from zsearch.lora.recipe import refuse_repeated_loras
from zsearch.settings.schema import Config, validate_config
from zsearch.errors import UserError
from zsearch.util.atomic import check_can_create
from zsearch.util.images import reference_files
from zsearch.util.paths import native_path
from zsearch.util.yamlfile import read_yaml


def load_config(path: str | Path) -> Config:
    path = Path(path)
    return parse_config(read_yaml(path, "config", "configs/demo.yaml"), path)


def parse_config(data: Any, source: Path) -> Config:
    """Validate config data read from `source`, resolving its relative paths."""
    config = validate_config(data, source)
    base = source.resolve().parent
    config.source = source
    for lora in config.loras:
        lora.path = _resolve(base, lora.path)
    refuse_repeated_loras([lora.path for lora in config.loras], str(source))
    if config.model.startswith((".", "/", "~")) or _resolve(base, Path(config.model)).is_dir():
        config.model = str(_resolve(base, Path(config.model)))  # a local folder, not a hub id
    if config.scorer.model.startswith("local-dir:"):
        folder = _resolve(base, Path(config.scorer.model.removeprefix("local-dir:")))
        config.scorer.model = f"local-dir:{folder}"
    if config.scorer.pretrained and (base / config.scorer.pretrained).is_file():
        config.scorer.pretrained = str(base / config.scorer.pretrained)  # a local checkpoint
    config.references = _resolve(base, config.references)
    if config.identity is not None:
        config.identity.references = _resolve(base, config.identity.references)
        if config.identity.model.startswith((".", "/", "~")) or (base / config.identity.model).is_dir():
            config.identity.model = str(_resolve(base, Path(config.identity.model)))
    for judge in config.judges:  # local files and local-dir: folders, relative to the config
        if judge.model and judge.model.startswith("local-dir:"):
            judge.model = f"local-dir:{_resolve(base, Path(judge.model.removeprefix('local-dir:')))}"
        if judge.checkpoint and not judge.checkpoint.startswith("hf-hub:"):
            judge.checkpoint = str(_resolve(base, Path(judge.checkpoint)))
    config.start = [_resolve(base, p) for p in config.start]
    for key in ("output", "cache", "demo"):
        if getattr(config, key) is not None:
            setattr(config, key, _resolve(base, getattr(config, key)))
    if isinstance(config.prompts, list):
        config.prompt_list = _no_duplicates([p.strip() for p in config.prompts if p.strip()], f"{source}: prompts")
        if not config.prompt_list:
            raise UserError(f"{source}: prompts: the list is empty; give at least one prompt")
    else:
        config.prompts = _resolve(base, config.prompts)
    if isinstance(config.validation.prompts, list):
        config.validation_prompts = _no_duplicates([p.strip() for p in config.validation.prompts if p.strip()],
                                                   f"{source}: validation.prompts")
    elif config.validation.prompts is not None:
        config.validation.prompts = _resolve(base, config.validation.prompts)
    if not config.searched():
        raise UserError(f"{source}: no LoRA has a 'search:' block; add e.g. search: {{ratio: [0, 1.5]}} to one")
    return config


def check_inputs(config: Config) -> None:
    """Check files exist (after the demo assets are built, if any); read the prompts."""
    best = config.out_dir / "best.safetensors"
    for i, lora in enumerate(config.loras):
        if not lora.path.is_file() and not lora.path.is_dir():  # a folder: PEFT's save_pretrained
            raise UserError(f"{config.source}: loras[{i}].path: {lora.path} not found; check the path")
        if lora.path.is_file():
            _check_readable(lora.path, f"{config.source}: loras[{i}].path")
        if _same_file(lora.path, best):
            raise UserError(f"{config.source}: loras[{i}].path: {lora.path} is this config's own output, which "
                            f"the search rewrites; copy it elsewhere (e.g. into loras/) and point the path there")
    reference_files(config.references, f"{config.source}: references")
    for path in config.start:
        if not path.is_file():
            raise UserError(f"{config.source}: start: recipe {path} not found; check the path")
    if not config.prompt_list:
        config.prompt_list = read_prompts(config.prompts)
    if not config.validation_prompts:
        v = config.validation.prompts
        config.validation_prompts = read_prompts(v) if isinstance(v, Path) else list(config.prompt_list)


def check_setup(config: Config) -> None:
    """What a run needs beyond its files, checked before any study exists: the model, the
    judges' references and names, and output folders it can write."""
    from zsearch.engine.pipeline import check_local_folder, is_local
    if is_local(config.model):
        try:
            check_local_folder(config.model)
        except UserError as exc:
            raise UserError(f"{config.source}: model: {exc}") from None
    _check_references(config.references, f"{config.source}: references")
    if config.identity is not None:
        _check_references(config.identity.references, f"{config.source}: identity.references")
    _check_scorer_name(config)
    from zsearch.lora.read import load_loras
    load_loras([lora.path for lora in config.loras])  # read as the search will: refused before any study exists
    for key, folder in (("output", config.out_dir), ("cache", config.cache_dir)):
        check_writable_folder(folder, f"{config.source}: {key}")


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # missing, or a path the OS refuses (too long): check_setup names the output's
        return False


MIN_REFERENCE_SIDE = 32  # smaller images say nothing a scorer (CLIP sees 224 px) can use


def _check_references(folder: Path, where: str) -> None:
    from PIL import Image, UnidentifiedImageError
    files = reference_files(folder, where)
    for path in files:
        try:
            with Image.open(path) as image:
                width, height = image.size
                image.verify()
        except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
            raise UserError(f"{where}: {path} cannot be read as an image ({exc.__class__.__name__}); "
                            f"replace or remove it") from None
        if min(width, height) < MIN_REFERENCE_SIDE:
            raise UserError(f"{where}: {path} is {width}x{height} px, too small for the scorer; use "
                            f"images of at least {MIN_REFERENCE_SIDE} px a side (ideally 224 or more)")


def _check_scorer_name(config: Config) -> None:
    model, pretrained = config.scorer.model, config.scorer.pretrained
    if model.startswith(("local-dir:", "hf-hub:")):
        return
    import open_clip
    if model.replace("/", "-") not in open_clip.list_models():
        raise UserError(f"{config.source}: scorer.model: '{model}' is not an open_clip model; use a name "
                        f"from open_clip.list_models() (e.g. ViT-L-14), an hf-hub: or a local-dir: name")
    if pretrained and not Path(pretrained).is_file() and not pretrained.endswith((".pt", ".pth", ".bin", ".safetensors")) \
            and pretrained not in open_clip.list_pretrained_tags_by_model(model.replace("/", "-")):
        raise UserError(f"{config.source}: scorer.pretrained: '{pretrained}' is not a tag of {model} nor a "
                        f"checkpoint file; see open_clip.list_pretrained()")


def _check_readable(path: Path, where: str) -> None:
    try:
        with open(path, "rb") as handle:
            handle.read(8)
    except OSError as exc:
        raise UserError(f"{where}: cannot read {path} ({exc.strerror or exc.__class__.__name__})") from None


def check_writable_folder(folder: Path, where: str) -> None:
    """`folder` is, or can be made, a folder this process can write files into: tried for real,
    nothing is left behind (zsearch.util.atomic.check_can_create)."""
    check_can_create(folder, where, folder=True)


def read_prompts(path: Path) -> list[str]:
    """One prompt a line; blank lines and '#' comments skipped."""
    if path.is_dir():
        raise UserError(f"{path}: is a folder; point 'prompts:' at a text file with one prompt a line")
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()  # -sig: Notepad's byte-order mark is no prompt
    except FileNotFoundError:
        raise UserError(f"{path}: prompts file not found; check 'prompts:' in the config") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: the prompts file is not UTF-8 text; save it as UTF-8") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read the prompts file ({exc.strerror or exc.__class__.__name__})") from None
    prompts = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise UserError(f"{path}: no prompts in the file; write one prompt a line")
    return _no_duplicates(prompts, str(path))


def _resolve(base: Path, path: Path) -> Path:
    return Path(os.path.normpath(native_path(path, base)))


def _no_duplicates(prompts: list[str], where: str) -> list[str]:
    seen = set()
    for prompt in prompts:
        if prompt in seen:
            raise UserError(f"{where}: the prompt '{prompt}' appears twice; keep each prompt once")
        seen.add(prompt)
    return prompts
