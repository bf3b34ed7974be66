"""Failed trials, Pareto studies, samplers, and the render/dashboard commands."""

from __future__ import annotations

import socket
import time
import urllib.request

import optuna
import pytest
import torch
import yaml
from optuna.trial import TrialState

from search_helpers import demo_config, loaded, plant_best, start, zsearch
from zsearch.search import run as run_module
from zsearch.search import session as session_module
from zsearch.study.samplers import make_sampler

optuna.logging.set_verbosity(optuna.logging.WARNING)
pytestmark = pytest.mark.usefixtures("single_thread")


def test_nan_render_and_out_of_memory_fail_the_trial_and_the_study_goes_on(tmp_path, demo_assets, monkeypatch):
    """Fault injection around the real engine: the 2nd render returns NaN, the 3rd runs out of memory."""
    config = loaded(demo_config(tmp_path, demo_assets, search={"trials": 3}))
    real_load = session_module.load_engine
    calls = {"n": 0}

    def faulty_engine(cfg, *args, **kwargs):
        engine = real_load(cfg, *args, **kwargs)
        render = engine.render

        def render_with_faults(jobs, **kwargs):
            calls["n"] += 1
            if calls["n"] == 2:
                return torch.full((len(jobs), 3, cfg.render.height, cfg.render.width), float("nan"))
            if calls["n"] == 3:
                raise torch.OutOfMemoryError("CUDA out of memory (injected)")
            return render(jobs, **kwargs)

        engine.render = render_with_faults
        return engine

    monkeypatch.setattr(session_module, "load_engine", faulty_engine)
    run_module.run(config, show_progress=False)
    study = optuna.load_study(study_name="t", storage=config.storage_url)
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    assert [t.user_attrs["fail_reason"] for t in failed] == [
        "the render contains NaN or Inf values",
        "CUDA out of memory even at batch size 1; lower render.width/height"]
    assert len([t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]) == 3


def test_only_trials_numbered_after_the_budget_are_surplus():
    """The budget belongs to the first `total` trials by number that have not failed."""
    from zsearch.study.budget import is_surplus

    study = optuna.create_study()
    for value in (1.0, 2.0, 3.0):
        study.add_trial(optuna.trial.create_trial(value=value))  # trials 0-2: finished
    study.add_trial(optuna.trial.create_trial(state=TrialState.FAIL))  # trial 3: frees its place
    fourth, fifth = study.ask(), study.ask()  # trials 4 and 5, running
    assert (fourth.number, fifth.number) == (4, 5)
    assert not is_surplus(study, 4, total=4)  # 3 places taken before it
    assert is_surplus(study, 5, total=4)  # 0, 1, 2 and 4 hold the 4 places
    assert not is_surplus(study, 5, total=5)
    study.enqueue_trial({})  # trial 6, waiting: it holds a place too
    assert is_surplus(study, 7, total=6) and not is_surplus(study, 6, total=6)


def test_a_trial_started_in_a_race_for_the_last_place_gives_it_up(tmp_path, demo_assets, monkeypatch):
    """Two workers that check the budget at the same moment both start a trial: the later one
    (by trial number) renders nothing, fails as surplus, and the study ends at exactly its budget."""
    from zsearch.study import budget
    from zsearch.study import records
    config = loaded(demo_config(tmp_path, demo_assets, search={"trials": 2}))
    real_load, renders = session_module.load_engine, []

    def counting_engine(cfg, *args, **kwargs):
        engine = real_load(cfg, *args, **kwargs)
        render = engine.render
        engine.render = lambda jobs, **kw: renders.append(len(jobs)) or render(jobs, **kw)
        return engine

    stale = {"left": 1}

    def stale_view(study, total):  # once, room that another worker has just taken
        if not budget.has_room(study, total) and stale["left"]:
            stale["left"] -= 1
            return True
        return budget.has_room(study, total)

    monkeypatch.setattr(session_module, "load_engine", counting_engine)
    monkeypatch.setattr(run_module, "has_room", stale_view)
    best = run_module.run(config, show_progress=False)
    assert stale["left"] == 0  # the race happened
    study = optuna.load_study(study_name="t", storage=config.storage_url)
    finished = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    assert len(finished) == 2 and [t.number for t in failed] == [2]
    assert failed[0].user_attrs[records.SURPLUS] is True
    assert "other workers had taken the last of the 2 trials" in failed[0].user_attrs[records.FAIL_REASON]
    assert records.SCORE not in failed[0].user_attrs and not failed[0].params  # nothing suggested or scored
    assert sum(renders) == 2 * len(config.prompt_list) * len(config.seeds)  # the surplus trial rendered nothing
    assert best is not None and best.number in {t.number for t in finished}
    assert yaml.safe_load((config.out_dir / "best.yaml").read_text())["info"]["trial"] == best.number


