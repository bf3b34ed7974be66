"""What the report says, read from a study: plain numbers, computed once, read defensively.

Everything the search records is optional here: a study stopped after its first trial, one run
by an older zsearch, or one without validation still gives a report. A malformed attribute is
treated as absent rather than crashing the morning's reading.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any, Optional

import optuna
from optuna.trial import FrozenTrial, TrialState

SCREEN_ROLE = "screen"


def trial_score(trial: FrozenTrial) -> Optional[float]:
    """The trial's score: the `score` user attr (the weighted sum), else its first value."""
    value = trial.user_attrs.get("score")
    if _is_number(value):
        return float(value)
    if trial.values:
        return float(trial.values[0])
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _mapping(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


@dataclass
class Noise:
    mean: float
    std: float
    scores: list[float]


@dataclass
class ValidationRow:
    trial: int
    train: float
    validation: float
    baseline: bool

    @property
    def gap(self) -> float:
        return self.train - self.validation


@dataclass
class Validation:
    rows: list[ValidationRow]
    chosen: Optional[int]
    baseline: Optional[float]  # the baseline's validation score
    seeds: list[int]
    prompts: Optional[int]  # how many validation prompts


@dataclass
class ScreenRow:
    low: Optional[float]  # score with the parameter at its low end (others at baseline)
    high: Optional[float]
    effect: float
    frozen: bool


@dataclass
class StudyFacts:
    name: str
    pareto: bool  # two objectives (style, prompt)
    metric_names: list[str]
    objective_weights: tuple[float, float]  # (style, prompt), to rank a Pareto front
    trials: list[FrozenTrial]
    space: dict[str, tuple[float, float]]
    prompts: list[str]
    noise: Optional[Noise]
    screening: dict[str, ScreenRow]
    validation: Optional[Validation]
    baseline: Optional[FrozenTrial]
    train_best: Optional[FrozenTrial]  # the best by the training score
    best: Optional[FrozenTrial]  # what best.* hold: the validation's choice when it is current
    validation_current: bool  # validation covers the training best
    counts: dict[str, int] = field(default_factory=dict)
    screening_trials: int = 0
    wall_seconds: Optional[float] = None
    trial_seconds: Optional[float] = None  # mean duration of a complete trial
    workers: int = 0
    fail_reasons: dict[str, int] = field(default_factory=dict)

    @property
    def complete(self) -> list[FrozenTrial]:
        return [t for t in self.trials if t.state == TrialState.COMPLETE]

    def score(self, trial: Optional[FrozenTrial]) -> Optional[float]:
        return trial_score(trial) if trial is not None else None

    @property
    def gain(self) -> Optional[float]:
        best, base = self.score(self.best), self.score(self.baseline)
        return best - base if best is not None and base is not None else None

    @property
    def gain_in_noise(self) -> Optional[float]:
        """The gain over the baseline in units of the baseline's seed noise (its std)."""
        if self.gain is None or self.noise is None or self.noise.std <= 0:
            return None
        return self.gain / self.noise.std

    def validation_row(self, trial: Optional[FrozenTrial]) -> Optional[ValidationRow]:
        if trial is None or self.validation is None:
            return None
        return next((r for r in self.validation.rows if r.trial == trial.number), None)

    def weighted(self, trial: FrozenTrial) -> float:
        """A Pareto trial's single number: the objective's weighted sum of (style, prompt)."""
        score = trial_score(trial)
        if "score" in trial.user_attrs and score is not None:
            return score
        w_style, w_prompt = self.objective_weights
        return w_style * trial.values[0] + w_prompt * trial.values[1]


def is_screening(trial: FrozenTrial) -> bool:
    return str(trial.user_attrs.get("role", "")).startswith(SCREEN_ROLE)


def gather(study: optuna.Study, objective_weights: tuple[float, float] = (1.0, 0.3)) -> StudyFacts:
    trials = study.get_trials(deepcopy=False)
    attrs = study.user_attrs
    pareto = len(study.directions) > 1
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.values]
    baseline = next((t for t in complete if t.user_attrs.get("role") == "baseline"), None)

    facts = StudyFacts(
        name=study.study_name, pareto=pareto, metric_names=_metric_names(study, pareto),
        objective_weights=objective_weights, trials=trials, space=_space(attrs.get("space")),
        prompts=_prompts(attrs.get("fingerprint")), noise=_noise(attrs.get("noise")),
        screening=_screening(attrs.get("screening")), validation=_validation(attrs.get("validation")),
        baseline=baseline, train_best=None, best=None, validation_current=False)
    if complete:
        if pareto:
            front = study.best_trials
            facts.train_best = max(front, key=facts.weighted) if front else None
        else:
            facts.train_best = max(complete, key=lambda t: trial_score(t))
    facts.best = facts.train_best
    if facts.validation is not None and facts.train_best is not None:
        validated = {row.trial for row in facts.validation.rows}
        facts.validation_current = facts.train_best.number in validated
        chosen = facts.validation.chosen
        if facts.validation_current and chosen is not None and 0 <= chosen < len(trials) \
                and trials[chosen].state == TrialState.COMPLETE:
            facts.best = trials[chosen]
    _timing(facts)
    return facts


