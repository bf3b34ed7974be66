"""Workers that ask at the same moment never run the same point (study/distinct.py).

Two workers = two Study objects on one SQLite file, each with its own sampler and seed, in two
threads. A barrier holds each Gaussian process after it has read the finished trials until the
other has read them too: the interleaving that gave two workers on PostgreSQL the same trial.
"""

from __future__ import annotations

import threading
import warnings

import numpy as np
import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from zsearch.study.distinct import DistinctPoints

optuna.logging.set_verbosity(optuna.logging.WARNING)
SPACE = {f"p{i}": FloatDistribution(0.0, 1.5) for i in range(4)}
SEEDS = (11, 22)


def _shared_study(url: str, data_seed: int) -> None:
    """Twelve finished trials of a smooth objective: what both workers see when they ask."""
    study = optuna.create_study(study_name="s", storage=url, direction="maximize")
    rng = np.random.default_rng(data_seed)
    for _ in range(12):
        x = rng.uniform(0.0, 1.5, len(SPACE))
        study.add_trial(create_trial(params=dict(zip(SPACE, x)), distributions=SPACE,
                                     value=float(-((x - 0.9) ** 2).sum())))


def _held_until_both_have_read(gp: optuna.samplers.GPSampler, barrier: threading.Barrier) -> None:
    compute = gp._sample_relative_impl
    first = [True]

    def held(*args):
        point = compute(*args)
        if first[0]:  # only the first ask: a worker that asks again does so alone
            first[0] = False
            barrier.wait()
        return point
    gp._sample_relative_impl = held


def _asked_together(url: str, wrap: bool) -> list[dict]:
    barrier = threading.Barrier(len(SEEDS), timeout=120)
    points: dict[int, dict] = {}
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        try:
            gp = optuna.samplers.GPSampler(seed=seed)
            _held_until_both_have_read(gp, barrier)
            storage = optuna.storages.RDBStorage(url)
            study = optuna.load_study(study_name="s", storage=storage,
                                      sampler=DistinctPoints(gp, storage, seed=seed) if wrap else gp)
            trial = study.ask()
            points[seed] = {name: trial.suggest_float(name, d.low, d.high) for name, d in SPACE.items()}
        except BaseException as exc:  # noqa: BLE001 - reported by the test's thread
            errors.append(exc)
            barrier.abort()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        threads = [threading.Thread(target=worker, args=(seed,)) for seed in SEEDS]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors, errors
    return [points[seed] for seed in SEEDS]


@pytest.mark.parametrize("data_seed", [20, 30])
def test_two_workers_asking_at_once_get_different_points(tmp_path, data_seed):
    url = f"sqlite:///{tmp_path / 'plain.db'}"
    _shared_study(url, data_seed)
    plain = _asked_together(url, wrap=False)
    # the race as it was: other seeds, the same finished trials, the very same point
    assert plain[0] == plain[1]

    url = f"sqlite:///{tmp_path / 'distinct.db'}"
    _shared_study(url, data_seed)
    a, b = _asked_together(url, wrap=True)
    assert a != b
    assert all(0.0 <= v <= 1.5 for v in [*a.values(), *b.values()])
    study = optuna.load_study(study_name="s", storage=url)
    running = study.get_trials(states=(TrialState.RUNNING,))
    finished = [t.params for t in study.get_trials(states=(TrialState.COMPLETE,))]
    assert len(running) == 2 and all(t.params not in finished for t in running)


def test_a_point_equal_to_a_finished_trial_is_asked_again(tmp_path):
    """A model that insists on a point already measured gets a new one (at random at last)."""
    url = f"sqlite:///{tmp_path / 'repeat.db'}"
    _shared_study(url, 20)
    study = optuna.load_study(study_name="s", storage=url)
    measured = study.trials[3].params

    class Insisting(optuna.samplers.RandomSampler):
        asked = 0

        def infer_relative_search_space(self, study, trial):
            return dict(SPACE)

        def sample_relative(self, study, trial, search_space):
            Insisting.asked += 1
            return dict(measured)

    study.sampler = DistinctPoints(Insisting(seed=0), optuna.storages.RDBStorage(url), seed=5)
    trial = study.ask()
    point = {name: trial.suggest_float(name, d.low, d.high) for name, d in SPACE.items()}
    assert Insisting.asked == 3 and point != measured
    assert all(0.0 <= v <= 1.5 for v in point.values())
