"""zsearch's outputs loaded by ComfyUI 0.8's own loader (comfy.sd.load_lora_for_models) onto ComfyUI's own
Z-Image model class, and zsearch's ComfyUI nodes run against that same ComfyUI.

Every test checks the weights ComfyUI really patches against base + the intended delta computed here in
float64 from the layouts of tests/trainer_layouts.py, q/k/v as slices of ComfyUI's fused `attention.qkv`;
and that ComfyUI logged no "lora key not loaded" (its only sign of a dropped key).
"""

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import save_file

import comfyui_helpers as H
import trainer_layouts as T
from zsearch.cli import main
from zsearch.comfyui.tuning import BANDS, tuned_weights
from zsearch.commands.comfyui import SHIM_FOLDER
from zsearch.lora.recipe import LoraWeights, load_recipe

pytestmark = pytest.mark.usefixtures("single_thread")

OTHERS = ["cap_embedder.1", "all_x_embedder.2-1", "all_final_layer.2-1.linear", "all_final_layer.2-1.adaLN_modulation.1"]
SUFFIX = {"attention.to_q": "to_q", "attention.to_k": "to_k", "attention.to_v": "to_v", "attention.to_out.0": "to_out",
          "feed_forward.w1": "w1", "feed_forward.w2": "w2", "feed_forward.w3": "w3", "adaLN_modulation.0": "adaLN"}


@pytest.fixture(scope="module")
def comfy():
    """ComfyUI on sys.path for this module only; its modules are dropped from sys.modules afterwards."""
    folder = H.require_comfyui()
    before = set(sys.modules)
    with H.comfyui_on_path(folder):
        import comfy.sd  # noqa: F401
        yield folder
    for name in set(sys.modules) - before:
        if str(getattr(sys.modules[name], "__file__", "") or "").startswith(str(folder)):
            del sys.modules[name]


@pytest.fixture(scope="module")
def model(comfy):
    return H.tiny_model()


def weight_of(path, ratio, components=None, layers=None):
    """ratio x component x layer, written out here from the recipe's rules (specific names only)."""
    components, layers = components or {}, layers or {}
    if path in OTHERS or path.startswith("t_embedder"):
        return ratio * components.get("other", 1.0)
    block, index, suffix = path.split(".", 2)
    layer = layers.get(block, 1.0) if block != "layers" else layers.get(int(index), 1.0)
    return ratio * components.get(SUFFIX[suffix], 1.0) * layer


def loaded_by_comfyui(model, lora_file, strength=1.0):
    """ComfyUI's Load LoRA on `lora_file`; asserts it dropped no key; its patched weights."""
    with safe_open(str(lora_file), framework="pt") as f:
        state = {k: f.get_tensor(k) for k in f.keys()}
    patched_model, log = H.load_with_comfyui(model, state, strength)
    assert not [line for line in log if "lora key not loaded" in line], log
    return H.patched_weights(patched_model)


def assert_loads(model, lora_file, deltas):
    H.assert_patched(H.base_weights(model), loaded_by_comfyui(model, lora_file), deltas)


def keys_of(path):
    with safe_open(str(path), framework="pt") as f:
        return list(f.keys())


def test_capture_sees_a_dropped_key(model):
    """The check itself: ComfyUI drops kohya-named attention keys (DESIGN.md) and the capture says so."""
    state, _ = T.kohya(["layers.0.attention.to_q"])
    _, log = H.load_with_comfyui(model, state)
    assert any("lora key not loaded" in line for line in log)


