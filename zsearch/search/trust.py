"""What makes a search result trustworthy: score noise, held-out validation, screening.

- noise: the baseline re-scored on extra seed sets; the standard deviation is the band any
  improvement is compared with.
- validation: the top-k trials and the baseline re-scored on held-out prompts/seeds; the best
  outputs follow the validation score, so a weighting that only wins on the training seeds
  is not picked.
- screening: one-factor-at-a-time trials (each parameter at its low and high end); a
  parameter whose effect stays within the noise band is frozen at its baseline value.
All results are kept as study user attributes, so the report and other workers can read them.
"""

from __future__ import annotations

import logging
import statistics
from typing import Optional

import optuna
from optuna.trial import FrozenTrial, TrialState

from ..config import Config
from .evaluate import Evaluator, TrialFailed
from .space import SearchSpace

SCREEN_ROLE = "screen"
log = logging.getLogger("zsearch")


def measure_noise(config: Config, study: optuna.Study, space: SearchSpace, engine, scorers) -> Optional[dict]:
    """Score the baseline on the training seeds and on `noise.repeats` extra seed sets."""
    if "noise" in study.user_attrs:
        return study.user_attrs["noise"]
    if config.noise.repeats == 0:
        return None
    baseline = space.recipe(space.baseline())
    seed_sets = [list(config.seeds), *config.noise.seed_sets(config.seeds)]
    try:
        scores = [Evaluator(config, engine, scorers, seeds=seeds).evaluate(baseline).value for seeds in seed_sets]
    except TrialFailed as exc:
        log.warning("noise not measured: the baseline render failed (%s)", exc)
        return None
    noise = {"mean": statistics.fmean(scores), "std": statistics.stdev(scores), "scores": scores,
             "seed_sets": seed_sets}
    study.set_user_attr("noise", noise)
    return noise


def noise_std(study: optuna.Study) -> Optional[float]:
    noise = study.user_attrs.get("noise")
    return noise["std"] if noise else None


# ---------------------------------------------------------------- validation

def _score(trial: FrozenTrial) -> float:
    return float(trial.user_attrs.get("score", trial.values[0] if trial.values else float("nan")))


def validate(config: Config, study: optuna.Study, space: SearchSpace, engine, scorers) -> Optional[dict]:
    """Re-score the baseline and the top-k trials on the validation set; record and return it.

    None when there is nothing to validate (no complete trial, or every render failed).
    """
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    baseline = next((t for t in complete if t.user_attrs.get("role") == "baseline"), None)
    ranked = sorted((t for t in complete if t is not baseline), key=_score, reverse=True)
    candidates = ([baseline] if baseline else []) + ranked[:config.validation.top_k]
    seeds = config.validation.seeds_for(config.seeds)
    evaluator = Evaluator(config, engine, scorers, prompts=config.validation_prompts, seeds=seeds)
    rows = []
    for trial in candidates:
        try:
            value = evaluator.evaluate(space.recipe(trial.params)).value
        except TrialFailed as exc:
            log.warning("validation of trial %d failed: %s", trial.number, exc)
            continue
        rows.append({"trial": trial.number, "train": _score(trial), "validation": value,
                     "gap": _score(trial) - value, "baseline": trial is baseline})
    if not rows:
        return None
    chosen = max(rows, key=lambda r: r["validation"])
    record = {"rows": rows, "chosen": chosen["trial"], "seeds": seeds,
              "prompts": len(config.validation_prompts),
              "baseline": next((r["validation"] for r in rows if r["baseline"]), None)}
    study.set_user_attr("validation", record)
    return record


def validated_best(study: optuna.Study, train_best: FrozenTrial) -> FrozenTrial:
    """The validation's choice, while the training best is among the validated trials.

    A new training best found after the last validation takes over until validation runs again.
    """
    record = study.user_attrs.get("validation")
    if not record or train_best.number not in {row["trial"] for row in record["rows"]}:
        return train_best
    return study.get_trials(deepcopy=False)[record["chosen"]]


# ---------------------------------------------------------------- screening

def screening_values(space: SearchSpace) -> list[tuple[str, dict[str, float]]]:
    """One-factor-at-a-time points: (label, params) with one parameter at its low or high end."""
    points = []
    for p in space.params:
        for end, value in (("low", p.low), ("high", p.high)):
            points.append((f"{SCREEN_ROLE}:{p.name}:{end}", dict(space.baseline(), **{p.name: value})))
    return points


def analyse_screening(study: optuna.Study, space: SearchSpace) -> Optional[dict]:
    """Once every screening trial has finished: each parameter's effect, and what to freeze."""
    if "screening" in study.user_attrs:
        return study.user_attrs["screening"]
    trials = study.get_trials(deepcopy=False)
    screens = [t for t in trials if str(t.user_attrs.get("role", "")).startswith(SCREEN_ROLE)]
    baseline = next((t for t in trials if t.user_attrs.get("role") == "baseline"
                     and t.state == TrialState.COMPLETE), None)
    if baseline is None or not screens or any(t.state in (TrialState.WAITING, TrialState.RUNNING)
                                              for t in screens):
        return None
    band = noise_std(study) or 0.0
    base = _score(baseline)
    result = {}
    for p in space.params:
        ends = {}
        for t in screens:
            name, end = t.user_attrs["role"].removeprefix(f"{SCREEN_ROLE}:").rsplit(":", 1)
            if name == p.name and t.state == TrialState.COMPLETE:
                ends[end] = _score(t)
        # A parameter with no measured end (failed points) is never frozen on no evidence.
        effect = max((abs(v - base) for v in ends.values()), default=None)
        result[p.name] = {"low": ends.get("low"), "high": ends.get("high"), "effect": effect,
                          "frozen": effect is not None and effect <= band}
    study.set_user_attr("screening", result)
    return result


def frozen_params(study: optuna.Study) -> set[str]:
    screening = study.user_attrs.get("screening") or {}
    return {name for name, row in screening.items() if row["frozen"]}
