"""Shared by the search tests: a config over the session's demo assets, and CLI runners."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

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
        "search": {"trials": 6, "sampler": "tpe", "seed": 0, "bands": 3},
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
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}


def zsearch(*args, cwd=None, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "zsearch.cli", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, env=env(), timeout=timeout, stdin=subprocess.DEVNULL)


def start(*args, cwd=None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "zsearch.cli", *map(str, args)], cwd=cwd, env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
