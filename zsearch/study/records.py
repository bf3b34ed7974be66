"""The study's records: what the search writes into Optuna attributes, and how anyone reads it back.

One module owns every key, so the search (writer), the report, `zsearch best` and any later
judge (readers) cannot drift apart. Readers are defensive: a study run by an older zsearch,
stopped early, or with a malformed attribute reads as "absent", never as a crash.

Per trial (user attributes):
    role        "baseline", "screen:<param>:<low|high>", "start:<file>"; absent for search trials
    score       the trial's score: mean over the jobs it ran (the weighted style/prompt sum)
    jobs        per-job scores in the canonical job order (prompt-major, then seed); NaN = not run
    partial     True when pruning stopped it early: its value is an estimate, never a best
    surplus     True on a failed trial that never ran: it lost the race for the budget's last place,
                or was asked ahead of time and the run ended first (fail_reason says which)
    asked_ahead the worker that queued the trial, its point chosen while its previous trial rendered
    per_prompt, style, prompt, identity, terms, seconds, fail_reason, grid_artifact,
    grid_full_artifact (baseline, start points and the top trials: the full-size grid)

Per study (user attributes): noise, validation, screening (see the dataclasses), space, fingerprint,
setup_failed (the run that set the study up failed before measuring: the fixed command may replace it),
review (a person's choices in `zsearch review` and the ranking fitted to them),
run_started / run_ended (the whole runs' span, set-up and validation included: the report's wall time),
night (the night's start and deadline, shared by its workers), confirm:<trial>:<round> (one
confirmation round's per-job scores and seeds) and confirmation (the confirmed ranking).

Review study (`<name>:review`, optuna-dashboard's preferential study): candidates, labels, pairs,
search_study, seeds per study; candidate, pair, render per trial.

    from zsearch.study import records
    score = records.trial_score(trial)          # float or None
    jobs = records.job_scores(trial)            # list[float] or None
    gain = records.gain_over(trial, baseline)   # stats.Comparison (paired over jobs) or None
    noise = records.read_noise(study)           # Noise or None
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Optional

from optuna.trial import FrozenTrial, TrialState

from zsearch.study import stats
try:  # Optuna's retry of a dead worker's trial, named so since 4.9 (the old name goes in 6.0)
    from optuna.storages import RetryHeartbeatStaleTrialCallback as RetryDeadTrial
except ImportError:  # Optuna < 4.9
    from optuna.storages import RetryFailedTrialCallback as RetryDeadTrial

# ------------------------------------------------------------ keys
ROLE = "role"
BASELINE_ROLE = "baseline"
SCREEN_ROLE = "screen"
START_ROLE = "start"
SCORE = "score"
JOBS = "jobs"
PARTIAL = "partial"
PER_PROMPT = "per_prompt"
STYLE = "style"
PROMPT = "prompt"
IDENTITY = "identity"
TERMS = "terms"  # {term: mean} of every judge's term (style, prompt, identity, aesthetic, ...)
SECONDS = "seconds"
FAIL_REASON = "fail_reason"
ASKED_AHEAD = "asked_ahead"  # the worker that queued the trial while its previous one rendered (prefetch.py)
SURPLUS = "surplus"  # a trial that never ran (the budget's last place was taken, or asked ahead in vain)
GRID = "grid_artifact"
FULL_GRID = "grid_full_artifact"
RETRY_OF = "retry_of"
WORKER = "zsearch.worker"  # a user attribute (system attribute in older studies): the worker's unique id

NOISE = "noise"
VALIDATION = "validation"
SCREENING = "screening"
SPACE = "space"
FINGERPRINT = "fingerprint"
SETUP_FAILED = "setup_failed"  # the run that set the study up failed before it measured anything
REVIEW = "review"  # the search study's record of a person's review

# the review study (optuna-dashboard's preferential study)
REVIEW_CANDIDATES = "candidates"  # the search trials under review, in the order of the labels
REVIEW_LABELS = "labels"  # {trial number: "A", ...}: renders are shown blind
REVIEW_PAIRS = "pairs"  # the round-robin schedule, as positions in the candidates
REVIEW_SEARCH_STUDY = "search_study"
REVIEW_SEEDS = "seeds"
REVIEW_REFERENCES = "references_artifact"  # on the review study: the picture of the references
CANDIDATE = "candidate"  # on a review trial: the search trial it shows
RENDER = "render"  # on a review trial: the artifact id of its picture
PAIR = "pair"  # on a review trial: which pair of the schedule it belongs to

RUN_STARTED = "run_started"  # ISO time (local) the first `zsearch run` of the study began (set up, noise, ...)
RUN_ENDED = "run_ended"  # ISO time (local) the latest `zsearch run` ended (after validation and best.*)

NIGHT = "night"  # {start, deadline, hours} of the night in progress (epoch seconds)
CONFIRM_ROUND = "confirm:"  # + "<trial>:<round>": one confirmation round of one trial
CONFIRMATION = "confirmation"  # the confirmed ranking, best first, and the trial it chose


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _mapping(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _numbers(value: Any) -> Optional[list[float]]:
    """A list of floats (None/NaN read as NaN: a job not run), or None when it is not a list of numbers."""
    if not isinstance(value, list) or not value:
        return None
    if not all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in value):
        return None
    return [math.nan if v is None else float(v) for v in value]


# ------------------------------------------------------------ trials

def role(trial: FrozenTrial) -> str:
    return str(trial.user_attrs.get(ROLE, ""))


def is_baseline(trial: FrozenTrial) -> bool:
    return role(trial) == BASELINE_ROLE


def is_screening(trial: FrozenTrial) -> bool:
    return role(trial).startswith(SCREEN_ROLE)


def screening_role(param: str, end: str) -> str:
    return f"{SCREEN_ROLE}:{param}:{end}"


def parse_screening_role(value: str) -> tuple[str, str]:
    """'screen:lora0.attn:low' -> ('lora0.attn', 'low')."""
    name, end = value.removeprefix(f"{SCREEN_ROLE}:").rsplit(":", 1)
    return name, end


def is_partial(trial: FrozenTrial) -> bool:
    return bool(trial.user_attrs.get(PARTIAL, False))


def trial_score(trial: Optional[FrozenTrial]) -> Optional[float]:
    """The trial's score: the `score` attribute (the weighted sum, also for Pareto studies), else
    its first objective value; None when it has neither."""
    if trial is None:
        return None
    value = trial.user_attrs.get(SCORE)
    if is_number(value):
        return float(value)
    if trial.values and is_number(trial.values[0]):
        return float(trial.values[0])
    return None


def job_scores(trial: Optional[FrozenTrial]) -> Optional[list[float]]:
    """Per-job scores in the canonical job order (NaN where a pruned trial did not run the job)."""
    return _numbers(trial.user_attrs.get(JOBS)) if trial is not None else None


WORKER_DIED = "its worker died; run again as a new trial"
NO_REASON = "no reason recorded"


def fail_reasons(trials: Iterable[FrozenTrial]) -> dict[str, int]:
    """Why the failed trials failed, counted. A dead worker's trial records no reason of its own
    (its worker is gone); the retry Optuna queued for it names it in its retry history."""
    trials = list(trials)
    retried = {number for t in trials for number in RetryDeadTrial.retry_history(t)}
    reasons: dict[str, int] = {}
    for t in trials:
        if t.state == TrialState.FAIL and not is_not_run(t):
            reason = str(t.user_attrs.get(FAIL_REASON) or (WORKER_DIED if t.number in retried else NO_REASON))
            reasons[reason] = reasons.get(reason, 0) + 1
    return reasons


def is_not_run(trial: FrozenTrial) -> bool:
    """A failed trial that never ran (SURPLUS): neither a trial of the study nor a failure."""
    return trial.state == TrialState.FAIL and bool(trial.user_attrs.get(SURPLUS))


def can_be_best(trial: FrozenTrial) -> bool:
    """Complete, fully evaluated and scored: a pruned-partial trial is never a best or validated."""
    return trial.state == TrialState.COMPLETE and not is_partial(trial) and trial_score(trial) is not None


def candidates(trials: Iterable[FrozenTrial]) -> list[FrozenTrial]:
    return [t for t in trials if can_be_best(t)]


def baseline_of(trials: Iterable[FrozenTrial]) -> Optional[FrozenTrial]:
    return next((t for t in trials if is_baseline(t) and can_be_best(t)), None)


def gain_over(trial: Optional[FrozenTrial], baseline: Optional[FrozenTrial]) -> Optional[stats.Comparison]:
    """The trial's gain over the baseline, paired over the jobs both ran."""
    a, b = job_scores(trial), job_scores(baseline)
    if a is None or b is None or len(a) != len(b):
        return None
    return stats.compare(a, b)


