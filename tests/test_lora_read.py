"""Reading every LoRA format into the canonical form, and every rejection."""

import json

import pytest
import torch
from safetensors.torch import save_file

from zsearch.lora.blocks import all_modules, expected_shape
from zsearch.errors import UserError
from zsearch.lora.read import load_lora, load_loras
from zsearch.lora.synth import FORMATS, make_random_lora, save_in_format

DIM = 32


pytestmark = pytest.mark.usefixtures("single_thread")  # tiny tensors gain nothing from threads


def delta64(module):
    """Scale * B @ A in float64, computed here rather than by LoraModule.delta."""
    return module.scale * (module.up.double() @ module.down.double())


def assert_same_deltas(read, source):
    assert set(read.modules) == set(source.modules)
    for path, module in source.modules.items():
        expected = delta64(module)
        got = delta64(read.modules[path])
        assert torch.allclose(got, expected, rtol=0, atol=1e-6 * expected.abs().max().item()), path


def rejection(tmp_path, tensors, name="bad.safetensors", metadata=None):
    path = tmp_path / name
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)
    with pytest.raises(UserError) as info:
        load_lora(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    return message


def aitk(path, down, up):
    return {f"diffusion_model.{path}.lora_A.weight": down, f"diffusion_model.{path}.lora_B.weight": up}


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_reads_back_the_same_deltas(tmp_path, fmt):
    source = make_random_lora(DIM, 4, None, seed=3, alpha=2.0)  # scale 0.5 exercises alpha handling
    lora = load_lora(save_in_format(source, tmp_path / f"{fmt}.safetensors", fmt))
    assert lora.format == fmt
    assert lora.dim == DIM
    assert_same_deltas(lora, source)
    assert any(p.startswith("noise_refiner.") for p in lora.modules)
    assert any(p.startswith("context_refiner.") for p in lora.modules)


def test_kohya_alpha_becomes_scale_alpha_over_rank(tmp_path):
    source = make_random_lora(DIM, 8, ["layers.0.attention.to_q"], seed=1, alpha=4.0)
    path = save_in_format(source, tmp_path / "k.safetensors", "kohya")
    module = load_lora(path).modules["layers.0.attention.to_q"]
    assert module.scale == pytest.approx(0.5)
    assert torch.equal(module.down, source.modules["layers.0.attention.to_q"].down)


def test_fused_qkv_shares_down_and_splits_up_in_q_k_v_order(tmp_path):
    d, r = DIM, 2
    down = torch.randn(r, d)
    up = torch.randn(3 * d, r)
    tensors = {"lora_unet_layers_3_attention_qkv.lora_down.weight": down,
               "lora_unet_layers_3_attention_qkv.lora_up.weight": up,
               "lora_unet_layers_3_attention_qkv.alpha": torch.tensor(1.0),
               "lora_unet_layers_3_attention_out.lora_down.weight": torch.randn(r, d),
               "lora_unet_layers_3_attention_out.lora_up.weight": torch.randn(d, r)}
    path = tmp_path / "fused.safetensors"
    save_file(tensors, str(path))
    lora = load_lora(path)
    assert lora.format == "kohya-fused"
    for i, name in enumerate(("to_q", "to_k", "to_v")):
        module = lora.modules[f"layers.3.attention.{name}"]
        assert torch.equal(module.down, down)
        assert torch.equal(module.up, up[i * d:(i + 1) * d])
        assert module.scale == 0.5
    assert "layers.3.attention.to_out.0" in lora.modules


@pytest.mark.parametrize("component", ["adaLN", "to_q", "w1", "w2", "w3"])
def test_width_inferred_from_a_single_component(tmp_path, component):
    dim = 48
    module = next(m for m in all_modules(1) if m.component == component and m.block == "layers")
    source = make_random_lora(dim, 2, [module], seed=0)
    lora = load_lora(save_in_format(source, tmp_path / "one.safetensors", "ai-toolkit"))
    assert lora.dim == dim and list(lora.modules) == [module.path]


def test_subset_keeps_model_order_and_dtype(tmp_path):
    paths = ["layers.2.feed_forward.w2", "noise_refiner.1.adaLN_modulation.0", "layers.0.attention.to_k"]
    source = make_random_lora(DIM, 3, paths, seed=2, dtype=torch.bfloat16)
    lora = load_lora(save_in_format(source, tmp_path / "s.safetensors", "diffusers"))
    assert list(lora.modules) == ["noise_refiner.1.adaLN_modulation.0", "layers.0.attention.to_k",
                                  "layers.2.feed_forward.w2"]
    assert all(m.down.dtype == torch.bfloat16 for m in lora.modules.values())


def test_diffsynth_without_default_and_peft_prefix(tmp_path):
    d = torch.randn(2, DIM)
    u = torch.randn(DIM, 2)
    for prefix in ("", "base_model.model."):
        path = tmp_path / f"x{len(prefix)}" / "x.safetensors"
        path.parent.mkdir()
        save_file({f"{prefix}layers.1.attention.to_v.lora_A.weight": d,
                   f"{prefix}layers.1.attention.to_v.lora_B.weight": u}, str(path))
        if prefix:  # PEFT's keys: the scale is in the adapter_config.json beside the file
            (path.parent / "adapter_config.json").write_text(json.dumps({"r": 2, "lora_alpha": 2}))
        assert torch.equal(load_lora(path).modules["layers.1.attention.to_v"].up, u)


def test_peft_adapter_metadata_alpha_is_honoured(tmp_path):
    source = make_random_lora(DIM, 4, ["layers.0.attention.to_q", "layers.1.attention.to_q"], seed=5)
    meta = {"lora_adapter_metadata": json.dumps(
        {"transformer.r": 4, "transformer.lora_alpha": 2, "transformer.alpha_pattern": {"layers.1.attention.to_q": 8}})}
    lora = load_lora(save_in_format(source, tmp_path / "p.safetensors", "diffusers", metadata=meta))
    assert lora.modules["layers.0.attention.to_q"].scale == 0.5
    assert lora.modules["layers.1.attention.to_q"].scale == 2.0


def test_load_loras_rejects_different_widths(tmp_path):
    a = save_in_format(make_random_lora(32, 2, ["layers.0.attention.to_q"]), tmp_path / "a.safetensors", "ai-toolkit")
    b = save_in_format(make_random_lora(48, 2, ["layers.0.attention.to_q"]), tmp_path / "b.safetensors", "ai-toolkit")
    assert [x.dim for x in load_loras([a, a])] == [32, 32]
    with pytest.raises(UserError, match="width 48.*width 32.*cannot be combined"):
        load_loras([a, b])


# ---- rejections ---------------------------------------------------------------------------

def test_missing_file_and_folder(tmp_path):
    with pytest.raises(UserError, match="file not found"):
        load_lora(tmp_path / "nope.safetensors")
    with pytest.raises(UserError, match="is a folder"):
        load_lora(tmp_path)


def test_not_safetensors(tmp_path):
    path = tmp_path / "model.ckpt"
    torch.save({"a": torch.zeros(2)}, path)
    with pytest.raises(UserError, match="not a readable .safetensors file") as info:
        load_lora(path)
    assert "\n" not in str(info.value)


def test_truncated_file(tmp_path):
    path = save_in_format(make_random_lora(DIM, 4, None), tmp_path / "t.safetensors", "ai-toolkit")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="truncated"):
        load_lora(path)


