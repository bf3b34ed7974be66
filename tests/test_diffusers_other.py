"""A merged LoRA with modules outside the blocks (embedders, final layer), loaded by diffusers' own
ZImagePipeline.load_lora_weights + fuse_lora: every one of them changes exactly as computed."""

import pytest
import torch
from safetensors.torch import save_file

from zsearch.cli import main

import trainer_layouts as T

pytest.importorskip("peft")
diffusers = pytest.importorskip("diffusers")

pytestmark = pytest.mark.usefixtures("single_thread")

MODULES = ["layers.0.attention.to_q", "layers.7.feed_forward.w2", "context_refiner.1.attention.to_v", *T.OTHER_SHAPES]


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory):
    from zsearch.demo.pipeline import build_tiny_pipeline
    return build_tiny_pipeline(tmp_path_factory.mktemp("tiny") / "pipeline")


def fused_by_diffusers(pipeline_dir, lora_file):
    """The transformer's parameters before and after diffusers' own load_lora_weights + fuse_lora."""
    pipe = diffusers.ZImagePipeline.from_pretrained(pipeline_dir)
    before = {name: p.detach().clone() for name, p in pipe.transformer.named_parameters()}
    pipe.load_lora_weights(str(lora_file), adapter_name="merged")
    pipe.fuse_lora(lora_scale=1.0)
    after = {name.replace(".base_layer", ""): p.detach().clone() for name, p in pipe.transformer.named_parameters()
             if "lora_" not in name}
    return before, after


def test_diffusers_loads_the_modules_outside_the_blocks(tmp_path, pipeline_dir):
    comfy = {"all_x_embedder.2-1": "x_embedder", "all_final_layer.2-1.linear": "final_layer.linear"}
    tensors, deltas = T.aitk(MODULES, rank=3, names=comfy)  # ComfyUI's names in the input
    source = tmp_path / "in.safetensors"
    save_file(tensors, str(source))
    out = tmp_path / "merged.safetensors"
    assert main(["merge", str(source), "--ratio", "0.5", "--other", "2", "-o", str(out)]) == 0

    before, after = fused_by_diffusers(pipeline_dir, out)
    for path, delta in deltas.items():
        factor = 0.5 * (2.0 if path in T.OTHER_SHAPES else 1.0)
        change = after[f"{path}.weight"].double() - before[f"{path}.weight"].double()
        error = ((change - factor * delta).norm() / (factor * delta).norm()).item()
        assert error < 1e-5, (path, error)
    untouched = [n for n in before if n.removesuffix(".weight") not in deltas]
    assert all(torch.equal(after[n], before[n]) for n in untouched)


def test_as_lora_turns_a_lokr_into_a_lora_diffusers_loads(tmp_path, pipeline_dir, capsys):
    tensors, deltas = {}, {}
    for path in ("layers.3.attention.to_q", "layers.3.feed_forward.w1"):
        t, e = T.lokr(path, rank=2, alpha=3.0)
        tensors.update(t), deltas.update(e)
    source = tmp_path / "lokr.safetensors"
    save_file(tensors, str(source))
    out = tmp_path / "merged.safetensors"
    # kron(4x4 whole, rank-2 pair) has rank 8: at --rank 8 the SVD is exact up to float rounding
    assert main(["merge", str(source), "--ratio", "0.6", "--as-lora", "--rank", "8", "-o", str(out)]) == 0
    assert "2 LoKr/LoHa or mixed modules SVD'd to LoRA" in capsys.readouterr().out
    before, after = fused_by_diffusers(pipeline_dir, out)
    for path, delta in deltas.items():
        change = after[f"{path}.weight"].double() - before[f"{path}.weight"].double()
        assert ((change - 0.6 * delta).norm() / (0.6 * delta).norm()).item() < 1e-5, path