def write_evaluation(trial, evaluation, value: Optional[float] = None) -> None:
    """Record an `Evaluation` (see evaluate.py) on a running Optuna trial.

    `value`: the score to record when it is not the evaluation's mean (a stopped trial's stand-in,
    see pruning.partial_value); an evaluation that did not run every job is marked partial.
    """
    trial.set_user_attr(SCORE, evaluation.value if value is None else value)
    trial.set_user_attr(JOBS, [None if math.isnan(x) else x for x in evaluation.jobs])
    trial.set_user_attr(PER_PROMPT, evaluation.combined)
    trial.set_user_attr(STYLE, evaluation.mean_style)
    trial.set_user_attr(PROMPT, evaluation.mean_prompt)
    if evaluation.identity is not None:
        trial.set_user_attr(IDENTITY, stats.nanmean(evaluation.identity))
    if getattr(evaluation, "terms", None):
        trial.set_user_attr(TERMS, {name: stats.nanmean(values) for name, values in evaluation.terms.items()})
    trial.set_user_attr(SECONDS, {k: round(v, 4) for k, v in evaluation.seconds.items()})
    if evaluation.partial:
        trial.set_user_attr(PARTIAL, True)


# ------------------------------------------------------------ noise

@dataclass
class Noise:
    """The baseline scored on the training seeds and on extra seed sets."""

    mean: float
    std: float
    scores: list[float]
    seed_sets: list[list[int]] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: Any) -> Optional["Noise"]:
        raw = _mapping(raw)
        scores = [float(s) for s in raw.get("scores", []) if is_number(s)] if isinstance(raw.get("scores"), list) else []
        std = raw.get("std")
        if not is_number(std):
            if len(scores) < 2:
                return None
            std = statistics.stdev(scores)
        mean = raw.get("mean")
        if not is_number(mean):
            mean = statistics.fmean(scores) if scores else math.nan
        seed_sets = raw.get("seed_sets") if isinstance(raw.get("seed_sets"), list) else []
        return cls(mean=float(mean), std=float(std), scores=scores,
                   seed_sets=[list(s) for s in seed_sets if isinstance(s, list)])


