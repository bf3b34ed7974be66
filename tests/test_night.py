"""The night as the budget: the plan's arithmetic, confirmation and its claims, on the tiny demo."""

from __future__ import annotations

import datetime as dt
import threading
import time

import optuna
import pytest
import yaml
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from search_helpers import demo_config
from zsearch.errors import UserError
from zsearch.outputs.best import pick_best
from zsearch.search import confirm, night
from zsearch.settings.load import check_inputs, load_config
from zsearch.settings.schema import validate_config
from zsearch.study import records, stats
from zsearch.study.space import SearchSpace

optuna.logging.set_verbosity(optuna.logging.WARNING)
pytestmark = pytest.mark.usefixtures("single_thread")  # in-process renders of tiny models

# per LoRA: ratio, attn, ffn, adaLN: the demo's hidden weighting lies inside it
SMALL_SPACE = {"ratio": [0.0, 1.5], "components": [0.0, 2.0], "layers": "none", "tie": ["attn", "ffn"]}


def small_config(tmp_path, assets, **overrides):
    path = demo_config(tmp_path, assets, **overrides)
    data = yaml.safe_load(path.read_text())
    for lora in data["loras"]:
        lora["search"] = dict(SMALL_SPACE)
    path.write_text(yaml.safe_dump(data))
    config = load_config(path)
    check_inputs(config)
    return config


def base(**search):
    return {"name": "n", "loras": [{"path": "a.safetensors"}], "references": "refs", "prompts": ["p"],
            "search": search}


# ---------------------------------------------------------------- the config

def test_hours_is_the_budget_and_trials_an_optional_cap(tmp_path):
    old = validate_config(base(trials=500, hours=8), tmp_path / "c.yaml").search  # configs written before
    assert (old.trial_cap, old.hours, old.confirms) == (500, 8, True)
    night_only = validate_config(base(hours=8), tmp_path / "c.yaml").search
    assert night_only.trial_cap is None and night_only.confirms
    counted = validate_config(base(trials=60), tmp_path / "c.yaml").search
    assert counted.trial_cap == 60 and not counted.confirms  # confirmation's share is a share of hours
    assert validate_config(base(), tmp_path / "c.yaml").search.trial_cap == 500
    assert not validate_config(base(hours=1, confirm={"top_k": 0}), tmp_path / "c.yaml").search.confirms
    with pytest.raises(UserError, match=r"search\.confirm\.share"):
        validate_config(base(hours=1, confirm={"share": 1.5}), tmp_path / "c.yaml")
    with pytest.raises(UserError, match=r"unknown key 'search\.confirm\.round'"):
        validate_config(base(hours=1, confirm={"round": 2}), tmp_path / "c.yaml")


def test_shipped_configs_load_with_their_budgets():
    from pathlib import Path
    repo = Path(__file__).resolve().parents[1]
    style = load_config(repo / "configs" / "style.yaml").search
    assert style.hours == 8 and style.trial_cap is None and style.confirms
    demo = load_config(repo / "configs" / "demo.yaml").search
    assert demo.trial_cap == 60 and demo.hours is None  # the demo's figures are measured at 60 trials


# ---------------------------------------------------------------- the plan (pure)

@pytest.mark.parametrize("fits, room, due, left, step", [
    (False, True, True, True, night.Step.STOP),  # nothing starts that would end after the deadline
    (True, True, False, True, night.Step.TRIAL),
    (True, True, True, True, night.Step.CONFIRM),
    (True, True, True, False, night.Step.TRIAL),  # nothing left to confirm: search on
    (True, False, False, True, night.Step.CONFIRM),  # the cap is reached: the GPU keeps confirming
    (True, False, False, False, night.Step.STOP),
])
def test_what_a_worker_does_next(fits, room, due, left, step):
    assert night.decide(fits, room, due, left) is step


