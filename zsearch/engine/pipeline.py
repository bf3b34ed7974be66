"""Loading Z-Image-Turbo (or the tiny demo model) through diffusers' own `from_pretrained`."""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError

from zsearch.errors import UserError

DEFAULT_MODEL = "Tongyi-MAI/Z-Image-Turbo"
PIPELINE_CLASS = "ZImagePipeline"
HOW_TO_GET = (f"run `huggingface-cli download {DEFAULT_MODEL}` or point `model:` at a local diffusers "
              f"folder (the one holding model_index.json)")


def is_local(model: str) -> bool:
    """A local folder, or something the user meant as one (a path, not an `org/name` hub id)."""
    if Path(model).expanduser().exists():
        return True
    return model.startswith((".", "/", "~")) or model.count("/") != 1 or "\\" in model


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
    with _quiet_hub(), _as_user_error(model):
        pipe = ZImagePipeline.from_pretrained(source, **kwargs)
    if place:
        pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@contextmanager
def _as_user_error(model: str):
    """Turn diffusers' / the hub's "cannot find it" exceptions into one line that says what to do."""
    try:
        yield
    except (OSError, ValueError, SafetensorError) as exc:
        if is_local(model):
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else exc.__class__.__name__
            raise UserError(f"model folder '{model}' cannot be loaded ({first}); re-download it or fix the folder") \
                from None
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}
        where = "it is not in the local Hugging Face cache and HF_HUB_OFFLINE is set" if offline \
            else "it is neither in the local Hugging Face cache nor downloadable"
        raise UserError(f"model '{model}' is not a local folder, and as a hub id {where}; {HOW_TO_GET}") from None


@contextmanager
def _quiet_hub():
    """Loading logs "Couldn't connect to the Hub..." over several lines before failing, and draws
    progress bars for a few seconds' work: hush both, so a failure reads as one line."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    before = diffusers_logging.get_verbosity(), transformers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        diffusers_logging.set_verbosity(before[0])
        transformers_logging.set_verbosity(before[1])
        diffusers_logging.enable_progress_bar()
        transformers_logging.enable_progress_bar()