def noise_from_scores(scores: list[float], seed_sets: list[list[int]]) -> Noise:
    return Noise(mean=statistics.fmean(scores), std=statistics.stdev(scores), scores=scores, seed_sets=seed_sets)


def read_noise(study) -> Optional[Noise]:
    return Noise.from_dict(study.user_attrs.get(NOISE))


def write_noise(study, noise: Noise) -> None:
    study.set_user_attr(NOISE, noise.to_dict())


# ------------------------------------------------------------ validation

@dataclass
class ValidationRow:
    trial: int
    train: float  # the trial's training score
    validation: float  # its mean score on the held-out jobs
    baseline: bool
    jobs: Optional[list[float]] = None  # per held-out job, the same job order for every row

    @property
    def gap(self) -> float:
        return self.train - self.validation


@dataclass
class Validation:
    rows: list[ValidationRow]
    chosen: Optional[int]  # the trial best.* follow
    seeds: list[int] = field(default_factory=list)
    prompts: Optional[int] = None  # how many held-out prompts
    same_prompts: Optional[bool] = None  # True: the training prompts with new seeds (the default); None: unknown

    @property
    def baseline_row(self) -> Optional[ValidationRow]:
        return next((r for r in self.rows if r.baseline), None)

    @property
    def baseline(self) -> Optional[float]:
        row = self.baseline_row
        return row.validation if row else None

    def row(self, trial_number: int) -> Optional[ValidationRow]:
        return next((r for r in self.rows if r.trial == trial_number), None)

    def gain(self, trial_number: Optional[int] = None) -> Optional[stats.Comparison]:
        """A trial's (default: the chosen one's) held-out gain over the baseline, paired per job."""
        row, base = self.row(self.chosen if trial_number is None else trial_number), self.baseline_row
        if row is None or base is None or row.jobs is None or base.jobs is None or len(row.jobs) != len(base.jobs):
            return None
        return stats.compare(row.jobs, base.jobs)

    def to_dict(self) -> dict:
        return {"rows": [{**asdict(r), "gap": r.gap} for r in self.rows], "chosen": self.chosen,
                "seeds": self.seeds, "prompts": self.prompts, "same_prompts": self.same_prompts,
                "baseline": self.baseline}

    @classmethod
    def from_dict(cls, raw: Any) -> Optional["Validation"]:
        raw = _mapping(raw)
        rows = []
        for row in raw.get("rows", []) if isinstance(raw.get("rows"), list) else []:
            row = _mapping(row)
            if isinstance(row.get("trial"), int) and is_number(row.get("train")) and is_number(row.get("validation")):
                rows.append(ValidationRow(trial=row["trial"], train=float(row["train"]),
                                          validation=float(row["validation"]), baseline=bool(row.get("baseline")),
                                          jobs=_numbers(row.get("jobs"))))
        if not rows:
            return None
        chosen = raw.get("chosen") if isinstance(raw.get("chosen"), int) else None
        seeds = [s for s in raw.get("seeds", []) if isinstance(s, int)] if isinstance(raw.get("seeds"), list) else []
        prompts = raw.get("prompts") if isinstance(raw.get("prompts"), int) else None
        same = raw.get("same_prompts") if isinstance(raw.get("same_prompts"), bool) else None
        return cls(rows=rows, chosen=chosen, seeds=seeds, prompts=prompts, same_prompts=same)