def test_the_pace_is_read_from_the_newest_trials_this_worker_ran():
    """The estimate follows the newest units, this worker's own first, and reads a bounded window
    (a night's study holds thousands of trials)."""
    now = dt.datetime.now()

    def unit(number: int, seconds: float, worker: str):
        trial = create_trial(value=0.5, params={"x": 0.5}, distributions={"x": FloatDistribution(0, 1)},
                             user_attrs={"score": 0.5, records.WORKER: worker})
        trial.number, trial.datetime_start = number, now
        trial.datetime_complete = now + dt.timedelta(seconds=seconds)
        return trial

    old = [unit(k, 100.0, "me") for k in range(night.SCAN)]  # slow, long ago: outside the window
    newest = [unit(night.SCAN + k, 5.0 + k, "me" if k % 2 else "other") for k in range(2 * night.RECENT)]
    seconds = night.recent_durations(old + newest, worker="me")
    assert seconds == [5.0 + k for k in range(2 * night.RECENT) if k % 2][-night.RECENT:]
    assert night.recent_durations(old + newest, worker="new") == [5.0 + k for k in range(night.RECENT, 2 * night.RECENT)]
    assert night.recent_durations(old, worker="me") == [100.0] * night.RECENT


def test_the_night_keeps_time_for_validation_and_the_last_export(tmp_path, demo_assets):
    config = small_config(tmp_path, demo_assets, search={"trials": None, "hours": 1.0},
                          validation={"top_k": 2}, noise={"repeats": 0})
    study = optuna.create_study()
    now = dt.datetime.now()
    for k, seconds in enumerate([30.0, 10.0, 12.0]):  # the slowest recent full trial sets the pace
        trial = create_trial(value=0.5, params={"x": 0.5}, distributions={"x": FloatDistribution(0, 1)},
                             user_attrs={"score": 0.5})
        trial.datetime_start = now - dt.timedelta(seconds=100 - k)
        trial.datetime_complete = trial.datetime_start + dt.timedelta(seconds=seconds)
        study.add_trial(trial)
    partial = create_trial(value=0.1, params={"x": 0.1}, distributions={"x": FloatDistribution(0, 1)},
                           user_attrs={"score": 0.1, "partial": True})
    partial.datetime_start, partial.datetime_complete = now, now + dt.timedelta(seconds=500)
    study.add_trial(partial)  # a stopped trial is no measure of a full one
    t0 = 1_000_000.0
    plan = night.Plan(config, study, records.Night(start=t0, deadline=t0 + 3600, hours=1.0))
    plan.exports.append(4.0)
    # 6 jobs a trial, 6 a validation row (3 prompts x 2 new seeds), baseline + 2 rows; one last round
    finish = night.SAFETY * (3 * 6 * 30.0 / 6 + 4.0 + 30.0)
    assert plan.finish_seconds(30.0) == pytest.approx(finish)
    last_start = t0 + 3600 - finish - night.SAFETY * 30.0 - night.MARGIN_S
    assert plan.fits(now=last_start) and not plan.fits(now=last_start + 1)
    assert plan.validation_fits(now=t0 + 3600 - night.SAFETY * (90.0 + 4.0) - night.MARGIN_S)
    assert not plan.validation_fits(now=t0 + 3600 - night.SAFETY * (90.0 + 4.0) - night.MARGIN_S + 1)
    assert plan.validation_need() == pytest.approx(night.SAFETY * (90.0 + 4.0) + night.MARGIN_S)
    assert plan.left(now=t0 + 600) == 3000


def test_workers_share_one_night_and_a_later_run_starts_a_new_one():
    study = optuna.create_study()
    first = night.open_night(study, 2.0, now=1000.0)
    assert (first.start, first.deadline) == (1000.0, 1000.0 + 7200)
    assert night.open_night(study, 2.0, now=1500.0) == first  # a worker joining keeps the deadline
    assert night.open_night(study, 3.0, now=1600.0).deadline == 1600.0 + 3 * 3600  # other hours: a new night
    assert night.open_night(study, 3.0, now=1e9).start == 1e9  # after the deadline: a new night


# ---------------------------------------------------------------- the ranking and the rule

