"""Reading a user's YAML file (config or recipe) with one-line errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from zsearch.errors import UserError


def read_yaml(path: Path, what: str, example: str = "") -> Any:
    """Parse `path`; every failure is a UserError naming the file, e.g. what="config"."""
    hint = f" (e.g. {example})" if example else ""
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: {what} not found; check the path{hint}") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a folder; give the {what}'s .yaml file") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a UTF-8 text file; give the {what}'s .yaml file, saved as UTF-8") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read the {what} ({exc.strerror or exc.__class__.__name__})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark else ""
        raise UserError(f"{path}: not valid YAML{line}; fix the syntax") from None