def test_empty_file(tmp_path):
    (tmp_path / "e.safetensors").write_bytes(b"")
    with pytest.raises(UserError, match="not a readable"):
        load_lora(tmp_path / "e.safetensors")
    assert "holds no tensors" in rejection(tmp_path, {}, "none.safetensors")


@pytest.mark.parametrize("key, model", [
    ("lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight", "Stable Diffusion"),
    ("lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight", "SDXL"),
    ("lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight", "Flux"),
    ("transformer.single_transformer_blocks.0.attn.to_q.lora_A.weight", "Flux"),
    ("transformer.transformer_blocks.0.img_mlp.net.0.proj.lora_A.weight", "Qwen-Image"),
    ("diffusion_model.blocks.0.self_attn.q.lora_A.weight", "Wan"),
    ("lora_te_text_model_encoder_layers_0_self_attn_k_proj.lora_down.weight", "a text encoder"),
    ("something.else.weight", "no key names a Z-Image"),
])
def test_other_models_are_named(tmp_path, key, model):
    message = rejection(tmp_path, {key: torch.randn(4, 8)})
    assert model in message and "not a Z-Image LoRA" in message


def test_rank_disagreement(tmp_path):
    message = rejection(tmp_path, aitk("layers.0.attention.to_q", torch.randn(4, DIM), torch.randn(DIM, 3)))
    assert "rank 4" in message and "rank 3" in message