# -- best.safetensors ------------------------------------------------------------------------------
def test_best_safetensors_loads_exactly(tmp_path, model):
    """best.safetensors as the search's export writes it: merge_recipe + save_lora with its metadata."""
    from zsearch.lora.merge import merge_recipe
    from zsearch.lora.write import merge_metadata, save_lora

    one, d1 = T.aitk(["layers.0.attention.to_q", "layers.2.attention.to_out.0", "noise_refiner.1.adaLN_modulation.0",
                      *OTHERS], rank=3)
    two, d2 = T.musubi_comfy_fused_qkv(layer=1)
    more, d3 = T.kohya(["layers.0.attention.to_q", "context_refiner.0.feed_forward.w2", "layers.2.feed_forward.w1"])
    two.update(more), d2.update(d3)
    save_file(one, str(tmp_path / "a.safetensors")), save_file(two, str(tmp_path / "b.safetensors"))
    w1 = dict(ratio=0.8, components={"to_q": 0.5, "adaLN": 1.5, "other": 2.0}, layers={0: 0.7, "noise_refiner": 0.6})
    w2 = dict(ratio=1.1, components={"to_k": 0.0, "w2": 1.3}, layers={1: 1.4, 2: 0.9, "context_refiner": 0.5})
    recipe_file = tmp_path / "best.yaml"
    as_recipe = lambda w, name: {"path": name, "ratio": w["ratio"], "components": w["components"],
                                 "layers": {str(k): v for k, v in w["layers"].items()}}
    recipe_file.write_text(yaml.safe_dump({"loras": [as_recipe(w1, "a.safetensors"), as_recipe(w2, "b.safetensors")]}))
    recipe = load_recipe(recipe_file)
    tensors, report = merge_recipe(recipe)
    target = tmp_path / "best.safetensors"
    save_lora(tensors, target, metadata={**merge_metadata(recipe, target, trial=3), **report.metadata()},
              inputs=[lw.path for lw in recipe.loras])

    deltas = {}
    for d, w in ((d1, w1), (d2, w2)):
        for path, delta in d.items():
            deltas[path] = deltas.get(path, 0) + weight_of(path, **w) * delta
    assert_loads(model, target, deltas)


# -- zsearch merge outputs -------------------------------------------------------------------------
def merged(tmp_path, files, *flags):
    for name, tensors in files.items():
        save_file(tensors, str(tmp_path / name))
    out = tmp_path / "merged.safetensors"
    assert main(["merge", *(str(tmp_path / n) for n in files), *flags, "-o", str(out)]) == 0
    return out


def test_merge_plain_lora(tmp_path, model):
    a, da = T.aitk(["layers.0.attention.to_v", "layers.1.feed_forward.w3", "noise_refiner.0.attention.to_out.0"])
    b, db = T.musubi_comfy_fused_qkv(layer=2, rank=2)
    out = merged(tmp_path, {"a.safetensors": a, "b.safetensors": b}, "--ratio", "0.5", "--ratio", "1.5",
                 "--to_v", "0.3", "--layers", "0-1=2.0,noise_refiner=0.4")
    layers = {0: 2.0, 1: 2.0, "noise_refiner": 0.4}
    deltas = {p: weight_of(p, 0.5, {"to_v": 0.3}, layers) * d for p, d in da.items()}
    for p, d in db.items():
        deltas[p] = deltas.get(p, 0) + weight_of(p, 1.5, {"to_v": 0.3}, layers) * d
    assert all(".lora_A." in k or ".lora_B." in k for k in keys_of(out))
    assert_loads(model, out, deltas)


@pytest.mark.parametrize("kind", ["lokr", "loha"])
def test_merge_keeps_a_lone_lokr_or_loha(tmp_path, model, kind):
    tensors, deltas = {}, {}
    for path in ("layers.1.attention.to_q", "layers.1.feed_forward.w2", "context_refiner.1.attention.to_k"):
        t, d = T.lokr(path, rank=2, alpha=3.0) if kind == "lokr" else T.loha(path, rank=2, alpha=3.0)
        tensors.update(t), deltas.update(d)
    if kind == "loha":
        t, d = T.musubi_comfy_fused_loha(layer=2)
        tensors.update(t), deltas.update(d)
    out = merged(tmp_path, {"x.safetensors": tensors}, "--ratio", "0.6")
    prefix = "lokr_" if kind == "lokr" else "hada_"
    assert all(prefix in k or k.endswith(".alpha") for k in keys_of(out))  # written as that kind
    assert_loads(model, out, {p: 0.6 * d for p, d in deltas.items()})


