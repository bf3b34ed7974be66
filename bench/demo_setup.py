"""configs/demo.yaml for a benchmark: its assets and outputs moved into the bench's folder, with the
bench's own changes, read as `zsearch run` reads it (a helper of the bench scripts, not one itself)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from zsearch.search import session  # noqa: E402
from zsearch.settings.load import load_config  # noqa: E402


def demo_config(folder: Path, assets_dir: Path, changes: dict[str, Any], search: Optional[dict[str, Any]] = None,
                file_name: str = "demo.yaml"):
    """The demo's config with top-level `changes` and `search` keys changed (None drops a key)."""
    text = (REPO / "configs" / "demo.yaml").read_text().replace("../results/demo-assets", str(assets_dir))
    data = yaml.safe_load(text)
    data.update(changes)
    for key, value in (search or {}).items():
        if value is None:
            data["search"].pop(key, None)
        else:
            data["search"][key] = value
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / file_name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    config = load_config(path)
    session.prepare(config)  # reads the prompts
    return config
