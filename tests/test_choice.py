"""The one best-trial rule (study/choice.py), read the same by `zsearch best`, the report and validation."""

from __future__ import annotations

import math

import optuna
from optuna.distributions import FloatDistribution

from zsearch.outputs.best import chosen_by, pick_best
from zsearch.report.facts import gather
from zsearch.study import records
from zsearch.study.choice import PERSON, TRAINING, VALIDATION, choose_best, top_candidates

optuna.logging.set_verbosity(optuna.logging.WARNING)
DIST = {"x": FloatDistribution(0.0, 2.0)}


def add(study, x, score, role=None, partial=False):
    if role is not None:
        study.enqueue_trial({"x": x}, user_attrs={records.ROLE: role})
    trial = study.ask(DIST)
    trial.set_user_attr(records.SCORE, score)
    trial.set_user_attr(records.JOBS, [score] * 4 if not partial else [score, math.nan, math.nan, math.nan])
    if partial:
        trial.set_user_attr(records.PARTIAL, True)
    study.tell(trial, score)
    return study.trials[trial.number]


def validate(study, chosen, rows):
    records.write_validation(study, records.Validation(
        rows=[records.ValidationRow(t.number, records.trial_score(t), held, records.is_baseline(t), [held] * 4)
              for t, held in rows], chosen=chosen.number, seeds=[9], prompts=1))


def everyone(study, config):
    """What each reader names as the best."""
    return {"rule": choose_best(study).trial.number, "best": pick_best(config, study).number,
            "report": gather(study).best.number}


def test_training_then_validation_then_the_person_and_every_reader_agrees(tmp_path):
    study = optuna.create_study(direction="maximize")
    base = add(study, 1.0, 0.50, role=records.BASELINE_ROLE)
    lucky = add(study, 1.5, 0.60)
    steady = add(study, 1.2, 0.58)
    add(study, 0.3, 0.99, partial=True)  # a stand-in score: never the best
    config = None  # pick_best's config is not part of the rule

    assert choose_best(study).by == TRAINING
    assert set(everyone(study, config).values()) == {lucky.number}

    validate(study, steady, [(base, 0.40), (lucky, 0.41), (steady, 0.47)])
    choice = choose_best(study)
    assert (choice.by, choice.train_best.number, choice.validation_current) == (VALIDATION, lucky.number, True)
    assert set(everyone(study, config).values()) == {steady.number}
    assert chosen_by(study, steady) == {"by": VALIDATION}

    study.set_user_attr(records.REVIEW, {"study": "r:review", "candidates": [0, 1, 2], "choices": [[0, 1]],
                                         "ranking": [{"trial": 0, "strength": 0.7}], "chosen": base.number,
                                         "model": "bradley-terry"})
    assert choose_best(study).by == PERSON
    assert set(everyone(study, config).values()) == {base.number}
    assert gather(study).chosen_by == PERSON and chosen_by(study, base)["by"] == PERSON

    study.set_user_attr(records.REVIEW, {"chosen": 99})  # a choice that names no complete trial is ignored
    assert set(everyone(study, config).values()) == {steady.number}


def test_a_training_best_found_after_validation_takes_over_until_validation_runs_again():
    study = optuna.create_study(direction="maximize")
    base = add(study, 1.0, 0.50, role=records.BASELINE_ROLE)
    first = add(study, 1.5, 0.60)
    validate(study, base, [(base, 0.45), (first, 0.40)])
    assert choose_best(study).trial.number == base.number
    newer = add(study, 1.7, 0.65)
    choice = choose_best(study)
    assert (choice.trial.number, choice.by, choice.validation_current) == (newer.number, TRAINING, False)
    assert gather(study).best.number == newer.number and not gather(study).validation_current


def test_top_candidates_put_the_baseline_first_then_held_out_then_training_scores():
    study = optuna.create_study(direction="maximize")
    base = add(study, 1.0, 0.50, role=records.BASELINE_ROLE)
    a, b, c = add(study, 1.1, 0.70), add(study, 1.2, 0.60), add(study, 1.3, 0.65)
    add(study, 0.3, 0.99, partial=True)
    assert [t.number for t in top_candidates(study.trials, 2)] == [base.number, a.number, c.number]
    held = {b.number: 0.9}
    assert [t.number for t in top_candidates(study.trials, 2, held)] == [base.number, b.number, a.number]
