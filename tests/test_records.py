"""The study's records: written by the search, read back by the search and the report."""

from __future__ import annotations

import math

import optuna
import pytest
import torch
import yaml
from optuna.distributions import FloatDistribution
from optuna.trial import create_trial

from zsearch.settings.load import parse_config
from zsearch.report.facts import gather
from zsearch.search import pruning
from zsearch.study import records
from zsearch.study import stats
from zsearch.outputs.best import best_scores, pick_best
from zsearch.search.evaluate import Evaluation, Evaluator
from zsearch.outputs.summary import gain_line

optuna.logging.set_verbosity(optuna.logging.WARNING)
DIST = {"x": FloatDistribution(0.0, 2.0)}
BASE_JOBS = [0.50, 0.61, 0.42, 0.55, 0.47, 0.58]


def evaluation(jobs: list[float]) -> Evaluation:
    per_prompt = [sum(v for v in jobs[i:i + 2] if not math.isnan(v)) / max(1, sum(not math.isnan(v) for v in jobs[i:i + 2]))
                  for i in (0, 2, 4)]
    return Evaluation(style=per_prompt, prompt=[0.1, 0.1, 0.1], combined=per_prompt, identity=None,
                      images=torch.zeros(len(jobs), 3, 2, 2), seconds={"render": 1.0}, jobs=jobs)


def add(study, x: float, jobs: list[float], role: str | None = None, value: float | None = None):
    trial = study.ask({"x": DIST["x"]}) if role is None else None
    if role is not None:
        study.enqueue_trial({"x": x}, user_attrs={records.ROLE: role})
        trial = study.ask({"x": DIST["x"]})
    e = evaluation(jobs)
    records.write_evaluation(trial, e, value)
    study.tell(trial, e.value if value is None else value)
    return study.trials[trial.number]


def config(tmp_path, **extra):
    data = {"name": "r", "loras": [{"path": "a.safetensors", "search": {"ratio": [0.0, 2.0]}}],
            "references": "refs", "prompts": ["p0", "p1", "p2"], "seeds": [1, 2],
            "output": str(tmp_path / "out"), **extra}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(data))
    return parse_config(data, path)


def test_a_trial_s_records_round_trip_through_the_storage(tmp_path):
    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/s.db", direction="maximize")
    base = add(study, 1.0, BASE_JOBS, role=records.BASELINE_ROLE)
    jobs = [v + 0.03 for v in BASE_JOBS]
    better = add(study, 1.3, jobs)
    stopped = [0.2, math.nan, 0.3, math.nan, math.nan, 0.25]
    partial = add(study, 0.1, stopped, value=0.9)  # a stand-in score above everything
    study = optuna.load_study(study_name=study.study_name, storage=f"sqlite:///{tmp_path}/s.db")
    base, better, partial = study.trials
    assert records.is_baseline(base) and not records.is_baseline(better)
    assert records.job_scores(better) == pytest.approx(jobs)
    assert records.trial_score(better) == pytest.approx(sum(jobs) / 6)
    got = records.job_scores(partial)
    assert [math.isnan(v) for v in got] == [math.isnan(v) for v in stopped]
    assert records.is_partial(partial) and not records.is_partial(better)
    assert records.trial_score(partial) == 0.9 and not records.can_be_best(partial)
    assert records.candidates(study.trials) == [base, better]
    gain = records.gain_over(better, base)
    assert gain == stats.compare(jobs, BASE_JOBS) and gain.gain == pytest.approx(0.03)
    assert records.gain_over(partial, base).jobs == 3  # paired on the jobs it ran


def test_study_records_round_trip_and_the_report_reads_the_same(tmp_path):
    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/s.db", direction="maximize")
    base = add(study, 1.0, BASE_JOBS, role=records.BASELINE_ROLE)
    better = add(study, 1.3, [v + 0.03 for v in BASE_JOBS])
    add(study, 0.1, [0.9, math.nan, math.nan, math.nan, math.nan, math.nan], value=0.95)
    noise = records.noise_from_scores([0.5, 0.52, 0.47], [[1, 2], [3, 4], [5, 6]])
    records.write_noise(study, noise)
    held_base, held_best = [0.4, 0.5, 0.45, 0.6], [0.43, 0.52, 0.5, 0.61]
    validation = records.Validation(rows=[
        records.ValidationRow(base.number, records.trial_score(base), sum(held_base) / 4, True, held_base),
        records.ValidationRow(better.number, records.trial_score(better), sum(held_best) / 4, False, held_best)],
        chosen=better.number, seeds=[7, 8], prompts=2)
    records.write_validation(study, validation)
    screen = {"r.ratio": records.ScreenRow(low=0.4, high=0.6, effect=0.1, frozen=False, p=0.03)}
    records.write_screening(study, screen)

    assert records.read_noise(study) == noise
    assert records.read_validation(study) == validation
    assert records.read_screening(study) == screen
    assert records.read_validation(study).gain() == stats.compare(held_best, held_base)

    facts = gather(study)
    assert facts.noise == noise and facts.validation == validation and facts.screening == screen
    assert facts.best.number == better.number  # the partial trial's 0.95 is never the best
    assert facts.counts["partial"] == 1 and facts.counts["complete"] == 2
    comparison, where = facts.comparison
    assert where == "validation" and comparison == stats.compare(held_best, held_base)

    cfg = config(tmp_path)
    assert pick_best(cfg, study).number == better.number
    scores = best_scores(study, pick_best(cfg, study))
    assert scores["gain"]["on"] == "validation" and scores["gain"]["gain"] == pytest.approx(comparison.gain)
    line = gain_line(scores)
    half = (comparison.high - comparison.low) / 2
    assert line.startswith(f"gain over the baseline {comparison.gain:+.5f} ± {half:.5f}")
    assert line.endswith(f"held-out jobs, p = {comparison.p:.3g}): {comparison.verdict}")