def test_pareto_study_keeps_both_objectives(tmp_path, demo_assets):
    config = loaded(demo_config(tmp_path, demo_assets, objective="pareto", search={"trials": 3}))
    best = run_module.run(config, show_progress=False)
    study = optuna.load_study(study_name="t", storage=config.storage_url)
    assert len(study.directions) == 2 and study.metric_names == ["style", "prompt"]
    assert best.number in {t.number for t in study.best_trials}
    for trial in study.trials:
        assert trial.values == [pytest.approx(trial.user_attrs["style"]), pytest.approx(trial.user_attrs["prompt"])]
    info = yaml.safe_load((config.out_dir / "best.yaml").read_text())["info"]
    assert info["trial"] == best.number


@pytest.mark.parametrize("name, cls", [("tpe", optuna.samplers.TPESampler), ("cmaes", optuna.samplers.CmaEsSampler),
                                       ("gp", optuna.samplers.GPSampler), ("random", optuna.samplers.RandomSampler)])
def test_samplers_by_name_propose_points_in_range(tmp_path, demo_assets, name, cls):
    config = loaded(demo_config(tmp_path, demo_assets, search={"sampler": name}))
    sampler = make_sampler(config, seed=0, n_params=4)
    assert isinstance(sampler, cls)
    study = optuna.create_study(sampler=sampler, direction="maximize")
    study.optimize(lambda t: -(t.suggest_float("x", 0.0, 2.0) - 1.2) ** 2 - (t.suggest_float("y", 0.0, 2.0) - 0.3) ** 2,
                   n_trials=6)
    assert all(0.0 <= t.params["x"] <= 2.0 and 0.0 <= t.params["y"] <= 2.0 for t in study.trials)


def test_render_command_writes_every_job_and_a_grid(tmp_path, demo_assets):
    config = demo_config(tmp_path, demo_assets)
    out = tmp_path / "preview"
    result = zsearch("render", config, "--recipe", "missing.yaml", "-o", out)
    assert result.returncode == 2 and "recipe not found" in result.stderr
    result = zsearch("render", config, "-o", out)
    assert result.returncode == 0, result.stderr
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert len(pngs) == 3 * 2 + 1 and "grid.png" in pngs  # 3 prompts x 2 seeds, and the grid


def test_dashboard_serves_the_study(tmp_path, demo_assets):
    config = demo_config(tmp_path, demo_assets, search={"trials": 1})
    assert zsearch("run", config, "--no-progress").returncode == 0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = start("dashboard", config, "--port", port)
    try:
        deadline = time.time() + 60
        body = None
        while time.time() < deadline and body is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=2) as response:
                    body = response.read().decode()
            except OSError:
                time.sleep(0.5)
        assert body is not None and '"t"' in body  # the study is listed by name
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_a_trial_the_pruner_stops_completes_as_partial_and_is_never_picked_or_validated(tmp_path, demo_assets):
    """A planted best scoring 10 on every job: the next search trials are worse on every job, so
    WilcoxonPruner stops them after 4 of 6 jobs (p = 1/16 < 0.1; after 2 jobs p = 1/4)."""
    from zsearch.study import records

    config = loaded(demo_config(tmp_path, demo_assets, render={"batch": 2}, search={"trials": 4, "prune": True},
                                validation={"top_k": 3}))
    study = plant_best(config)
    run_module.run(config, show_progress=False)
    study = optuna.load_study(study_name=config.name, storage=config.storage_url)
    searched = [t for t in study.trials if records.ROLE not in t.user_attrs and t.value != 10.0]
    assert len(searched) == 2
    for trial in searched:
        assert trial.state == TrialState.COMPLETE and records.is_partial(trial)
        ran = [v for v in records.job_scores(trial) if v == v]
        assert len(ran) == 4 and sorted(trial.intermediate_values) == sorted(
            i for i, v in enumerate(records.job_scores(trial)) if v == v)
        # The stand-in: the planted best's 10 plus the paired mean difference = the mean of the jobs run.
        assert trial.value == pytest.approx(sum(ran) / 4, abs=1e-9)
    validated = {row["trial"] for row in study.user_attrs["validation"]["rows"]}
    assert not validated & {t.number for t in searched}
    info = yaml.safe_load((config.out_dir / "best.yaml").read_text())["info"]
    assert info["trial"] not in {t.number for t in searched}
