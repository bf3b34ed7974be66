"""Provenance of a searched LoRA: what `best.safetensors` records about how it was found.

safetensors metadata is a flat str -> str map, so each entry is one JSON document under a
`zsearch.` key. A user (or a tool) can read them with `safe_open(path).metadata()` and know the
recipe to replay, the scores it earned and against what baseline and noise, the prompts and seeds
it was judged on, the base model and the scorers.
"""

from __future__ import annotations

import json
import math
from typing import Any

from zsearch import __version__
from zsearch.lora.recipe import Recipe, recipe_to_dict


def provenance_metadata(config, recipe: Recipe, scores: dict[str, Any]) -> dict[str, str]:
    """safetensors metadata for the merge of `recipe` found by the search of `config`.

    `scores`: whatever is known, e.g. {"train": 0.81, "validation": 0.79, "baseline": 0.77,
    "noise": 0.004}; values may be numbers or nested mappings/lists of them. Recipe paths are
    written relative to the config's output folder, where best.safetensors lies.
    """
    prompts: dict[str, Any] = {"train": list(config.prompt_list)}
    seeds: dict[str, Any] = {"train": list(config.seeds)}
    validation = getattr(config, "validation", None)
    if validation is not None:  # the held-out set; by default the same prompts with other seeds
        held_out = getattr(config, "validation_prompts", None) or getattr(validation, "prompts", None)
        if isinstance(held_out, (list, tuple)) and held_out:
            prompts["validation"] = [str(p) for p in held_out]
        elif held_out:
            prompts["validation"] = str(held_out)  # a prompts file not read yet
        else:
            prompts["validation"] = list(config.prompt_list)
        seeds_for = getattr(validation, "seeds_for", None)
        held_seeds = seeds_for(list(config.seeds)) if callable(seeds_for) else getattr(validation, "seeds", None)
        if held_seeds is not None:
            seeds["validation"] = list(held_seeds)
    return {
        "zsearch.version": __version__,
        "zsearch.study": config.name,
        "zsearch.lora.recipe": _json(recipe_to_dict(recipe, relative_to=config.out_dir)),
        "zsearch.scores": _json(scores),
        "zsearch.prompts": _json(prompts),
        "zsearch.seeds": _json(seeds),
        "zsearch.model": str(config.model),
        "zsearch.scorers": _json(scorer_names(config)),
        "zsearch.objective": _json(config.objective.model_dump(mode="json", exclude_none=True)),
        **({"zsearch.terms": _json(config.term_weights())} if callable(getattr(config, "term_weights", None)) else {}),
    }


def scorer_names(config) -> dict[str, str]:
    """Which models judged the renders: the CLIP scorer, and an identity scorer when configured."""
    clip = config.scorer
    names = {"clip": f"{clip.model}" + (f" ({clip.pretrained})" if clip.pretrained else "") + f", {clip.style}"}
    identity = getattr(config, "identity", None)
    if identity is not None:
        names["identity"] = str(getattr(identity, "model", identity))
    for judge in getattr(config, "judges", None) or []:
        names[judge.name] = ", ".join(str(v) for v in (judge.model, judge.checkpoint) if v) or "default"
    return names


def _json(value: Any) -> str:
    return json.dumps(_finite(value), sort_keys=False, default=str)


def _finite(value: Any) -> Any:
    """NaN/Inf are not JSON: written as null so any reader can parse the metadata."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        return _finite(value.item())  # a numpy or torch scalar
    return value
