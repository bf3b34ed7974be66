"""The samplers: the default one (a Gaussian process fitted on a bounded set of trials), its
start-up design, and which sampler a config's `search.sampler` stands for.

The start-up design: scrambled Sobol points instead of independent random draws.

GPSampler (and TPE) draw their first trials from an independent sampler, random by default.
Random points clump and leave holes; a scrambled Sobol sequence covers the box evenly, so the
model's first fit sees the whole space. This sampler answers `sample_independent` with
coordinate k of the Sobol point of the trial's number, k being the parameter's position in the
order the search space suggests them (the same in every trial and every worker).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, FloatDistribution
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState
from scipy.stats import qmc


class SobolStartup(optuna.samplers.BaseSampler):
    def __init__(self, dimensions: int, seed: int | None = None):
        self._dimensions = max(1, dimensions)
        self._seed = seed
        self._points = qmc.Sobol(self._dimensions, scramble=True, seed=seed)
        self._drawn = _empty_points(self._dimensions)
        self._order: dict[str, int] = {}
        self._fallback = optuna.samplers.RandomSampler(seed=seed)

    def infer_relative_search_space(self, study, trial) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(self, study, trial, search_space) -> dict[str, Any]:
        return {}

    def sample_independent(self, study, trial, param_name: str, param_distribution: BaseDistribution) -> Any:
        k = self._order.setdefault(param_name, len(self._order))
        if k >= self._dimensions or not isinstance(param_distribution, FloatDistribution) \
                or param_distribution.log or param_distribution.step is not None:
            return self._fallback.sample_independent(study, trial, param_name, param_distribution)
        u = float(self._point(trial.number)[k])
        low, high = param_distribution.low, param_distribution.high
        return min(high, low + u * (high - low))

    def _point(self, index: int):
        while len(self._drawn) <= index:  # whole powers of two keep the sequence balanced
            n = 2 ** math.ceil(math.log2(max(2, len(self._drawn) + 1)))
            self._drawn = np.vstack([self._drawn, self._points.random(n - len(self._drawn))])
        return self._drawn[index]

    def reseed_rng(self) -> None:
        self._fallback.reseed_rng()


def _empty_points(d: int) -> np.ndarray:
    return np.empty((0, d))


# --- the default sampler: a Gaussian process on a bounded set of trials ---------------------------

FITTED = 100  # the most completed trials a fit sees (bench/sampler_scale.py: cost per trial)
BEST_SHARE, RECENT_SHARE = 0.4, 0.3  # of FITTED: the best trials, then the newest; the rest spread
PENDING = 8  # running trials (other workers', a prefetched ask) the acquisition treats as pending


class BoundedGPSampler(optuna.samplers.GPSampler):
    """Optuna's GPSampler, fitted on at most `fitted` completed trials and `pending` running ones.

    A GP's fit costs O(n³) time and O(n²·d) memory in the trials it sees, and its acquisition
    O(n) per candidate point, so an unbounded GP costs seconds a trial past 1,000 trials. Here
    the fit sees the best trials (where the search exploits), the newest (what the model last
    proposed and learnt) and trials spread evenly over the rest of the study (the global view
    that keeps it exploring); up to `fitted` trials it is the plain GP. Running trials of other
    workers, or one asked ahead of time, enter the acquisition as pending points (Optuna's
    batch expected improvement; Optuna 4.0's GPSampler has none and ignores them), so two asks
    do not propose the same point. Each worker fits its own model from what the storage holds;
    nothing else is shared.
    """

    def __init__(self, *, fitted: int = FITTED, pending: int = PENDING, **kwargs):
        # Optuna's own acquisition search is kept: a cheaper one (1,024 starts, 5 local searches)
        # took the demo's known-optimum run from 0.25x to 0.46x of the baseline's distance.
        super().__init__(**kwargs)
        self.fitted, self.pending = max(4, fitted), max(0, pending)

    def sample_relative(self, study, trial, search_space):
        return super().sample_relative(_BoundedView(study, self), trial, search_space)

    def chosen(self, study, completed: list[FrozenTrial]) -> list[FrozenTrial]:
        """The completed trials the model is fitted on, in trial order."""
        if len(completed) <= self.fitted:
            return completed
        order = _best_first(study, completed)
        picked = set(order[:int(self.fitted * BEST_SHARE)])
        for index in range(len(completed) - 1, -1, -1):  # the newest
            if len(picked) >= int(self.fitted * (BEST_SHARE + RECENT_SHARE)):
                break
            picked.add(index)
        rest = [i for i in range(len(completed)) if i not in picked]
        room = self.fitted - len(picked)
        picked.update(rest[int(j * len(rest) / room)] for j in range(room))  # evenly over the study
        return [completed[i] for i in sorted(picked)]


class _BoundedView:
    """The study as GPSampler reads it: its trials cut down to the bounded set."""

    def __init__(self, study, sampler: BoundedGPSampler):
        self._study, self._sampler = study, sampler

    def __getattr__(self, name):
        return getattr(self._study, name)

    # GPSampler reads a study's trials through `study._get_trials` (Optuna 4.0 to 5.1); the view
    # answers that one call from the public `get_trials` (tests/test_samplers.py checks the sizes).
    def _get_trials(self, deepcopy: bool = True, states=None, use_cache: bool = False):
        trials = self._study.get_trials(deepcopy=deepcopy, states=states)
        completed = [t for t in trials if t.state == TrialState.COMPLETE]
        running = [t for t in trials if t.state == TrialState.RUNNING and _has_point(t)]
        running = running[-self._sampler.pending:] if self._sampler.pending else []
        keep = {t.number for t in self._sampler.chosen(self._study, completed)} | {t.number for t in running}
        return [t for t in trials if t.number in keep or t.state not in (TrialState.COMPLETE, TrialState.RUNNING)]


def _has_point(trial: FrozenTrial) -> bool:
    """A running trial whose point is known: suggested, or proposed by a GP (Optuna stores it)."""
    return bool(trial.params) or any(key.startswith("gp:relative_params") for key in trial.system_attrs)


def _best_first(study, trials: list[FrozenTrial]) -> list[int]:
    """Indices of `trials`, best first; with several objectives, by the sum of their ranks."""
    values = np.array([t.values for t in trials], dtype=float)
    signs = np.array([1.0 if d == StudyDirection.MAXIMIZE else -1.0 for d in study.directions])
    ranks = np.argsort(np.argsort(-values * signs, axis=0, kind="stable"), axis=0, kind="stable").sum(axis=1)
    return [int(i) for i in np.argsort(ranks, kind="stable")]


# --- which sampler a config asks for ---------------------------------------------------------------

STARTUP_TRIALS = 10  # trials drawn from the start-up design before the GP fits (Optuna's default)
STARTUP = "sobol"  # the start-up design: "sobol" or "random" (bench/search.py measures both)


def sampler_name(config, n_params: int) -> str:
    """The sampler `auto` stands for: the bounded GP at any size (trials cost seconds, so sample
    efficiency rules; bench/search.py), its cost bounded at night scale (bench/sampler_scale.py)."""
    name = config.search.sampler
    return "gp" if name == "auto" else name


def make_sampler(config, seed: int, n_params: int, startup: str = STARTUP,
                 startup_trials: int = STARTUP_TRIALS) -> optuna.samplers.BaseSampler:
    name = sampler_name(config, n_params)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, n_startup_trials=1)
    if name == "gp":
        design = SobolStartup(n_params, seed=seed) if startup == "sobol" else None
        return BoundedGPSampler(seed=seed, n_startup_trials=startup_trials, independent_sampler=design)
    # Multivariate TPE models the interactions between block weights; `group` lets it cope with
    # the smaller space left after screening freezes parameters.
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True,
                                      n_startup_trials=min(10, 2 + n_params))