def test_merge_mixed_kinds_as_svd_lora(tmp_path, model, capsys):
    lokr, d_lokr = T.lokr("layers.0.feed_forward.w1", rank=2)
    loha, d_loha = T.loha("layers.0.attention.to_k", rank=2)
    lora, d_lora = T.aitk(["layers.0.feed_forward.w1", "layers.0.attention.to_k", "layers.1.attention.to_q"], rank=2)
    # at --rank 32 (the width) the SVD keeps every singular value: exact up to float rounding
    out = merged(tmp_path, {"k.safetensors": lokr, "h.safetensors": loha, "l.safetensors": lora},
                 "--ratio", "0.7", "--ratio", "1.2", "--ratio", "-0.4", "--rank", "32")
    assert "2 LoKr/LoHa or mixed modules SVD'd to LoRA" in capsys.readouterr().out
    deltas = {p: -0.4 * d for p, d in d_lora.items()}
    deltas["layers.0.feed_forward.w1"] += 0.7 * d_lokr["layers.0.feed_forward.w1"]
    deltas["layers.0.attention.to_k"] += 1.2 * d_loha["layers.0.attention.to_k"]
    assert all(".lora_A." in k or ".lora_B." in k for k in keys_of(out))
    assert_loads(model, out, deltas)


def test_merge_as_lora(tmp_path, model):
    tensors, deltas = T.lokr("layers.2.attention.to_v", rank=2, decompose_w1=True)
    t, d = T.loha("noise_refiner.1.feed_forward.w3", rank=2)
    tensors.update(t), deltas.update(d)
    out = merged(tmp_path, {"x.safetensors": tensors}, "--ratio", "0.9", "--as-lora", "--rank", "32")
    assert all(".lora_A." in k or ".lora_B." in k for k in keys_of(out))
    assert_loads(model, out, {p: 0.9 * d for p, d in deltas.items()})


def test_other_modules_at_a_width_where_t_embedder_agrees(tmp_path, comfy):
    """The modules outside the blocks, t_embedder too: ComfyUI's is min(D, 1024) wide, diffusers' 1024,
    so they agree from D = 1024 (a model of embedders and final layer only, no blocks)."""
    dim = 1024
    shapes = {"t_embedder.mlp.0": (1024, 256), "t_embedder.mlp.2": (256, 1024), "cap_embedder.1": (dim, H.CAP_FEAT_DIM),
              "all_x_embedder.2-1": (dim, 64), "all_final_layer.2-1.linear": (64, dim),
              "all_final_layer.2-1.adaLN_modulation.1": (dim, 256)}
    names = {"all_x_embedder.2-1": "x_embedder", "all_final_layer.2-1.linear": "final_layer.linear"}  # ComfyUI's
    tensors, deltas = {}, {}
    for path, (out_f, in_f) in shapes.items():
        down, up = T.rand(2, in_f), T.rand(out_f, 2) / 8
        name = names.get(path, path)
        tensors[f"diffusion_model.{name}.lora_A.weight"], tensors[f"diffusion_model.{name}.lora_B.weight"] = down, up
        deltas[path] = T.lora_delta(down, up)
    out = merged(tmp_path, {"o.safetensors": tensors}, "--ratio", "0.8", "--other", "0.5", "--w1", "3")
    wide = H.tiny_model(dim=dim, n_layers=0, n_refiner_layers=0)
    base, want = H.base_weights(wide), {p: 0.4 * d for p, d in deltas.items()}
    H.assert_patched(base, loaded_by_comfyui(wide, out), want, dim=dim)
    # the recipe node on the same file, ComfyUI's own names in it
    from zsearch.comfyui.nodes import ZImageRecipeLoras
    (tmp_path / "r.yaml").write_text("loras:\n  - {path: o.safetensors, ratio: 0.8, components: {other: 0.5}}\n")
    (node,) = ZImageRecipeLoras().apply(wide, str(tmp_path / "r.yaml"))
    H.assert_patched(base, H.patched_weights(node), want, dim=dim)


