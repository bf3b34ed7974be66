"""A config read for a command that renders: the demo's assets are built first when it asks.

The demo's tiny models are inputs like any other: they are made here, at the command's edge,
so the search itself never knows whether its model is the demo's or a real one.
"""

from __future__ import annotations

from pathlib import Path

from zsearch.settings.load import check_writable_folder, load_config
from zsearch.settings.schema import Config


def load_for_rendering(path: Path) -> Config:
    config = load_config(path)
    if config.demo is not None:
        from zsearch.demo.build import build_demo
        check_writable_folder(config.demo, f"{config.source}: demo")
        build_demo(config.demo)
    return config
