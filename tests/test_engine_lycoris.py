"""The engine with LoKr/LoHa and modules outside the blocks: the fused way rebuilds
W = W0 + sum s dW (never subtracting), the side path refuses LoKr/LoHa, `auto` picks fused,
and the embedders/final layer are attached and weighed by `other`."""

import pytest
import torch
from diffusers import ZImageTransformer2DModel
from safetensors.torch import save_file

from zsearch.demo.spec import TRANSFORMER_CONFIG
from zsearch.engine.weighting import attach_loras, choose_way
from zsearch.errors import UserError
from zsearch.lora.read import load_lora
from zsearch.lora.recipe import LoraWeights, Recipe

import trainer_layouts as T

pytestmark = pytest.mark.usefixtures("single_thread")

N_LAYERS = 2
BLOCK = ["layers.0.attention.to_q", "layers.1.feed_forward.w1", "noise_refiner.0.adaLN_modulation.0"]
OTHER = list(T.OTHER_SHAPES)


def tiny(dtype=torch.float32):
    torch.manual_seed(0)
    model = ZImageTransformer2DModel(**{**TRANSFORMER_CONFIG, "n_layers": N_LAYERS}).to(dtype).eval()
    with torch.no_grad():
        model.x_pad_token.normal_()
        model.cap_pad_token.normal_()
    return model


def save(tmp_path, name, tensors):
    path = tmp_path / name
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return path


@pytest.fixture
def loras(tmp_path):
    """A LoKr and a LoHa on block modules, a plain LoRA on blocks and every module outside them."""
    lokr_t, lokr_e, loha_t, loha_e = {}, {}, {}, {}
    for p in BLOCK + ["cap_embedder.1"]:
        t, e = T.lokr(p, rank=2, alpha=3.0)
        lokr_t.update(t), lokr_e.update(e)
    for p in BLOCK[:2]:
        t, e = T.loha(p, rank=2, alpha=1.0)
        loha_t.update(t), loha_e.update(e)
    lora_t, lora_e = T.aitk(BLOCK + OTHER, rank=3)
    files = [save(tmp_path, "lokr.safetensors", lokr_t), save(tmp_path, "loha.safetensors", loha_t),
             save(tmp_path, "lora.safetensors", lora_t)]
    return [load_lora(f) for f in files], [lokr_e, loha_e, lora_e]


def expected_weights(base, deltas, scales):
    out = {}
    for delta, scale in zip(deltas, scales):
        for path, d in delta.items():
            out[path] = out.get(path, base[path].double()) + scale.get(path, 0.0) * d
    return out


def test_fused_way_applies_lokr_loha_and_other_modules_exactly(loras):
    model = tiny()
    read, deltas = loras
    base = {p: model.get_submodule(p).weight.detach().clone() for d in deltas for p in d}
    weighting = attach_loras(model, read, way="auto")
    assert weighting.name == "fused"
    for trial in range(3):
        scales = [{p: 0.3 * (trial + 1) + 0.1 * i for i, p in enumerate(d)} for d in deltas]
        weighting.set_scales(scales)
        for path, want in expected_weights(base, deltas, scales).items():
            got = model.get_submodule(path).weight.double()
            assert ((got - want).norm() / want.norm()).item() < 1e-6, (trial, path)
    weighting.set_scales([{} for _ in deltas])  # all zero: the base back, bit for bit
    for path, w in base.items():
        assert torch.equal(model.get_submodule(path).weight, w), path
    weighting.detach()


def test_side_path_refuses_lokr_and_loha(loras):
    model = tiny()
    read, _ = loras
    assert choose_way(model, read) == "fused"
    with pytest.raises(UserError) as info:
        attach_loras(model, read, way="side")
    assert "fused" in str(info.value) and "lokr" in str(info.value)


@pytest.mark.parametrize("way", ["side", "fused"])
def test_other_modules_are_attached_and_weighed_by_other(tmp_path, way):
    tensors, deltas = T.aitk(BLOCK[:1] + OTHER, rank=3)
    lora = load_lora(save(tmp_path, "a.safetensors", tensors))
    model = tiny()
    reference = tiny()
    latents = [torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(1))]
    caps = [torch.randn(12, TRANSFORMER_CONFIG["cap_feat_dim"], generator=torch.Generator().manual_seed(2))]
    t = torch.tensor([0.4])
    weighting = attach_loras(model, [lora], way=way)
    weighting.set_recipe(Recipe([LoraWeights(lora.path, ratio=0.5, components={"other": 3.0, "to_q": 2.0})]))
    with torch.no_grad():
        for path, d in deltas.items():
            factor = 0.5 * (2.0 if path == BLOCK[0] else 3.0)
            weight = reference.get_submodule(path).weight
            weight.copy_((weight.double() + factor * d).float())
        got = model(latents, t, caps, return_dict=False)[0][0]
        want = reference(latents, t, caps, return_dict=False)[0][0]
    assert ((got - want).norm() / want.norm()).item() < 1e-5
    weighting.detach()
