"""Which trial is the best: the one rule that `zsearch best`, the report, the review and
validation all follow.

In order of evidence: the training best (the top score; on a Pareto front the best weighted
score), then validation's choice among the top trials while the training best is among those it
validated, then confirmation's choice (the best mean over many new seed sets, search/confirm.py)
while the training best has been confirmed, then a person's choice in `zsearch review`. Partial
(pruned) trials are never chosen.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional

import optuna
from optuna.trial import FrozenTrial, TrialState

from zsearch.study import records

TRAINING, VALIDATION, CONFIRMATION, PERSON = "training score", "validation", "confirmation", "person"


@dataclass(frozen=True)
class Choice:
    trial: FrozenTrial  # the best
    train_best: FrozenTrial  # the best on the training jobs alone
    by: str  # TRAINING, VALIDATION, CONFIRMATION or PERSON
    review: Optional[dict] = None  # the review's record when a person chose
    validation_current: bool = False  # the training best is among the validated trials


def _complete_at(trials: list[FrozenTrial], number) -> Optional[FrozenTrial]:
    if isinstance(number, int) and 0 <= number < len(trials) and trials[number].state == TrialState.COMPLETE:
        return trials[number]
    return None


def training_best(study: optuna.Study, complete: list[FrozenTrial]) -> FrozenTrial:
    """The top training score; on a Pareto front, the member with the best weighted score."""
    if len(study.directions) > 1:
        front = [t for t in study.best_trials if records.can_be_best(t)] or complete
        return max(front, key=records.trial_score)
    return max(complete, key=records.trial_score)  # the first of equal scores, as Optuna picks


def choose_best(study: optuna.Study) -> Optional[Choice]:
    """The best trial and how it was chosen; None before any trial completed fully."""
    trials = study.get_trials(deepcopy=False)
    complete = records.candidates(t for t in trials if t.state == TrialState.COMPLETE)
    if not complete:
        return None
    train_best = training_best(study, complete)
    choice = Choice(trial=train_best, train_best=train_best, by=TRAINING)
    validation = records.read_validation(study)
    if validation is not None and validation.row(train_best.number) is not None:
        # A new training best found after the last validation takes over until validation runs again.
        chosen = _complete_at(trials, validation.chosen)
        choice = Choice(trial=chosen or train_best, train_best=train_best, by=VALIDATION if chosen else TRAINING,
                        validation_current=True)
    confirmation = records.read_confirmation(study)
    if confirmation is not None and confirmation.row(train_best.number) is not None:
        # More jobs than validation's: a lucky training best is found out here. A new training
        # best takes over until it is confirmed (the first contender a night confirms).
        chosen = _complete_at(trials, confirmation.chosen)
        if chosen is not None and records.can_be_best(chosen):
            choice = Choice(trial=chosen, train_best=train_best, by=CONFIRMATION,
                            validation_current=choice.validation_current)
    review = records.read_review(study)
    chosen = _complete_at(trials, review.get("chosen")) if review else None
    if chosen is not None:
        choice = Choice(trial=chosen, train_best=train_best, by=PERSON, review=review,
                        validation_current=choice.validation_current)
    return choice


def top_candidates(trials: Iterable[FrozenTrial], top_k: int, held_out: Optional[dict[int, float]] = None
                   ) -> list[FrozenTrial]:
    """The baseline, then the top-k other fully evaluated trials: those with a held-out score first
    (by that score), then the rest by training score."""
    complete = records.candidates(t for t in trials if t.state == TrialState.COMPLETE)
    baseline = records.baseline_of(complete)
    held_out = held_out or {}
    others = [t for t in complete if t is not baseline]
    others.sort(key=lambda t: (t.number in held_out, held_out.get(t.number, 0.0), records.trial_score(t) or 0.0),
                reverse=True)
    return ([baseline] if baseline else []) + others[:top_k]
