"""Loading Z-Image-Turbo (or the tiny demo model) through diffusers' own `from_pretrained`."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from zsearch.engine.hub import as_user_error, how_to_get, is_local, quiet_hub
from zsearch.errors import UserError

DEFAULT_MODEL = "Tongyi-MAI/Z-Image-Turbo"
PIPELINE_CLASS = "ZImagePipeline"
HOW_TO_GET = how_to_get(DEFAULT_MODEL, "`model:`") + " (a diffusers folder, the one holding model_index.json)"


def check_local_folder(model: str) -> Path:
    """The folder of a local model, checked to hold a Z-Image diffusers pipeline."""
    folder = Path(model).expanduser()
    if not folder.is_dir():
        raise UserError(f"model folder '{model}' not found; {HOW_TO_GET}")
    index = folder / "model_index.json"
    if not index.is_file():
        raise UserError(f"'{model}' is not a diffusers pipeline folder (no model_index.json); {HOW_TO_GET}")
    try:
        kind = json.loads(index.read_text()).get("_class_name")
    except (OSError, ValueError):
        raise UserError(f"{index}: unreadable or not JSON; re-download the model") from None
    if kind != PIPELINE_CLASS:
        raise UserError(f"'{model}' holds a {kind}, not a Z-Image pipeline ({PIPELINE_CLASS}); "
                        f"point `model:` at Z-Image-Turbo")
    return folder


def load_pipeline(model: str, device: torch.device, dtype: torch.dtype, with_text_encoder: bool = False,
                  place: bool = True):
    """A ZImagePipeline on `device` in `dtype`; without its text encoder unless asked for.

    `place=False` leaves it on the CPU, for the caller to place (engine/memory.py: fp8, offload).

    `model` is a hub id (downloaded into / read from the Hugging Face cache by diffusers) or a
    local folder. Anything that cannot be found ends in a one-line UserError saying how to get it.
    """
    from diffusers import ZImagePipeline

    source = str(check_local_folder(model)) if is_local(model) else model
    kwargs = {"dtype": dtype}
    if not with_text_encoder:
        kwargs.update(text_encoder=None, tokenizer=None)
    with quiet_hub(), as_user_error(model, "model", HOW_TO_GET):
        pipe = ZImagePipeline.from_pretrained(source, **kwargs)
    if place:
        pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe
