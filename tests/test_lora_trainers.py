"""Files laid out as each trainer writes them (tests/trainer_layouts.py, and PEFT run for real):
read exactly (delta vs an independent float64 computation), or refused naming what they are."""

import json

import pytest
import torch
from safetensors.torch import save_file

from zsearch.errors import UserError
from zsearch.lora.read import load_lora

import trainer_layouts as T

pytestmark = pytest.mark.usefixtures("single_thread")

BLOCK = ["layers.0.attention.to_q", "layers.0.attention.to_k", "layers.0.attention.to_out.0",
         "layers.3.feed_forward.w2", "layers.3.adaLN_modulation.0", "noise_refiner.1.feed_forward.w1",
         "context_refiner.0.attention.to_v"]
OTHER = list(T.OTHER_SHAPES)


def save(tmp_path, tensors, name="lora.safetensors", metadata=None):
    path = tmp_path / name
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)
    return path


def assert_exact(lora, expected, rel=1e-6):
    assert set(lora.modules) == set(expected)
    for path, want in expected.items():
        got = lora.modules[path].delta(torch.float64)
        error = ((got - want).norm() / want.norm()).item()
        assert error < rel, (path, error)


def refused(tmp_path, tensors, name="bad.safetensors"):
    path = save(tmp_path, tensors, name)
    with pytest.raises(UserError) as info:
        load_lora(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    return message


# -- plain LoRAs under every trainer's names ---------------------------------------------------------
def test_kohya_musubi_with_alpha(tmp_path):
    tensors, expected = T.kohya(BLOCK, rank=4, alpha=2.0)
    lora = load_lora(save(tmp_path, tensors))
    assert lora.format == "kohya"
    assert_exact(lora, expected)


def test_lycoris_named_plain_lora(tmp_path):
    tensors, expected = T.kohya(BLOCK, rank=4, alpha=3.0, prefix="lycoris_")
    lora = load_lora(save(tmp_path, tensors))
    assert lora.format == "lycoris"
    assert_exact(lora, expected)


def test_videox_fun_double_underscore(tmp_path):
    tensors, expected = T.kohya(BLOCK, rank=4, alpha=1.0, prefix="lora_unet__")
    assert all(k.startswith("lora_unet__layers_") or k.startswith("lora_unet__noise_refiner")
               or k.startswith("lora_unet__context_refiner") for k in tensors)
    lora = load_lora(save(tmp_path, tensors))
    assert lora.format == "videox-fun"
    assert_exact(lora, expected)


def test_musubi_diffusers_converter_mangled_names(tmp_path):
    tensors, expected = T.musubi_converted(BLOCK, rank=4, alpha=8.0)
    assert "diffusion_model.context.refiner.0.attention.to_v.lora_A.weight" in tensors
    assert "diffusion_model.layers.3.adaLN.modulation.0.lora_A.weight" in tensors
    assert_exact(load_lora(save(tmp_path, tensors)), expected)


@pytest.mark.parametrize("names", ["diffusers", "comfyui"])
def test_modules_outside_the_blocks(tmp_path, names):
    comfy = {"all_x_embedder.2-1": "x_embedder", "all_final_layer.2-1.linear": "final_layer.linear",
             "all_final_layer.2-1.adaLN_modulation.1": "final_layer.adaLN_modulation.1"}
    tensors, expected = T.aitk(BLOCK[:2] + OTHER, names=comfy if names == "comfyui" else None)
    lora = load_lora(save(tmp_path, tensors))
    assert lora.dim == T.DIM
    assert_exact(lora, expected)


@pytest.mark.parametrize("prefix", ["lora_unet_", "lora_transformer_"])  # musubi; OneTrainer/AI-Toolkit networks
def test_modules_outside_the_blocks_kohya_names(tmp_path, prefix):
    tensors, expected = T.kohya(BLOCK[:2] + OTHER, rank=2, alpha=1.0, prefix=prefix)
    assert f"{prefix}all_x_embedder_2-1.lora_down.weight" in tensors
    assert_exact(load_lora(save(tmp_path, tensors)), expected)


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2])
def test_fp8_is_read_cast_up_exactly(tmp_path, dtype):
    tensors, _ = T.aitk(BLOCK, rank=4, dtype=dtype)
    expected = {}
    for key, t in tensors.items():
        if key.endswith("lora_A.weight"):
            path = key.removeprefix("diffusion_model.").removesuffix(".lora_A.weight")
            up = tensors[key.replace("lora_A", "lora_B")]
            expected[path] = up.to(torch.float64) @ t.to(torch.float64)
    lora = load_lora(save(tmp_path, tensors))
    assert_exact(lora, expected, rel=1e-12)  # fp8 values are exact in bfloat16
    assert {m.dtype for m in lora.modules.values()} == {torch.bfloat16}


def test_fused_qkv_block_diagonal_goes_back_to_rank_r(tmp_path):
    tensors, expected = T.musubi_comfy_fused_qkv(layer=2, rank=3, alpha=2.0)
    lora = load_lora(save(tmp_path, tensors))
    assert_exact(lora, expected)
    assert {lora.modules[p].rank for p in expected} == {3}  # measured: not the shared 3r = 9


def test_fused_qkv_with_a_dense_b_keeps_the_shared_rank(tmp_path):
    down, up = T.rand(2, T.DIM), T.rand(3 * T.DIM, 2)
    tensors = {"diffusion_model.layers.0.attention.qkv.lora_A.weight": down,
               "diffusion_model.layers.0.attention.qkv.lora_B.weight": up}
    lora = load_lora(save(tmp_path, tensors))
    for i, c in enumerate(("to_q", "to_k", "to_v")):
        module = lora.modules[f"layers.0.attention.{c}"]
        assert module.rank == 2
        assert torch.allclose(module.delta(torch.float64), T.lora_delta(down, up.chunk(3)[i]), atol=1e-12)


def test_comfyui_extract_node_layout(tmp_path):
    """comfy_extras/nodes_lora_extract.py: SVD of each weight difference of ComfyUI's own model
    (fused qkv, `out`, `x_embedder`, `final_layer.linear`), up = U S, down = Vh, no alpha."""
    rank, tensors, expected = 3, {}, {}
    for comfy_name, (out_f, in_f), targets in (
            ("layers.4.attention.qkv", (3 * T.DIM, T.DIM), ["layers.4.attention.to_q", "layers.4.attention.to_k",
                                                          "layers.4.attention.to_v"]),
            ("layers.4.attention.out", (T.DIM, T.DIM), ["layers.4.attention.to_out.0"]),
            ("x_embedder", (T.DIM, 64), ["all_x_embedder.2-1"]),
            ("final_layer.linear", (64, T.DIM), ["all_final_layer.2-1.linear"])):
        diff = T.rand(out_f, in_f)
        u, s, vh = torch.linalg.svd(diff)
        up, down = (u[:, :rank] @ torch.diag(s[:rank])).contiguous(), vh[:rank].contiguous()
        tensors[f"diffusion_model.{comfy_name}.lora_up.weight"] = up
        tensors[f"diffusion_model.{comfy_name}.lora_down.weight"] = down
        full = up.double() @ down.double()
        for target, part in zip(targets, full.chunk(len(targets))):
            expected[target] = part
    lora = load_lora(save(tmp_path, tensors))
    assert_exact(lora, expected)
    assert lora.modules["layers.4.attention.to_k"].rank == rank  # a dense fused B keeps the shared rank


# -- PEFT and diffusers, run for real ----------------------------------------------------------------
def _peft_folder(tmp_path, **config):
    peft = pytest.importorskip("peft")
    from diffusers import ZImageTransformer2DModel
    from zsearch.demo.spec import TRANSFORMER_CONFIG
    torch.manual_seed(0)
    model = ZImageTransformer2DModel(**{**TRANSFORMER_CONFIG, "n_layers": 4})
    targets = ["to_q", "to_k", "to_out.0", "w2", "layers.1.adaLN_modulation.0", "noise_refiner.0.adaLN_modulation.0", "t_embedder.mlp.0", "cap_embedder.1",
               "all_x_embedder.2-1", "all_final_layer.2-1.linear"]
    wrapped = peft.get_peft_model(model, peft.LoraConfig(target_modules=targets, **config))
    with torch.no_grad():
        for name, p in wrapped.named_parameters():
            if "lora_B" in name:
                p.normal_()
    folder = tmp_path / "adapter"
    wrapped.save_pretrained(str(folder))
    expected = {}
    for name, module in wrapped.named_modules():
        if hasattr(module, "lora_A") and "default" in getattr(module, "lora_A", {}):
            path = name.removeprefix("base_model.model.")
            expected[path] = module.scaling["default"] * (
                module.lora_B["default"].weight.double() @ module.lora_A["default"].weight.double())
    return folder, expected


