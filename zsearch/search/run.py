"""`zsearch run`: the overnight loop — suggest, render, score, keep the best, survive interruptions."""

from __future__ import annotations

import logging
import signal
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Optional

import optuna
import torch
from optuna.artifacts import upload_artifact
from optuna.trial import TrialState

from ..config import Config, check_inputs
from ..engine.compile import planned_images
from ..errors import UserError
from ..grid import render_grid, save_png
from .best import GRID_ATTR, export_best, pick_best, trial_score
from .evaluate import Evaluation, Evaluator, Scorers, TrialFailed
from .progress import Progress
from .space import SearchSpace
from .study import WORKER_ATTR, artifact_store, open_study, worker_id
from .trust import analyse_screening, frozen_params, measure_noise, validate

log = logging.getLogger("zsearch")


def prepare(config: Config) -> None:
    """Build the demo's tiny models when asked, then check every input file exists."""
    if config.demo is not None:
        from ..demo import build_demo
        build_demo(config.demo)
    check_inputs(config)


def load_engine(config: Config, planned_images: int = 0):
    from ..engine import Engine  # planned_images: what render.compile auto weighs the warm-up against
    from ..lora.read import load_loras
    loras = load_loras([lora.path for lora in config.loras])
    prompts = list(dict.fromkeys([*config.prompt_list, *config.validation_prompts]))
    r = config.render
    return Engine(config.model, loras, prompts, device=config.device, way=r.way, cache_dir=config.cache_dir,
                  memory=r.memory, compile=r.compile, planned_images=planned_images,
                  render_size=(r.steps, r.width, r.height))


def load_scorers(config: Config, device) -> Scorers:
    from ..engine.scorer import Scorer
    clip = Scorer.load(config.scorer.model, config.scorer.pretrained, config.references,
                       style=config.scorer.style, device=device, cache_dir=config.cache_dir)
    identity = None
    if config.identity is not None:
        from ..engine.dino import DinoScorer
        identity = DinoScorer.load(config.identity.model, config.identity.references, device=device,
                                   cache_dir=config.cache_dir)
    return Scorers(clip, identity)


def job_grid(evaluation: Evaluation, n_prompts: int):
    """A picture of one trial: one column per prompt, one row per seed."""
    images = evaluation.images
    n_seeds = images.shape[0] // n_prompts
    by_seed = images.view(n_prompts, n_seeds, *images.shape[1:]).transpose(0, 1).reshape(images.shape)
    return render_grid(by_seed, columns=n_prompts)


class GracefulStop:
    """First SIGINT/SIGTERM: finish the current trial, write outputs, exit 0. Second: stop now."""

    def __init__(self):
        self.requested = False
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        log.warning("stop requested: finishing the current trial (press Ctrl-C again to abort)")


def finished_count(study: optuna.Study) -> int:
    states = (TrialState.COMPLETE, TrialState.PRUNED)
    return len(study.get_trials(deepcopy=False, states=states))


class Objective:
    def __init__(self, config: Config, space: SearchSpace, evaluator: Evaluator, store, study: optuna.Study):
        self.config, self.space, self.evaluator, self.store, self.study = config, space, evaluator, store, study

    def __call__(self, trial: optuna.Trial):
        self.study._storage.set_trial_system_attr(trial._trial_id, WORKER_ATTR, worker_id())
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
            save_png(job_grid(evaluation, len(self.evaluator.prompts)), path)
            artifact = upload_artifact(artifact_store=self.store, file_path=str(path),
                                       study_or_trial=trial, mimetype="image/png")
        trial.set_user_attr(GRID_ATTR, artifact)


def _setup_log(config: Config) -> None:
    """Everything into results/<name>/zsearch.log; warnings also on the terminal."""
    config.out_dir.mkdir(parents=True, exist_ok=True)
    to_file = logging.FileHandler(config.out_dir / "zsearch.log")
    to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    to_terminal = logging.StreamHandler(sys.stderr)
    to_terminal.setLevel(logging.WARNING)
    to_terminal.setFormatter(logging.Formatter("zsearch: %(message)s"))
    for name in ("zsearch", "optuna"):
        logger = logging.getLogger(name)
        for old in [h for h in logger.handlers if getattr(h, "_zsearch", False)]:
            logger.removeHandler(old)  # a previous run in this process
            old.close()
        for handler in (to_file, to_terminal) if name == "zsearch" else (to_file,):
            handler._zsearch = True
            logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False  # the progress bar speaks on the terminal; the log file has the rest
    optuna.logging.disable_default_handler()
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def run(config: Config, trials: Optional[int] = None, show_progress: bool = True) -> Optional[optuna.trial.FrozenTrial]:
    """Run (or resume) the study until its trial budget or time budget is spent."""
    prepare(config)
    _setup_log(config)
    space = SearchSpace(config)
    study = open_study(config, space)
    store = artifact_store(config)
    total = trials if trials is not None else config.search.trials
    done = finished_count(study)
    if done >= total:
        log.info("study '%s' already has %d finished trials (budget %d)", config.name, done, total)
        return export_best(config, study, store)

    def say(message: str) -> None:  # the slow steps outside the trial loop, on the terminal too
        log.info(message)
        if show_progress:
            print(f"zsearch: {message}", file=sys.stderr, flush=True)

    with GracefulStop() as stop:
        say(f"loading {config.model} on {config.device} ...")
        engine = load_engine(config, planned_images(total - done, len(config.prompt_list) * len(config.seeds),
                                                    config.search.hours))
        say(engine.placement)
        scorers = load_scorers(config, engine.device)
        if "noise" not in study.user_attrs and config.noise.repeats and not stop.requested:
            say(f"scoring the baseline on {config.noise.repeats + 1} seed sets (the noise band) ...")
        noise = None if stop.requested else measure_noise(config, study, space, engine, scorers)
        if noise:
            log.info("baseline score %.5f ± %.5f over %d seed sets", noise["mean"], noise["std"],
                     len(noise["scores"]))
        space = SearchSpace(config, frozen_params(study))
        objective = Objective(config, space, Evaluator(config, engine, scorers), store, study)
        _search(config, study, objective, store, stop, total, done, show_progress)
        if stop.requested:
            log.info("stopped early: validation skipped (run `zsearch validate %s`)", config.source)
        elif config.validation.top_k > 0:
            say(f"validating the baseline and the top {config.validation.top_k} trials on held-out seeds ...")
            report_validation(validate(config, study, space, engine, scorers))
    return export_best(config, study, store)