def read_review(study) -> Optional[dict]:
    """The review's record (see review/), or None when no review has run."""
    record = study.user_attrs.get(REVIEW)
    return record if isinstance(record, dict) else None


def read_validation(study) -> Optional[Validation]:
    return Validation.from_dict(study.user_attrs.get(VALIDATION))


def write_validation(study, validation: Validation) -> None:
    study.set_user_attr(VALIDATION, validation.to_dict())


# ------------------------------------------------------------ screening

@dataclass
class ScreenRow:
    """One parameter moved alone to each end of its range, the others at the baseline."""

    low: Optional[float]  # score at the low end
    high: Optional[float]
    effect: Optional[float]  # the larger |mean paired difference| from the baseline; None: no end measured
    frozen: bool
    p: Optional[float] = None  # two-sided signed-rank p of the end with the larger effect

    @classmethod
    def from_dict(cls, raw: Any) -> Optional["ScreenRow"]:
        row = _mapping(raw)
        low, high, effect, p = row.get("low"), row.get("high"), row.get("effect"), row.get("p")
        if not is_number(effect):
            return None
        return cls(low=float(low) if is_number(low) else None, high=float(high) if is_number(high) else None,
                   effect=float(effect), frozen=bool(row.get("frozen", False)),
                   p=float(p) if is_number(p) else None)


def read_screening(study) -> dict[str, ScreenRow]:
    out = {}
    for name, raw in _mapping(study.user_attrs.get(SCREENING)).items():
        row = ScreenRow.from_dict(raw)
        if row is not None:
            out[str(name)] = row
    return out


def screening_done(study) -> bool:
    return SCREENING in study.user_attrs


