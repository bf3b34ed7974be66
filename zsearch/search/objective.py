"""The Optuna objective: one trial's recipe rendered, judged and recorded on the trial."""

from __future__ import annotations

import tempfile
from pathlib import Path

import optuna
from optuna.artifacts import upload_artifact

from ..config import Config
from ..grid import job_grid, save_png
from . import pruning, records
from .evaluate import Evaluation, Evaluator, TrialFailed
from .space import SearchSpace
from .study import WORKER_ATTR, worker_id


class Objective:
    def __init__(self, config: Config, space: SearchSpace, evaluator: Evaluator, store, study: optuna.Study):
        self.config, self.space, self.evaluator, self.store, self.study = config, space, evaluator, store, study

    def __call__(self, trial: optuna.Trial):
        self.study._storage.set_trial_system_attr(trial._trial_id, WORKER_ATTR, worker_id())
        recipe = self.space.suggest(trial)

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
        self._upload_grid(trial, evaluation)
        if self.config.objective.pareto:  # the chosen terms side by side (default style and prompt)
            return tuple(evaluation.mean_term(name) for name in self.config.pareto_terms)
        return value

    def _upload_grid(self, trial: optuna.Trial, evaluation: Evaluation) -> None:
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / f"trial-{trial.number:05d}.png"
            save_png(job_grid(evaluation.images, len(self.evaluator.prompts)), path)
            artifact = upload_artifact(artifact_store=self.store, file_path=str(path),
                                       study_or_trial=trial, mimetype="image/png")
        trial.set_user_attr(records.GRID, artifact)
