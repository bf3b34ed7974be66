"""Provenance metadata: every entry is a string, parses back, and replays the recipe."""

import json
from types import SimpleNamespace

import torch
from safetensors import safe_open

from zsearch import __version__
from zsearch.settings.load import parse_config
from zsearch.lora.write import save_lora
from zsearch.outputs.provenance import provenance_metadata
from zsearch.lora.recipe import LoraWeights, Recipe, parse_recipe


def _config(tmp_path, **extra):
    data = {
        "name": "prov",
        "model": "Tongyi-MAI/Z-Image-Turbo",
        "loras": [{"path": "loras/style.safetensors", "ratio": 0.8, "search": {"ratio": [0.0, 1.5]}}],
        "references": "refs",
        "prompts": ["a cat", "a dog"],
        "seeds": [3, 4],
        "scorer": {"model": "ViT-B-32", "pretrained": "laion2b_s34b_b79k"},
        "output": "out/prov",
        **extra,
    }
    return parse_config(data, tmp_path / "c.yaml")


def test_metadata_records_recipe_scores_prompts_seeds_model_scorers_version(tmp_path):
    config = _config(tmp_path)
    lora = tmp_path / "loras" / "style.safetensors"
    recipe = Recipe(loras=[LoraWeights(path=lora, ratio=0.65, components={"attn": 1.3},
                                       layers={"0-9": 0.5})], info={"trial": 7})
    scores = {"train": 0.812, "validation": 0.79, "baseline": 0.774, "noise": 0.009,
              "per_prompt": [0.8, float("nan")]}
    metadata = provenance_metadata(config, recipe, scores)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())

    # Written and read back through safetensors, as a user would.
    path = tmp_path / "out" / "prov" / "best.safetensors"
    save_lora({"x": torch.zeros(1)}, path, metadata=metadata)
    with safe_open(str(path), framework="pt") as f:
        read = f.metadata()

    assert read["zsearch.version"] == __version__
    assert read["zsearch.model"] == "Tongyi-MAI/Z-Image-Turbo"
    assert json.loads(read["zsearch.scores"]) == {"train": 0.812, "validation": 0.79, "baseline": 0.774,
                                                  "noise": 0.009, "per_prompt": [0.8, None]}
    # The default validation set: the same prompts, seeds the search never used.
    assert json.loads(read["zsearch.prompts"]) == {"train": ["a cat", "a dog"], "validation": ["a cat", "a dog"]}
    assert json.loads(read["zsearch.seeds"]) == {"train": [3, 4], "validation": config.validation.seeds_for([3, 4])}
    assert not set(json.loads(read["zsearch.seeds"])["validation"]) & {3, 4}
    assert json.loads(read["zsearch.scorers"]) == {"clip": "ViT-B-32 (laion2b_s34b_b79k), centroid"}
    assert json.loads(read["zsearch.objective"]) == {"style": 1.0, "prompt": 0.3, "pareto": False}

    # The recipe replays from the metadata beside the LoRAs: file names, no folder of this machine.
    data = json.loads(read["zsearch.lora.recipe"])
    assert data["loras"][0]["path"] == "style.safetensors"
    replayed = parse_recipe(data, "metadata", base_dir=lora.parent)
    got = replayed.loras[0]
    assert got.path.resolve() == lora.resolve()
    assert (got.ratio, got.components, got.layers) == (0.65, {"attn": 1.3}, {"0-9": 0.5})
    assert replayed.info == {"trial": 7}


def test_a_configured_validation_set_is_recorded(tmp_path):
    config = _config(tmp_path, validation={"prompts": ["a held-out owl"], "seeds": [11, 12]})
    recipe = Recipe(loras=[LoraWeights(path=tmp_path / "loras" / "style.safetensors", ratio=1.0)])
    metadata = provenance_metadata(config, recipe, {})
    assert json.loads(metadata["zsearch.prompts"]) == {"train": ["a cat", "a dog"], "validation": ["a held-out owl"]}
    assert json.loads(metadata["zsearch.seeds"]) == {"train": [3, 4], "validation": [11, 12]}
    assert json.loads(metadata["zsearch.scores"]) == {}


def test_an_identity_scorer_is_named_when_the_config_has_one(tmp_path):
    config = _config(tmp_path)
    fields = ("name", "prompt_list", "seeds", "model", "scorer", "objective", "out_dir")
    view = SimpleNamespace(**{key: getattr(config, key) for key in fields},
                           identity=SimpleNamespace(model="facebook/dinov2-small"))
    recipe = Recipe(loras=[LoraWeights(path=tmp_path / "loras" / "style.safetensors", ratio=1.0)])
    scorers = json.loads(provenance_metadata(view, recipe, {})["zsearch.scorers"])
    assert scorers == {"clip": "ViT-B-32 (laion2b_s34b_b79k), centroid", "identity": "facebook/dinov2-small"}
