"""The Optuna objective: one trial's recipe rendered, judged and recorded on the trial."""

from __future__ import annotations

import tempfile
from pathlib import Path

import optuna
from optuna.artifacts import upload_artifact

from ..config import Config
from ..grid import job_grid, save_png
from .best import GRID_ATTR
from .evaluate import Evaluation, Evaluator, TrialFailed
from .space import SearchSpace
from .workers import WORKER_ATTR, WORKER_ID


class Objective:
    def __init__(self, config: Config, space: SearchSpace, evaluator: Evaluator, store, study: optuna.Study):
        self.config, self.space, self.evaluator, self.store, self.study = config, space, evaluator, store, study

    def __call__(self, trial: optuna.Trial):
        trial.set_user_attr(WORKER_ATTR, WORKER_ID)  # first: a dead worker's trial is told apart by it
        recipe = self.space.suggest(trial)

        # Optuna prunes single-objective studies only; and the baseline, screening and start
        # points are measurements the study relies on, so they report but always run to the end.
        prunable = "role" not in trial.user_attrs

        def report(prompt_index: int, score: float) -> None:
            trial.report(score, step=prompt_index)
            if prunable and trial.should_prune():
                raise optuna.TrialPruned(f"pruned after prompt {prompt_index}")

        try:
            evaluation = self.evaluator.evaluate(recipe, report=None if self.config.objective.pareto else report)
        except TrialFailed as exc:
            trial.set_user_attr("fail_reason", str(exc))
            raise
        trial.set_user_attr("score", evaluation.value)
        trial.set_user_attr("per_prompt", evaluation.combined)
        trial.set_user_attr("style", evaluation.mean_style)
        trial.set_user_attr("prompt", evaluation.mean_prompt)
        if evaluation.identity is not None:
            trial.set_user_attr("identity", sum(evaluation.identity) / len(evaluation.identity))
        trial.set_user_attr("seconds", {k: round(v, 4) for k, v in evaluation.seconds.items()})
        self._upload_grid(trial, evaluation)
        if self.config.objective.pareto:
            return evaluation.mean_style, evaluation.mean_prompt
        return evaluation.value

    def _upload_grid(self, trial: optuna.Trial, evaluation: Evaluation) -> None:
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / f"trial-{trial.number:05d}.png"
            save_png(job_grid(evaluation.images, len(self.evaluator.prompts)), path)
            artifact = upload_artifact(artifact_store=self.store, file_path=str(path),
                                       study_or_trial=trial, mimetype="image/png")
        trial.set_user_attr(GRID_ATTR, artifact)