# -- the nodes ------------------------------------------------------------------------------------
@pytest.fixture()
def recipe_set(tmp_path):
    """A recipe of three LoRAs in three layouts (AI-Toolkit with `other`, musubi fused qkv, LyCORIS LoHa)."""
    a, da = T.aitk(["layers.0.attention.to_q", "layers.2.feed_forward.w2", "noise_refiner.0.adaLN_modulation.0",
                    *OTHERS], rank=2)
    b, db = T.musubi_comfy_fused_qkv(layer=1)
    c, dc = T.loha("layers.2.attention.to_q", rank=2, alpha=1.5)
    for name, tensors in (("a", a), ("b", b), ("c", c)):
        save_file(tensors, str(tmp_path / f"{name}.safetensors"))
    weights = [dict(ratio=0.9, components={"to_q": 0.5, "other": 1.5}, layers={0: 2.0, "noise_refiner": 0.3}),
               dict(ratio=1.2, components={"to_k": 0.25}, layers={1: 0.5}),
               dict(ratio=-0.7, components={}, layers={2: 1.5})]
    recipe = {"loras": [{"path": f"{n}.safetensors", "ratio": w["ratio"], "components": w["components"],
                         "layers": {str(k): v for k, v in w["layers"].items()}} for n, w in zip("abc", weights)]}
    (tmp_path / "best.yaml").write_text(yaml.safe_dump(recipe))
    return tmp_path / "best.yaml", [da, db, dc], weights


def intended(deltas_per_lora, weights, strength=1.0):
    total = {}
    for deltas, w in zip(deltas_per_lora, weights):
        for path, delta in deltas.items():
            total[path] = total.get(path, 0) + strength * weight_of(path, **w) * delta
    return total


def test_recipe_node_patches_the_recipe_exactly(model, recipe_set, tmp_path):
    from zsearch.comfyui.nodes import ZImageRecipeLoras

    recipe, deltas, weights = recipe_set
    base = H.base_weights(model)
    (patched_model,) = ZImageRecipeLoras().apply(model, str(recipe), strength=1.0)
    node = H.patched_weights(patched_model)
    H.assert_patched(base, node, intended(deltas, weights))
    # the same as `zsearch merge --recipe` loaded by ComfyUI's loader
    out = tmp_path / "merged.safetensors"
    assert main(["merge", "--recipe", str(recipe), "-o", str(out)]) == 0
    by_loader = loaded_by_comfyui(model, out)
    assert all(torch.allclose(node[k], by_loader[k], rtol=1e-5, atol=1e-5) for k in base)
    # strength scales every weight; unpatching gives the base back; the input MODEL is left alone
    (half,) = ZImageRecipeLoras().apply(model, f'  "{recipe}" ', strength=0.5)
    H.assert_patched(base, H.patched_weights(half), intended(deltas, weights, 0.5))
    assert all(torch.equal(H.base_weights(half)[k], base[k]) for k in base)
    assert not model.patches


def test_recipe_node_stacks_with_comfyuis_own_lora_loader(model, recipe_set, tmp_path):
    from zsearch.comfyui.nodes import ZImageRecipeLoras

    recipe, deltas, weights = recipe_set
    extra, d_extra = T.aitk(["layers.1.attention.to_q", "layers.0.feed_forward.w1"])
    (patched,) = ZImageRecipeLoras().apply(model, str(recipe), strength=1.0)
    stacked, log = H.load_with_comfyui(patched, extra, 0.3)
    assert not [line for line in log if "lora key not loaded" in line]
    want = intended(deltas, weights)
    for path, delta in d_extra.items():
        want[path] = want.get(path, 0) + 0.3 * delta
    H.assert_patched(H.base_weights(model), H.patched_weights(stacked), want)


