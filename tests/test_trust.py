"""Noise band, held-out validation and screening, on the tiny demo models."""

from __future__ import annotations

import statistics

import optuna
import pytest
import yaml
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from search_helpers import demo_config
from zsearch.settings.load import check_inputs, load_config
from zsearch.search import run as run_module
from zsearch.search import session as session_module
from zsearch.search.evaluate import Evaluator
from zsearch.study.space import SearchSpace
from zsearch.search.trust import analyse_screening
from zsearch.study.space import screening_values

optuna.logging.set_verbosity(optuna.logging.WARNING)
pytestmark = pytest.mark.usefixtures("single_thread")  # in-process renders of tiny models


def small_space(**search):
    return {"ratio": None, "components": [0.0, 2.0], "layers": "none", "tie": ["attn", "ffn"], **search}


def config_for(tmp_path, assets, **overrides):
    path = demo_config(tmp_path, assets, **overrides)
    data = yaml.safe_load(path.read_text())
    data["loras"][0]["search"] = small_space()  # attn, ffn, adaLN
    data["loras"][1].pop("search")  # held fixed
    path.write_text(yaml.safe_dump(data))
    config = load_config(path)
    check_inputs(config)
    return config


def study_of(config):
    return optuna.load_study(study_name=config.name, storage=config.storage_url)


@pytest.fixture(scope="module")
def engine_and_scorer(demo_assets, tmp_path_factory):
    config = config_for(tmp_path_factory.mktemp("engine"), demo_assets)
    engine = session_module.load_engine(config)
    return engine, session_module.load_scorers(config, engine.device)


def test_noise_band_is_the_spread_of_the_baseline_over_seed_sets(tmp_path, demo_assets, engine_and_scorer):
    config = config_for(tmp_path, demo_assets, search={"trials": 2}, noise={"repeats": 2})
    run_module.run(config, show_progress=False)
    study = study_of(config)
    noise = study.user_attrs["noise"]
    assert len(noise["scores"]) == 3 and noise["seed_sets"][0] == config.seeds
    assert noise["std"] == pytest.approx(statistics.stdev(noise["scores"]))
    # The first set is the training seeds: it must equal the baseline trial's own score.
    assert noise["scores"][0] == pytest.approx(study.trials[0].value, abs=1e-6)
    # Independent re-computation of another seed set's score.
    engine, scorers = engine_and_scorer
    space = SearchSpace(config)
    again = Evaluator(config, engine, scorers, seeds=noise["seed_sets"][2]).evaluate(space.recipe(space.baseline()))
    assert again.value == pytest.approx(noise["scores"][2], abs=1e-5)


def test_a_weighting_that_wins_only_on_training_seeds_is_not_picked(tmp_path, demo_assets):
    config = config_for(tmp_path, demo_assets, search={"trials": 4}, validation={"top_k": 3})
    space = SearchSpace(config)
    # Plant a trial that "won" on the training seeds with a score no real render reaches: every
    # LoRA component switched off. Validation renders it for real, on new seeds.
    from zsearch.study.opening import open_study
    study = open_study(config, space)
    planted = {name: 0.0 for name in space.describe()}
    study.add_trial(create_trial(params=planted, value=10.0, user_attrs={"score": 10.0},
                                 distributions={n: FloatDistribution(lo, hi) for n, (lo, hi) in space.describe().items()}))
    run_module.run(config, show_progress=False)
    study = study_of(config)
    record = study.user_attrs["validation"]
    rows = {row["trial"]: row for row in record["rows"]}
    planted_number = next(t.number for t in study.trials if t.value == 10.0)
    assert planted_number in rows and rows[planted_number]["gap"] > 9  # train 10, validation a cosine
    best = yaml.safe_load((config.out_dir / "best.yaml").read_text())["info"]
    chosen = max(record["rows"], key=lambda row: row["validation"])
    assert best["trial"] == chosen["trial"] == record["chosen"]
    assert best["scores"]["validation"] == pytest.approx(chosen["validation"])
    assert study.best_trial.number == planted_number  # the training score alone would pick it
    if chosen["trial"] != planted_number:
        assert best["trial"] != planted_number


def _screened_study(config, space, effects: dict[str, float], std: float):
    """A study holding a baseline at 0.5 and screening trials with the given effects."""
    from zsearch.study.storage import make_storage
    study = optuna.create_study(study_name=config.name, storage=make_storage(config), direction="maximize")
    dists = {n: FloatDistribution(lo, hi) for n, (lo, hi) in space.describe().items()}
    study.add_trial(create_trial(params=space.baseline(), value=0.5, distributions=dists,
                                 user_attrs={"role": "baseline", "score": 0.5}))
    for role, params in screening_values(space):
        name = role.split(":")[1]
        value = 0.5 + (effects[name] if role.endswith("high") else -effects[name] / 2)
        study.add_trial(create_trial(params=params, value=value, distributions=dists,
                                     user_attrs={"role": role, "score": value}))
    study.set_user_attr("noise", {"mean": 0.5, "std": std, "scores": [0.5, 0.5 + std]})
    return study


def test_screening_freezes_what_stays_within_the_noise(tmp_path, demo_assets):
    config = config_for(tmp_path, demo_assets)
    space = SearchSpace(config)
    names = [p.name for p in space.params]
    effects = {names[0]: 0.001, names[1]: 0.2, names[2]: 0.009}
    study = _screened_study(config, space, effects, std=0.01)
    result = analyse_screening(study, space)
    assert {n for n, row in result.items() if row["frozen"]} == {names[0], names[2]}
    assert result[names[1]]["effect"] == pytest.approx(0.2)
    assert study.user_attrs["screening"] == result  # kept in the study


