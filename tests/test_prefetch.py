"""The next trial asked ahead (search/prefetch.py): chosen while a trial renders, run in order,
and never left behind or counted as a trial when the run ends before it."""

from __future__ import annotations

from types import SimpleNamespace

import optuna
import pytest
from optuna.trial import TrialState

from search_helpers import demo_config, loaded
from zsearch.search import prefetch
from zsearch.search import run as run_module
from zsearch.search.prefetch import AskAhead
from zsearch.search.signals import GracefulStop
from zsearch.study import records
from zsearch.study.distinct import DistinctPoints, POINT
from zsearch.study.samplers import make_sampler
from zsearch.study.space import SearchSpace

optuna.logging.set_verbosity(optuna.logging.WARNING)
pytestmark = pytest.mark.usefixtures("single_thread")


def _study(tmp_path, n_params: int = 4, filled: int = 12):
    """A study on SQLite with the default sampler (a GP once 10 trials are complete), filled."""
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'ahead.db'}")
    config = SimpleNamespace(search=SimpleNamespace(sampler="auto"))
    study = optuna.create_study(study_name="ahead", storage=storage, direction="maximize",
                                sampler=DistinctPoints(make_sampler(config, 0, n_params), storage, seed=0))
    names = [f"p{i}" for i in range(n_params)]
    for _ in range(filled):
        trial = study.ask()
        study.tell(trial, -sum((trial.suggest_float(p, 0.0, 1.0) - 0.3) ** 2 for p in names))
    return study, storage, names


def test_the_point_asked_ahead_sees_the_running_trial_and_is_the_one_run(tmp_path):
    """With the real GP: the next point is chosen while a trial runs (queued, its point fixed and
    published), away from the running trial's point, and the next ask takes exactly that trial."""
    study, storage, names = _study(tmp_path)
    running = study.ask()
    point = {p: running.suggest_float(p, 0.0, 1.0) for p in names}
    ahead = AskAhead(study, storage)
    ahead.start()
    ahead.wait()
    queued = [t for t in study.get_trials() if t.state == TrialState.WAITING]
    assert len(queued) == 1 and queued[0].number == running.number + 1
    fixed = queued[0].system_attrs[prefetch.FIXED]
    assert sorted(fixed) == names and POINT in queued[0].system_attrs
    assert max(abs(fixed[p] - point[p]) for p in names) > 1e-6  # not the running trial's point
    ahead.start()  # one ahead is enough: a second start queues nothing
    ahead.wait()
    assert sum(t.state == TrialState.WAITING for t in study.get_trials()) == 1
    study.tell(running, 0.0)
    taken = study.ask()
    assert taken.number == queued[0].number
    assert {p: taken.suggest_float(p, 0.0, 1.0) for p in names} == fixed
    study.tell(taken, 0.0)
    ahead.close()  # taken and finished: nothing to give back
    assert study.get_trials()[-1].state == TrialState.COMPLETE


def test_a_trial_asked_ahead_that_never_runs_is_given_back_as_not_run(tmp_path):
    study, storage, names = _study(tmp_path)
    ahead = AskAhead(study, storage)
    ahead.start()
    ahead.close()
    last = study.get_trials()[-1]
    assert last.state == TrialState.FAIL and last.user_attrs[records.SURPLUS] is True
    assert last.user_attrs[records.FAIL_REASON] == prefetch.NOT_RUN
    counts = records.count_trials(study.get_trials())
    assert (counts.complete, counts.failed, counts.not_run, counts.finished) == (12, 0, 1, 12)
    assert records.count_words(counts) == "12 complete, 0 stopped early, 0 failed (1 not run)"
    assert records.fail_reasons(study.get_trials()) == {}


def test_nothing_is_asked_ahead_past_the_budget_or_behind_a_queued_trial(tmp_path):
    study, storage, names = _study(tmp_path)
    running = study.ask()
    running.suggest_float("p0", 0.0, 1.0)
    late = AskAhead(study, storage, fits=lambda: False)  # the night has no time for another
    full = AskAhead(study, storage, total=13)  # 12 finished + the running one
    for ahead in (late, full):
        ahead.start()
        ahead.wait()
    assert len(study.get_trials()) == 13
    study.enqueue_trial({p: 0.5 for p in names})  # e.g. a retry: it runs next anyway
    queued = AskAhead(study, storage, total=20)
    queued.start()
    queued.wait()
    assert sum(t.state == TrialState.WAITING for t in study.get_trials()) == 1
    assert len(study.get_trials()) == 14
    roomy = AskAhead(study, storage, total=20)  # the same room, the queue empty: one is queued
    study.tell(study.ask(), 0.0)  # the enqueued trial runs
    roomy.start()
    roomy.wait()
    assert [t.state for t in study.get_trials()[13:]] == [TrialState.COMPLETE, TrialState.WAITING]


