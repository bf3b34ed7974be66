"""The default sampler: a GP fitted on a bounded set of trials, pending points, convergence."""

from __future__ import annotations

import importlib
import math
from types import SimpleNamespace

import numpy as np
import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

import optuna._gp.gp as optuna_gp
from zsearch.study import opening
from zsearch.study.samplers import BoundedGPSampler, SobolStartup, make_sampler, sampler_name

optuna.logging.set_verbosity(optuna.logging.WARNING)
pytestmark = pytest.mark.usefixtures("single_thread")

OPTIMUM = np.array([0.4, 1.5, 0.9, 0.2, 1.2, 0.7])  # inside [0, 2]^6
WEIGHTS = np.array([1.0, 0.5, 2.0, 1.0, 0.7, 1.5])


def value(x: np.ndarray) -> float:
    return -float(np.sum(WEIGHTS * (x - OPTIMUM) ** 2))


def names(d: int) -> list[str]:
    return [f"p{i}" for i in range(d)]


def filled_study(sampler, n: int, d: int, seed: int = 0) -> optuna.Study:
    """A study with n completed trials at uniform points of [0, 2]^d."""
    rng = np.random.default_rng(seed)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    dists = {p: FloatDistribution(0.0, 2.0) for p in names(d)}
    points = rng.random((n, d)) * 2.0
    study.add_trials([optuna.trial.create_trial(params=dict(zip(names(d), map(float, x))), distributions=dists,
                                                value=value(x[:6]) if d >= 6 else -float(np.sum(x ** 2)))
                      for x in points])
    return study


def suggest(trial, d: int) -> np.ndarray:
    return np.array([trial.suggest_float(p, 0.0, 2.0) for p in names(d)])


def record_fits(monkeypatch) -> list[np.ndarray]:
    """Every X that Optuna's GP fit is given. GPSampler reaches the module through a lazy import
    that copies its attributes when first used, so both are patched (the copy made first)."""
    from optuna.samplers._gp import sampler as gp_sampler
    fitted_x = []
    real_fit = optuna_gp.fit_kernel_params
    gp_sampler.gp.fit_kernel_params  # noqa: B018 - loads the lazy module before it is patched

    def recording_fit(X, *args, **kwargs):
        fitted_x.append(np.array(X))
        return real_fit(X, *args, **kwargs)

    monkeypatch.setattr(optuna_gp, "fit_kernel_params", recording_fit)
    monkeypatch.setattr(gp_sampler.gp, "fit_kernel_params", recording_fit)
    return fitted_x


def test_the_gp_is_fitted_on_at_most_fitted_trials_the_best_among_them(monkeypatch):
    fitted_x = record_fits(monkeypatch)
    study = filled_study(BoundedGPSampler(seed=0, fitted=40), n=300, d=6)
    best = np.array([study.best_trial.params[p] for p in names(6)]) / 2.0  # the GP's normalised [0, 1] units
    newest = np.array([study.trials[-1].params[p] for p in names(6)]) / 2.0
    for _ in range(2):
        trial = study.ask()
        study.tell(trial, value(suggest(trial, 6)))
    assert len(fitted_x) == 2
    assert fitted_x[0].shape == (40, 6)  # 300 trials in the study, 40 fitted
    assert fitted_x[1].shape == (40, 6)
    assert np.min(np.abs(fitted_x[0] - best).max(axis=1)) < 1e-9  # the incumbent is in the fitted set
    assert np.min(np.abs(fitted_x[0] - newest).max(axis=1)) < 1e-9  # and the newest trial


def test_a_small_study_is_fitted_whole(monkeypatch):
    fitted_x = record_fits(monkeypatch)
    study = filled_study(BoundedGPSampler(seed=0, fitted=40), n=25, d=6)
    trial = study.ask()
    study.tell(trial, value(suggest(trial, 6)))
    assert [x.shape for x in fitted_x] == [(25, 6)]


@pytest.mark.skipif(not hasattr(importlib.import_module("optuna._gp.acqf"), "qLogEI"),
                    reason="this Optuna's GPSampler has no batch EI: running trials are not pending")
def test_running_trials_are_pending_and_bounded(monkeypatch):
    """A trial asked ahead (or another worker's) is running while the next ask is computed: the
    next proposal keeps away from it, and at most `pending` running trials are passed on."""
    sampler = BoundedGPSampler(seed=0, fitted=60, pending=3)
    study = filled_study(sampler, n=30, d=6)
    asked = [study.ask() for _ in range(5)]
    points = [suggest(t, 6) for t in asked]
    gaps = [np.abs(a - b).max() for i, a in enumerate(points) for b in points[i + 1:]]
    assert min(gaps) > 0.02  # no two pending asks propose (nearly) the same point
    from zsearch.study.samplers import _BoundedView
    seen = _BoundedView(study, sampler)._get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING))
    assert sum(t.state == TrialState.RUNNING for t in seen) == 3
    assert sum(t.state == TrialState.COMPLETE for t in seen) == 30


def test_the_bounded_gp_converges_on_a_known_optimum():
    """6 parameters, 70 trials, at most 24 fitted (the bounded path runs from trial 24 on): the
    best point lies close to the optimum in parameter space."""
    sampler = BoundedGPSampler(seed=1, fitted=24, n_startup_trials=10, independent_sampler=SobolStartup(6, seed=1))
    study = optuna.create_study(direction="maximize", sampler=sampler)
    study.optimize(lambda t: value(suggest(t, 6)), n_trials=70)
    best = np.array([study.best_trial.params[p] for p in names(6)])
    assert np.abs(best - OPTIMUM).max() < 0.2  # 10 % of each parameter's range
    assert math.dist(best, OPTIMUM) < 0.25


@pytest.mark.parametrize("n_params", [4, 15, 30, 60])
def test_auto_is_the_bounded_gp_at_every_size(n_params):
    config = SimpleNamespace(search=SimpleNamespace(sampler="auto"))
    assert sampler_name(config, n_params) == "gp"
    sampler = make_sampler(config, seed=0, n_params=n_params)
    assert isinstance(sampler, BoundedGPSampler)
    assert opening.make_sampler is make_sampler  # the study's opener builds the same sampler
