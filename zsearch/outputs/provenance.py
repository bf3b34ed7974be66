"""Provenance of a searched LoRA: what `best.safetensors` records about how it was found.

safetensors metadata is a flat str -> str map, so each entry is one JSON document under a
`zsearch.` key. A user (or a tool) can read them with `safe_open(path).metadata()` and know the
recipe to replay, the scores it earned and against what baseline and noise, the prompts and seeds
it was judged on, the base model and the scorers.

The file travels (shared, uploaded), so no entry names a folder of the user's machine: LoRAs,
local models and checkpoints appear by file or folder name, with sha256 where that identifies
them (`zsearch.sources`, `zsearch.model_sha256`).
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any, Optional

from zsearch import __version__
from zsearch.lora.recipe import Recipe
from zsearch.lora.write import shareable_name, shareable_recipe


def provenance_metadata(config, recipe: Recipe, scores: dict[str, Any]) -> dict[str, str]:
    """safetensors metadata for the merge of `recipe` found by the search of `config`.

    `scores`: whatever is known, e.g. {"train": 0.81, "validation": 0.79, "baseline": 0.77,
    "noise": 0.004}; values may be numbers or nested mappings/lists of them. Recipe paths are
    written as file names (their sha256 are in `zsearch.sources`).
    """
    prompts: dict[str, Any] = {"train": list(config.prompt_list)}
    seeds: dict[str, Any] = {"train": list(config.seeds)}
    validation = getattr(config, "validation", None)
    if validation is not None:  # the held-out set; by default the same prompts with other seeds
        held_out = getattr(config, "validation_prompts", None) or getattr(validation, "prompts", None)
        if isinstance(held_out, (list, tuple)) and held_out:
            prompts["validation"] = [str(p) for p in held_out]
        elif held_out:
            prompts["validation"] = shareable_name(str(held_out))  # a prompts file not read yet
        else:
            prompts["validation"] = list(config.prompt_list)
        seeds_for = getattr(validation, "seeds_for", None)
        held_seeds = seeds_for(list(config.seeds)) if callable(seeds_for) else getattr(validation, "seeds", None)
        if held_seeds is not None:
            seeds["validation"] = list(held_seeds)
    return {
        "zsearch.version": __version__,
        "zsearch.study": config.name,
        "zsearch.lora.recipe": _json(shareable_recipe(recipe)),
        "zsearch.scores": _json(scores),
        "zsearch.prompts": _json(prompts),
        "zsearch.seeds": _json(seeds),
        "zsearch.model": shareable_name(str(config.model)),
        **_model_hash(str(config.model)),
        "zsearch.scorers": _json(scorer_names(config)),
        "zsearch.objective": _json(config.objective.model_dump(mode="json", exclude_none=True)),
        **({"zsearch.terms": _json(config.term_weights())} if callable(getattr(config, "term_weights", None)) else {}),
    }


def how_to_load(path) -> list[str]:
    """How to use a searched LoRA: alone, at 1.0, in place of its sources (it holds their ratios)."""
    from pathlib import Path
    name = Path(path).name
    return [f"load `{name}` alone, at strength 1.0, in place of the source LoRAs (their ratios and block "
            f"weights are in it):",
            f"  ComfyUI: copy it into `ComfyUI/models/loras/`, then a `LoraLoaderModelOnly` node with "
            f"`lora_name: {name}`, `strength_model: 1.0`",
            f"  diffusers: `pipe.load_lora_weights(\"{Path(path).as_posix()}\")` (weight 1.0), no other LoRA loaded"]


def scorer_names(config) -> dict[str, str]:
    """Which models judged the renders: the CLIP scorer, and an identity scorer when configured."""
    clip = config.scorer
    pretrained = f" ({shareable_name(str(clip.pretrained))})" if clip.pretrained else ""
    names = {"clip": f"{shareable_name(str(clip.model))}{pretrained}, {clip.style}"}
    identity = getattr(config, "identity", None)
    if identity is not None:
        names["identity"] = shareable_name(str(getattr(identity, "model", identity)))
    for judge in getattr(config, "judges", None) or []:
        names[judge.name] = ", ".join(shareable_name(str(v)) for v in (judge.model, judge.checkpoint) if v) or "default"
    return names


def _model_hash(model: str) -> dict[str, str]:
    """A local model folder by content (the sha256 of its configs' hashes, as the study's fingerprint
    sees it): its name alone says little. A hub id names itself."""
    from pathlib import Path

    from zsearch.settings.fingerprint import FileHashes, model_identity
    if not Path(model).expanduser().is_dir():
        return {}
    identity = model_identity(model, FileHashes())
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    return {"zsearch.model_sha256": digest}


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


# ---------------------------------------------------------------- reading it back (`zsearch inspect`)

def read_provenance(metadata: dict[str, str]) -> Optional[dict[str, Any]]:
    """The zsearch entries of a LoRA file's metadata, parsed (JSON, or YAML for a merge's recipe);
    None for a file zsearch did not write. An entry that does not parse is kept as its text."""
    entries = {key.removeprefix("zsearch."): value for key, value in metadata.items() if key.startswith("zsearch.")}
    if not entries:
        return None
    import yaml
    out: dict[str, Any] = {}
    for key, text in entries.items():
        try:
            out[key] = yaml.safe_load(text) if key == "lora.recipe" else json.loads(text)
        except (ValueError, yaml.YAMLError):
            out[key] = text
    return out


def provenance_lines(prov: dict[str, Any]) -> list[str]:
    """How a zsearch output was made, for `zsearch inspect`: what, scores, chosen by, recipe, sources."""
    made = f"made by zsearch {prov.get('version', '?')}"
    if prov.get("study"):
        made += f" (study {prov['study']}" + (f", trial {prov['trial']})" if "trial" in prov else ")")
    else:
        made += " (`zsearch merge`)"
    chosen = prov.get("chosen_by")
    if isinstance(chosen, dict) and chosen.get("by"):
        made += f"; chosen by {_chosen_text(chosen)}"
    lines = ["", "  provenance", f"  {made}"]
    scores = prov.get("scores")
    if isinstance(scores, dict) and scores:
        lines.append(f"  scores  {_scores_text(scores)}")
    recipe = prov.get("lora.recipe")
    for entry in (recipe.get("loras") if isinstance(recipe, dict) else None) or []:
        lines.append(f"  recipe  {_weights_text(entry)}")
    for source in prov.get("sources") if isinstance(prov.get("sources"), list) else []:
        if isinstance(source, dict):
            lines.append(f"  source  {source.get('file')}  sha256 {str(source.get('sha256'))[:16]}…")
    if prov.get("model"):
        lines.append(f"  model   {prov['model']}" + (f"  sha256 {str(prov['model_sha256'])[:16]}…"
                                                     if prov.get("model_sha256") else ""))
    if isinstance(prov.get("scorers"), dict):
        lines.append("  judges  " + "; ".join(f"{k}: {v}" for k, v in prov["scorers"].items()))
    return lines


def _chosen_text(chosen: dict) -> str:
    if chosen["by"] == "person":
        return f"a person in the review ({chosen.get('choices', '?')} choices)"
    return {"validation": "held-out validation", "training score": "the training score"}.get(chosen["by"], str(chosen["by"]))


def _scores_text(scores: dict) -> str:
    def number(key: str) -> Optional[str]:
        value = scores.get(key)
        return f"{value:.4f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    parts = [f"{label} {number(key)}" for key, label in (
        ("train", "train"), ("baseline", "baseline"), ("validation", "held-out"),
        ("baseline_validation", "baseline held-out"), ("noise_std", "noise σ")) if number(key) is not None]
    gain = scores.get("gain")
    if isinstance(gain, dict) and isinstance(gain.get("gain"), (int, float)):
        where = "held-out" if gain.get("on") == "validation" else "training"
        parts.append(f"gain {gain['gain']:+.4f} on {where} jobs ({gain.get('verdict', '?')})")
    return ", ".join(parts) or "-"


def _weights_text(entry: dict) -> str:
    text = f"{entry.get('path')}  ratio {entry.get('ratio')}"
    for key in ("components", "layers"):
        values = entry.get(key)
        if isinstance(values, dict) and values:
            text += f"  {key} " + ", ".join(f"{k} {v:.3g}" if isinstance(v, (int, float)) else f"{k} {v}"
                                             for k, v in values.items())
    return text
