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


def _shared_study(url: str, data_seed: int, trials: int = 12) -> None:
    """Finished trials of a smooth objective: what both workers see when they ask."""
    study = optuna.create_study(study_name="s", storage=url, direction="maximize")
    rng = np.random.default_rng(data_seed)
    for _ in range(trials):
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


class _Proposing(optuna.samplers.RandomSampler):
    """A model that proposes `target` over `space` when one is set, else a random point."""

    def __init__(self, seed: int):
        super().__init__(seed=seed)
        self.target, self.space, self.asked = None, dict(SPACE), 0

    def infer_relative_search_space(self, study, trial):
        return dict(self.space)

    def sample_relative(self, study, trial, search_space):
        self.asked += 1
        if self.target is not None:
            return dict(self.target)
        return {name: self.sample_independent(study, trial, name, d) for name, d in search_space.items()}


def _worker(url: str, seed: int) -> tuple[optuna.Study, _Proposing]:
    model = _Proposing(seed)
    storage = optuna.storages.RDBStorage(url)  # each worker its own storage object, as in a process of its own
    return optuna.load_study(study_name="s", storage=storage, sampler=DistinctPoints(model, storage, seed=seed)), model


def _ask(study: optuna.Study, model: _Proposing, target=None, space=SPACE):
    """One trial asked with `target` proposed: its point, and how often the model was asked."""
    model.target, model.space, model.asked = target, dict(space), 0
    trial = study.ask()
    point = {name: trial.suggest_float(name, d.low, d.high) for name, d in space.items()}
    return trial, point, model.asked


@pytest.mark.parametrize("finished", [10, 40])
def test_an_ask_computes_the_points_of_new_trials_only(tmp_path, monkeypatch, finished):
    """The finished trials' points are computed once per worker, not on every ask."""
    import zsearch.study.distinct as distinct
    computed = []
    real = distinct.point_key
    monkeypatch.setattr(distinct, "point_key", lambda params, names: computed.append(1) or real(params, names))
    url = f"sqlite:///{tmp_path / 'count.db'}"
    _shared_study(url, 20, trials=finished)
    study, model = _worker(url, 1)
    trial, point, _ = _ask(study, model)
    assert len(computed) == 1 + finished  # the new point, then every finished trial's
    study.tell(trial, 0.0)
    computed.clear()
    trial, _, asked = _ask(study, model)
    assert asked == 1 and len(computed) == 2  # the new point and the one trial finished since


def test_a_worker_with_known_trials_still_sees_every_clash(tmp_path):
    url = f"sqlite:///{tmp_path / 'clash.db'}"
    _shared_study(url, 30)
    a, model_a = _worker(url, 1)
    b, model_b = _worker(url, 2)
    mine, _, _ = _ask(a, model_a)  # worker a has read and kept the finished trials
    a.tell(mine, 0.0)

    def refused(target, space=SPACE) -> bool:
        trial, point, asked = _ask(a, model_a, target, space)
        a.tell(trial, 0.0)
        return asked == 3 and point != target

    running, running_point, _ = _ask(b, model_b)  # another worker's trial, still running
    assert refused(running_point)
    b.tell(running, 0.0)
    assert refused(running_point)  # now finished
    quick, quick_point, _ = _ask(b, model_b)  # finished before worker a looks again
    b.tell(quick, 0.0)
    assert refused(quick_point)
    old = optuna.load_study(study_name="s", storage=url).trials[3].params
    assert refused(old)
    smaller = dict(list(SPACE.items())[:3])  # a parameter frozen: the points are read on three names
    assert refused({name: old[name] for name in smaller}, smaller)
    fresh = {name: 0.123 for name in SPACE}
    assert not refused(fresh)
    trial, point, asked = _ask(a, model_a, fresh)
    assert asked == 3 and point != fresh  # the point just kept is taken as well