def test_shape_wrong_for_width(tmp_path):
    tensors = {}
    for path in ("layers.0.attention.to_q", "layers.0.attention.to_k", "layers.0.feed_forward.w1"):
        out_f, in_f = expected_shape(path.split(".")[-1] if "w1" in path else "to_q", DIM)
        tensors.update(aitk(path, torch.randn(2, in_f), torch.randn(out_f, 2)))
    tensors.update(aitk("layers.0.feed_forward.w2", torch.randn(2, 40), torch.randn(DIM, 2)))  # wrong in
    message = rejection(tmp_path, tensors)
    assert "layers.0.feed_forward.w2" in message and "width 32" in message and "85->32" in message


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_and_inf(tmp_path, bad):
    up = torch.randn(DIM, 2)
    up[3, 1] = bad
    message = rejection(tmp_path, aitk("layers.0.attention.to_q", torch.randn(2, DIM), up))
    assert "NaN or Inf" in message and "lora_B" in message


def test_missing_half(tmp_path):
    message = rejection(tmp_path, {"diffusion_model.layers.0.attention.to_q.lora_A.weight": torch.randn(2, DIM)})
    assert "no up" in message


def test_unknown_key_next_to_valid_ones(tmp_path):
    tensors = aitk("layers.0.attention.to_q", torch.randn(2, DIM), torch.randn(DIM, 2))
    tensors["diffusion_model.norm_final.lora_A.weight"] = torch.randn(2, 16)
    message = rejection(tmp_path, tensors)
    assert "norm_final" in message and "zsearch weights" in message


def test_block_out_of_range_and_context_refiner_adaln(tmp_path):
    message = rejection(tmp_path, aitk("layers.30.attention.to_q", torch.randn(2, DIM), torch.randn(DIM, 2)))
    assert "outside Z-Image" in message
    message = rejection(tmp_path, aitk("context_refiner.0.adaLN_modulation.0", torch.randn(2, DIM),
                                       torch.randn(4 * DIM, 2)), "c.safetensors")
    assert "no adaLN" in message


def test_fused_and_split_q_is_a_duplicate(tmp_path):
    tensors = aitk("layers.0.attention.qkv", torch.randn(2, DIM), torch.randn(3 * DIM, 2))
    tensors.update(aitk("layers.0.attention.to_q", torch.randn(2, DIM), torch.randn(DIM, 2)))
    assert "given twice" in rejection(tmp_path, tensors)


def test_fused_qkv_rows_not_divisible(tmp_path):
    assert "3 equal parts" in rejection(
        tmp_path, aitk("layers.0.attention.qkv", torch.randn(2, DIM), torch.randn(3 * DIM + 1, 2)))


def test_convolution_shaped_weight(tmp_path):
    assert "2-D matrix" in rejection(
        tmp_path, aitk("layers.0.attention.to_q", torch.randn(2, DIM, 1, 1), torch.randn(DIM, 2, 1, 1)))


def test_bad_alpha(tmp_path):
    tensors = aitk("layers.0.attention.to_q", torch.randn(2, DIM), torch.randn(DIM, 2))
    tensors["diffusion_model.layers.0.attention.to_q.alpha"] = torch.tensor([1.0, 2.0])
    assert "one finite number" in rejection(tmp_path, tensors)