def test_peft_save_pretrained_folder_with_alpha_and_regex_patterns(tmp_path):
    folder, expected = _peft_folder(
        tmp_path, r=4, lora_alpha=8, rank_pattern={r"layers\.1\.attention\.to_q": 2},
        alpha_pattern={r"layers\.\d\.attention\.to_k": 2, "cap_embedder.1": 16})
    assert json.loads((folder / "adapter_config.json").read_text())["lora_alpha"] == 8
    lora = load_lora(folder)
    assert lora.format == "peft"
    assert_exact(lora, expected)
    assert lora.modules["layers.1.attention.to_q"].rank == 2
    assert lora.modules["layers.2.attention.to_k"].scale == pytest.approx(0.5)
    assert lora.modules["layers.2.attention.to_q"].scale == pytest.approx(2.0)


def test_peft_folder_merges_from_the_command_line(tmp_path, capsys):
    from safetensors import safe_open
    from zsearch.cli import main
    folder, expected = _peft_folder(tmp_path, r=4, lora_alpha=2)
    out = tmp_path / "merged.safetensors"
    assert main(["merge", str(folder), "--ratio", "1", "-o", str(out)]) == 0
    with safe_open(str(out), "pt") as f:
        for path, want in expected.items():
            got = f.get_tensor(f"diffusion_model.{path}.lora_B.weight").double() @ \
                f.get_tensor(f"diffusion_model.{path}.lora_A.weight").double()
            assert ((got - want).norm() / want.norm()).item() < 1e-6, path
        assert "adapter" in f.metadata()["zsearch.sources"]


def test_peft_rslora(tmp_path):
    folder, expected = _peft_folder(tmp_path, r=4, lora_alpha=8, use_rslora=True)
    lora = load_lora(folder)
    assert_exact(lora, expected)
    assert lora.modules["layers.0.attention.to_q"].scale == pytest.approx(4.0)  # 8 / sqrt(4)