def write_screening(study, rows: dict[str, ScreenRow]) -> None:
    study.set_user_attr(SCREENING, {name: asdict(row) for name, row in rows.items()})


def frozen_params(study) -> set[str]:
    return {name for name, row in read_screening(study).items() if row.frozen}


# ------------------------------------------------------------ counts: computed once, worded one way

STOPPED_NOTE = "stopped_early"  # on a trial the pruner stopped: "partial: stopped after k of n jobs"


@dataclass(frozen=True)
class TrialCounts:
    """How many trials are in each state; every summary, table and progress line reads these."""

    complete: int  # fully evaluated (the only trials that can be a best)
    partial: int  # stopped early by the pruner, stored COMPLETE with a stand-in score
    pruned: int  # stopped early and stored PRUNED (older studies)
    failed: int  # failed while running; the trials that never ran are `not_run`
    running: int = 0
    waiting: int = 0
    not_run: int = 0  # given up before they ran (records.SURPLUS)
    screening: int = 0  # of the complete ones

    @property
    def stopped_early(self) -> int:
        return self.partial + self.pruned

    @property
    def finished(self) -> int:
        return self.complete + self.stopped_early + self.failed


def count_trials(trials: Iterable[FrozenTrial]) -> TrialCounts:
    trials = list(trials)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    partial = sum(is_partial(t) for t in complete)
    return TrialCounts(
        complete=len(complete) - partial, partial=partial,
        pruned=sum(t.state == TrialState.PRUNED for t in trials),
        failed=sum(t.state == TrialState.FAIL and not is_not_run(t) for t in trials),
        not_run=sum(is_not_run(t) for t in trials),
        running=sum(t.state == TrialState.RUNNING for t in trials),
        waiting=sum(t.state == TrialState.WAITING for t in trials),
        screening=sum(is_screening(t) and not is_partial(t) for t in complete))


def count_words(counts: TrialCounts) -> str:
    """'12 complete, 48 stopped early, 0 failed' (and the running and waiting ones, if any)."""
    text = f"{counts.complete} complete, {counts.stopped_early} stopped early, {counts.failed} failed"
    if counts.running or counts.waiting:
        text += f", {counts.running} running, {counts.waiting} waiting"
    if counts.not_run:
        text += f" ({counts.not_run} not run)"
    return text


def stopped_note(jobs_run: int, jobs: int) -> str:
    return f"partial: stopped after {jobs_run} of {jobs} jobs"


# ------------------------------------------------------------ run span

def _now() -> str:
    from datetime import datetime
    return datetime.now().isoformat()  # naive local time, as Optuna stamps its trials


def note_run_start(study) -> None:
    """Keep the first run's start: the report's wall time counts from there."""
    if RUN_STARTED not in study.user_attrs:
        study.set_user_attr(RUN_STARTED, _now())


def note_run_end(study) -> None:
    study.set_user_attr(RUN_ENDED, _now())


def read_run_span(study) -> tuple[Optional[Any], Optional[Any]]:
    """(first run's start, latest run's end) as naive local datetimes, comparable with Optuna's
    trial times; None where unknown (a study of an older zsearch)."""
    from datetime import datetime

    def parse(value: Any):
        try:
            when = datetime.fromisoformat(str(value))
        except ValueError:
            return None
        return when.replace(tzinfo=None)

    attrs = study.user_attrs
    return (parse(attrs[RUN_STARTED]) if RUN_STARTED in attrs else None,
            parse(attrs[RUN_ENDED]) if RUN_ENDED in attrs else None)


# ------------------------------------------------------------ the night

@dataclass
class Night:
    """The night a run is budgeted by: every worker of the study ends before `deadline`."""

    start: float  # epoch seconds
    deadline: float
    hours: float

    @property
    def seconds(self) -> float:
        return self.deadline - self.start


def read_night(study) -> Optional[Night]:
    raw = _mapping(study.user_attrs.get(NIGHT))
    if not all(is_number(raw.get(k)) for k in ("start", "deadline", "hours")) or raw["deadline"] <= raw["start"]:
        return None
    return Night(start=float(raw["start"]), deadline=float(raw["deadline"]), hours=float(raw["hours"]))


