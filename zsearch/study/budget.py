"""The trial budget, shared by every worker of a study.

A worker checks that the budget has room before it asks Optuna for a trial, but two workers that
check at the same moment both start one. The storage numbers trials one at a time, so the trial
numbers settle who came first. The budget belongs to the first `total` trials (by number) that have
not failed. A trial numbered after those gives its place up at once, before it renders anything.
"""

from __future__ import annotations

import optuna
from optuna.trial import TrialState

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
TAKING_A_PLACE = (*FINISHED, TrialState.RUNNING, TrialState.WAITING)  # a failed trial frees its place


def finished_count(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def has_room(study: optuna.Study, total: int) -> bool:
    """Whether this worker may start a trial: the finished and running ones leave room."""
    running = len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
    return finished_count(study) + running < total


def is_surplus(study: optuna.Study, number: int, total: int) -> bool:
    """Whether trial `number` came after the budget was taken by trials numbered before it."""
    earlier = [t for t in study.get_trials(deepcopy=False, states=TAKING_A_PLACE) if t.number < number]
    return len(earlier) >= total