def test_diffusers_save_lora_weights_run_for_real(tmp_path):
    peft = pytest.importorskip("peft")
    from diffusers import ZImagePipeline, ZImageTransformer2DModel
    from peft.utils import get_peft_model_state_dict
    from zsearch.demo.spec import TRANSFORMER_CONFIG
    torch.manual_seed(1)
    model = ZImageTransformer2DModel(**{**TRANSFORMER_CONFIG, "n_layers": 3})
    config = peft.LoraConfig(r=4, lora_alpha=12, target_modules=["to_q", "to_v", "w1", "cap_embedder.1"],
                             alpha_pattern={r"layers\.[12]\.attention\.to_[qv]": 2})
    model.add_adapter(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_()
    ZImagePipeline.save_lora_weights(str(tmp_path / "saved"), transformer_lora_layers=get_peft_model_state_dict(model),
                                     transformer_lora_adapter_metadata=config.to_dict())
    expected = {name: m.scaling["default"] * (m.lora_B["default"].weight.double() @ m.lora_A["default"].weight.double())
                for name, m in model.named_modules() if hasattr(m, "lora_A") and "default" in getattr(m, "lora_A", {})}
    lora = load_lora(tmp_path / "saved")  # the folder, or its pytorch_lora_weights.safetensors
    assert_exact(lora, expected)
    assert_exact(load_lora(tmp_path / "saved" / "pytorch_lora_weights.safetensors"), expected)
    assert lora.modules["layers.1.attention.to_v"].scale == 0.5 and lora.modules["layers.0.attention.to_v"].scale == 3.0


def test_diffusers_metadata_regex_alpha_pattern(tmp_path):
    tensors, _ = T.aitk(["layers.0.attention.to_q", "layers.1.attention.to_q", "layers.1.attention.to_k"], rank=4)
    tensors = {k.replace("diffusion_model.", "transformer."): v for k, v in tensors.items()}
    config = {"r": 4, "lora_alpha": 4, "alpha_pattern": {r"layers\.1\.attention\.to_[qk]": 2}}
    lora = load_lora(save(tmp_path, tensors, metadata={"lora_adapter_metadata": json.dumps(config)}))
    assert lora.modules["layers.0.attention.to_q"].scale == 1.0
    assert lora.modules["layers.1.attention.to_q"].scale == 0.5
    assert lora.modules["layers.1.attention.to_k"].scale == 0.5


# -- LoKr and LoHa ------------------------------------------------------------------------------------
@pytest.mark.parametrize("w1, w2", [(False, True), (True, True), (False, False), (True, False)])
def test_lycoris_lokr_alpha_rules(tmp_path, w1, w2):
    tensors, expected = {}, {}
    for path in BLOCK[:4] + ["t_embedder.mlp.2"]:
        t, e = T.lokr(path, rank=2, alpha=3.0, decompose_w1=w1, decompose_w2=w2)
        tensors.update(t)
        expected.update(e)
    lora = load_lora(save(tmp_path, tensors))
    assert lora.kinds == {"lokr"}
    assert_exact(lora, expected)
    scale = lora.modules["layers.0.attention.to_q"].scale
    assert scale == (1.0 if not (w1 or w2) else 1.5)  # both whole: scale 1 whatever alpha says


def test_lokr_alpha_zero_means_rank(tmp_path):
    tensors, expected = T.lokr("layers.0.feed_forward.w1", rank=4, alpha=0.0)
    lora = load_lora(save(tmp_path, tensors))
    assert_exact(lora, expected)
    assert lora.modules["layers.0.feed_forward.w1"].scale == 1.0


def test_musubi_lokr_names_whole_w2(tmp_path):
    tensors, expected = T.lokr("layers.5.attention.to_v", rank=64, alpha=8.0, decompose_w2=False,
                               name="lora_unet_layers_5_attention_to_v")
    assert_exact(load_lora(save(tmp_path, tensors)), expected)


def test_lycoris_loha(tmp_path):
    tensors, expected = {}, {}
    for path in BLOCK + ["cap_embedder.1"]:
        t, e = T.loha(path, rank=3, alpha=2.0)
        tensors.update(t)
        expected.update(e)
    lora = load_lora(save(tmp_path, tensors))
    assert lora.kinds == {"loha"}
    assert_exact(lora, expected)


def test_musubi_comfy_fused_loha_splits_exactly_at_rank_r(tmp_path):
    tensors, expected = T.musubi_comfy_fused_loha(layer=1, rank=2, alpha=4.0)
    lora = load_lora(save(tmp_path, tensors))
    assert_exact(lora, expected)
    assert {lora.modules[p].rank for p in expected} == {2}


@pytest.mark.parametrize("name", ["diffusion_model.layers.0.attention.to_q",  # musubi's diffusers converter
                                  "transformer.layers.0.attention.to_q",
                                  "lora_transformer_layers_0_attention_to_q",  # AI-Toolkit's network prefix
                                  "lora_unet_layers_0_attention_to_q"])  # musubi
def test_lokr_under_every_prefix(tmp_path, name):
    tensors, expected = T.lokr("layers.0.attention.to_q", rank=2, alpha=1.0, name=name)
    assert_exact(load_lora(save(tmp_path, tensors)), expected)


# -- refused, naming what the file is -----------------------------------------------------------------
def test_dora_named_as_dora(tmp_path):
    tensors, _ = T.aitk(BLOCK[:1])
    tensors["diffusion_model.layers.0.attention.to_q.magnitude"] = torch.ones(T.DIM)  # AI-Toolkit DoRA
    assert "DoRA" in refused(tmp_path, tensors)
    tensors.pop("diffusion_model.layers.0.attention.to_q.magnitude")
    tensors["diffusion_model.layers.0.attention.to_q.lora_magnitude_vector"] = torch.ones(T.DIM)
    assert "DoRA" in refused(tmp_path, tensors, "peft_dora.safetensors")


def _zimage_names_at(width, prefix="diffusion_model."):
    hidden = int(width / 3 * 8)
    tensors = {}
    for i in range(2):
        for name, (out_f, in_f) in {"attention.to_q": (width, width), "feed_forward.w1": (hidden, width),
                                    "feed_forward.w2": (width, hidden)}.items():
            tensors[f"{prefix}layers.{i}.{name}.lora_A.weight"] = torch.zeros(1, in_f) + 0.1
            tensors[f"{prefix}layers.{i}.{name}.lora_B.weight"] = torch.zeros(out_f, 1) + 0.1
    return tensors


@pytest.mark.parametrize("width, model", [(4608, "Ideogram 4"), (2304, "Lumina 2")])
def test_same_names_at_another_models_width(tmp_path, width, model):
    message = refused(tmp_path, _zimage_names_at(width))
    assert model in message and str(width) in message


def test_other_widths_of_zimage_names_are_accepted(tmp_path):
    assert load_lora(save(tmp_path, _zimage_names_at(48))).dim == 48


@pytest.mark.parametrize("keys, model", [
    (["lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight", "lora_unet_double_blocks_0_img_mlp_0.lora_down.weight",
      "lora_unet_single_blocks_0_linear1.lora_down.weight"], "Flux"),
    (["transformer.transformer_blocks.0.attn.to_q.lora_A.weight", "transformer.transformer_blocks.0.attn.to_k.lora_A.weight"],
     "Qwen-Image"),
    (["transformer.transformer_blocks.0.attn.to_q.lora_A.weight", "transformer.transformer_blocks.0.ff_context.net.2.lora_A.weight"],
     "Flux"),
    (["transformer.layers.0.attn.to_q.lora_A.weight", "transformer.layers.0.feed_forward.linear_1.lora_A.weight"], "Lumina 2"),
    (["diffusion_model.layers.0.attention.qkv.lora_A.weight", "diffusion_model.layers.0.adaLN_modulation.1.lora_A.weight"],
     "Lumina 2"),
    (["diffusion_model.layers.0.attention.o.lora_A.weight"], "Ideogram 4"),
    (["lora_unet_input_blocks_4_1_proj_in.lora_down.weight", "lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight"],
     "SDXL"),
    (["diffusion_model.blocks.0.cross_attn.k.lora_A.weight"], "Wan"),
])
def test_other_models_named(tmp_path, keys, model):
    tensors = {k: torch.randn(4, 3072 if "transformer_blocks" in k else 8) for k in keys}
    message = refused(tmp_path, tensors)
    assert model in message and "not a Z-Image LoRA" in message


def test_a_zimage_lora_with_text_encoder_parts_says_so(tmp_path):
    tensors, _ = T.kohya(BLOCK[:1])
    tensors["lora_te_layers_0_self_attn_q_proj.lora_down.weight"] = torch.randn(4, 16)
    message = refused(tmp_path, tensors)
    assert "text-encoder LoRA weights too" in message and "transformer part alone" in message


@pytest.mark.parametrize("rows_split", [True, False])
def test_fused_qkv_lokr_splits_into_q_k_v(tmp_path, rows_split):
    """A LoKr trained on ComfyUI's fused qkv (lycoris_layers_0_attention_qkv): each third of its rows."""
    w1 = T.rand(6, 4) if rows_split else T.rand(8, 4)  # 96 rows = 6 x 16 (splits) or 8 x 12 (does not)
    w2_a, w2_b = T.rand(96 // w1.shape[0], 2), T.rand(2, T.DIM // 4)
    name = "lycoris_layers_0_attention_qkv"
    tensors = {f"{name}.lokr_w1": w1, f"{name}.lokr_w2_a": w2_a, f"{name}.lokr_w2_b": w2_b,
               f"{name}.alpha": torch.tensor(1.0)}
    full = 0.5 * torch.kron(w1.double(), w2_a.double() @ w2_b.double())
    expected = {f"layers.0.attention.{c}": part for c, part in zip(("to_q", "to_k", "to_v"), full.chunk(3))}
    lora = load_lora(save(tmp_path, tensors))
    assert_exact(lora, expected)
    assert lora.kinds == ({"lokr"} if rows_split else {"lora"})


def test_incomplete_lycoris_modules(tmp_path):
    assert "has no LoRA/LoKr/LoHa weight" in refused(tmp_path, {"lycoris_layers_0_attention_to_q.alpha": torch.tensor(1.0)})
    t, _ = T.loha("layers.0.attention.to_q")
    t.pop("lycoris_layers_0_attention_to_q.hada_w2_b")
    assert "hada_w2_b" in refused(tmp_path, t, "loha.safetensors")
    t, _ = T.lokr("layers.0.attention.to_q")
    t.pop("lycoris_layers_0_attention_to_q.lokr_w2_b")
    assert "lokr_w2" in refused(tmp_path, t, "lokr.safetensors")
    t, _ = T.kohya(["layers.0.attention.to_q"])
    t["lora_unet_layers_0_attention_to_q.hada_w1_a"] = torch.randn(32, 2)
    assert "mixes" in refused(tmp_path, t, "mixed.safetensors")