def write_night(study, night: Night) -> None:
    study.set_user_attr(NIGHT, asdict(night))


# ------------------------------------------------------------ confirmation

@dataclass
class ConfirmRound:
    """One trial re-rendered on one new seed set of the training prompts (jobs prompt-major)."""

    trial: int
    round: int
    seeds: list[int]
    jobs: list[float]


def confirm_round_key(trial: int, round_index: int) -> str:
    return f"{CONFIRM_ROUND}{trial}:{round_index}"


def write_confirm_round(study, result: ConfirmRound) -> None:
    study.set_user_attr(confirm_round_key(result.trial, result.round),
                        {"seeds": list(result.seeds), "jobs": [None if math.isnan(x) else x for x in result.jobs]})


def read_confirm_rounds(study) -> list[ConfirmRound]:
    """Every recorded confirmation round, by trial then round; malformed ones are skipped."""
    rounds = []
    for key, raw in study.user_attrs.items():
        if not key.startswith(CONFIRM_ROUND):
            continue
        try:
            trial, index = (int(part) for part in key.removeprefix(CONFIRM_ROUND).split(":"))
        except ValueError:
            continue
        raw, jobs = _mapping(raw), _numbers(_mapping(raw).get("jobs"))
        seeds = raw.get("seeds")
        if jobs is None or not isinstance(seeds, list) or not all(isinstance(x, int) for x in seeds):
            continue
        rounds.append(ConfirmRound(trial=trial, round=index, seeds=list(seeds), jobs=jobs))
    return sorted(rounds, key=lambda r: (r.trial, r.round))


@dataclass
class ConfirmedRow:
    trial: int
    rounds: int  # confirmation rounds scored
    jobs: int  # confirmation jobs scored
    mean: float  # the mean over them
    baseline: bool
    gain: Optional[dict] = None  # stats.Comparison.to_dict() over the baseline, paired on shared seed sets


@dataclass
class Confirmation:
    rows: list[ConfirmedRow]  # best confirmed mean first
    chosen: Optional[int]  # the trial best.* follow while the training best is confirmed

    def row(self, trial_number: int) -> Optional[ConfirmedRow]:
        return next((r for r in self.rows if r.trial == trial_number), None)

    def order(self, trials: list[FrozenTrial]) -> list[FrozenTrial]:
        """`trials` with the confirmed ones first, by their confirmed rank; the others after, as given."""
        rank = {r.trial: i for i, r in enumerate(self.rows)}
        return sorted(trials, key=lambda t: rank.get(t.number, len(rank)))

    def to_dict(self) -> dict:
        return {"rows": [asdict(r) for r in self.rows], "chosen": self.chosen}

    @classmethod
    def from_dict(cls, raw: Any) -> Optional["Confirmation"]:
        raw = _mapping(raw)
        rows = []
        for row in raw.get("rows", []) if isinstance(raw.get("rows"), list) else []:
            row = _mapping(row)
            if isinstance(row.get("trial"), int) and is_number(row.get("mean")) \
                    and isinstance(row.get("rounds"), int) and isinstance(row.get("jobs"), int):
                gain = row.get("gain") if isinstance(row.get("gain"), dict) else None
                rows.append(ConfirmedRow(trial=row["trial"], rounds=row["rounds"], jobs=row["jobs"],
                                         mean=float(row["mean"]), baseline=bool(row.get("baseline")), gain=gain))
        if not rows:
            return None
        chosen = raw.get("chosen") if isinstance(raw.get("chosen"), int) else None
        return cls(rows=rows, chosen=chosen)


def read_confirmation(study) -> Optional[Confirmation]:
    return Confirmation.from_dict(study.user_attrs.get(CONFIRMATION))


def write_confirmation(study, confirmation: Confirmation) -> None:
    study.set_user_attr(CONFIRMATION, confirmation.to_dict())