MAX_FAILS_IN_A_ROW = 5


def _search(config: Config, study: optuna.Study, objective: Objective, store, stop: GracefulStop,
            total: int, done: int, show_progress: bool) -> None:
    """Run trials until the budget, the time limit, a stop request, or repeated failures."""
    deadline = time.time() + config.search.hours * 3600 if config.search.hours else None
    log.info("study '%s': %d parameters, %d jobs per trial, %d/%d trials done, device %s",
             config.name, len(objective.space), len(objective.evaluator.jobs), done, total,
             objective.evaluator.engine.device)
    fails: list[str] = []  # reasons of the failures in a row

    def out_of_time() -> bool:
        return deadline is not None and time.time() >= deadline

    def after_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        best = pick_best(config, study)
        if best is not None and best.number == trial.number:
            export_best(config, study, store)
        _log_trial(trial, best)
        progress.update(finished_count(study), trial_score(best) if best else None)
        fails[:] = [*fails, trial.user_attrs.get("fail_reason", "error")] if trial.state == TrialState.FAIL else []

    screened = False
    with Progress(total, done, deadline, enabled=show_progress) as progress:
        # One trial per call: other workers' running trials count against the budget, so
        # several workers stop at exactly `total` finished trials.
        while not stop.requested and not out_of_time() and len(fails) < MAX_FAILS_IN_A_ROW:
            if config.search.screen and not screened and analyse_screening(study, objective.space):
                screened = True
                objective.space = SearchSpace(config, frozen_params(study))
                log.info("screening froze %d of %d parameters: %s", len(objective.space.frozen),
                         len(objective.space), ", ".join(sorted(objective.space.frozen)) or "none")
            running = len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
            if finished_count(study) + running >= total:
                break
            study.optimize(objective, n_trials=1, callbacks=[after_trial], catch=(TrialFailed,),
                           gc_after_trial=False)
    if len(fails) >= MAX_FAILS_IN_A_ROW:
        raise UserError(f"{MAX_FAILS_IN_A_ROW} trials in a row failed (last: {fails[-1]}); "
                        f"fix that, then run the same command to resume")


def report_validation(record: Optional[dict]) -> None:
    if record is None:
        log.warning("validation: nothing to validate (no complete trial)")
        return
    for row in record["rows"]:
        label = "baseline" if row["baseline"] else f"trial {row['trial']}"
        log.info("validation: %s train %.5f validation %.5f (gap %+.5f)", label, row["train"],
                 row["validation"], row["gap"])
    log.info("validation chose trial %d", record["chosen"])


def validate_study(config: Config) -> Optional[optuna.trial.FrozenTrial]:
    """`zsearch validate`: re-score the top trials of an existing study on the validation set."""
    prepare(config)
    _setup_log(config)
    space = SearchSpace(config)
    study = open_study(config, space)
    engine = load_engine(config)
    report_validation(validate(config, study, space, engine, load_scorers(config, engine.device)))
    return export_best(config, study, artifact_store(config), force=True)


def _log_trial(trial: optuna.trial.FrozenTrial, best) -> None:
    if trial.state == TrialState.COMPLETE:
        log.info("trial %d: score %.5f (best %.5f, trial %d) %s", trial.number, trial_score(trial),
                 trial_score(best), best.number, trial.user_attrs.get("seconds"))
    else:
        log.info("trial %d: %s %s", trial.number, trial.state.name.lower(),
                 trial.user_attrs.get("fail_reason", ""))


def render_recipe(config: Config, recipe, out_dir: Path) -> list[Path]:
    """Render the config's prompts and seeds with `recipe` to PNGs and a grid (`zsearch render`)."""
    from ..engine.render import save_pngs
    prepare(config)
    engine = load_engine(config)
    jobs = Evaluator(config, engine, scorers=None).jobs
    engine.set_recipe(recipe)
    r = config.render
    images = torch.cat([engine.render(jobs[i:i + r.batch], steps=r.steps, width=r.width,
                                      height=r.height, batch=r.batch, guidance=r.guidance)
                        for i in range(0, len(jobs), r.batch)]).float().cpu()
    paths = [out_dir / f"p{job.prompt_index:02d}-s{job.seed}.png" for job in jobs]
    out_dir.mkdir(parents=True, exist_ok=True)
    save_pngs(images, paths)
    grid = out_dir / "grid.png"
    save_png(job_grid(Evaluation([], [], [], None, images), len(config.prompt_list)), grid)
    return [*paths, grid]
