"""The house rules, read from the source: layers import downward only, no import circles, no
private attributes of other libraries, and each package's own limits (its __init__ says them)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "zsearch"

# Lowest first: a module may import its own layer and the layers below it, never one above.
LAYERS = [
    {"errors", "util", "__init__"},
    {"lora"},
    {"engine", "judges"},
    {"settings"},
    {"study"},
    {"outputs"},
    {"search"},
    {"review", "report", "demo", "comfyui"},
    {"commands"},
    {"cli"},
]
# Libraries a package must not know, whatever layer it sits on.
FORBIDDEN = {
    "engine": {"optuna", "optuna_dashboard", "zsearch.settings", "zsearch.judges"},
    "judges": {"optuna", "optuna_dashboard", "zsearch.settings"},
    "lora": {"optuna", "diffusers", "open_clip", "zsearch.engine"},
    "util": {"optuna", "diffusers", "open_clip", "torch"},
    "report": {"zsearch.search", "zsearch.review", "zsearch.commands"},
    "demo": {"zsearch.search", "zsearch.study", "zsearch.review", "zsearch.report", "zsearch.commands"},
    "comfyui": {"optuna", "diffusers", "open_clip", "zsearch.engine", "zsearch.study", "zsearch.search"},
}
# Private names of other libraries that zsearch relies on, each pinned and tested where it is used.
ALLOWED_PRIVATE = {
    # optuna-dashboard has no public API to retire a shown trial (the page's own "skip");
    # identical in 0.16-0.21, pinned below 0.22 in pyproject.toml, tested in test_review.py.
    ("zsearch.review.dashboard", "optuna_dashboard.preferential._system_attrs"),
}


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _imports(module: str, path: Path) -> set[str]:
    """Absolute names a module imports, at any depth of the file (relative imports resolved)."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            target = ".".join([*base, *(node.module.split(".") if node.module else [])])
            names.add(target)
            names.update(f"{target}.{a.name}" for a in node.names)
    return names


def _top_level_imports(module: str, path: Path) -> set[str]:
    """Only the imports run when the module is imported (not those inside functions)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    body = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    for node in tree.body:  # `if TYPE_CHECKING:` blocks never run
        if isinstance(node, ast.Try):
            body += [n for n in node.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    return _imports(module, _as_file(path, body))


def _as_file(path: Path, nodes) -> Path:
    class _Source:  # a stand-in path whose text is the given nodes
        name = path.name

        def read_text(self, encoding=None):
            return "\n".join(ast.unparse(n) for n in nodes)
    return _Source()


def _layer(module: str) -> int:
    top = module.split(".")[1] if module.count(".") else "__init__"
    return next(i for i, layer in enumerate(LAYERS) if top in layer)


MODULES = _modules()


def _internal(names: set[str]) -> set[str]:
    return {n for n in names if n in MODULES}


def test_every_package_sits_on_a_layer_and_says_what_it_owns():
    packages = {m.split(".")[1] for m in MODULES if m.count(".")}
    on_layers = set().union(*LAYERS)
    assert packages <= on_layers, f"place these on a layer: {sorted(packages - on_layers)}"
    for name in sorted(p for p in packages if (PACKAGE / p).is_dir()):
        doc = ast.get_docstring(ast.parse((PACKAGE / name / "__init__.py").read_text(encoding="utf-8")))
        assert doc and "not import" in doc, f"zsearch/{name}/__init__.py: say what it owns and must not import"


def test_imports_run_downward_only():
    upward = {m: sorted(t for t in _internal(_imports(m, p)) if _layer(t) > _layer(m))
              for m, p in MODULES.items() if m != "zsearch"}
    assert {m: t for m, t in upward.items() if t} == {}


def test_no_import_circles():
    graph = {m: {t for t in _internal(_top_level_imports(m, p)) if t != m} for m, p in MODULES.items()}
    for module in graph:  # a package importing its own modules is not a circle
        if MODULES[module].name == "__init__.py":
            graph[module] = {t for t in graph[module] if not t.startswith(module + ".")}
    state: dict[str, int] = {}
    circles = []

    def visit(node, trail):
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                circles.append(trail[trail.index(nxt):] + [nxt] if nxt in trail else [node, nxt])
            elif nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert circles == []


def test_packages_know_only_what_they_may():
    offenders = {}
    for module, path in MODULES.items():
        package = module.split(".")[1] if module.count(".") else ""
        banned = FORBIDDEN.get(package, set())
        if module.startswith("zsearch.comfyui"):  # the node must import lightly: what runs at import
            names = _top_level_imports(module, path)
        else:
            names = _imports(module, path)
        hits = sorted(n for n in names if any(n == b or n.startswith(b + ".") for b in banned))
        if hits:
            offenders[module] = hits
    assert offenders == {}


def test_nothing_imports_the_command_line():
    users = {m for m, p in MODULES.items() if "zsearch.cli" in _imports(m, p) and m != "zsearch.cli"}
    assert users == set()


def _private_uses(module: str, path: Path) -> set[str]:
    """`lib._name` attributes and `from lib._mod import` of libraries other than zsearch."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            if node.module != "__future__" and not node.module.startswith("zsearch") and (
                    any(part.startswith("_") for part in node.module.split("."))
                    or any(a.name.startswith("_") and not a.name.startswith("__") for a in node.names)):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if any(p.startswith("_") for p in a.name.split(".")))
        elif isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            owner = node.value
            if not (isinstance(owner, ast.Name) and owner.id in {"self", "cls"}):
                found.add(f"{ast.unparse(owner)}.{node.attr}")
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) in {"getattr", "hasattr", "setattr"}:
            if len(node.args) > 1 and isinstance(node.args[1], ast.Constant) and str(node.args[1].value).startswith("_"):
                found.add(f"getattr(..., {node.args[1].value!r})")
    return found


def test_no_private_attributes_of_other_libraries():
    offenders = {m: sorted(u for u in _private_uses(m, p) if (m, u) not in ALLOWED_PRIVATE)
                 for m, p in MODULES.items()}
    assert {m: u for m, u in offenders.items() if u} == {}


def test_no_private_names_across_zsearch_modules():
    """A module's `_helper` is its own: another module that needs it gets a public name."""
    offenders = {}
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("zsearch")):
                private = [a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
                if private:
                    offenders.setdefault(module, []).extend(private)
    assert offenders == {}


@pytest.mark.parametrize("source, expected", [
    ("from ..settings.schema import Config\n", "zsearch.settings.schema"),
    ("import zsearch.settings.schema\n", "zsearch.settings.schema"),
    ("from .. import settings\n", "zsearch.settings"),
    ("from .device import pick_device\n", "zsearch.engine.device"),
])
def test_the_import_reader_resolves_every_spelling(tmp_path, source, expected):
    """The checks above would catch an import written any of these ways in an engine module."""
    path = tmp_path / "x.py"
    path.write_text(source)
    assert expected in _imports("zsearch.engine.x", path)


def test_the_private_reader_sees_each_form(tmp_path):
    path = tmp_path / "x.py"
    path.write_text("from lib._impl import f\nimport lib._impl\nx = study._storage\ny = getattr(m, '_hidden', 0)\n"
                    "z = self._mine\n")
    assert _private_uses("zsearch.x", path) == {"lib._impl", "study._storage", "getattr(..., '_hidden')"}
