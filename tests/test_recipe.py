"""Recipes: parsing, expansion to per-module scales, round trip, and every error."""

from pathlib import Path

import pytest
import yaml

from zsearch.lora.blocks import Module, all_modules
from zsearch.errors import UserError
from zsearch.lora.recipe import LoraWeights, load_recipe, parse_recipe, save_recipe


def parse(loras, base=Path("/base")):
    return parse_recipe({"loras": loras}, "r.yaml", base)


def weights(**kw):
    return parse([{"path": "a.safetensors", "ratio": 2.0, **kw}]).loras[0]


def test_scale_is_ratio_times_component_times_layer():
    lw = weights(components={"attn": 0.5, "w1": 3.0}, layers={"0-9": 0.1, "10-19": 10.0, "noise_refiner": 7.0})
    assert lw.scale(Module("layers", 0, "to_q")) == pytest.approx(2.0 * 0.5 * 0.1)
    assert lw.scale(Module("layers", 9, "w1")) == pytest.approx(2.0 * 3.0 * 0.1)
    assert lw.scale(Module("layers", 10, "to_out")) == pytest.approx(2.0 * 0.5 * 10.0)
    assert lw.scale(Module("layers", 25, "w2")) == pytest.approx(2.0)  # unnamed layer and component: 1.0
    assert lw.scale(Module("noise_refiner", 1, "adaLN")) == pytest.approx(2.0 * 7.0)
    assert lw.scale(Module("context_refiner", 0, "to_k")) == pytest.approx(2.0 * 0.5)  # refiner not named


def test_specific_component_overrides_its_groups_and_smaller_group_overrides_larger():
    lw = weights(components={"attn": 0.5, "qk": 0.25, "to_k": 4.0, "ffn": 3.0})
    got = {c: lw.component_weight(c) for c in ("to_q", "to_k", "to_v", "to_out", "w1", "w2", "w3", "adaLN")}
    assert got == {"to_q": 0.25, "to_k": 4.0, "to_v": 0.5, "to_out": 0.5, "w1": 3.0, "w2": 3.0, "w3": 3.0,
                   "adaLN": 1.0}


def test_order_of_keys_does_not_change_group_precedence():
    a = weights(components={"qk": 0.25, "attn": 0.5}).component_weight("to_q")
    b = weights(components={"attn": 0.5, "qk": 0.25}).component_weight("to_q")
    assert a == b == 0.25


def test_single_layer_keys_and_module_scales():
    lw = weights(layers={"5": 0.0, "6-7": 3.0})
    scales = lw.module_scales([m.path for m in all_modules()])
    assert scales["layers.5.attention.to_q"] == 0.0
    assert scales["layers.6.feed_forward.w2"] == pytest.approx(6.0)
    assert scales["layers.7.adaLN_modulation.0"] == pytest.approx(6.0)
    assert scales["layers.8.adaLN_modulation.0"] == pytest.approx(2.0)
    assert len(scales) == len(all_modules())
    with pytest.raises(ValueError):
        lw.module_scales(["layers.0.attention.qkv"])


def test_relative_paths_resolve_against_the_recipe_folder(tmp_path):
    (tmp_path / "sub").mkdir()
    path = tmp_path / "sub" / "r.yaml"
    path.write_text("loras:\n  - {path: ../loras/a.safetensors, ratio: 1}\n  - {path: /abs/b.safetensors, ratio: 0.5}\n")
    recipe = load_recipe(path)
    assert recipe.loras[0].path.resolve() == (tmp_path / "loras" / "a.safetensors").resolve()
    assert recipe.loras[1].path == Path("/abs/b.safetensors")


def test_save_and_load_round_trip(tmp_path):
    lora_file = tmp_path / "loras" / "a.safetensors"
    original = parse([{"path": str(lora_file), "ratio": 0.8, "components": {"attn": 0.7, "w1": 1.2},
                       "layers": {"0-9": 0.6, "context_refiner": 1.5}}])
    original.info = {"score": 0.31, "trial": 12}
    out = tmp_path / "out" / "best.yaml"
    save_recipe(original, out)
    data = yaml.safe_load(out.read_text())
    assert data["loras"][0]["path"] == "../loras/a.safetensors"  # relative to the recipe's own folder
    again = load_recipe(out)
    assert again.loras[0].path.resolve() == lora_file.resolve()
    assert (again.loras[0].ratio, again.loras[0].components, again.loras[0].layers) == \
        (0.8, {"attn": 0.7, "w1": 1.2}, {"0-9": 0.6, "context_refiner": 1.5})
    assert again.info == {"score": 0.31, "trial": 12}