def _metric_names(study: optuna.Study, pareto: bool) -> list[str]:
    names = getattr(study, "metric_names", None)
    if names and all(isinstance(n, str) for n in names):
        return list(names)
    return ["style", "prompt"] if pareto else ["score"]


def _space(raw: Any) -> dict[str, tuple[float, float]]:
    out = {}
    for name, bounds in _mapping(raw).items():
        if isinstance(bounds, (list, tuple)) and len(bounds) == 2 and all(map(_is_number, bounds)):
            out[str(name)] = (float(bounds[0]), float(bounds[1]))
    return out


def _prompts(fingerprint: Any) -> list[str]:
    prompts = _mapping(fingerprint).get("prompts")
    return [str(p) for p in prompts] if isinstance(prompts, list) else []


def _noise(raw: Any) -> Optional[Noise]:
    raw = _mapping(raw)
    scores = [float(s) for s in raw.get("scores", []) if _is_number(s)] if isinstance(raw.get("scores"), list) else []
    std = raw.get("std")
    if not _is_number(std):
        if len(scores) < 2:
            return None
        std = statistics.stdev(scores)
    mean = raw.get("mean")
    if not _is_number(mean):
        mean = statistics.fmean(scores) if scores else float("nan")
    return Noise(mean=float(mean), std=float(std), scores=scores)


def _screening(raw: Any) -> dict[str, ScreenRow]:
    out = {}
    for name, row in _mapping(raw).items():
        row = _mapping(row)
        low, high = row.get("low"), row.get("high")
        effect = row.get("effect")
        if not _is_number(effect):
            continue
        out[str(name)] = ScreenRow(low=float(low) if _is_number(low) else None,
                                   high=float(high) if _is_number(high) else None,
                                   effect=float(effect), frozen=bool(row.get("frozen", False)))
    return out


def _validation(raw: Any) -> Optional[Validation]:
    raw = _mapping(raw)
    rows = []
    for row in raw.get("rows", []) if isinstance(raw.get("rows"), list) else []:
        row = _mapping(row)
        if isinstance(row.get("trial"), int) and _is_number(row.get("train")) and _is_number(row.get("validation")):
            rows.append(ValidationRow(trial=row["trial"], train=float(row["train"]),
                                      validation=float(row["validation"]), baseline=bool(row.get("baseline"))))
    if not rows:
        return None
    chosen = raw.get("chosen") if isinstance(raw.get("chosen"), int) else None
    baseline = raw.get("baseline")
    if not _is_number(baseline):
        baseline = next((r.validation for r in rows if r.baseline), None)
    seeds = [s for s in raw.get("seeds", []) if isinstance(s, int)] if isinstance(raw.get("seeds"), list) else []
    prompts = raw.get("prompts") if isinstance(raw.get("prompts"), int) else None
    return Validation(rows=rows, chosen=chosen, baseline=baseline, seeds=seeds, prompts=prompts)


def _timing(facts: StudyFacts) -> None:
    states = {"complete": TrialState.COMPLETE, "pruned": TrialState.PRUNED, "failed": TrialState.FAIL,
              "running": TrialState.RUNNING, "waiting": TrialState.WAITING}
    facts.counts = {key: sum(t.state == state for t in facts.trials) for key, state in states.items()}
    facts.screening_trials = sum(is_screening(t) for t in facts.trials if t.state == TrialState.COMPLETE)
    starts = [t.datetime_start for t in facts.trials if t.datetime_start]
    ends = [t.datetime_complete for t in facts.trials if t.datetime_complete]
    if starts and ends:
        facts.wall_seconds = max(0.0, (max(ends) - min(starts)).total_seconds())
    durations = [(t.datetime_complete - t.datetime_start).total_seconds() for t in facts.complete
                 if t.datetime_start and t.datetime_complete]
    facts.trial_seconds = statistics.fmean(durations) if durations else None
    facts.workers = len({w for t in facts.trials  # user attr now; system attr in older studies
                         if (w := t.user_attrs.get("zsearch.worker") or t.system_attrs.get("zsearch.worker"))})
    reasons: dict[str, int] = {}
    for t in facts.trials:
        if t.state == TrialState.FAIL:
            reason = str(t.user_attrs.get("fail_reason") or "no reason recorded")
            reasons[reason] = reasons.get(reason, 0) + 1
    facts.fail_reasons = reasons


def duration(seconds: Optional[float]) -> str:
    """7 h 42 min, 3 min 12 s, 41 s."""
    if seconds is None:
        return "unknown"
    if seconds < 10:
        return f"{seconds:.1f} s"
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600} h {seconds % 3600 // 60} min"
    if seconds >= 60:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds} s"

