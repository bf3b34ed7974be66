"""The merged file, loaded by diffusers' own ZImagePipeline.load_lora_weights + fuse_lora on a
tiny Z-Image pipeline, changes the transformer weights exactly as the hand computation says."""

import pytest
import torch

from zsearch.lora.blocks import all_modules
from zsearch.cli import main
from zsearch.lora.synth import make_random_lora, save_in_format

pytest.importorskip("peft")  # diffusers needs the PEFT backend for load_lora_weights
diffusers = pytest.importorskip("diffusers")

ALL = [m.path for m in all_modules()]
# The first LoRA leaves out the late layers, so ranks differ between modules (a rank_pattern for PEFT).
FIRST = [m.path for m in all_modules() if not (m.block == "layers" and m.index >= 20)]


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory):
    from zsearch.demo.pipeline import build_tiny_pipeline
    return build_tiny_pipeline(tmp_path_factory.mktemp("tiny") / "pipeline")


@pytest.fixture(scope="module")
def sources(tmp_path_factory, pipeline_dir):
    from zsearch.demo.spec import TRANSFORMER_CONFIG
    dim = TRANSFORMER_CONFIG["dim"]
    folder = tmp_path_factory.mktemp("loras")
    a = make_random_lora(dim, 4, FIRST, seed=1, alpha=2.0)
    b = make_random_lora(dim, 3, ALL, seed=2, alpha=6.0)
    return a, b, save_in_format(a, folder / "a.safetensors", "kohya-fused"), \
        save_in_format(b, folder / "b.safetensors", "diffusers")


def fused_weights(pipeline_dir, lora_file):
    """Transformer weights before and after diffusers loads and fuses `lora_file`."""
    pipe = diffusers.ZImagePipeline.from_pretrained(pipeline_dir)  # saved in float32
    before = {name: p.detach().clone() for name, p in pipe.transformer.named_parameters()}
    pipe.load_lora_weights(str(lora_file), adapter_name="merged")
    pipe.fuse_lora(lora_scale=1.0)
    after = {name.replace(".base_layer", ""): p.detach().clone() for name, p in pipe.transformer.named_parameters()
             if "lora_" not in name}
    return before, after


def check(before, after, expected, tolerance):
    assert after.keys() == before.keys()
    for name in before:
        module = name.removesuffix(".weight")
        if module in expected:
            change = after[name].double() - before[name].double()
            error = ((change - expected[module]).norm() / expected[module].norm()).item()
            assert error < tolerance, (module, error)
        else:  # everything else (biases, norms, modules with scale 0) untouched, bit for bit
            assert torch.equal(after[name], before[name]), name


def source_delta(lora, path):
    m = lora.modules[path]
    return m.scale * (m.up.double() @ m.down.double())


def test_exact_merge_fused_by_diffusers_matches_hand_computation(tmp_path, pipeline_dir, sources):
    a, b, pa, pb = sources
    out = tmp_path / "merged.safetensors"
    assert main(["merge", str(pa), str(pb), "--ratio", "0.8", "--ratio", "-0.5", "--attn", "0.7", "--w2", "1.5",
                 "--layers", "0-9=2,10-14=0,context_refiner=0.5", "-o", str(out)]) == 0

    def weight(path, ratio, lora):
        m = next(x for x in all_modules() if x.path == path)
        w = ratio * (0.7 if m.component in ("to_q", "to_k", "to_v", "to_out") else 1.5 if m.component == "w2" else 1)
        if m.block == "layers":
            w *= 2 if m.index <= 9 else 0 if m.index <= 14 else 1
        elif m.block == "context_refiner":
            w *= 0.5
        return w * source_delta(lora, path) if path in lora.modules else 0

    expected = {p: weight(p, 0.8, a) + weight(p, -0.5, b) for p in ALL
                if not p.startswith(tuple(f"layers.{i}." for i in range(10, 15)))}
    before, after = fused_weights(pipeline_dir, out)
    check(before, after, expected, tolerance=1e-5)


def test_rank_merge_fused_by_diffusers_matches_the_written_factors(tmp_path, pipeline_dir, sources):
    from safetensors.torch import load_file
    _, _, pa, pb = sources
    out = tmp_path / "rank2.safetensors"
    assert main(["merge", str(pa), str(pb), "--ratio", "1", "--rank", "2", "-o", str(out)]) == 0
    state = load_file(str(out))
    expected = {p: state[f"diffusion_model.{p}.lora_B.weight"].double() @ state[f"diffusion_model.{p}.lora_A.weight"].double()
                for p in ALL}
    assert {state[f"diffusion_model.{p}.lora_A.weight"].shape[0] for p in ALL} == {2}
    before, after = fused_weights(pipeline_dir, out)
    check(before, after, expected, tolerance=1e-5)
