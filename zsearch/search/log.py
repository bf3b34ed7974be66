"""The search's log: results/<name>/zsearch.log, and the lines it writes about trials and validation."""

from __future__ import annotations

import logging
import sys
import warnings
from contextlib import contextmanager
from typing import Iterator, Optional

import optuna
from optuna.trial import TrialState

from zsearch.settings.schema import Config
from zsearch.study import records
from zsearch.outputs.best import trial_score
from zsearch.util.atomic import make_folder

log = logging.getLogger("zsearch")


@contextmanager
def logging_to(config: Config) -> Iterator[None]:
    """Everything into results/<name>/zsearch.log, warnings also on the terminal, while inside;
    then the loggers as they were and the file closed (Windows cannot delete an open log)."""
    make_folder(config.out_dir, f"{config.source}: output")
    to_file = logging.FileHandler(config.out_dir / "zsearch.log")
    to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    to_terminal = logging.StreamHandler(sys.stderr)
    to_terminal.setLevel(logging.WARNING)
    to_terminal.setFormatter(logging.Formatter("zsearch: %(message)s"))
    saved = []
    for name, handlers in (("zsearch", (to_file, to_terminal)), ("optuna", (to_file,))):
        logger = logging.getLogger(name)
        saved.append((logger, handlers, logger.level, logger.propagate))
        for handler in handlers:
            logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False  # the progress bar speaks on the terminal; the log file has the rest
    optuna.logging.disable_default_handler()
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    try:
        yield
    finally:
        for logger, handlers, level, propagate in saved:
            for handler in handlers:
                logger.removeHandler(handler)
            logger.setLevel(level)
            logger.propagate = propagate
        to_file.close()


def trial_marker(trial: optuna.trial.FrozenTrial) -> str:
    """' [partial: stopped after 4 of 12 jobs; stand-in score]' for a trial the pruner stopped, else ''."""
    note = trial.user_attrs.get(records.STOPPED_NOTE)
    if trial.state == TrialState.COMPLETE and records.is_partial(trial):
        return f" [{note or 'partial: stopped early'}; stand-in score]"
    if trial.state == TrialState.PRUNED and note:
        return f" [{note}]"
    return ""


def log_trial(trial: optuna.trial.FrozenTrial, best) -> None:
    if trial.state == TrialState.COMPLETE and best is not None:
        log.info("trial %d: score %.5f%s (best %.5f, trial %d) %s", trial.number, trial_score(trial),
                 trial_marker(trial), trial_score(best), best.number, trial.user_attrs.get(records.SECONDS))
    else:
        log.info("trial %d: %s%s %s", trial.number, trial.state.name.lower(), trial_marker(trial),
                 trial.user_attrs.get(records.FAIL_REASON, ""))


def log_validation(record: Optional[dict]) -> None:
    if record is None:
        log.warning("validation: nothing to validate (no complete trial)")
        return
    for row in record["rows"]:
        label = "baseline" if row["baseline"] else f"trial {row['trial']}"
        log.info("validation: %s train %.5f validation %.5f (gap %+.5f)", label, row["train"],
                 row["validation"], row["gap"])
    log.info("validation chose trial %d", record["chosen"])
