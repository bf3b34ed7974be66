"""One trial's evaluation under the pruner: per-job reports, a shuffled order, partial completion.

Each job (prompt × seed) is one pruning step, reported under its canonical job index, so the
WilcoxonPruner pairs a trial's jobs with the same jobs of the best trial. The order is shuffled
per trial (seeded by the trial number: a retry or another worker evaluates in the same order),
as Optuna's WilcoxonPruner docs advise, so the first jobs are a fair sample of all of them.

A trial the pruner stops is, by default, completed rather than pruned: its value is the best
trial's score plus the paired mean difference on the jobs it ran (capped just below the best),
and it is marked partial (records.PARTIAL). The sampler learns where the bad regions are (a GP
fits complete trials only), while partial trials are never picked as best nor validated.
"""

from __future__ import annotations

import math
from typing import Optional

import optuna

from zsearch.study import records
from zsearch.search.evaluate import Evaluation, Evaluator

PARTIAL = "partial"  # stopped trials complete with a paired estimate, marked partial
PRUNED = "pruned"  # stopped trials are PRUNED (Optuna's default; a GP learns nothing from them)
ON_STOP = PARTIAL


def evaluate_trial(trial: optuna.Trial, evaluator: Evaluator, recipe, prunable: bool, report: bool = True,
                   on_stop: str = ON_STOP) -> Evaluation:
    """Evaluate `recipe` for `trial`; raises optuna.TrialPruned when stopped and on_stop is PRUNED."""
    if not report:  # a multi-objective study: Optuna takes no intermediate values
        return evaluator.evaluate(recipe, order_seed=trial.number)
    stopped = []

    def stop() -> bool:
        if prunable and trial.should_prune():
            stopped.append(True)
            return True
        return False

    evaluation = evaluator.evaluate(recipe, report=lambda step, score: trial.report(score, step=step),
                                    stop=stop, order_seed=trial.number)
    if stopped:
        mark_stopped(trial, evaluation.jobs_run, len(evaluation.jobs), on_stop)
    if stopped and on_stop == PRUNED:
        raise optuna.TrialPruned(f"pruned after {evaluation.jobs_run} of {len(evaluation.jobs)} jobs")
    return evaluation


def mark_stopped(trial: optuna.Trial, jobs_run: int, jobs: int, on_stop: str = ON_STOP) -> None:
    """Say on the trial, where the dashboard shows it, that it was stopped early: a user attribute
    ("partial: stopped after k of n jobs") and the trial's note."""
    note = records.stopped_note(jobs_run, jobs)
    trial.set_user_attr(records.STOPPED_NOTE, note)
    why = ("Its value is a stand-in: the best trial's score plus the paired mean difference on those jobs, "
           "capped just below the best. The sampler learns from it that this region is worse; it is never "
           "picked as the best, validated, nor ranked in the report's importance."
           if on_stop == PARTIAL else "Optuna keeps it as PRUNED.")
    try:
        from optuna_dashboard import save_note
        save_note(trial, f"**{note}** (the pruner judged it worse than the best trial).\n\n{why}\n")
    except Exception:  # noqa: BLE001 - the note is for people; the attribute above says the same
        pass


def partial_value(jobs: list[float], reference_jobs: Optional[list[float]], reference_value: Optional[float]) -> float:
    """A stopped trial's stand-in score: the reference's score plus the paired mean difference
    on the jobs both ran, capped just below the reference (it was stopped for being worse).

    Without a usable reference (or no shared job), the plain mean of the jobs it ran.
    """
    ran = [x for x in jobs if not math.isnan(x)]
    plain = sum(ran) / len(ran) if ran else math.nan
    if reference_jobs is None or reference_value is None or len(reference_jobs) != len(jobs):
        return plain
    diffs = [x - r for x, r in zip(jobs, reference_jobs) if not math.isnan(x) and not math.isnan(r)]
    if not diffs:
        return plain
    estimate = reference_value + sum(diffs) / len(diffs)
    return min(estimate, math.nextafter(reference_value, -math.inf))


def stand_in_value(study: optuna.Study, evaluation: Evaluation) -> float:
    """partial_value against the trial the pruner compared with: the study's best trial."""
    try:
        best = study.best_trial
    except ValueError:
        best = None
    return partial_value(evaluation.jobs, records.job_scores(best), best.value if best is not None else None)
