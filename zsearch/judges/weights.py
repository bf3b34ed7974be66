"""Reading a judge's weights: a local file or `hf-hub:owner/repo/file`, tensors only.

Checkpoints are read with safetensors or `torch.load(weights_only=True)`, never as a full pickle:
a file that holds anything but tensors and plain containers is refused, and no code in it runs.
"""

from __future__ import annotations

from pathlib import Path

import torch

from zsearch.engine.hub import offline
from zsearch.errors import UserError

TENSOR_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
_WRAPPERS = ("state_dict", "model_state_dict", "model", "module")


def resolve_file(spec: str, what: str) -> Path:
    """A local checkpoint path, or `hf-hub:owner/repo/path/in/repo` fetched into the hub cache."""
    if spec.startswith("hf-hub:"):
        parts = spec[len("hf-hub:"):].split("/", 2)
        if len(parts) != 3 or not all(parts):
            raise UserError(f"{what} '{spec}': write hub files as hf-hub:owner/repo/file")
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
        try:
            return Path(hf_hub_download(f"{parts[0]}/{parts[1]}", parts[2]))
        except (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError) as exc:
            why = "not in the local hub cache and HF_HUB_OFFLINE is set" if offline() else exc.__class__.__name__
            raise UserError(f"{what} '{spec}' cannot be fetched ({why}); run `hf download "
                            f"{parts[0]}/{parts[1]} {parts[2]}` or give a local file") from None
    path = Path(spec).expanduser()
    if not path.is_file():
        raise UserError(f"{what} '{spec}' not found; give a checkpoint file or hf-hub:owner/repo/file")
    return path


def read_state_dict(path: Path, what: str) -> dict[str, torch.Tensor]:
    """{name: tensor} of a checkpoint, unwrapped from {'state_dict': ...} and 'module.' prefixes."""
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            state = load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise UserError(f"{what} '{path}' is not a readable safetensors file ({exc}); re-download it") from None
    else:
        import pickle
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            raise UserError(f"{what} '{path}' holds objects other than tensors, which zsearch does not "
                            f"unpickle; save its state_dict with safetensors and point at that") from None
        except (RuntimeError, OSError, EOFError, ValueError) as exc:
            first = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0][:160]
            raise UserError(f"{what} '{path}' cannot be read ({first}); re-download it") from None
    while isinstance(state, dict) and any(isinstance(state.get(k), dict) for k in _WRAPPERS):
        state = next(state[k] for k in _WRAPPERS if isinstance(state.get(k), dict))  # training checkpoints wrap it
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{what} '{path}' is not a state dict of tensors; give the model's weights file")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_exactly(module: torch.nn.Module, state: dict[str, torch.Tensor], what: str, path: Path) -> None:
    """load_state_dict(strict) with a one-line message naming what does not fit."""
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())[:240]
        raise UserError(f"{what} '{path}' does not fit the model ({detail}); check that the checkpoint "
                        f"and the model architecture belong together") from None


def build_open_clip(arch: str, what: str):
    """An open_clip model of architecture `arch` (a name or local-dir:), weights left to the caller."""
    import logging

    import open_clip

    if not arch.startswith("local-dir:") and arch not in open_clip.list_models():
        raise UserError(f"{what} model '{arch}' is not an open_clip architecture; use a name from "
                        f"open_clip.list_models() or a local-dir: folder with open_clip_config.json")
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # open_clip warns that no pretrained weights were loaded: on purpose
    try:
        return open_clip.create_model(arch, pretrained=None, load_weights=False)
    except (RuntimeError, OSError, ValueError, KeyError) as exc:
        raise UserError(f"{what} model '{arch}' cannot be built ({exc.__class__.__name__}: {str(exc)[:120]}); "
                        f"check the name or the folder's open_clip_config.json") from None
    finally:
        root.setLevel(level)
