"""The sampler's start-up design: scrambled Sobol points instead of independent random draws.

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
