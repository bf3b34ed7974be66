"""No two trials of a shared study at the same point, however many workers ask at once.

Workers that ask at the same moment see the same finished trials, and neither sees the other's
new trial yet. A Gaussian process then often proposes the very same point in each, whatever the
seeds: its last local search starts from the best trial and is deterministic. So each trial
publishes its point first, then reads every other trial's. Of two trials that chose alike at
least one sees the other (each wrote before it read), and whoever sees a clash asks again, now
with the other point pending in the model; after a few tries the point is drawn at random.

The read costs little at any study size. Running and queued trials come from the database itself
(a query filtered by state), read first, so a trial that finishes meanwhile is seen running or
finished. Finished trials come from the study's own trial list, which Optuna keeps in the process
(it rereads only unfinished and new trials), and a finished trial never changes: each worker
computes its points once and keeps them. Nothing is shared between workers but the storage.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Optional

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

POINT = "zsearch:point"  # system attribute: a hash of the point a trial was given, before its params exist
TRIES = 3  # asks of the wrapped sampler before a random point
UNFINISHED = (TrialState.RUNNING, TrialState.WAITING)
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def point_key(params: dict[str, Any], names) -> Optional[str]:
    """The same string for the same values of `names` (floats exactly), None when one is missing."""
    if any(name not in params for name in names):
        return None
    text = json.dumps(sorted((name, params[name]) for name in names))
    return hashlib.sha1(text.encode()).hexdigest()


def trial_keys(trial: FrozenTrial, names) -> set[str]:
    """The points a trial holds: the one it published, and the one its (fixed) params give."""
    keys = set()
    if POINT in trial.system_attrs:
        keys.add(trial.system_attrs[POINT])
    key = point_key({**(trial.system_attrs.get("fixed_params") or {}), **trial.params}, names)
    if key is not None:
        keys.add(key)
    return keys


class FinishedPoints:
    """The points of the finished trials seen so far, for one search space (its names)."""

    def __init__(self, names):
        self.names = list(names)
        self.numbers: set[int] = set()
        self.keys: set[str] = set()

    def add(self, trials: list[FrozenTrial]) -> None:
        for trial in trials:
            if trial.number not in self.numbers:  # finished trials never change: once each
                # keys before number: a thread asking at the same time that sees the number sees its keys
                self.keys |= trial_keys(trial, self.names)
                self.numbers.add(trial.number)


class DistinctPoints(optuna.samplers.BaseSampler):
    """A sampler whose relative points never repeat another trial's in the same study."""

    def __init__(self, inner: optuna.samplers.BaseSampler, storage: optuna.storages.BaseStorage,
                 seed: Optional[int] = None):
        self.inner = inner
        self.storage = storage  # the study's own storage (or another object on the same database)
        self._random = optuna.samplers.RandomSampler(seed=seed)
        self._finished = FinishedPoints([])  # this worker's own memory of the finished trials

    def infer_relative_search_space(self, study, trial) -> dict[str, BaseDistribution]:
        return self.inner.infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space) -> dict[str, Any]:
        names = sorted(search_space)
        for _ in range(TRIES):
            params = self.inner.sample_relative(study, trial, search_space)
            if not params or self._claim(study, trial, params, names):
                return params
        params = {name: self._random.sample_independent(study, trial, name, dist)
                  for name, dist in search_space.items()}
        self._claim(study, trial, params, names)
        return params

    def _claim(self, study, trial, params: dict[str, Any], names) -> bool:
        """Publish the point, then check that no other trial has it (write first, then read)."""
        key = point_key(params, names)
        study_id = self.storage.get_study_id_from_name(study.study_name)
        trial_id = self.storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        self.storage.set_trial_system_attr(trial_id, POINT, key)
        return not self.taken(study, study_id, trial.number, key, names)

    def taken(self, study, study_id: int, number: int, key: str, names) -> bool:
        """Whether a trial other than `number` holds the point `key`: running, queued or finished."""
        # first the unfinished, from the database: a trial that finishes after this read is
        # among the finished read next, so none slips between the two
        for other in self.storage.get_all_trials(study_id, deepcopy=False, states=UNFINISHED):
            if other.number != number and key in trial_keys(other, names):
                return True
        finished = self._finished  # one object throughout, whatever another thread replaces
        if finished.names != list(names):  # another search space: other keys
            finished = self._finished = FinishedPoints(names)
        finished.add(study.get_trials(deepcopy=False, states=FINISHED))
        return key in finished.keys

    def sample_independent(self, study, trial, param_name, param_distribution) -> Any:
        return self.inner.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study, trial) -> None:
        self.inner.before_trial(study, trial)

    def after_trial(self, study, trial, state, values) -> None:
        self.inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.inner.reseed_rng()
        self._random.reseed_rng()
