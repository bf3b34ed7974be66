"""What the report says, read from a study: plain numbers, computed once, read defensively.

Everything the search records is optional here: a study stopped after its first trial, one run
by an older zsearch, or one without validation still gives a report. A malformed attribute is
treated as absent rather than crashing the morning's reading.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

import optuna
from optuna.trial import FrozenTrial, TrialState

from zsearch.study import records
from zsearch.study.choice import choose_best
from zsearch.study.records import Noise, ScreenRow, Validation, ValidationRow, is_screening, trial_score
from zsearch.study.stats import Comparison

__all__ = ["StudyFacts", "gather", "duration", "trial_score", "is_screening", "Noise", "ScreenRow",
           "Validation", "ValidationRow"]


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
    chosen_by: str = "training score"  # how the best was chosen (study/choice.py)
    confirmation: Optional[records.Confirmation] = None  # the night's confirmed ranking
    tally: records.TrialCounts = records.TrialCounts(0, 0, 0, 0)  # every count the report states
    counts: dict[str, int] = field(default_factory=dict)  # the same, as a dict
    screening_trials: int = 0
    wall_seconds: Optional[float] = None
    trial_seconds: Optional[float] = None  # mean duration of a complete trial
    workers: int = 0
    fail_reasons: dict[str, int] = field(default_factory=dict)
    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)  # each parameter's searched range

    @property
    def run(self) -> list[FrozenTrial]:
        """The trials that ran to an end or were stopped early, by number (failed ones left out)."""
        return [t for t in self.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]

    @property
    def complete(self) -> list[FrozenTrial]:
        """Complete and fully evaluated (partial trials, stopped by the pruner, are left out)."""
        return [t for t in self.trials if t.state == TrialState.COMPLETE and not records.is_partial(t)]

    @property
    def partial(self) -> list[FrozenTrial]:
        return [t for t in self.trials if t.state == TrialState.COMPLETE and records.is_partial(t)]

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

    @property
    def comparison(self) -> tuple[Optional[Comparison], Optional[str]]:
        """The best's gain over the baseline, paired per job, and where it was measured:
        "validation" (held-out jobs, unbiased) when validation is current, else "training"."""
        if self.best is None or self.baseline is None:
            return None, None
        if self.validation is not None and self.validation_current:
            gain = self.validation.gain(self.best.number)
            if gain is not None:
                return gain, "validation"
        if self.best.number == self.baseline.number:
            return None, None
        gain = records.gain_over(self.best, self.baseline)
        return (gain, "training") if gain is not None else (None, None)

    def validation_row(self, trial: Optional[FrozenTrial]) -> Optional[ValidationRow]:
        if trial is None or self.validation is None:
            return None
        return next((r for r in self.validation.rows if r.trial == trial.number), None)

    def weighted(self, trial: FrozenTrial) -> float:
        """A Pareto trial's single number: the objective's weighted sum of (style, prompt)."""
        score = trial_score(trial)
        if records.SCORE in trial.user_attrs and score is not None:
            return score
        w_style, w_prompt = self.objective_weights
        return w_style * trial.values[0] + w_prompt * trial.values[1]


def gather(study: optuna.Study, objective_weights: tuple[float, float] = (1.0, 0.3)) -> StudyFacts:
    trials = study.get_trials(deepcopy=False)
    attrs = study.user_attrs
    pareto = len(study.directions) > 1
    complete = [t for t in records.candidates(trials) if t.values]
    baseline = records.baseline_of(complete)

    facts = StudyFacts(
        name=study.study_name, pareto=pareto, metric_names=_metric_names(study, pareto),
        objective_weights=objective_weights, trials=trials, space=_space(attrs.get(records.SPACE)),
        prompts=_prompts(attrs.get(records.FINGERPRINT)), noise=records.read_noise(study),
        screening=records.read_screening(study), validation=records.read_validation(study),
        baseline=baseline, train_best=None, best=None, validation_current=False,
        confirmation=records.read_confirmation(study))
    choice = choose_best(study)  # the one rule zsearch best follows
    if choice is not None:
        facts.train_best, facts.best = choice.train_best, choice.trial
        facts.validation_current, facts.chosen_by = choice.validation_current, choice.by
    _timing(facts, records.read_run_span(study))
    facts.ranges = {**facts.space, **search_ranges(trials)}
    return facts


def search_ranges(trials: list[FrozenTrial]) -> dict[str, tuple[float, float]]:
    """Each numeric parameter's [low, high] as the study's distributions declare it."""
    out: dict[str, tuple[float, float]] = {}
    for t in trials:
        for name, dist in t.distributions.items():
            if name not in out and hasattr(dist, "low") and hasattr(dist, "high"):
                out[name] = (float(dist.low), float(dist.high))
    return out


def _metric_names(study: optuna.Study, pareto: bool) -> list[str]:
    names = getattr(study, "metric_names", None)
    if names and all(isinstance(n, str) for n in names):
        return list(names)
    return ["style", "prompt"] if pareto else ["score"]


def _space(raw: Any) -> dict[str, tuple[float, float]]:
    out = {}
    for name, bounds in (raw if isinstance(raw, dict) else {}).items():
        if isinstance(bounds, (list, tuple)) and len(bounds) == 2 and all(map(records.is_number, bounds)):
            out[str(name)] = (float(bounds[0]), float(bounds[1]))
    return out


def _prompts(fingerprint: Any) -> list[str]:
    prompts = (fingerprint if isinstance(fingerprint, dict) else {}).get("prompts")
    return [str(p) for p in prompts] if isinstance(prompts, list) else []


def _timing(facts: StudyFacts, run_span: tuple = (None, None)) -> None:
    facts.tally = records.count_trials(facts.trials)
    facts.counts = asdict(facts.tally)
    facts.screening_trials = facts.tally.screening
    # the whole runs, set-up, noise band and validation included, where the study recorded them
    starts = [t.datetime_start for t in facts.trials if t.datetime_start] + [t for t in run_span[:1] if t]
    ends = [t.datetime_complete for t in facts.trials if t.datetime_complete] + [t for t in run_span[1:] if t]
    if starts and ends:
        facts.wall_seconds = max(0.0, (max(ends) - min(starts)).total_seconds())
    durations = [(t.datetime_complete - t.datetime_start).total_seconds() for t in facts.complete
                 if t.datetime_start and t.datetime_complete]
    facts.trial_seconds = statistics.fmean(durations) if durations else None
    facts.workers = len({w for t in facts.trials  # a user attr; a system attr in older studies
                         if (w := t.user_attrs.get(records.WORKER) or t.system_attrs.get(records.WORKER))})
    facts.fail_reasons = records.fail_reasons(facts.trials)


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

