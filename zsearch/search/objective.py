"""The Optuna objective: one trial's recipe rendered, judged and recorded on the trial."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable, Optional

import optuna
from optuna.artifacts import upload_artifact
from optuna.trial import TrialState

from zsearch.settings.schema import Config
from zsearch.outputs.grid import job_grid, save_jpeg, save_png, shrink
from zsearch.study import budget as trial_budget
from zsearch.search import pruning
from zsearch.study import records
from zsearch.search.evaluate import Evaluation, Evaluator, TrialFailed
from zsearch.study.space import SearchSpace
from zsearch.study.workers import WORKER_ID


class Objective:
    def __init__(self, config: Config, space: SearchSpace, evaluator: Evaluator, store, study: optuna.Study,
                 budget: Optional[int] = None):
        self.config, self.space, self.evaluator, self.store, self.study = config, space, evaluator, store, study
        self.budget = budget  # the study's trial budget, which trials of other workers share
        self.on_point: Optional[Callable[[], None]] = None  # called once the trial's point is stored (prefetch.py)

    def __call__(self, trial: optuna.Trial):
        trial.set_user_attr(records.WORKER, WORKER_ID)  # first: a dead worker's trial is told apart by it
        if self.budget is not None and trial_budget.is_surplus(self.study, trial.number, self.budget):
            trial.set_user_attr(records.SURPLUS, True)
            reason = f"not run: other workers had taken the last of the {self.budget} trials"
            trial.set_user_attr(records.FAIL_REASON, reason)
            raise TrialFailed(reason)
        recipe = self.space.suggest(trial)
        if self.on_point is not None:  # the next point is chosen while this one renders
            self.on_point()

        # Optuna prunes single-objective studies only; and the baseline, screening and start
        # points are measurements the study relies on, so they report but always run to the end.
        # Jobs are reported one by one in a per-trial shuffled order; a trial the pruner stops
        # completes with a paired stand-in score, marked partial (pruning.py).
        prunable = records.ROLE not in trial.user_attrs
        try:
            evaluation = pruning.evaluate_trial(trial, self.evaluator, recipe, prunable,
                                                report=not self.config.objective.pareto)
        except TrialFailed as exc:
            trial.set_user_attr(records.FAIL_REASON, str(exc))
            raise
        value = pruning.stand_in_value(self.study, evaluation) if evaluation.partial else evaluation.value
        records.write_evaluation(trial, evaluation, value)
        self._upload_grid(trial, evaluation, None if evaluation.partial else value)
        if self.config.objective.pareto:  # the chosen terms side by side (default style and prompt)
            return tuple(evaluation.mean_term(name) for name in self.config.pareto_terms)
        return value

    def _upload_grid(self, trial: optuna.Trial, evaluation: Evaluation, score: Optional[float]) -> None:
        """Every trial: a thumbnail grid for the dashboard (<= 256 px an image, JPEG). The
        baseline, start points and trials among the top ones so far: also the full-size PNG, which
        best.png and the report show (a trial in the final top is in the top when it finishes).
        `score` is None for a trial that can never be a best (a pruned, partial one)."""
        n_prompts = len(self.evaluator.prompts)
        self._upload(trial, records.GRID, job_grid(shrink(evaluation.images), n_prompts), "jpg")
        if self._keeps_full_size(trial, score):
            self._upload(trial, records.FULL_GRID, job_grid(evaluation.images, n_prompts), "png")
            if score is not None:
                self._drop_full_size_outside_the_top(score)

    def _upload(self, trial: optuna.Trial, attr: str, image, kind: str) -> None:
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / f"trial-{trial.number:05d}.{kind}"
            (save_jpeg if kind == "jpg" else save_png)(image, path)
            artifact = upload_artifact(artifact_store=self.store, file_path=str(path), study_or_trial=trial,
                                       mimetype="image/jpeg" if kind == "jpg" else "image/png")
        trial.set_user_attr(attr, artifact)

    def _keep(self) -> int:
        return self.config.validation.top_k + 1  # the validated candidates, and the best

    def _top_scores(self) -> list[float]:
        scores = (records.trial_score(t) for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                  if not t.user_attrs.get(records.PARTIAL))
        return sorted((s for s in scores if s is not None), reverse=True)

    def _keeps_full_size(self, trial: optuna.Trial, score: Optional[float]) -> bool:
        if _measured_point(trial.user_attrs):
            return True
        if score is None:
            return False
        scores = self._top_scores()
        return len(scores) < self._keep() or score >= scores[self._keep() - 1]

    def _drop_full_size_outside_the_top(self, new_score: float) -> None:
        """Full-size grids of trials pushed out of the top: removed, so a night stays small
        (their thumbnails remain; best.png falls back to them)."""
        cut = sorted([*self._top_scores(), new_score], reverse=True)[:self._keep()][-1]
        for old in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            artifact = old.user_attrs.get(records.FULL_GRID)
            score = records.trial_score(old)
            if artifact and not _measured_point(old.user_attrs) and (score is None or score < cut):
                try:
                    self.store.remove(artifact)
                except Exception:  # noqa: BLE001 - another worker removed it first
                    pass


def _measured_point(attrs: dict) -> bool:
    """The baseline and the user's start points: their full-size pictures are always kept."""
    role = attrs.get(records.ROLE, "")
    return role == records.BASELINE_ROLE or str(role).startswith(f"{records.START_ROLE}:")