class StopAfter(GracefulStop):
    """Ctrl-C pressed while trial `after` runs (so the next one is already queued)."""

    def __init__(self, study_of, after: int):
        super().__init__()
        self.study_of, self.after = study_of, after

    @property
    def requested(self):
        return len([t for t in self.study_of().get_trials(deepcopy=False)
                    if t.state == TrialState.COMPLETE]) >= self.after

    @requested.setter
    def requested(self, value):
        pass


def test_a_run_with_prefetch_runs_in_order_to_its_exact_budget(tmp_path, demo_assets):
    """cmaes chooses relative points from the second trial on, so its points are chosen ahead."""
    config = loaded(demo_config(tmp_path, demo_assets, search={"trials": 4, "sampler": "cmaes", "prefetch": True}))
    run_module.run(config, show_progress=False)
    study = optuna.load_study(study_name="t", storage=config.storage_url)
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4  # none queued, running or given back
    assert [t.number for t in sorted(trials, key=lambda t: t.datetime_start)] == [0, 1, 2, 3]
    assert all(a.datetime_complete <= b.datetime_start for a, b in zip(trials, trials[1:]))  # one at a time
    n_params = len(SearchSpace(config))
    assert all(len(t.params) == n_params for t in trials)
    ahead = [t for t in trials if prefetch.FIXED in t.system_attrs and records.ROLE not in t.user_attrs]
    assert len(ahead) >= 2  # the points chosen ahead are the points run
    assert all(t.params == pytest.approx(t.system_attrs[prefetch.FIXED]) for t in ahead)


def test_a_stopped_run_gives_its_queued_trial_back_and_a_resume_takes_a_dead_workers(tmp_path, demo_assets,
                                                                                   monkeypatch):
    config = loaded(demo_config(tmp_path, demo_assets, search={"trials": 5, "sampler": "cmaes", "prefetch": True}))
    study_of = lambda: optuna.load_study(study_name="t", storage=config.storage_url)  # noqa: E731
    monkeypatch.setattr(run_module, "GracefulStop", lambda: StopAfter(study_of, 2))
    run_module.run(config, show_progress=False)
    trials = study_of().get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.FAIL]
    assert trials[2].user_attrs[records.SURPLUS] and trials[2].user_attrs[records.FAIL_REASON] == prefetch.NOT_RUN
    assert records.count_trials(trials).not_run == 1 and records.count_trials(trials).failed == 0

    # a worker killed while its next trial was queued leaves a WAITING trial: the resume runs it first
    study = study_of()
    study.sampler = make_sampler(config, 1, len(SearchSpace(config)))
    dead = AskAhead(study, optuna.storages.RDBStorage(config.storage_url))
    dead.start()
    dead.wait()
    left = study.get_trials()[-1]
    assert left.state == TrialState.WAITING and prefetch.FIXED in left.system_attrs
    monkeypatch.setattr(run_module, "GracefulStop", GracefulStop)
    run_module.run(config, show_progress=False)
    trials = study_of().get_trials()
    assert trials[3].state == TrialState.COMPLETE
    assert trials[3].params == pytest.approx(left.system_attrs[prefetch.FIXED])
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 5
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]


def test_two_workers_with_prefetch_stop_at_exactly_the_budget(tmp_path, demo_assets):
    """Each worker queues its next trial while it renders; either may run the other's. The study
    ends with exactly its budget finished, every point once, nothing queued or running left, and
    any trial queued in vain failed as not run."""
    from search_helpers import start
    config = demo_config(tmp_path, demo_assets, search={"trials": 6, "sampler": "cmaes", "prefetch": True})
    workers = [start("run", config, "--no-progress") for _ in range(2)]
    for proc in workers:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
    study = optuna.load_study(study_name="t", storage=f"sqlite:///{tmp_path / 'out' / 't' / 'study.db'}")
    finished = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 6
    assert len({tuple(sorted(t.params.items())) for t in finished}) == 6
    assert not [t for t in study.trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    assert all(t.user_attrs.get(records.SURPLUS) for t in failed)  # given back or surplus: never run
    assert records.count_trials(study.trials).failed == 0


def test_a_night_with_prefetch_ends_in_time_and_gives_back_what_it_queued(tmp_path, demo_assets):
    """The night's end, not a cap, stops the loop: the trial queued for after it is given back."""
    import time
    hours = 35 / 3600
    config = loaded(demo_config(tmp_path, demo_assets, search={"trials": None, "hours": hours, "sampler": "cmaes",
                                                               "prefetch": True, "confirm": {"top_k": 0}}))
    began = time.time()
    run_module.run(config, show_progress=False)
    ended = time.time()
    study = optuna.load_study(study_name="t", storage=config.storage_url)
    assert ended <= records.read_night(study).deadline
    trials = study.get_trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) >= 2 and began <= min(t.datetime_start.timestamp() for t in trials)
    assert [t.number for t in sorted(complete, key=lambda t: t.datetime_start)] == sorted(t.number for t in complete)
    given_back = [t for t in trials if t.state != TrialState.COMPLETE]
    assert len(given_back) <= 1 and all(t.state == TrialState.FAIL for t in given_back)
    assert all(t.user_attrs[records.FAIL_REASON] == prefetch.NOT_RUN for t in given_back)