def test_the_ranking_pairs_each_trial_with_the_baseline_on_shared_seed_sets():
    r = records.ConfirmRound
    rounds = [r(0, 0, [10, 11], [0.50, 0.60]), r(0, 1, [12, 13], [0.55, 0.65]),
              r(4, 0, [10, 11], [0.58, 0.61]), r(4, 1, [12, 13], [0.60, 0.70]),
              r(7, 0, [10, 11], [0.70, 0.71])]  # trial 7 has one round: paired on it alone
    ranking = confirm.rank(rounds, baseline=0)
    assert [row.trial for row in ranking.rows] == [7, 4, 0] and ranking.chosen == 7
    four = ranking.row(4)
    assert (four.rounds, four.jobs) == (2, 4) and four.mean == pytest.approx((0.58 + 0.61 + 0.60 + 0.70) / 4)
    expected = stats.compare([0.58, 0.61, 0.60, 0.70], [0.50, 0.60, 0.55, 0.65])
    assert four.gain == expected.to_dict()
    seven = stats.compare([0.70, 0.71], [0.50, 0.60])
    assert ranking.row(7).gain["jobs"] == 2 and ranking.row(7).gain["gain"] == pytest.approx(seven.gain)
    assert ranking.row(0).gain is None and ranking.row(0).baseline


def _planted_study(config, scores: dict[str, float]):
    """A study with a baseline and trials of the given training scores (params from the space)."""
    from zsearch.study.storage import make_storage
    space = SearchSpace(config)
    study = optuna.create_study(study_name=config.name, storage=make_storage(config), direction="maximize")
    dists = {n: FloatDistribution(lo, hi) for n, (lo, hi) in space.describe().items()}
    study.add_trial(create_trial(params=space.baseline(), value=0.5, distributions=dists,
                                 user_attrs={"role": "baseline", "score": 0.5}))
    for k, score in enumerate(scores.values()):
        params = {n: lo + (hi - lo) * (k + 1) / (len(scores) + 1) for n, (lo, hi) in space.describe().items()}
        study.add_trial(create_trial(params=params, value=score, distributions=dists, user_attrs={"score": score}))
    return study


def test_the_best_follows_the_confirmed_ranking_once_the_training_best_is_confirmed(tmp_path, demo_assets):
    config = small_config(tmp_path, demo_assets, search={"trials": None, "hours": 1.0})
    study = _planted_study(config, {"lucky": 0.9, "steady": 0.8})  # trials 1 and 2
    r = records.ConfirmRound
    for result in (r(0, 0, [5, 6], [0.50, 0.50]), r(2, 0, [5, 6], [0.70, 0.72])):
        records.write_confirm_round(study, result)
    confirm.refresh_ranking(study)
    assert pick_best(config, study).number == 1  # the training best is not confirmed yet: it leads
    records.write_confirm_round(study, r(1, 0, [5, 6], [0.52, 0.49]))
    confirm.refresh_ranking(study)
    assert pick_best(config, study).number == 2  # its confirmation revealed the luck
    from zsearch.outputs.best import best_scores, chosen_by
    assert chosen_by(study, study.trials[2])["by"] == "confirmation"
    scores = best_scores(study, study.trials[2])
    assert scores["confirmed"]["jobs"] == 2 and scores["gain"]["on"] == "confirmation"
    assert scores["gain"]["gain"] == pytest.approx(0.21)
    from zsearch.report.facts import gather
    from zsearch.report.sections import summary
    text = " ".join(getattr(block, "text", "") for block in summary(gather(study), "c.yaml", 2, tmp_path))
    assert ("Confirmation re-rendered the top trials on 2 jobs of 1 new seed sets; best.* follow trial 2, the "
            "best mean there, over the training best (trial 1, which scored 0.5050 there).") in text


# ---------------------------------------------------------------- claims and contenders

