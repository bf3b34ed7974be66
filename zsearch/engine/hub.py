"""The Hugging Face hub as zsearch meets it: a model named by hub id or by local folder, and the
one-line messages when it cannot be had. Shared by the pipeline, the prompt cache and the judges."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

from safetensors import SafetensorError

from zsearch.errors import UserError


def is_local(model: str) -> bool:
    """A local folder, or something the user meant as one (a path, not an `org/name` hub id)."""
    if Path(model).expanduser().exists():
        return True
    return model.startswith((".", "/", "~")) or model.count("/") != 1 or "\\" in model


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}


def why_unavailable() -> str:
    """Why a hub id could not be loaded, as the end of a sentence."""
    return ("it is not in the local Hugging Face cache and HF_HUB_OFFLINE is set" if offline()
            else "it is neither in the local Hugging Face cache nor downloadable")


def how_to_get(repo: str, folder_key: str) -> str:
    return f"run `hf download {repo}` or point {folder_key} at a local folder"


def first_line(exc: BaseException, limit: int = 200) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else exc.__class__.__name__


@contextmanager
def as_user_error(model: str, what: str, how: str):
    """Turn diffusers' / transformers' / the hub's "cannot find it" exceptions into one line.
    `what` names the thing ("model", "DINOv2 model"), `how` says how to get it."""
    try:
        yield
    except (OSError, ValueError, SafetensorError) as exc:
        if is_local(model):
            raise UserError(f"{what} folder '{model}' cannot be loaded ({first_line(exc)}); "
                            f"re-download it or fix the folder") from None
        raise UserError(f"{what} '{model}' is not a local folder, and as a hub id {why_unavailable()}; {how}") \
            from None


@contextmanager
def quiet_hub():
    """Loading logs "Couldn't connect to the Hub..." over several lines before failing, and draws
    progress bars for a few seconds' work: hush both, so a failure reads as one line."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    before = diffusers_logging.get_verbosity(), transformers_logging.get_verbosity()
    bars = diffusers_logging.is_progress_bar_enabled(), transformers_logging.is_progress_bar_enabled()
    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        diffusers_logging.set_verbosity(before[0])
        transformers_logging.set_verbosity(before[1])
        if bars[0]:  # as they were: the command's edge may have silenced them (util/quiet.py)
            diffusers_logging.enable_progress_bar()
        if bars[1]:
            transformers_logging.enable_progress_bar()
