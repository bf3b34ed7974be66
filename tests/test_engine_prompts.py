"""Pipeline loading, devices, and prompt embeddings cached so the text encoder is loaded once."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

from zsearch.engine import prompts as prompt_cache
from zsearch.engine.device import default_dtype, pick_device
from zsearch.engine.pipeline import load_pipeline
from zsearch.engine.prompts import encode_prompts
from zsearch.errors import UserError

pytestmark = pytest.mark.usefixtures("single_thread")
CPU = torch.device("cpu")


@pytest.fixture
def model_copy(demo_assets, tmp_path):
    """A private copy of the tiny pipeline (copy2 keeps modification times), free to damage."""
    target = tmp_path / "model"
    shutil.copytree(demo_assets.model_dir, target)
    return target


def damage_keeping_size_and_mtime(path):
    stat = path.stat()
    path.write_bytes(b"\0" * stat.st_size)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


class Loads:
    """Counts the text encoder's loads: the cache is meant to keep them at 0."""
    n = 0


@pytest.fixture
def loads(monkeypatch):
    counter = Loads()
    real = prompt_cache._encode_with_text_encoder

    def counted(*args, **kwargs):
        counter.n += 1
        return real(*args, **kwargs)
    monkeypatch.setattr(prompt_cache, "_encode_with_text_encoder", counted)
    return counter


def test_embeddings_equal_the_pipelines_own_and_the_cache_skips_the_text_encoder(model_copy, tmp_path, loads):
    from diffusers import ZImagePipeline

    prompts = ["a red fox", "a lighthouse at dusk", "a red fox"]
    before = loads.n
    first = encode_prompts(str(model_copy), prompts, tmp_path / "cache", CPU, torch.float32)
    assert loads.n == before + 1
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 2  # one entry per distinct prompt

    pipe = ZImagePipeline.from_pretrained(model_copy)
    # (a copy: encode_prompt rewrites the list it is given with the chat template)
    expected, _ = pipe.encode_prompt(list(prompts), device=CPU, do_classifier_free_guidance=False)
    for got, want in zip(first, expected):
        assert got.shape == want.shape and got.shape[1] == 16
        assert torch.equal(got, want)
    del pipe

    # Break the text encoder's weights (same size and time, so the model's identity is unchanged):
    # a second run must not need them at all.
    damage_keeping_size_and_mtime(model_copy / "text_encoder" / "model.safetensors")
    second = encode_prompts(str(model_copy), prompts[:2], tmp_path / "cache", CPU, torch.float32)
    assert loads.n == before + 1
    assert all(torch.equal(a, b) for a, b in zip(first, second))

    # ...whereas a new prompt does need them, and says clearly that the model cannot be loaded.
    with pytest.raises(UserError, match=r"model folder '.*model' cannot be loaded") as info:
        encode_prompts(str(model_copy), ["a new prompt"], tmp_path / "cache", CPU, torch.float32)
    assert "\n" not in str(info.value)


def test_the_cache_is_keyed_by_model_and_dtype(model_copy, tmp_path, loads):
    encode_prompts(str(model_copy), ["a cat"], tmp_path, CPU, torch.float32)
    before = loads.n
    encode_prompts(str(model_copy), ["a cat"], tmp_path, CPU, torch.bfloat16)  # other dtype: new entry
    assert loads.n == before + 1
    config = model_copy / "text_encoder" / "config.json"
    data = json.loads(config.read_text())
    data["rms_norm_eps"] = 1e-5  # a different text encoder
    config.write_text(json.dumps(data))
    encode_prompts(str(model_copy), ["a cat"], tmp_path, CPU, torch.float32)
    assert loads.n == before + 2
    assert len(list(tmp_path.glob("*.safetensors"))) == 3


def test_a_damaged_cache_entry_is_recomputed(model_copy, tmp_path):
    first = encode_prompts(str(model_copy), ["a cat"], tmp_path, CPU, torch.float32)
    (entry,) = tmp_path.glob("*.safetensors")
    entry.write_bytes(b"not safetensors")
    again = encode_prompts(str(model_copy), ["a cat"], tmp_path, CPU, torch.float32)
    assert torch.equal(first[0], again[0])


def test_pipeline_loads_without_the_text_encoder(demo_assets):
    pipe = load_pipeline(str(demo_assets.model_dir), CPU, torch.float32, with_text_encoder=False)
    assert pipe.text_encoder is None and pipe.tokenizer is None
    assert pipe.transformer.dtype == torch.float32 and len(pipe.transformer.layers) == 30
    with_encoder = load_pipeline(str(demo_assets.model_dir), CPU, torch.float32, with_text_encoder=True)
    assert with_encoder.text_encoder is not None


def test_a_hub_model_missing_offline_is_one_line_saying_how_to_get_it(capfd, monkeypatch, tmp_path):
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache("Tongyi-MAI/Z-Image-Turbo", "model_index.json"), str):
        pytest.skip("Z-Image-Turbo is in this machine's Hugging Face cache")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError) as info:
        load_pipeline("Tongyi-MAI/Z-Image-Turbo", CPU, torch.float32)
    message = str(info.value)
    assert "\n" not in message
    assert "HF_HUB_OFFLINE" in message
    assert "hf download Tongyi-MAI/Z-Image-Turbo" in message and "model:" in message
    assert capfd.readouterr().err == ""  # no multi-line "Couldn't connect to the Hub" log before it


@pytest.mark.parametrize("make, expected", [
    (lambda tmp: tmp / "nowhere", r"model folder '.*nowhere' not found; run `hf download"),
    (lambda tmp: tmp, r"is not a diffusers pipeline folder \(no model_index.json\)"),
])
def test_bad_local_model_folders(tmp_path, make, expected):
    with pytest.raises(UserError, match=expected):
        load_pipeline(str(make(tmp_path)), CPU, torch.float32)


def test_a_folder_of_another_pipeline_is_refused(tmp_path):
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    with pytest.raises(UserError, match="holds a FluxPipeline, not a Z-Image pipeline"):
        load_pipeline(str(tmp_path), CPU, torch.float32)


def test_damaged_transformer_weights_are_a_user_error(model_copy):
    (model_copy / "transformer" / "diffusion_pytorch_model.safetensors").write_bytes(b"garbage")
    with pytest.raises(UserError, match="cannot be loaded .*re-download it"):
        load_pipeline(str(model_copy), CPU, torch.float32)


def test_devices():
    assert pick_device("cpu") == CPU
    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert pick_device(None) == pick_device("auto")
    assert default_dtype(CPU) == torch.float32
    assert default_dtype(torch.device("cuda")) == torch.bfloat16
    with pytest.raises(UserError, match="'gpu0' is not a device name; use auto, cpu, cuda or cuda:N"):
        pick_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="CUDA is not available on this machine; use device: cpu or auto"):
            pick_device("cuda")