def test_block_weights_node_tunes_a_recipe_and_writes_it_back(model, recipe_set, tmp_path):
    from zsearch.comfyui.nodes import FROM_RECIPE, ZImageLoraBlockWeights

    recipe, deltas, weights = recipe_set
    widgets = {"adaLN": 0.5, "to_q": 2.0, "to_k": 1.0, "to_v": 1.0, "to_out": 1.0, "w1": 1.0, "w2": 3.0, "w3": 1.0,
               "layers_0_9": 0.5, "layers_10_19": 1.0, "layers_20_29": 1.0}
    saved = tmp_path / "tuned.yaml"
    base = H.base_weights(model)
    (tuned,) = ZImageLoraBlockWeights().apply(model, FROM_RECIPE, 1.25, recipe=str(recipe), recipe_lora=0,
                                              save_recipe=str(saved), **widgets)
    node = H.patched_weights(tuned)
    # every widget multiplies the recipe's weight of LoRA 0
    w = weights[0]
    components = {c: w["components"].get(c, 1.0) * widgets.get(c, 1.0) for c in SUFFIX.values()}
    components["other"] = w["components"]["other"]
    layers = {i: w["layers"].get(i, 1.0) * 0.5 for i in range(3)}
    layers["noise_refiner"] = w["layers"]["noise_refiner"]
    H.assert_patched(base, node, {p: weight_of(p, w["ratio"] * 1.25, components, layers) * d
                                  for p, d in deltas[0].items()})
    # the written recipe keeps the other LoRAs and replays the node's weighting through `zsearch merge`
    written = load_recipe(saved)
    assert [lw.path.name for lw in written.loras] == ["a.safetensors", "b.safetensors", "c.safetensors"]
    assert written.loras[1].components == {"to_k": 0.25}
    only_first = tmp_path / "first.yaml"
    data = yaml.safe_load(saved.read_text())
    only_first.write_text(yaml.safe_dump({"loras": data["loras"][:1]}))
    out = tmp_path / "tuned.safetensors"
    assert main(["merge", "--recipe", str(only_first), "-o", str(out)]) == 0
    by_loader = loaded_by_comfyui(model, out)
    assert all(torch.allclose(node[k], by_loader[k], rtol=1e-5, atol=1e-5) for k in base)


def test_block_weights_node_without_a_recipe(model, tmp_path):
    from zsearch.comfyui.nodes import ZImageLoraBlockWeights

    tensors, deltas = T.aitk(["layers.0.adaLN_modulation.0", "layers.1.attention.to_v", "layers.2.feed_forward.w3"])
    lora = tmp_path / "one.safetensors"
    save_file(tensors, str(lora))
    widgets = {c: 1.0 for c in SUFFIX.values()} | {"layers_0_9": 1.0, "layers_10_19": 1.0, "layers_20_29": 1.0}
    widgets.update(adaLN=0.2, w3=-1.0)
    (tuned,) = ZImageLoraBlockWeights().apply(model, str(lora), 0.5, **widgets)
    H.assert_patched(H.base_weights(model), H.patched_weights(tuned),
                     {p: weight_of(p, 0.5, {"adaLN": 0.2, "w3": -1.0}) * d for p, d in deltas.items()})


@pytest.mark.parametrize("content, says", [
    ("loras: []\n", "a recipe needs a non-empty 'loras:' list"),
    ("loras:\n  - {path: a.safetensors, ratio: 1, components: {attention: 2}}\n", "unknown component 'attention'"),
    ("loras:\n  - {path: missing.safetensors, ratio: 1}\n", "file not found"),
    ("loras: [\n", "not valid YAML"),
])
def test_a_bad_recipe_is_one_line(model, tmp_path, content, says):
    from zsearch.comfyui.nodes import NodeError, ZImageLoraBlockWeights, ZImageRecipeLoras

    recipe = tmp_path / "bad.yaml"
    recipe.write_text(content)
    with pytest.raises(NodeError) as caught:
        ZImageRecipeLoras().apply(model, str(recipe))
    message = str(caught.value)
    assert says in message and "\n" not in message and message.startswith("zsearch: ")
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    with pytest.raises(NodeError, match="recipe"):
        ZImageRecipeLoras().apply(model, "")
    with pytest.raises(NodeError, match="recipe_lora 5 is out of range"):
        ok = tmp_path / "ok.yaml"
        ok.write_text("loras:\n  - {path: x.safetensors, ratio: 1}\n")
        ZImageLoraBlockWeights().apply(model, "(the recipe's LoRA)", 1.0, recipe=str(ok), recipe_lora=5)


def test_a_lora_of_another_width_is_refused_not_dropped(model, tmp_path):
    from zsearch.comfyui.nodes import NodeError, ZImageRecipeLoras

    wide = H.tiny_model(dim=48, n_layers=1, n_refiner_layers=0)
    tensors, _ = T.aitk(["layers.0.attention.to_q"])
    save_file(tensors, str(tmp_path / "a.safetensors"))
    (tmp_path / "r.yaml").write_text("loras:\n  - {path: a.safetensors, ratio: 1}\n")
    with pytest.raises(NodeError, match="not for this model"):
        ZImageRecipeLoras().apply(wide, str(tmp_path / "r.yaml"))