def test_a_round_is_claimed_once_however_many_workers_try(tmp_path):
    storage = f"sqlite:///{tmp_path / 'claims.db'}"
    claims = optuna.create_study(study_name="n:confirm", storage=storage)
    winners, barrier = [], threading.Barrier(4)

    def worker():
        own = optuna.load_study(study_name="n:confirm", storage=storage)  # as another process would
        barrier.wait()
        number = confirm.claim(own, 3, 0)
        if number is not None:
            winners.append(number)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    trials = claims.get_trials()
    assert len(winners) == 1 and len(trials) == 4
    assert [t.number for t in trials if t.state == TrialState.RUNNING] == winners  # the losers gave up
    assert confirm.taken_rounds(claims) == {3: {0}}
    # A claim whose worker vanished on another machine is released after STALE_S; the round is free.
    assert confirm.release_stale(config=_Where(tmp_path), claims=claims, now=time.time() + confirm.STALE_S + 60) == 1
    assert confirm.taken_rounds(claims) == {}
    assert confirm.claim(claims, 3, 0) is not None


class _Where:  # the part of a config release_stale reads: where the worker leases live
    def __init__(self, folder):
        self.out_dir = folder


def test_contenders_advance_level_by_level_and_a_poor_confirmed_trial_drops_out(tmp_path, demo_assets):
    config = small_config(tmp_path, demo_assets, search={"trials": None, "hours": 1.0})
    study = _planted_study(config, {"a": 0.9, "b": 0.8, "c": 0.7, "d": 0.6})  # trials 1-4
    claims = optuna.create_study()
    taken = []

    def take(top_k=2, rounds=3):
        picked = confirm.next_round(study, claims, top_k=top_k, max_rounds=rounds)
        if picked is not None:
            trial, index = picked
            confirm.claim(claims, trial.number, index)
            claims.tell(len(claims.trials) - 1, 0.5)
            taken.append((trial.number, index))
        return picked

    for _ in range(3):
        take()
    assert taken == [(0, 0), (1, 0), (2, 0)]  # the baseline, then the training top 2
    r = records.ConfirmRound  # trial 1's training score was luck; 2 holds; 3 (untried) is the next level
    for trial, jobs in ((0, [0.5, 0.5]), (1, [0.1, 0.1]), (2, [0.8, 0.8])):
        records.write_confirm_round(study, r(trial, 0, [9, 10], jobs))
    confirm.refresh_ranking(study)
    for _ in range(3):
        take()
    assert taken[3:] == [(0, 1), (2, 1), (1, 1)]  # top 2 by confirmed mean: 2, and 1 (no third yet)
    records.write_confirm_round(study, r(3, 0, [9, 10], [0.6, 0.6]))  # say another worker confirmed 3
    confirm.claim(claims, 3, 0)
    claims.tell(len(claims.trials) - 1, 0.6)
    confirm.refresh_ranking(study)
    while take() is not None:
        pass
    assert (1, 2) not in taken and (3, 1) in taken and (2, 2) in taken  # 1 fell out of the top 2
    assert len(set(taken)) == len(taken)


# ---------------------------------------------------------------- on the demo

def test_a_short_night_ends_before_its_deadline_with_validation_and_nothing_lost(tmp_path, demo_assets):
    from zsearch.search.run import run
    hours = 45 / 3600  # room for a slow trial on a loaded machine: the plan keeps ~10 s for validation
    config = small_config(tmp_path, demo_assets, search={"trials": None, "hours": hours,
                                                         "confirm": {"top_k": 2, "rounds": 2, "after": 0.2}},
                          validation={"top_k": 2})
    began = time.time()
    run(config, show_progress=False)
    ended = time.time()
    study = optuna.load_study(study_name=config.name, storage=config.storage_url)
    recorded = records.read_night(study)
    assert began <= recorded.start and ended <= recorded.deadline <= began + hours * 3600 + 1
    trials = study.get_trials()
    # none left running; a trial asked ahead (search.prefetch, on by default on a GPU) may be given back unrun
    assert len(trials) >= 4 and all(t.state == TrialState.COMPLETE or records.is_not_run(t) for t in trials)
    validation = records.read_validation(study)
    assert validation is not None and len(validation.rows) == 3
    claims = optuna.load_study(study_name=config.name + confirm.CLAIMS_SUFFIX, storage=config.storage_url)
    done = [c.user_attrs["key"] for c in claims.get_trials(states=(TrialState.COMPLETE,))]
    assert done and len(done) == len(set(done)) == len(records.read_confirm_rounds(study))
    best = yaml.safe_load((config.out_dir / "best.yaml").read_text())["info"]
    assert best["trial"] == pick_best(config, study).number and (config.out_dir / "best.safetensors").is_file()
    log = (config.out_dir / "zsearch.log").read_text()
    assert "validation chose trial" in log and "confirmation: trial 0 round 0" in log


