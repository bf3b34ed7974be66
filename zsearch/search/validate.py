"""`zsearch validate`: re-score the top trials of an existing study on the held-out set."""

from __future__ import annotations

from typing import Optional

import optuna

from zsearch.settings.schema import Config
from zsearch.outputs.best import export_best
from zsearch.search.log import log_validation, logging_to
from zsearch.search.session import Session
from zsearch.search.trust import validate


def validate_study(config: Config) -> Optional[optuna.trial.FrozenTrial]:
    """Re-score the top trials of the config's study on the validation set; rewrite best.*."""
    session = Session(config)
    study = session.study  # opened (and checked against its inputs) before anything is written
    with logging_to(config):
        engine = session.engine
        log_validation(validate(config, study, session.space, engine, session.scorers))
        return export_best(config, study, session.store, force=True)
