"""Module boundaries the code relies on: the engine never depends on the config schema."""

from __future__ import annotations

import ast
from pathlib import Path

ENGINE = Path(__file__).resolve().parents[1] / "zsearch" / "engine"


def _imported_modules(source: str, package: str = "zsearch.engine") -> set[str]:
    """Absolute names of the modules a file of `package` imports (relative imports resolved)."""
    package = package.split(".")
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *(node.module.split(".") if node.module else [])])
            names.add(module)
            names.update(f"{module}.{a.name}" for a in node.names)
    return names


def test_engine_does_not_import_the_config_schema():
    files = sorted(ENGINE.glob("*.py"))
    assert len(files) >= 5
    offenders = {p.name: sorted(n for n in _imported_modules(p.read_text()) if n.startswith("zsearch.config"))
                 for p in files}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_import_resolver_sees_a_config_import():
    """The check above would catch a config import written either way in an engine module."""
    assert "zsearch.config" in _imported_modules("from ..config import Config\n")
    assert "zsearch.config" in _imported_modules("import zsearch.config\n")
    assert "zsearch.config" in _imported_modules("from .. import config\n")
    assert "zsearch.engine.device" in _imported_modules("from .device import pick_device\n")
