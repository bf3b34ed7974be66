"""The next trial, asked ahead: its point is chosen while the current trial renders.

A model-guided sampler (the GP) takes a tenth of a second to seconds to choose a point; asked in
turn, the GPU waits for it between two renders. Here, once the running trial's point is in the
storage, a thread chooses the next point, with the running trial pending in the model, and
queues it as a WAITING trial with that point fixed (what `study.enqueue_trial` does). The next
`study.ask()` of any worker takes it as it takes a queued baseline, so the trial then runs under
study.optimize like any other: in trial-number order, its clock started when it is taken, with
the heartbeat, the callbacks and the budget check of every trial.

- A queued trial is not RUNNING: when this worker dies, nothing waits for it; the resumed run or
  another worker takes it (its point still fixed, or chosen then if the thread had not fixed it).
- It never takes the budget's last place: one is queued only while the finished, running and
  queued trials leave room for it (and, in a night, while two more trials fit).
- One this run leaves queued when it ends (cap reached, night over, Ctrl-C, failures) is taken
  back and failed, marked not run (records.SURPLUS) with the reason: it is not counted as a trial.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable, Optional

import optuna
from optuna.trial import TrialState

from zsearch.study import records
from zsearch.study.budget import FINISHED
from zsearch.study.workers import WORKER_ID

log = logging.getLogger("zsearch")

FIXED = "fixed_params"  # Optuna's system attribute of a queued trial: the values its suggests return
NOT_RUN = "not run: asked ahead of time, and the run ended before it (cap reached, night over or stopped)"


class AskAhead:
    """Owns the one trial this worker queues ahead: `start` once the running trial's point is
    stored, `wait` before the next `study.optimize`, `close` when the loop ends."""

    def __init__(self, study: optuna.Study, storage: Optional[optuna.storages.BaseStorage], total: Optional[int] = None,
                 fits: Callable[[], bool] = lambda: True):
        self.study, self.storage, self.total, self.fits = study, storage, total, fits
        self.queued: Optional[int] = None  # the trial id of this run's queued trial
        self._thread: Optional[threading.Thread] = None

    def start(self) -> None:
        """Choose the next point in the background, when it has a place to run."""
        if self.storage is None or self._thread is not None or not self._worth_it():
            return
        self._thread = threading.Thread(target=self._queue_next, name="zsearch-ask-ahead", daemon=True)
        self._thread.start()

    def wait(self) -> None:
        """Block until the queued trial's point is fixed: the only time the GPU waits for it."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def close(self) -> None:
        """The loop is over: a trial still queued will not run here; take it back, marked not run."""
        self.wait()
        if self.queued is None:
            return
        trial_id, self.queued = self.queued, None
        try:
            # taken back unless a worker (this one included) took it: that worker runs it
            if self.storage.get_trial(trial_id).state != TrialState.WAITING \
                    or not self.storage.set_trial_state_values(trial_id, TrialState.RUNNING):
                return
            for key, value in ((records.WORKER, WORKER_ID), (records.SURPLUS, True), (records.FAIL_REASON, NOT_RUN)):
                self.storage.set_trial_user_attr(trial_id, key, value)
            self.storage.set_trial_state_values(trial_id, TrialState.FAIL)
            log.info("trial %d %s", self.storage.get_trial(trial_id).number, NOT_RUN)
        except Exception as exc:  # noqa: BLE001 - the run's own end (or its error) matters more
            log.warning("the trial asked ahead could not be taken back (%s: %s)", type(exc).__name__, exc)

    def _worth_it(self) -> bool:
        trials = self.study.get_trials(deepcopy=False)
        waiting = [t for t in trials if t.state == TrialState.WAITING]
        if any(t.user_attrs.get(records.ASKED_AHEAD) == WORKER_ID for t in waiting):
            return False  # one ahead is enough
        if any(records.ASKED_AHEAD not in t.user_attrs for t in waiting):
            return False  # a queued baseline, start point or retry runs next anyway
        if self.total is not None:
            taken = sum(t.state in (*FINISHED, TrialState.RUNNING, TrialState.WAITING) for t in trials)
            if taken >= self.total:
                return False
        return self.fits()

    def _queue_next(self) -> None:
        try:
            study_id = self.storage.get_study_id_from_name(self.study.study_name)
            template = optuna.trial.create_trial(state=TrialState.WAITING,
                                                 user_attrs={records.ASKED_AHEAD: WORKER_ID})
            trial_id = self.storage.create_new_trial(study_id, template_trial=template)
            self.queued = trial_id
            frozen = self.storage.get_trial(trial_id)
            sampler = self.study.sampler
            space = sampler.infer_relative_search_space(self.study, frozen)
            params = sampler.sample_relative(self.study, frozen, space)
            # a worker that took the trial meanwhile chose its own point; leave that trial alone
            if params and self.storage.get_trial(trial_id).state == TrialState.WAITING:
                self.storage.set_trial_system_attr(trial_id, FIXED, params)
        except Exception as exc:  # noqa: BLE001 - the trial then chooses its point when it is taken
            log.warning("asking the next trial ahead failed (%s: %s); it is asked in turn", type(exc).__name__, exc)