def test_confirmation_reveals_a_lucky_trial_and_the_morning_best_is_the_other(tmp_path, demo_assets):
    """Trial 'lucky' (the LoRAs off) holds the top training score; 'steady' (the demo's hidden
    weighting, which the references show) a lower one. Confirmation renders both for real on new
    seeds, and the morning's best.* follow 'steady'."""
    from zsearch.search.run import run
    from zsearch.study.opening import open_study
    config = small_config(tmp_path, demo_assets, search={"trials": 3, "hours": 0.05,
                                                         "confirm": {"top_k": 2, "rounds": 2, "after": 0.0}})
    space = SearchSpace(config)
    study = open_study(config, space)  # queues the baseline, measured for real by the run
    dists = {n: FloatDistribution(lo, hi) for n, (lo, hi) in space.describe().items()}
    off = {name: 0.0 for name in space.describe()}
    steady = space.params_of(demo_assets.hidden_recipe)
    for params, score in ((off, 0.99), (steady, 0.98)):
        study.add_trial(create_trial(params=params, value=score, distributions=dists, user_attrs={"score": score}))
    lucky, honest = 1, 2
    run(config, show_progress=False)
    study = optuna.load_study(study_name=config.name, storage=config.storage_url)
    assert study.best_trial.number == lucky  # the training score alone would pick it
    ranking = records.read_confirmation(study)
    assert ranking.row(lucky).rounds == ranking.row(honest).rounds == 2  # 2 seed sets each, 12 jobs
    assert ranking.row(honest).mean > ranking.row(lucky).mean
    rounds = {(r.trial, r.round): r for r in records.read_confirm_rounds(study)}
    assert rounds[(lucky, 1)].seeds == rounds[(honest, 1)].seeds == confirm.round_seeds(config, 1)
    assert not set(confirm.round_seeds(config, 0)) & {*config.seeds, *config.validation.seeds_for(config.seeds)}
    best = yaml.safe_load((config.out_dir / "best.yaml").read_text())["info"]
    assert best["trial"] == honest and best["chosen_by"]["by"] == "confirmation"
    assert best["scores"]["confirmed"]["jobs"] == 12


def test_two_workers_keep_one_night_and_never_confirm_the_same_round_twice(tmp_path, demo_assets):
    """Two `zsearch run` processes on one study: the same deadline for both, every confirmation
    round rendered once, and both end before the night does."""
    from search_helpers import start
    path = demo_config(tmp_path, demo_assets, search={"trials": None, "hours": 45 / 3600,
                                                      "confirm": {"top_k": 2, "rounds": 3, "after": 0.2, "share": 0.5}})
    (tmp_path / "out" / "t").mkdir(parents=True)  # main's output-path probe races between two workers creating it
    began = time.time()
    workers = [start("run", path, "--no-progress") for _ in range(2)]
    for proc in workers:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    ended = time.time()
    out = tmp_path / "out" / "t"
    study = optuna.load_study(study_name="t", storage=f"sqlite:///{out / 'study.db'}")
    recorded = records.read_night(study)
    assert began <= recorded.start and ended <= recorded.deadline  # both held the first worker's night
    trials = study.get_trials()
    assert all(t.state == TrialState.COMPLETE or records.is_not_run(t) for t in trials)
    assert len({t.user_attrs.get(records.WORKER) for t in trials}) == 2
    claims = optuna.load_study(study_name="t" + confirm.CLAIMS_SUFFIX, storage=f"sqlite:///{out / 'study.db'}")
    done = [c.user_attrs["key"] for c in claims.get_trials(states=(TrialState.COMPLETE,))]
    assert done and len(done) == len(set(done))  # no round rendered twice
    assert not claims.get_trials(states=(TrialState.RUNNING,))