def test_input_types_are_well_formed(comfy):
    from zsearch.comfyui import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

    assert set(NODE_DISPLAY_NAME_MAPPINGS) == set(NODE_CLASS_MAPPINGS)
    assert set(NODE_DISPLAY_NAME_MAPPINGS.values()) == {"Z-Image LoRAs (zsearch recipe)", "Z-Image LoRA block weights"}
    for cls in NODE_CLASS_MAPPINGS.values():
        types = cls.INPUT_TYPES()
        assert set(types) <= {"required", "optional"} and types["required"]["model"] == ("MODEL",)
        assert cls.RETURN_TYPES == ("MODEL",) and isinstance(cls.CATEGORY, str) and callable(getattr(cls(), cls.FUNCTION))
        for name, spec in {**types["required"], **types.get("optional", {})}.items():
            assert isinstance(spec, tuple) and isinstance(spec[0], (str, list)), name
            if spec[0] in ("FLOAT", "INT"):
                assert spec[1]["min"] <= spec[1]["default"] <= spec[1]["max"], name
    block = NODE_CLASS_MAPPINGS["ZsearchLoraBlockWeights"].INPUT_TYPES()["required"]
    assert [n for n in block if block[n][0] == "FLOAT"] == [
        "ratio", "adaLN", "to_q", "to_k", "to_v", "to_out", "w1", "w2", "w3", "layers_0_9", "layers_10_19", "layers_20_29"]


def test_comfyui_loads_the_installed_shim(comfy, tmp_path, capsys):
    import nodes

    folder = tmp_path / "ComfyUI"
    for part in ("comfy", "custom_nodes"):
        (folder / part).mkdir(parents=True)
    (folder / "main.py").write_text("")
    assert main(["comfyui", "install", str(folder)]) == 0
    shim = folder / "custom_nodes" / SHIM_FOLDER
    assert len(shim.joinpath("__init__.py").read_text().splitlines()) == 2
    assert sys.executable in capsys.readouterr().out
    try:
        assert asyncio.run(nodes.load_custom_node(str(shim))) is True
        assert nodes.NODE_DISPLAY_NAME_MAPPINGS["ZsearchRecipeLoras"] == "Z-Image LoRAs (zsearch recipe)"
        assert nodes.NODE_CLASS_MAPPINGS["ZsearchLoraBlockWeights"].FUNCTION == "apply"
    finally:
        for name in ("ZsearchRecipeLoras", "ZsearchLoraBlockWeights"):
            nodes.NODE_CLASS_MAPPINGS.pop(name, None), nodes.NODE_DISPLAY_NAME_MAPPINGS.pop(name, None)


