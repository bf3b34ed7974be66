"""zsearch speaks with its own voice: while a command runs, the libraries it drives print no
progress bars, banners or INFO lines (diffusers, transformers, huggingface_hub, Optuna).

`quiet_libraries()` is entered once, at the command's edge (cli.main). A library imported before
it is silenced at once; one imported later is silenced the moment its logging module has loaded
(an import hook), or by the environment it reads when it loads. On exit everything is as it was.
Python warnings that only say a feature is experimental or will change are hidden too.
"""

from __future__ import annotations

import importlib.abc
import logging
import os
import sys
import warnings
from contextlib import contextmanager
from typing import Callable, Iterator

ENVIRONMENT = {
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # huggingface_hub, and transformers' bars (read at import)
    "TQDM_DISABLE": "1",  # every tqdm bar whose caller does not choose (read when tqdm loads)
    "DIFFUSERS_VERBOSITY": "error",
    "TRANSFORMERS_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
}


def _hf_logging(module) -> Callable[[], None]:
    """diffusers.utils.logging and transformers.utils.logging share one interface."""
    verbosity, bars = module.get_verbosity(), module.is_progress_bar_enabled()
    module.set_verbosity(logging.ERROR)
    module.disable_progress_bar()

    def undo() -> None:
        module.set_verbosity(verbosity)
        if bars:
            module.enable_progress_bar()
    return undo


def _hub(module) -> Callable[[], None]:
    was_off = module.are_progress_bars_disabled()
    module.disable_progress_bars()
    return (lambda: None) if was_off else module.enable_progress_bars


def _optuna(module) -> Callable[[], None]:
    """Optuna's stderr handler ('[I …] A new study created in RDB'); `zsearch run` keeps Optuna's
    lines in zsearch.log through its own handler (search/log.py)."""
    logger = logging.getLogger("optuna")
    before = list(logger.handlers)
    module.disable_default_handler()  # makes Optuna's handler first, so that none comes later
    removed = [handler for handler in before if handler not in logger.handlers]
    return lambda: [logger.addHandler(handler) for handler in removed]


# module -> silence(module) returning its undo
SILENCERS: dict[str, Callable] = {
    "diffusers.utils.logging": _hf_logging,
    "transformers.utils.logging": _hf_logging,
    "huggingface_hub.utils": _hub,
    "optuna.logging": _optuna,
}


def _silence(name: str, module) -> Callable[[], None]:
    try:
        return SILENCERS[name](module)
    except Exception:  # noqa: BLE001 - another version of the library: its lines are no error
        return lambda: None


class _ThenSilence(importlib.abc.Loader):
    """The real loader of a watched module, followed by its silencer."""

    def __init__(self, real, name: str, undo: list):
        self.real, self.name, self.undo = real, name, undo

    def create_module(self, spec):
        return self.real.create_module(spec)

    def exec_module(self, module) -> None:
        self.real.exec_module(module)
        self.undo.append(_silence(self.name, module))

    def __getattr__(self, attr):  # get_source, get_data, ... as the real loader has them
        return getattr(self.real, attr)


class _SilenceOnImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: hands a watched module's real spec out with `_ThenSilence` as loader."""

    def __init__(self, undo: list):
        self.undo = undo

    def find_spec(self, name, path, target=None):
        if name not in SILENCERS:
            return None
        for finder in sys.meta_path:
            # every finder of ours is skipped, not only this one: a nested quiet_libraries() (the
            # demo's build inside a command) would otherwise ask the other, which asks this one, ...
            if isinstance(finder, _SilenceOnImport) or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _ThenSilence(spec.loader, name, self.undo)
                return spec
        return None


@contextmanager
def quiet_libraries() -> Iterator[None]:
    saved_env = {key: os.environ.get(key) for key in ENVIRONMENT}
    os.environ.update(ENVIRONMENT)
    undo = [_silence(name, sys.modules[name]) for name in SILENCERS if name in sys.modules]
    finder = _SilenceOnImport(undo)
    sys.meta_path.insert(0, finder)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*is an experimental feature.*")
            warnings.filterwarnings("ignore", message=".*is experimental \\(supported from.*")
            warnings.filterwarnings("ignore", category=FutureWarning)
            yield
    finally:
        if finder in sys.meta_path:
            sys.meta_path.remove(finder)
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        with warnings.catch_warnings():  # e.g. huggingface_hub: "cannot enable progress bars"
            warnings.simplefilter("ignore")
            for step in reversed(undo):
                step()