def test_frozen_parameters_stay_at_baseline_in_later_trials(tmp_path, demo_assets):
    config = config_for(tmp_path, demo_assets, search={"trials": 12, "screen": True}, noise={"repeats": 0})
    space = SearchSpace(config)
    names = [p.name for p in space.params]
    study = _screened_study(config, space, {names[0]: 0.001, names[1]: 0.2, names[2]: 0.0}, std=0.01)
    study.set_user_attr("fingerprint", config.fingerprint())
    run_module.run(config, show_progress=False)
    study = study_of(config)
    later = [t for t in study.trials if t.number > 2 * len(names) and t.state == TrialState.COMPLETE]
    assert len(later) >= 3
    for trial in later:
        assert names[0] not in trial.params and names[2] not in trial.params  # never suggested
        assert names[1] in trial.params
        recipe = space.recipe(trial.params)
        assert recipe.loras[0].components[names[0].split(".")[1]] == 1.0


def test_identity_set_scored_by_dinov2_beside_clip(tmp_path, demo_assets):
    """A subject set judged by a (tiny, random) DINOv2 joins the objective with its weight."""
    from tiny_judges import build_tiny_dino
    dino = build_tiny_dino(tmp_path / "dino")
    config = config_for(tmp_path, demo_assets, search={"trials": 2},
                        identity={"references": str(demo_assets.references), "model": str(dino), "weight": 0.5})
    run_module.run(config, show_progress=False)
    study = study_of(config)
    trials = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(trials) == 2
    for t in trials:
        a = t.user_attrs
        assert -1.0 <= a["identity"] <= 1.0
        assert t.value == pytest.approx(1.0 * a["style"] + 0.3 * a["prompt"] + 0.5 * a["identity"], abs=1e-6)


def _paired_screen_study(config, space, base_jobs, ends: dict):
    """Baseline and screening trials with per-job scores; `ends[name] = (low_jobs, high_jobs)`."""
    from zsearch.study import records
    study = optuna.create_study(direction="maximize")
    dists = {n: FloatDistribution(lo, hi) for n, (lo, hi) in space.describe().items()}

    def add(params, jobs, role):
        value = sum(jobs) / len(jobs)
        study.add_trial(create_trial(params=params, value=value, distributions=dists,
                                     user_attrs={records.ROLE: role, records.SCORE: value, records.JOBS: jobs}))

    add(space.baseline(), base_jobs, records.BASELINE_ROLE)
    for role, params in screening_values(space):
        name, end = records.parse_screening_role(role)
        add(params, ends[name][0 if end == "low" else 1], role)
    # A seed-set spread far larger than any effect: the unpaired rule would freeze everything.
    study.set_user_attr(records.NOISE, {"mean": 0.5, "std": 0.2, "scores": [0.3, 0.7]})
    return study


def test_screening_is_judged_paired_per_job(tmp_path, demo_assets):
    """A small effect on every job keeps its parameter; a larger but inconsistent one does not."""
    config = config_for(tmp_path, demo_assets)
    space = SearchSpace(config)
    names = [p.name for p in space.params]
    base = [0.2, 0.9, 0.4, 0.7, 0.3, 0.8]  # jobs differ a lot (seed layouts)
    consistent = [b + 0.01 for b in base]  # +0.01 on every job
    inconsistent = [b + d for b, d in zip(base, [0.05, -0.06, 0.04, -0.05, 0.06, -0.04])]
    study = _paired_screen_study(config, space, base, {
        names[0]: (base, consistent), names[1]: (inconsistent, base), names[2]: (base, base)})
    result = analyse_screening(study, space)
    assert not result[names[0]]["frozen"] and result[names[0]]["effect"] == pytest.approx(0.01)
    assert result[names[0]]["p"] == pytest.approx(2 / 64)  # two-sided exact signed-rank, 6 of 6 up
    assert result[names[1]]["frozen"] and result[names[1]]["effect"] == pytest.approx(0.0, abs=1e-9)
    assert result[names[2]]["frozen"]


def test_shuffled_job_order_scores_the_same_jobs_and_stop_leaves_the_rest_unrun(tmp_path, demo_assets,
                                                                                 engine_and_scorer):
    config = config_for(tmp_path, demo_assets, render={"batch": 2})
    engine, scorers = engine_and_scorer
    evaluator = Evaluator(config, engine, scorers)
    recipe = SearchSpace(config).recipe(SearchSpace(config).baseline())
    plain = evaluator.evaluate(recipe)
    reported = []
    shuffled = evaluator.evaluate(recipe, report=lambda step, score: reported.append((step, score)), order_seed=7)
    assert [step for step, _ in reported] == evaluator.order(7) != list(range(len(evaluator.jobs)))
    assert shuffled.jobs == pytest.approx(plain.jobs, abs=1e-5)  # the same job, wherever it is rendered
    assert dict(reported) == pytest.approx(dict(enumerate(plain.jobs)), abs=1e-5)
    assert plain.value == pytest.approx(statistics.fmean(plain.combined), abs=1e-9)
    stopped = evaluator.evaluate(recipe, stop=lambda: True, order_seed=7)
    ran = evaluator.order(7)[:2]  # the first render batch
    assert stopped.partial and stopped.jobs_run == 2
    assert [i for i, v in enumerate(stopped.jobs) if v == v] == sorted(ran)
    assert stopped.value == pytest.approx(statistics.fmean(plain.jobs[i] for i in ran), abs=1e-5)
    assert stopped.images.shape == plain.images.shape
    assert float(stopped.images[[i for i in range(len(stopped.jobs)) if i not in ran]].abs().sum()) == 0.0
