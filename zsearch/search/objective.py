"""The Optuna objective: one trial's recipe rendered, judged and recorded on the trial."""

from __future__ import annotations

import tempfile
from pathlib import Path

import optuna
from optuna.artifacts import upload_artifact
from optuna.trial import TrialState

from ..config import Config
from ..grid import job_grid, save_jpeg, save_png, shrink
from .best import FULL_GRID_ATTR, GRID_ATTR, trial_score
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
        """Every trial: a thumbnail grid for the dashboard (<= 256 px an image, JPEG). The
        baseline, start points and trials among the top ones so far: also the full-size PNG, which
        best.png and the report show (a trial in the final top is in the top when it finishes)."""
        n_prompts = len(self.evaluator.prompts)
        self._upload(trial, GRID_ATTR, job_grid(shrink(evaluation.images), n_prompts), "jpg")
        if self._keeps_full_size(trial, evaluation.value):
            self._upload(trial, FULL_GRID_ATTR, job_grid(evaluation.images, n_prompts), "png")
            self._drop_full_size_outside_the_top(evaluation.value)

    def _upload(self, trial: optuna.Trial, attr: str, image, kind: str) -> None:
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / f"trial-{trial.number:05d}.{kind}"
            (save_jpeg if kind == "jpg" else save_png)(image, path)
            artifact = upload_artifact(artifact_store=self.store, file_path=str(path), study_or_trial=trial,
                                       mimetype="image/jpeg" if kind == "jpg" else "image/png")
        trial.set_user_attr(attr, artifact)

    def _keep(self) -> int:
        return self.config.validation.top_k + 1  # the validated candidates, and the best

    def _keeps_full_size(self, trial: optuna.Trial, score: float) -> bool:
        if _measured_point(trial.user_attrs):
            return True
        scores = sorted((trial_score(t) for t in self._complete()), reverse=True)
        return len(scores) < self._keep() or score >= scores[self._keep() - 1]

    def _drop_full_size_outside_the_top(self, new_score: float) -> None:
        """Full-size grids of trials pushed out of the top: removed, so a night stays small
        (their thumbnails remain; best.png falls back to them)."""
        ranked = sorted(self._complete(), key=trial_score, reverse=True)
        scores = [trial_score(t) for t in ranked]
        # The running trial counts too: it is about to complete with `new_score`.
        cut = sorted([*scores, new_score], reverse=True)[:self._keep()][-1]
        for old in ranked:
            artifact = old.user_attrs.get(FULL_GRID_ATTR)
            if artifact and trial_score(old) < cut and not _measured_point(old.user_attrs):
                try:
                    self.store.remove(artifact)
                except Exception:  # noqa: BLE001 - another worker removed it first
                    pass

    def _complete(self):
        return self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def _measured_point(attrs: dict) -> bool:
    """The baseline and the user's start points: their full-size pictures are always kept."""
    role = attrs.get("role", "")
    return role == "baseline" or role.startswith("start:")
