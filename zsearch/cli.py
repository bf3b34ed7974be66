"""The `zsearch` command: one sub-command per module in `zsearch.commands`.

Every user mistake surfaces as a UserError: one line on stderr, exit code 2, no traceback.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys

from zsearch import __version__
from zsearch.errors import UserError
from zsearch.util.quiet import quiet_libraries

# Sub-command modules; each has `register(subparsers)` that sets `func` on its parser.
COMMAND_MODULES = ("lora_tools", "search_tools", "report_tools", "review", "comfyui")


class OneLineParser(argparse.ArgumentParser):
    """argparse's mistakes as zsearch's: one line, exit 2 (sub-command parsers inherit this)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}; see `{self.prog} --help`\n")


# OS errors on a user's own paths, and what to do about each; anything else is a bug to report.
OS_HINTS = {code: hint for code, hint in {
    errno.EACCES: "permission denied; check the folder's permissions or choose another",
    errno.EPERM: "not permitted; check the folder's permissions or choose another",
    errno.EROFS: "the disk is read-only; choose a writable folder",
    errno.ENOSPC: "no space left on the disk; free some and run the same command again (nothing was overwritten)",
    getattr(errno, "EDQUOT", None): "disk quota exceeded; free some space and run the same command again",
    errno.ENOTDIR: "a file stands where a folder is needed; choose another path",
    errno.EISDIR: "a folder stands where a file is needed; choose another path",
    errno.EEXIST: "a file stands where a folder is needed; choose another path",  # mkdir on a file
    errno.ENAMETOOLONG: "the path is too long; choose a shorter one",
}.items() if code is not None}


def os_error_line(exc: OSError):
    hint = OS_HINTS.get(exc.errno)
    if hint is None:
        return None
    where = exc.filename if exc.filename is not None else ""
    return f"{where}: {hint}" if where else hint


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="zsearch", description="Find the best block weights for Z-Image-Turbo LoRAs, and merge them.")
    parser.add_argument("--version", action="version", version=f"zsearch {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"zsearch.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from zsearch.util.atomic import check_working_folder
    try:
        check_working_folder()  # before the commands import torch: it cannot load from a deleted folder
    except UserError as exc:
        print(f"zsearch: error: {exc}", file=sys.stderr)
        return 2
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with quiet_libraries():  # zsearch's own lines only: no library bars, banners or INFO
            code = int(args.func(args) or 0)
        sys.stdout.flush()  # inside the try: a closed pipe shows here, not at exit
        return code
    except UserError as exc:
        print(f"zsearch: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `zsearch inspect ... | head`: the reader has all it wanted
        _silence_stdout()
        return 0
    except OSError as exc:
        line = os_error_line(exc)
        if line is None:
            raise
        print(f"zsearch: error: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("zsearch: interrupted", file=sys.stderr)
        return 130


def _silence_stdout() -> None:
    """Point stdout at the null device, so Python's final flush into the closed pipe stays quiet."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


if __name__ == "__main__":
    sys.exit(main())