@pytest.mark.parametrize("data, needle", [
    ({}, "non-empty 'loras:'"),
    ({"loras": []}, "non-empty 'loras:'"),
    ([1, 2], "non-empty 'loras:'"),
    ({"loras": [{"path": "a"}], "extra": 1}, "unknown key 'extra'"),
    ({"loras": [{"path": "a", "ratio": 1}], "info": [1, 2]}, "'info' must be a mapping"),
    ({"loras": ["a.safetensors"]}, "must be a mapping"),
    ({"loras": [{"ratio": 1}]}, "'path' is required"),
    ({"loras": [{"path": "a"}]}, "'ratio' is required"),
    ({"loras": [{"path": "a", "ratio": "high"}]}, "loras[0].ratio: 'high' is not a number"),
    ({"loras": [{"path": "a", "ratio": True}]}, "is not a number"),
    ({"loras": [{"path": "a", "ratio": float("nan")}]}, "is not a number"),
    ({"loras": [{"path": "a", "ratio": 1, "weight": 2}]}, "unknown key 'weight'"),
    ({"loras": [{"path": "a", "ratio": 1, "components": {"attention": 1}}]}, "unknown component 'attention'"),
    ({"loras": [{"path": "a", "ratio": 1, "components": [1]}]}, "components: must be a mapping"),
    ({"loras": [{"path": "a", "ratio": 1, "components": {"w1": None}}]}, "components.w1"),
    ({"loras": [{"path": "a", "ratio": 1, "layers": {"0-9": 1, "5-12": 1}}]}, "'0-9' and '5-12' overlap at layer 5"),
    ({"loras": [{"path": "a", "ratio": 1, "layers": {"3": 1, "0-4": 1}}]}, "overlap at layer 3"),
    ({"loras": [{"path": "a", "ratio": 1, "layers": {"25-30": 1}}]}, "'25-30' is outside 0-29"),
    ({"loras": [{"path": "a", "ratio": 1, "layers": {"9-3": 1}}]}, "'9-3' is outside"),
    ({"loras": [{"path": "a", "ratio": 1, "layers": {"first": 1}}]}, "bad layer key 'first'"),
    ({"loras": [{"path": "a", "ratio": 1, "layers": {"1-": 1}}]}, "bad layer key '1-'"),
    ({"loras": [{"path": "a", "ratio": 1, "layers": {"-3": 1}}]}, "bad layer key '-3'"),
    ({"loras": [{"path": "a", "ratio": 1, "layers": {"refiner": 1}}]}, "bad layer key 'refiner'"),
    ({"loras": [{"path": "a", "ratio": 1, "layers": "0-9"}]}, "layers: must be a mapping"),
    ({"loras": [{"path": "a", "ratio": 1}, {"path": "b", "ratio": 1, "layers": {"0-9": "x"}}]},
     "loras[1].layers.0-9: 'x' is not a number"),
])
def test_every_error_names_the_key(data, needle):
    with pytest.raises(UserError) as info:
        parse_recipe(data, "r.yaml", Path("/base"))
    message = str(info.value)
    assert needle in message and message.startswith("r.yaml") and "\n" not in message


def test_file_errors(tmp_path):
    with pytest.raises(UserError, match="recipe not found"):
        load_recipe(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("loras:\n  - path: a\n    ratio: [1,\n")
    with pytest.raises(UserError, match="not valid YAML at line"):
        load_recipe(bad)


def test_unnamed_weights_default_to_one():
    lw = LoraWeights(path=Path("a"), ratio=1.5)
    assert {lw.scale(m) for m in all_modules()} == {1.5}


def test_other_weighs_only_the_modules_outside_the_blocks():
    from pathlib import Path
    from zsearch.lora.recipe import LoraWeights
    weights = LoraWeights(Path("a.safetensors"), ratio=0.8, components={"other": 0.5, "attn": 2.0},
                          layers={"0-9": 3.0, "noise_refiner": 4.0})
    scales = weights.module_scales(["t_embedder.mlp.0", "all_final_layer.2-1.linear", "layers.0.attention.to_q",
                                    "layers.0.feed_forward.w1"])
    assert scales == {"t_embedder.mlp.0": pytest.approx(0.4), "all_final_layer.2-1.linear": pytest.approx(0.4),
                      "layers.0.attention.to_q": pytest.approx(0.8 * 2.0 * 3.0),
                      "layers.0.feed_forward.w1": pytest.approx(0.8 * 3.0)}
    assert LoraWeights(Path("a"), ratio=0.8).module_scales(["cap_embedder.1"]) == {"cap_embedder.1": 0.8}


def test_other_is_searched_only_when_tied():
    from pathlib import Path
    from types import SimpleNamespace
    from zsearch.settings.schema import LoraSearch
    from zsearch.study.space import SearchSpace

    def space(tie):
        lora = SimpleNamespace(path=Path("style.safetensors"), ratio=1.0,
                               search=LoraSearch(components=(0.0, 2.0), layers="none", tie=tie))
        return SearchSpace(SimpleNamespace(loras=[lora], search=SimpleNamespace(bands=3)))

    assert "style.other" not in space([]).describe()
    tied = space(["other", "attn"])
    assert tied.describe()["style.other"] == [0.0, 2.0]
    recipe = tied.recipe({"style.other": 1.7})
    assert recipe.loras[0].module_scales(["cap_embedder.1"]) == {"cap_embedder.1": pytest.approx(1.7)}
    assert tied.params_of(recipe)["style.other"] == pytest.approx(1.7)
