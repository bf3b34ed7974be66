"""`zsearch comfyui install COMFYUI_FOLDER`: the two-line shim that loads zsearch's ComfyUI nodes.

The nodes live in zsearch (zsearch/comfyui/); ComfyUI finds them through
custom_nodes/zsearch_nodes/__init__.py, which imports them from the Python that runs ComfyUI.
"""

from __future__ import annotations

import sys
from pathlib import Path

from zsearch.errors import UserError
from zsearch.util.atomic import write_text_atomic

SHIM_FOLDER = "zsearch_nodes"
SHIM = ("# zsearch's ComfyUI nodes, written by `zsearch comfyui install`; zsearch must be installed in ComfyUI's Python\n"
        "from zsearch.comfyui import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: F401\n")


def register(sub) -> None:
    p = sub.add_parser("comfyui", help="ComfyUI nodes that apply zsearch recipes",
                       description="zsearch's ComfyUI nodes (apply a recipe, tune one LoRA's block weights); "
                                   "`install` makes a ComfyUI folder load them.")
    actions = p.add_subparsers(dest="comfyui_command", required=True, metavar="ACTION",
                               help="install: add the nodes to a ComfyUI folder")
    install = actions.add_parser("install", help="add zsearch's nodes to a ComfyUI folder (a two-line shim)",
                                 description="Add zsearch's nodes to a ComfyUI folder: a two-line shim in "
                                             "custom_nodes/zsearch_nodes/ that imports them from zsearch.")
    install.add_argument("folder", type=Path, metavar="COMFYUI_FOLDER", help="the folder that holds ComfyUI's main.py")
    install.set_defaults(func=cmd_install)


def check_comfyui_folder(folder: Path) -> Path:
    """`folder` if it is a ComfyUI installation (main.py, comfy/, custom_nodes/), else a UserError."""
    if all((folder / part).exists() for part in ("main.py", "comfy", "custom_nodes")):
        return folder
    inner = folder / "ComfyUI"  # the Windows portable build: ComfyUI_windows_portable/ComfyUI
    hint = f"; did you mean {inner}?" if (inner / "main.py").is_file() else \
        "; give the folder that holds ComfyUI's main.py and custom_nodes/"
    raise UserError(f"{folder}: not a ComfyUI folder (no main.py, comfy/ and custom_nodes/ in it){hint}")


def install_shim(folder: Path) -> Path:
    """Write custom_nodes/zsearch_nodes/__init__.py atomically; a folder of that name holding
    something else is refused, never overwritten."""
    target = check_comfyui_folder(folder) / "custom_nodes" / SHIM_FOLDER / "__init__.py"
    if target.parent.exists():
        theirs = target.exists() and "zsearch.comfyui" not in target.read_text(encoding="utf-8", errors="replace")
        others = [p.name for p in target.parent.iterdir() if p.name not in ("__init__.py", "__pycache__")]
        if theirs or others:
            raise UserError(f"{target.parent}: already exists and is not zsearch's shim; move it away and "
                            f"run the same command again")
    write_text_atomic(target, SHIM)
    return target


def python_hint(folder: Path) -> str:
    """Which Python must hold zsearch, and how to put it there."""
    portable = folder.resolve().parent / "python_embeded" / "python.exe"  # sic: the portable build's spelling
    python = str(portable) if portable.is_file() else "the Python that runs ComfyUI"
    source = Path(__file__).resolve().parents[2]
    package = f"-e \"{source}\"" if (source / "pyproject.toml").is_file() else "zsearch"
    here = f"this command ran with {sys.executable}; if ComfyUI runs with it too, zsearch is there already"
    return (f"ComfyUI imports zsearch from its own Python: install zsearch into {python} "
            f"({python if portable.is_file() else 'python'} -m pip install {package}); {here}")


def cmd_install(args) -> int:
    target = install_shim(args.folder)
    print(f"wrote {target}")
    print(python_hint(args.folder))
    print("restart ComfyUI; the nodes are under loaders/zsearch: \"Z-Image LoRAs (zsearch recipe)\" and "
          "\"Z-Image LoRA block weights\"")
    return 0
