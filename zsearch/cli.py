"""The `zsearch` command: one sub-command per module in `zsearch.commands`.

Every user mistake surfaces as a UserError: one line on stderr, exit code 2, no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__
from .errors import UserError

# Sub-command modules; each has `register(subparsers)` that sets `func` on its parser.
COMMAND_MODULES = ("lora_tools", "search_tools", "report_tools", "review")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zsearch", description="Find the best block weights for Z-Image-Turbo LoRAs, and merge them.")
    parser.add_argument("--version", action="version", version=f"zsearch {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"zsearch.commands.{name}").register(sub)
    return parser


def _quiet_library_warnings() -> None:
    """Libraries flag features as experimental and load with progress bars; zsearch's own
    progress bar and log file say what a user needs."""
    import warnings
    warnings.filterwarnings("ignore", message=".*is an experimental feature.*")
    warnings.filterwarnings("ignore", message=".*is experimental \\(supported from.*")
    warnings.filterwarnings("ignore", category=FutureWarning)
    import os
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def main(argv: list[str] | None = None) -> int:
    _quiet_library_warnings()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"zsearch: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("zsearch: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
