"""What the review reads and writes of optuna-dashboard's preference page, in one place.

Public API where the dashboard has one: the choices (`PreferentialStudy.get_preferences`) and
the storage's own ids. Retiring a shown candidate is the page's "skip", which has no public
function: it uses `optuna_dashboard.preferential._system_attrs` (identical in 0.16 to 0.21;
pyproject pins optuna-dashboard below 0.22, and test_review checks the page reads it back).
"""

from __future__ import annotations

from optuna.trial import FrozenTrial, TrialState


class Page:
    """A preferential study's page: which renders are on show, and retiring one of them."""

    def __init__(self, storage, review):
        self.storage = storage
        self.review = review  # optuna_dashboard.preferential.PreferentialStudy
        self.study_id = storage.get_study_id_from_name(review.study_name)

    def _trial_id(self, trial: FrozenTrial) -> int:
        return self.storage.get_trial_id_from_study_id_trial_number(self.study_id, trial.number)

    def state(self) -> tuple[list[FrozenTrial], list[tuple[int, int]], list[FrozenTrial]]:
        """(every trial, the choices as (better, worse) trial numbers, the trials on show)."""
        from optuna_dashboard.preferential._system_attrs import get_skipped_trial_ids

        attrs = self.storage.get_study_system_attrs(self.study_id)  # before the trials, as the dashboard does
        preferences = [(b.number, w.number) for b, w in self.review.get_preferences(deepcopy=False)]
        trials = self.review.get_trials(deepcopy=False)
        worse = {w for _, w in preferences}
        skipped = set(get_skipped_trial_ids(attrs))
        active = [t for t in trials if t.state in (TrialState.RUNNING, TrialState.COMPLETE)
                  and t.number not in worse and self._trial_id(t) not in skipped]
        return trials, preferences, active

    def retire(self, trial: FrozenTrial) -> None:
        """Take a render off the page, as its "skip" button does."""
        from optuna_dashboard.preferential._system_attrs import report_skip

        report_skip(self.study_id, self._trial_id(trial), self.storage)
