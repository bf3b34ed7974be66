"""Shared by the search tests: a config over the session's demo assets, and CLI runners."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

from zsearch.demo.spec import CLIP_CONFIG

DEMO_CLIP_WIDTH = CLIP_CONFIG["model_cfg"]["embed_dim"]  # the tiny CLIP's embedding width

REPO = Path(__file__).resolve().parents[1]


def demo_config(tmp_path: Path, assets, name: str = "t", **overrides) -> Path:
    """Write a config over the demo assets into tmp_path; outputs go to tmp_path/out."""
    search = {"ratio": [0.0, 1.5], "components": [0.0, 2.0], "layers": "bands", "tie": ["attn"]}
    data = {
        "name": name,
        "model": str(assets.model_dir),
        "loras": [{"path": str(p), "ratio": 1.0, "search": dict(search)} for p in assets.loras],
        "references": str(assets.references),
        "prompts": str(assets.prompts),
        "seeds": list(assets.seeds),
        "render": {"steps": assets.steps, "width": assets.width, "height": assets.height, "batch": 6},
        "scorer": {"model": assets.clip_model, "pretrained": None},
        "search": {"trials": 6, "sampler": "auto", "seed": 0, "bands": 3},
        "validation": {"top_k": 0},  # tests of the search loop compare best.* with the training best
        "noise": {"repeats": 0},
        "output": str(tmp_path / "out" / name),
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def env() -> dict:
    # One torch thread: tiny models gain nothing from more, and workers share 2 cores.
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def zsearch(*args, cwd=None, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "zsearch.cli", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, env=env(), timeout=timeout, stdin=subprocess.DEVNULL)


def start(*args, cwd=None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "zsearch.cli", *map(str, args)], cwd=cwd, env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)


# The known-optimum problem: references rendered at hidden weights W_STAR that lie inside an
# 8-parameter search space (per LoRA: ratio, attn, ffn, adaLN). As in real use the references
# are other images than the search's jobs: seeds of their own (on the search's subjects, as the
# demo's references are; see zsearch.demo.build).
KNOWN_SPACE = {"ratio": [0.0, 1.5], "components": [0.25, 1.75], "layers": "none", "tie": ["attn", "ffn"]}
W_STAR = [
    {"ratio": 0.8, "components": {"attn": 1.5, "ffn": 0.6, "adaLN": 1.0}},
    {"ratio": 0.6, "components": {"attn": 0.5, "ffn": 1.4, "adaLN": 0.4}},
]
KNOWN_REFERENCE_SEEDS = [91001, 91002, 91003]


def known_optimum_config(tmp_path: Path, assets, **overrides):
    """A config whose references are renders of W_STAR on its prompts with KNOWN_REFERENCE_SEEDS,
    and that recipe."""
    from zsearch.settings.load import check_inputs, load_config
    from zsearch.lora.recipe import LoraWeights, Recipe
    from zsearch.search.render_recipe import render_recipe

    path = demo_config(tmp_path, assets, **overrides)
    data = yaml.safe_load(path.read_text())
    for lora in data["loras"]:
        lora["search"] = dict(KNOWN_SPACE)
    refs = tmp_path / "w_star_refs"
    data["references"] = str(refs)
    path.write_text(yaml.safe_dump(data))
    reference_path = tmp_path / "w_star_refs.yaml"
    reference_path.write_text(yaml.safe_dump({**data, "name": "w_star_refs", "seeds": KNOWN_REFERENCE_SEEDS,
                                              "prompts": list(assets.prompt_list),
                                              "output": str(tmp_path / "out" / "w_star_refs")}))
    refs.mkdir(exist_ok=True)
    from PIL import Image
    Image.new("RGB", (64, 64)).save(refs / "placeholder.png")  # lets the configs load before the renders exist
    config, reference_config = load_config(path), load_config(reference_path)
    check_inputs(config)
    check_inputs(reference_config)
    searched = {*config.seeds, *config.validation.seeds_for(config.seeds),
                *(seed for seeds in config.noise.seed_sets(config.seeds) for seed in seeds)}
    assert not searched & set(KNOWN_REFERENCE_SEEDS)
    w_star = Recipe([LoraWeights(path=p, **w) for p, w in zip(assets.loras, W_STAR)])
    render_recipe(reference_config, w_star, refs)
    (refs / "placeholder.png").unlink()
    (refs / "grid.png").unlink()
    return config, w_star


def loaded(path: Path):
    """A config read and checked as `zsearch run` does before it opens a study."""
    from zsearch.settings.load import check_inputs, load_config
    config = load_config(path)
    check_inputs(config)
    return config


def wait_until(condition, timeout: float, interval: float = 0.2) -> bool:
    """Poll `condition()` until true or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return bool(condition())


def plant_best(config, score: float = 10.0):
    """The config's study, opened, with a finished trial scoring `score` on each of its 6 jobs: every
    later trial is worse, so the pruner stops them early."""
    from optuna.distributions import FloatDistribution
    from optuna.trial import create_trial

    from zsearch.study import records
    from zsearch.study.opening import open_study
    from zsearch.study.space import SearchSpace

    space = SearchSpace(config)
    study = open_study(config, space)
    jobs = len(config.prompt_list) * len(config.seeds)
    assert jobs == 6
    dists = {n: FloatDistribution(lo, hi) for n, (lo, hi) in space.describe().items()}
    study.add_trial(create_trial(params=space.baseline(), value=score, distributions=dists,
                                 intermediate_values={i: score for i in range(jobs)},
                                 user_attrs={records.SCORE: score, records.JOBS: [score] * jobs}))
    return study