# -- without ComfyUI -------------------------------------------------------------------------------
def test_the_node_package_imports_only_pure_parts():
    code = ("import sys, zsearch.comfyui; heavy = [m for m in ('optuna', 'diffusers', 'open_clip', 'comfy', "
            "'zsearch.engine', 'zsearch.search', 'zsearch.study') if m in sys.modules]; print(heavy)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_install_refuses_what_is_not_comfyui(tmp_path, capsys):
    assert main(["comfyui", "install", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "not a ComfyUI folder" in err and str(tmp_path) in err
    portable = tmp_path / "ComfyUI"
    for part in ("comfy", "custom_nodes"):
        (portable / part).mkdir(parents=True)
    (portable / "main.py").write_text("")
    assert main(["comfyui", "install", str(tmp_path)]) == 2
    assert f"did you mean {portable}" in capsys.readouterr().err
    # a foreign folder of the shim's name is left as it was; reinstalling zsearch's own shim is fine
    foreign = portable / "custom_nodes" / SHIM_FOLDER
    foreign.mkdir()
    (foreign / "__init__.py").write_text("print('theirs')\n")
    assert main(["comfyui", "install", str(portable)]) == 2
    assert (foreign / "__init__.py").read_text() == "print('theirs')\n"
    (foreign / "__init__.py").unlink()
    assert main(["comfyui", "install", str(portable)]) == 0
    assert main(["comfyui", "install", str(portable)]) == 0
    assert sorted(p.name for p in foreign.iterdir()) == ["__init__.py"]


def test_tuned_weights_without_a_recipe_are_the_widgets():
    weights = tuned_weights(Path("x.safetensors"), 0.8, {"adaLN": 0.5}, {BANDS[0]: 1.0, BANDS[1]: 2.0, BANDS[2]: 2.0})
    assert weights.ratio == 0.8 and weights.components["adaLN"] == 0.5 and weights.components["w1"] == 1.0
    assert weights.layers == {"0-9": 1.0, "10-29": 2.0}
    base = LoraWeights(Path("x.safetensors"), 2.0, {"attn": 0.5}, {"0-4": 3.0, "context_refiner": 0.1})
    tuned = tuned_weights(Path("x.safetensors"), 1.0, {"to_q": 2.0}, {BANDS[0]: 1.0, BANDS[1]: 1.0, BANDS[2]: 0.5}, base)
    assert tuned.ratio == 2.0 and tuned.components["to_q"] == 1.0 and tuned.components["to_k"] == 0.5
    assert tuned.layers == {"0-4": 3.0, "5-19": 1.0, "20-29": 0.5, "context_refiner": 0.1}


def test_the_readme_workflow_fits_comfyuis_nodes(comfy):
    """configs/comfyui_workflow.json (API format): every node exists in ComfyUI or zsearch, every input
    is declared, every link joins an output to an input of the same type, every fixed choice is valid."""
    import nodes
    from zsearch.comfyui import NODE_CLASS_MAPPINGS

    classes = {**nodes.NODE_CLASS_MAPPINGS, **NODE_CLASS_MAPPINGS}
    workflow = json.loads((Path(__file__).resolve().parents[1] / "configs" / "comfyui_workflow.json").read_text())
    used = {node["class_type"] for node in workflow.values()}
    assert {"ZsearchRecipeLoras", "ZsearchLoraBlockWeights"} <= used
    for number, node in workflow.items():
        types = classes[node["class_type"]].INPUT_TYPES()
        declared = {**types["required"], **types.get("optional", {})}
        assert set(types["required"]) <= set(node["inputs"]), number
        for name, value in node["inputs"].items():
            spec = declared[name]
            if isinstance(value, list):  # a link: [source node, output index]
                source = classes[workflow[value[0]]["class_type"]]
                assert source.RETURN_TYPES[value[1]] == spec[0], (number, name)
            elif name in ("type", "weight_dtype", "sampler_name", "scheduler", "device", "lora"):
                assert value in spec[0], (number, name, value)
            elif spec[0] in ("FLOAT", "INT"):
                assert spec[1].get("min", value) <= value <= spec[1].get("max", value), (number, name)


def test_install_names_the_portable_builds_python(tmp_path, capsys):
    folder = tmp_path / "ComfyUI_windows_portable" / "ComfyUI"
    for part in ("comfy", "custom_nodes"):
        (folder / part).mkdir(parents=True)
    (folder / "main.py").write_text("")
    python = tmp_path / "ComfyUI_windows_portable" / "python_embeded" / "python.exe"
    python.parent.mkdir()
    python.write_text("")
    assert main(["comfyui", "install", str(folder)]) == 0
    out = capsys.readouterr().out
    assert f"{python} -m pip install" in out and sys.executable in out


def test_the_recipe_node_reruns_when_the_recipe_or_its_loras_change(tmp_path):
    from zsearch.comfyui.nodes import ZImageRecipeLoras

    lora = tmp_path / "a.safetensors"
    save_file(T.aitk(["layers.0.attention.to_q"])[0], str(lora))
    recipe = tmp_path / "r.yaml"
    recipe.write_text("loras:\n  - {path: a.safetensors, ratio: 1}\n")
    first = ZImageRecipeLoras.IS_CHANGED(recipe=str(recipe))
    assert ZImageRecipeLoras.IS_CHANGED(recipe=str(recipe)) == first
    save_file(T.aitk(["layers.0.attention.to_q", "layers.0.attention.to_k"])[0], str(lora))
    second = ZImageRecipeLoras.IS_CHANGED(recipe=str(recipe))
    assert second != first
    recipe.write_text("loras:\n  - {path: a.safetensors, ratio: 0.5}\n")
    assert ZImageRecipeLoras.IS_CHANGED(recipe=str(recipe)) != second