def test_without_validation_the_gain_is_paired_on_the_training_jobs(tmp_path):
    study = optuna.create_study(direction="maximize")
    base = add(study, 1.0, BASE_JOBS, role=records.BASELINE_ROLE)
    better = add(study, 1.3, [v + 0.02 + 0.001 * i for i, v in enumerate(BASE_JOBS)])
    scores = best_scores(study, pick_best(config(tmp_path), study))
    expected = records.gain_over(better, base)
    assert scores["gain"] == {**expected.to_dict(), "on": "training"}
    assert expected.verdict == stats.CONCLUSIVE  # better on all 6 jobs: p = 1/64, interval above 0


def test_malformed_records_read_as_absent():
    study = optuna.create_study(direction="maximize")
    study.set_user_attr(records.NOISE, {"std": "high"})
    study.set_user_attr(records.VALIDATION, {"rows": [{"trial": "x"}]})
    study.set_user_attr(records.SCREENING, {"a": {"effect": None}, "b": "nonsense"})
    assert records.read_noise(study) is None and records.read_validation(study) is None
    assert records.read_screening(study) == {}
    trial = create_trial(value=0.3, params={"x": 1.0}, distributions=DIST,
                         user_attrs={records.SCORE: "n/a", records.JOBS: ["a", 1]})
    assert records.trial_score(trial) == 0.3 and records.job_scores(trial) is None


def test_a_stopped_trial_s_stand_in_is_paired_with_the_reference_and_below_it():
    ref = [0.5, 0.7, 0.4, 0.6]
    # Ran jobs 0 and 2, each 0.05 below the reference: reference score minus 0.05.
    assert pruning.partial_value([0.45, math.nan, 0.35, math.nan], ref, 0.55) == pytest.approx(0.50)
    # Better than the reference on the jobs it ran: capped just below the reference's score.
    capped = pruning.partial_value([0.6, math.nan, math.nan, math.nan], ref, 0.55)
    assert capped < 0.55 and capped == pytest.approx(0.55)
    # No usable reference: the plain mean of the jobs it ran.
    assert pruning.partial_value([0.2, math.nan, 0.4, math.nan], None, None) == pytest.approx(0.3)


def test_job_order_is_a_per_trial_shuffle_seeded_by_the_trial_number(tmp_path):
    cfg = config(tmp_path)

    class Engine:
        prompts = ["p0", "p1", "p2"]

    evaluator = Evaluator(cfg, Engine(), scorers=None)
    assert evaluator.order(None) == list(range(6))
    orders = [evaluator.order(n) for n in range(20)]
    assert all(sorted(o) == list(range(6)) for o in orders)
    assert orders[3] == evaluator.order(3)  # a retry of trial 3 evaluates in the same order
    assert len({tuple(o) for o in orders}) > 10
    firsts = {o[0] for o in orders}
    assert len(firsts) >= 4  # every prompt comes first in some trial


def test_fail_reasons_name_a_dead_workers_trial_by_its_retry():
    """A dead worker's trial has no reason of its own; the retry Optuna queued for it names it."""
    study = optuna.create_study()
    dead = study.ask()
    study.tell(dead, state=optuna.trial.TrialState.FAIL)  # as fail_dead_workers does
    records.RetryDeadTrial(max_retry=2)(study, study.trials[dead.number])  # queues its retry
    nan = study.ask()
    nan.set_user_attr(records.FAIL_REASON, "the render contains NaN or Inf values")
    study.tell(nan, state=optuna.trial.TrialState.FAIL)
    study.tell(study.ask(), state=optuna.trial.TrialState.FAIL)  # failed, reason unknown, not retried
    expected = {records.WORKER_DIED: 1, "the render contains NaN or Inf values": 1, records.NO_REASON: 1}
    assert records.fail_reasons(study.trials) == expected
    assert gather(study).fail_reasons == expected  # what the report prints
