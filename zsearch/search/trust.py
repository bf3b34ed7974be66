"""What makes a search result trustworthy: score noise, held-out validation, screening.

- noise: the baseline re-scored on extra seed sets; their spread shows how much a score moves
  with the seeds (context for the reader; gains are judged paired, see stats.py).
- validation: the top-k trials and the baseline re-scored on held-out prompts/seeds, per job;
  the best outputs follow the validation score, and the chosen trial's gain is judged paired
  with the baseline on the same held-out jobs.
- screening: one-factor-at-a-time trials (each parameter at its low and high end), each end
  compared with the baseline job by job; a parameter neither end of which differs is frozen at
  its baseline value.
All results are kept as study user attributes (records.py), so the report and other workers can
read them.
"""

from __future__ import annotations

import logging
from typing import Optional

import optuna
from optuna.trial import TrialState

from zsearch.settings.schema import Config
from zsearch.study import records
from zsearch.study import stats
from zsearch.study.choice import top_candidates
from zsearch.search.evaluate import Evaluator, TrialFailed
from zsearch.study.space import SearchSpace
from zsearch.util.steps import step_bar

SCREEN_ROLE = records.SCREEN_ROLE
SCREEN_KEEP_P = 0.25  # a screening end this likely to differ from the baseline (two-sided) keeps its parameter
log = logging.getLogger("zsearch")


def measure_noise(config: Config, study: optuna.Study, space: SearchSpace, engine, scorers,
                  progress: Optional[bool] = None) -> Optional[dict]:
    """Score the baseline on the training seeds and on `noise.repeats` extra seed sets.

    `progress`: a step bar (None: on a terminal only; False: never)."""
    recorded = records.read_noise(study)
    if recorded is not None:
        return recorded.to_dict()
    if config.noise.repeats == 0:
        return None
    baseline = space.recipe(space.baseline())
    seed_sets = [list(config.seeds), *config.noise.seed_sets(config.seeds)]
    scores = []
    with step_bar("noise band", len(seed_sets), progress, unit="seed set") as bar:
        for seeds in seed_sets:
            try:
                scores.append(Evaluator(config, engine, scorers, seeds=seeds).evaluate(baseline).value)
            except TrialFailed as exc:
                log.warning("noise not measured: the baseline render failed (%s)", exc)
                return None
            bar.update()
    noise = records.noise_from_scores(scores, seed_sets)
    records.write_noise(study, noise)
    return noise.to_dict()


def noise_std(study: optuna.Study) -> Optional[float]:
    noise = records.read_noise(study)
    return noise.std if noise else None


# ---------------------------------------------------------------- validation

def validate(config: Config, study: optuna.Study, space: SearchSpace, engine, scorers,
             progress: Optional[bool] = None) -> Optional[dict]:
    """Re-score the baseline and the top-k trials on the validation set; record and return it.

    Every row keeps its per-job held-out scores, so the chosen trial's gain is judged paired
    with the baseline on the same held-out jobs. Partial (pruned) trials are never validated.
    None when there is nothing to validate (no complete trial, or every render failed).
    `progress`: a step bar (None: on a terminal only; False: never).
    """
    confirmation = records.read_confirmation(study)  # the confirmed leaders first: the candidates best.* may follow
    confirmed = {r.trial: r.mean for r in confirmation.rows if not r.baseline} if confirmation else None
    candidates = top_candidates(study.get_trials(deepcopy=False), config.validation.top_k, confirmed)
    seeds = config.validation.seeds_for(config.seeds)
    evaluator = Evaluator(config, engine, scorers, prompts=config.validation_prompts, seeds=seeds)
    rows = []
    with step_bar("validation", len(candidates), progress, unit="trial") as bar:
        for trial in candidates:
            try:
                evaluation = evaluator.evaluate(space.recipe(trial.params))
            except TrialFailed as exc:
                log.warning("validation of trial %d failed: %s", trial.number, exc)
                continue
            finally:
                bar.update()
            rows.append(records.ValidationRow(trial=trial.number, train=records.trial_score(trial),
                                              validation=evaluation.value, baseline=records.is_baseline(trial),
                                              jobs=evaluation.jobs))
    if not rows:
        return None
    chosen = max(rows, key=lambda r: r.validation)
    record = records.Validation(rows=rows, chosen=chosen.trial, seeds=seeds, prompts=len(config.validation_prompts),
                                same_prompts=config.validation_prompts == config.prompt_list)
    records.write_validation(study, record)
    return record.to_dict()


# ---------------------------------------------------------------- screening

def screen_effect(end_jobs: Optional[list[float]], base_jobs: Optional[list[float]]
                  ) -> Optional[tuple[float, float, bool]]:
    """(mean paired difference, two-sided signed-rank p, interval excludes 0) of one screening end."""
    if end_jobs is None or base_jobs is None or len(end_jobs) != len(base_jobs):
        return None
    c = stats.compare(end_jobs, base_jobs)
    if c is None:
        return None
    diffs = stats.paired_differences(end_jobs, base_jobs)
    p_two = min(1.0, 2 * min(c.p, stats.signed_rank_p([-d for d in diffs])))
    return c.gain, p_two, c.low > 0 or c.high < 0


def analyse_screening(study: optuna.Study, space: SearchSpace) -> Optional[dict]:
    """Once every screening trial has finished: each parameter's effect, and what to freeze.

    Each end is compared with the baseline job by job (paired); a parameter is frozen when
    neither end differs from the baseline: no interval clear of 0 and two-sided p > 0.25.
    Studies without per-job scores fall back to the old rule (effect within the noise σ).
    """
    if records.screening_done(study):
        return study.user_attrs[records.SCREENING]
    trials = study.get_trials(deepcopy=False)
    screens = [t for t in trials if records.is_screening(t)]
    baseline = records.baseline_of(trials)
    if baseline is None or not screens or any(t.state in (TrialState.WAITING, TrialState.RUNNING)
                                              for t in screens):
        return None
    band = noise_std(study) or 0.0
    base, base_jobs = records.trial_score(baseline), records.job_scores(baseline)
    result = {}
    for p in space.params:
        ends, effects = {}, []
        for t in screens:
            name, end = records.parse_screening_role(records.role(t))
            if name == p.name and t.state == TrialState.COMPLETE and records.trial_score(t) is not None:
                ends[end] = records.trial_score(t)
                paired = screen_effect(records.job_scores(t), base_jobs)
                effects.append(paired if paired is not None else (ends[end] - base, None, abs(ends[end] - base) > band))
        # A parameter with no measured end (failed points) is never frozen on no evidence.
        if not effects:
            result[p.name] = records.ScreenRow(low=None, high=None, effect=None, frozen=False)
            continue
        gain, p_two, clear = max(effects, key=lambda e: abs(e[0]))
        keep = any(c or (pv is not None and pv <= SCREEN_KEEP_P) for _, pv, c in effects)
        result[p.name] = records.ScreenRow(low=ends.get("low"), high=ends.get("high"), effect=abs(gain),
                                           frozen=not keep, p=p_two)
    records.write_screening(study, result)
    return study.user_attrs[records.SCREENING]


def frozen_params(study: optuna.Study) -> set[str]:
    return records.frozen_params(study)
