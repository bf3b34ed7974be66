"""Which parameters matter: PED-ANOVA over the full trials, with a bootstrap interval over trials.

Only fully evaluated search trials count: a partial trial's score is a stand-in (the best's score
plus a paired difference on the few jobs it ran, capped below the best), and screening trials sit
on the axes of the space (one parameter moved at a time); both would bias a density comparison.
The interval says how much the ranking owes to which trials happened to be run: each resample
draws the trials again with replacement and recomputes the importances.
"""

from __future__ import annotations

import random
import warnings
from dataclasses import dataclass
from typing import Optional

import optuna
from optuna.trial import FrozenTrial

RESAMPLES = 100
LEVEL = 0.90  # the interval's coverage


@dataclass(frozen=True)
class Estimate:
    value: float  # the median over the resamples
    low: float  # the interval's ends over the resamples
    high: float


def scored(trials: list[FrozenTrial], score) -> list[FrozenTrial]:
    """Copies of the trials with one value to maximise, `score(trial)` (a Pareto study's weighted sum)."""
    return [optuna.trial.create_trial(params=t.params, distributions=t.distributions, value=score(t))
            for t in trials]


def _ped_anova(trials: list[FrozenTrial]) -> dict[str, float]:
    from optuna.importance import PedAnovaImportanceEvaluator, get_param_importances

    copy = optuna.create_study(direction="maximize")
    copy.add_trials(trials)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "too few trials" warnings: the report says so instead
        return {name: float(v) for name, v in
                get_param_importances(copy, evaluator=PedAnovaImportanceEvaluator(), normalize=True).items()}


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    below = int(position)
    above = min(below + 1, len(ordered) - 1)
    return ordered[below] + (ordered[above] - ordered[below]) * (position - below)


def importances(trials: list[FrozenTrial], resamples: int = RESAMPLES, seed: int = 0) -> dict[str, Estimate]:
    """{parameter: Estimate} over single-valued, maximised trials (see `scored`), most important
    first: the median and the interval over `resamples` bootstrap resamples of the trials (the
    median, not the value on all trials, which a resample's repeated trials bias low: the interval
    would not always contain it). Raises what PED-ANOVA raises on odd input."""
    names = list(_ped_anova(trials))
    draws: dict[str, list[float]] = {name: [] for name in names}
    rng = random.Random(seed)
    for _ in range(resamples):
        sample = [trials[rng.randrange(len(trials))] for _ in trials]
        got = _ped_anova(sample)
        for name in draws:
            draws[name].append(got.get(name, 0.0))
    tail = (1 - LEVEL) / 2
    out = {name: Estimate(_quantile(d, 0.5), _quantile(d, tail), _quantile(d, 1 - tail)) for name, d in draws.items()}
    return dict(sorted(out.items(), key=lambda kv: -kv[1].value))


def settled_leaders(estimates: dict[str, Estimate]) -> int:
    """How many of the top parameters are ranked clearly: each one's interval lies wholly above
    the intervals of every parameter ranked below it."""
    items = list(estimates.values())
    for k, e in enumerate(items[:-1]):
        if e.low <= max(other.high for other in items[k + 1:]):
            return k
    return len(items)


def describe(estimates: dict[str, Estimate], shown: int = 3) -> Optional[str]:
    """'b.attn 0.34 (0.21–0.47), b.ratio 0.17 (0.05–0.30), ...' for the first `shown`."""
    if not estimates:
        return None
    return ", ".join(f"{name} {e.value:.2f} ({e.low:.2f}–{e.high:.2f})"
                     for name, e in list(estimates.items())[:shown])
