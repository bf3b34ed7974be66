"""The night's plan: with `search.hours` the time, not a trial count, is the budget.

- The night is recorded in the study (records.Night): a worker that joins, or a run resumed
  before the night ends with the same `hours`, keeps its deadline; after it a new night starts.
- Every unit of work (a trial, or a confirmation round of as many jobs) starts only when it and
  the end of the night fit before the deadline: validation of the top trials, the last export of
  best.*, and (with confirmation) one last round that confirms a late training best. Each is
  estimated from measured durations: the slowest of this worker's last full trials (else any
  worker's), per job for validation, and the exports this run timed; all times SAFETY, plus
  MARGIN_S for what is not measured.
- Phases: explore (the sampler's start-up design), exploit (the model-guided sampler), confirm
  (from `confirm.after` of the night on, at most `confirm.share` of the renders; all of them once
  the trial cap is reached, so the GPU stays busy), validate.
"""

from __future__ import annotations

import time
from datetime import datetime
from enum import Enum
from typing import Optional

import optuna
from optuna.trial import TrialState

from zsearch.settings.schema import Config
from zsearch.study import records
from zsearch.study.workers import WORKER_ID

SAFETY = 1.25  # every estimate is stretched by this much: a late night costs more than an idle minute
MARGIN_S = 5.0  # and this much is kept for what is not measured: storage waits, closing the run
RECENT = 10  # the estimate follows the last trials (a sampler's cost grows with the study)
SCAN = 500  # among this many newest: enough for a worker's own last RECENT beside many others


class Step(Enum):
    TRIAL = "trial"
    CONFIRM = "confirm"
    STOP = "stop"


def open_night(study: optuna.Study, hours: float, now: Optional[float] = None) -> records.Night:
    """The night in progress (same hours, deadline ahead), or a new one starting now."""
    now = time.time() if now is None else now
    recorded = records.read_night(study)
    if recorded is not None and recorded.hours == hours and recorded.start <= now < recorded.deadline:
        return recorded
    night = records.Night(start=now, deadline=now + hours * 3600, hours=hours)
    records.write_night(study, night)
    return night


def recent_durations(trials: list, count: int = RECENT, worker: str = WORKER_ID) -> list[float]:
    """Seconds of the newest `count` finished units, this worker's own when it has any among the
    newest SCAN (so the cost does not grow with the study: a night holds thousands)."""
    timed = [t for t in sorted(trials[-SCAN:], key=lambda t: t.number) if t.datetime_start and t.datetime_complete]
    own = [t for t in timed if t.user_attrs.get(records.WORKER, t.user_attrs.get("worker")) == worker]
    return [(t.datetime_complete - t.datetime_start).total_seconds() for t in (own or timed)[-count:]]


def decide(fits: bool, room: bool, confirm_due: bool, confirm_left: bool) -> Step:
    """What a worker does next: nothing that would end after the deadline; a confirmation when one
    is due (or the trial cap is reached) and left to do; else a trial while the cap has room."""
    if not fits:
        return Step.STOP
    if confirm_left and (confirm_due or not room):
        return Step.CONFIRM
    return Step.TRIAL if room else Step.STOP


class Plan:
    """The night's arithmetic for one worker, read from the study each time it is asked."""

    def __init__(self, config: Config, study: optuna.Study, night: Optional[records.Night],
                 claims: Optional[optuna.Study] = None):
        self.config, self.study, self.night, self.claims = config, study, night, claims
        self.jobs_per_trial = len(config.prompt_list) * len(config.seeds)
        self.exports: list[float] = []  # seconds of this run's exports of best.*

    # ------------------------------------------------------------ measured durations
    def unit_seconds(self) -> Optional[float]:
        """The slowest of the recent full trials and confirmation rounds (None: nothing measured)."""
        newest = self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))[-SCAN:]
        seconds = recent_durations([t for t in newest if not records.is_partial(t)])
        if self.claims is not None:
            seconds += recent_durations(self.claims.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
        return max(seconds) if seconds else None

    def validation_seconds(self, unit: float) -> float:
        v = self.config.validation
        if v.top_k == 0:
            return 0.0
        jobs = len(self.config.validation_prompts or self.config.prompt_list) * len(v.seeds_for(self.config.seeds))
        return (v.top_k + 1) * jobs * unit / max(1, self.jobs_per_trial)

    def finish_seconds(self, unit: float) -> float:
        """The end of the night: validation, the last export, and one last confirmation round."""
        export = max(self.exports) if self.exports else unit
        last_round = unit if self.config.search.confirms else 0.0
        return SAFETY * (self.validation_seconds(unit) + export + last_round)

    # ------------------------------------------------------------ the clock
    def left(self, now: Optional[float] = None) -> Optional[float]:
        if self.night is None:
            return None
        return max(0.0, self.night.deadline - (time.time() if now is None else now))

    def fits(self, now: Optional[float] = None, units: int = 1, finish: bool = True) -> bool:
        """Whether `units` more units (and the night's end) end before the deadline."""
        if self.night is None:
            return True
        now = time.time() if now is None else now
        unit = self.unit_seconds()
        if unit is None:  # nothing measured yet: the first unit measures
            return now < self.night.deadline
        end = now + SAFETY * units * unit + (self.finish_seconds(unit) if finish else 0.0)
        return end + MARGIN_S <= self.night.deadline

    def validation_need(self) -> Optional[float]:
        """Seconds validation and the last export are expected to take, margins included."""
        unit = self.unit_seconds()
        if unit is None:
            return None
        export = max(self.exports) if self.exports else unit
        return SAFETY * (self.validation_seconds(unit) + export) + MARGIN_S

    def validation_fits(self, now: Optional[float] = None) -> bool:
        if self.night is None:
            return True
        now = time.time() if now is None else now
        need = self.validation_need()
        return now < self.night.deadline if need is None else now + need <= self.night.deadline

    # ------------------------------------------------------------ phases
    def confirm_due(self, now: Optional[float] = None) -> bool:
        """From `confirm.after` of the night on: a round when it keeps the rounds within `confirm.share`
        of the units started since then (counted over every worker, from the storage)."""
        if self.night is None or self.claims is None or not self.config.search.confirms:
            return False
        c = self.config.search.confirm
        since = self.night.start + c.after * self.night.seconds
        if (time.time() if now is None else now) < since:
            return False
        started = datetime.fromtimestamp(since)  # Optuna stamps trials with the local clock
        rounds = _started_since(self.claims.get_trials(deepcopy=False), started, (TrialState.FAIL,))
        trials = _started_since(self.study.get_trials(deepcopy=False), started, (TrialState.WAITING,))
        return rounds + 1 <= c.share * (rounds + trials + 1) + 1e-9

    def phase(self) -> str:
        from zsearch.study.samplers import STARTUP_TRIALS
        complete = len(self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
        return "explore" if complete < STARTUP_TRIALS else "exploit"


def _started_since(trials, since: datetime, skip: tuple) -> int:
    return sum(1 for t in trials if t.state not in skip and t.datetime_start and t.datetime_start >= since
               and not t.user_attrs.get(records.SURPLUS))
