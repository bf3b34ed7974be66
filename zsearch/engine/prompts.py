"""Prompt embeddings, computed once with the text encoder and cached on disk.

The text encoder of Z-Image-Turbo (Qwen3-4B) takes ~8 GB; the search never needs it after the
prompts are encoded. Embeddings are stored per (model, prompt) so a second run, or a second
worker, never loads it at all.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from zsearch.util.atomic import atomic_path
from zsearch.engine.device import release_memory
from zsearch.util.hashing import folder_identity
from zsearch.engine.hub import as_user_error, is_local, quiet_hub
from zsearch.engine.pipeline import HOW_TO_GET, check_local_folder

MAX_SEQUENCE_LENGTH = 512  # ZImagePipeline's default
ENCODE_BATCH = 8


def encode_prompts(model: str, prompts: list[str], cache_dir: Path, device: torch.device,
                   dtype: torch.dtype) -> list[torch.Tensor]:
    """Embeddings `Tensor(L_i, D)` of each prompt, as ZImagePipeline.encode_prompt makes them, on `device`.

    Cached in `cache_dir` keyed by the model's identity, the dtype and the prompt; the text encoder
    is loaded only when a prompt is missing from the cache, and freed before returning.
    """
    cache_dir = Path(cache_dir)
    identity = model_identity(model)
    paths = [cache_dir / f"{_digest(identity, str(dtype), prompt)}.safetensors" for prompt in prompts]
    found = {i: _read_cached(path) for i, path in enumerate(paths)}
    missing = sorted({prompts[i] for i, embeds in found.items() if embeds is None})
    if missing:
        fresh = _encode_with_text_encoder(model, missing, device, dtype)
        identity = model_identity(model)  # a hub model may have just been downloaded: key by its commit
        for prompt, embeds in zip(missing, fresh):
            path = cache_dir / f"{_digest(identity, str(dtype), prompt)}.safetensors"
            with atomic_path(path) as tmp:
                save_file({"embeds": embeds.contiguous().cpu()}, str(tmp),
                          metadata={"model": identity, "prompt": prompt, "dtype": str(dtype)})
            found.update({i: embeds.cpu() for i, p in enumerate(prompts) if p == prompt})
    return [found[i].to(device=device, dtype=dtype) for i in range(len(prompts))]


def model_identity(model: str) -> str:
    """What the embeddings depend on: the text encoder's and tokenizer's files (not where they lie).

    Local folder: their configs' contents and the weights' sizes and modification times.
    Hub id: the id and the cached snapshot's commit.
    """
    if is_local(model):
        folder = check_local_folder(model)
        files = [(f"{sub}/{file.name}", file) for sub in ("text_encoder", "tokenizer")
                 for file in sorted((folder / sub).glob("*")) if file.is_file()]
        return folder_identity(files, by_content=lambda f: f.suffix == ".json" or f.name == "merges.txt")
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(model, "model_index.json")
    commit = Path(cached).parent.name if isinstance(cached, str) else "uncached"
    return f"hub:{model}@{commit}"


def _digest(*parts: str) -> str:
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:32]


def _read_cached(path: Path) -> torch.Tensor | None:
    if not path.is_file():
        return None
    try:
        return load_file(str(path))["embeds"]
    except (SafetensorError, OSError, KeyError):
        return None  # a damaged cache entry is recomputed and rewritten


def _encode_with_text_encoder(model: str, prompts: list[str], device, dtype) -> list[torch.Tensor]:
    """Load tokenizer + text encoder alone, run the pipeline's own encode_prompt, free them."""
    from diffusers import ZImagePipeline
    from transformers import AutoModel, AutoTokenizer

    source = str(check_local_folder(model)) if is_local(model) else model
    with quiet_hub(), as_user_error(model, "model", HOW_TO_GET):
        tokenizer = AutoTokenizer.from_pretrained(source, subfolder="tokenizer")
        text_encoder = AutoModel.from_pretrained(source, subfolder="text_encoder", dtype=dtype)
    text_encoder.to(device).eval()
    # The pipeline's encode_prompt needs only these two components: calling it (rather than a copy
    # of it) keeps the chat template and hidden_states[-2] exactly as diffusers renders them.
    encoder_only = ZImagePipeline(scheduler=None, vae=None, text_encoder=text_encoder, tokenizer=tokenizer,
                                  transformer=None)
    out: list[torch.Tensor] = []
    try:
        with torch.no_grad():
            for start in range(0, len(prompts), ENCODE_BATCH):
                chunk = list(prompts[start:start + ENCODE_BATCH])
                embeds, _ = encoder_only.encode_prompt(chunk, device=device, do_classifier_free_guidance=False,
                                                       max_sequence_length=MAX_SEQUENCE_LENGTH)
                out.extend(e.detach().to("cpu") for e in embeds)
    finally:
        del encoder_only, text_encoder, tokenizer
        release_memory()
    return out
