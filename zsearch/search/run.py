"""`zsearch run`: the overnight loop — suggest, render, score, keep the best, survive interruptions."""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from typing import Optional

import optuna
from optuna.trial import TrialState

from zsearch.settings.schema import Config
from zsearch.engine.compile import planned_images
from zsearch.errors import UserError
from zsearch.study import records
from zsearch.outputs.best import export_best, pick_best, trial_score
from zsearch.study.budget import finished_count, has_room
from zsearch.search.evaluate import Evaluator, TrialFailed
from zsearch.search.log import log_trial, log_validation, logging_to
from zsearch.search.objective import Objective
from zsearch.search.progress import Progress
from zsearch.search.prefetch import AskAhead
from zsearch.search.session import Session
from zsearch.search.signals import GracefulStop
from zsearch.study.opening import mark_setup_failed
from zsearch.study.storage import make_storage
from zsearch.study.space import SearchSpace
from zsearch.search.trust import analyse_screening, frozen_params, measure_noise, validate
from zsearch.study.workers import Lease
from zsearch.search import night as night_plan
from zsearch.search.confirm import Confirmer, claims_study
from zsearch.search.progress import best_interval

log = logging.getLogger("zsearch")


def run(config: Config, trials: Optional[int] = None, show_progress: bool = True) -> Optional[optuna.trial.FrozenTrial]:
    """Run (or resume) the study until its trial budget or its night (`search.hours`) is spent."""
    started = time.time()  # the night starts with the command: loading the model is part of it
    session = Session(config)
    session.study  # opened (and checked against its inputs) before anything is written
    # the lease is held while this worker may run trials; the OS drops it if we die
    with logging_to(config), Lease(config.out_dir):
        try:
            return _run(config, session, trials, show_progress, started)
        except BaseException:
            with contextlib.suppress(Exception):  # the storage itself may be what failed
                mark_setup_failed(session.study)  # the fixed command may replace a study it never measured
            raise


def _run(config: Config, session: Session, trials: Optional[int], show_progress: bool, started: float):
    study, store = session.study, session.store
    total = trials if trials is not None else config.search.trial_cap  # None: the night decides
    done = finished_count(study)
    night = night_plan.open_night(study, config.search.hours, started) if config.search.hours else None
    if total is not None and done >= total and not config.search.confirms:
        tell(f"study '{config.name}' already has {done} finished trials (budget {total}): nothing to run. To search "
             f"further, raise the budget: `zsearch run {config.source} --trials {total * 2}` (or search.trials), "
             f"or give the run a night (search.hours), which confirms the top trials. The best so far:")
        return export_best(config, study, store)

    def say(message: str) -> None:  # the slow steps outside the trial loop, on the terminal too
        log.info(message)
        if show_progress:
            print(f"zsearch: {message}", file=sys.stderr, flush=True)

    records.note_run_start(study)  # the report's wall time: the whole run, not only the trial loop
    bars = None if show_progress else False  # zsearch's own step bars: on a terminal, unless --no-progress
    with GracefulStop() as stop:
        say(f"loading {config.model} on {_device_name(config.device)} ...")
        session.planned_images = planned_images(sys.maxsize if total is None else total - done,
                                                len(config.prompt_list) * len(config.seeds), config.search.hours)
        engine, scorers = session.engine, session.scorers
        say(engine.placement)
        if "noise" not in study.user_attrs and config.noise.repeats and not stop.requested:
            say(f"scoring the baseline on {config.noise.repeats + 1} seed sets (the noise band) ...")
        noise = None if stop.requested else measure_noise(config, study, session.space, engine, scorers,
                                                              progress=bars)
        if noise:
            log.info("baseline score %.5f ± %.5f over %d seed sets", noise["mean"], noise["std"],
                     len(noise["scores"]))
        space = SearchSpace(config, frozen_params(study))
        objective = Objective(config, space, Evaluator(config, engine, scorers), store, study, budget=total)
        claims = claims_study(config, make_storage(config)) if config.search.confirms else None
        plan = night_plan.Plan(config, study, night, claims)
        confirmer = Confirmer(config, study, claims, space, engine, scorers) if claims is not None else None
        _search(config, study, objective, store, stop, total, done, show_progress, plan, confirmer)
        if confirmer is not None and not stop.requested and plan.fits(units=0):  # its round is in the reserve
            _confirm_late_best(confirmer)
        if stop.requested:
            tell(f"stopped early: validation skipped (run `zsearch validate {config.source}` to validate now)")
        elif config.validation.top_k > 0 and not plan.validation_fits():
            tell(f"validation skipped: it needs about {plan.validation_need() or 0:.0f} s and the night has "
                 f"{plan.left():.0f} s left (run `zsearch validate {config.source}`)")
        elif config.validation.top_k > 0:
            say(f"validating the baseline and the top {config.validation.top_k} trials on held-out seeds ...")
            log_validation(validate(config, study, space, engine, scorers, progress=bars))
    best = export_best(config, study, store)
    records.note_run_end(study)
    return best


def tell(message: str) -> None:
    """A status the person at the terminal must see, whatever --no-progress says; the log keeps it too."""
    log.info(message)
    print(f"zsearch: {message}", file=sys.stderr, flush=True)


def _device_name(device: str) -> str:
    """'auto' as what it picks here ('cuda (auto)'); a named device as named."""
    from zsearch.engine.device import pick_device
    picked = str(pick_device(device))
    return f"{picked} (auto)" if device == "auto" else picked


def _confirm_late_best(confirmer: Confirmer) -> None:
    """The night's last check: a training best found late, not confirmed yet, gets its round."""
    late = confirmer.training_best_unconfirmed()
    if late is not None:
        log.info("confirming trial %d, the training best, before the night ends", late)
        confirmer.step(only=late)


MAX_FAILS_IN_A_ROW = 5


def _search(config: Config, study: optuna.Study, objective: Objective, store, stop: GracefulStop,
            total: Optional[int], done: int, show_progress: bool, plan: night_plan.Plan,
            confirmer: Optional[Confirmer]) -> None:
    """Run trials (and, in a night, confirmation rounds) until the trial cap, the night's plan, a
    stop request, or repeated failures end it."""
    log.info("study '%s': %d parameters, %d jobs per trial, %d/%s trials done, device %s%s",
             config.name, len(objective.space), len(objective.evaluator.jobs), done, total or "-",
             objective.evaluator.engine.device,
             f", the night ends in {plan.left() / 3600:.2f} h" if plan.night else "")
    fails: list[str] = []  # reasons of the failures in a row

    def show(phase: str, best: Optional[optuna.trial.FrozenTrial] = None) -> None:
        best = best or pick_best(config, study)
        progress.update(finished_count(study), trial_score(best) if best else None,
                        records.count_trials(study.get_trials(deepcopy=False)).stopped_early, phase=phase,
                        interval=best_interval(study, best))

    def after_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.user_attrs.get(records.SURPLUS):  # not a failure: another worker took the last place
            log.info("trial %d not run: the budget of %s trials is taken", trial.number, total)
            return
        best = pick_best(config, study)
        if best is not None and best.number == trial.number:
            _timed_export(config, study, store, plan)
        log_trial(trial, best)
        show(plan.phase(), best)  # the best just read: a night's study holds thousands of trials
        fails[:] = [*fails, trial.user_attrs.get(records.FAIL_REASON, "error")] if trial.state == TrialState.FAIL else []

    screened = False
    night = plan.night
    ahead = _ask_ahead(config, study, objective, total, plan)
    with Progress(total, done, night.deadline if night else None, enabled=show_progress,
                  start=night.start if night else None) as progress, contextlib.closing(ahead):
        # One trial per call: other workers' running trials count against the budget, and a
        # trial started in a race for the last place gives it up (budget.py), so several
        # workers stop at exactly `total` finished trials.
        while not stop.requested and len(fails) < MAX_FAILS_IN_A_ROW:
            if config.search.screen and not screened and analyse_screening(study, objective.space):
                screened = True
                objective.space = SearchSpace(config, frozen_params(study))
                log.info("screening froze %d of %d parameters: %s", len(objective.space.frozen),
                         len(objective.space), ", ".join(sorted(objective.space.frozen)) or "none")
            step = _next_step(plan, confirmer, total is None or has_room(study, total))
            if step is night_plan.Step.STOP:
                break
            if step is night_plan.Step.CONFIRM:
                show("confirm")
                if confirmer.step() is not None:
                    _timed_export(config, study, store, plan)  # the confirmed leader may have changed
                show("confirm")
                continue
            ahead.wait()  # the trial asked ahead is queued: this optimize takes it
            study.optimize(objective, n_trials=1, callbacks=[after_trial], catch=(TrialFailed,),
                           gc_after_trial=False)
    if len(fails) >= MAX_FAILS_IN_A_ROW:
        raise UserError(f"{MAX_FAILS_IN_A_ROW} trials in a row failed (last: {fails[-1]}); "
                        f"fix that, then run the same command to resume")


def _ask_ahead(config: Config, study: optuna.Study, objective: Objective, total: Optional[int],
               plan: night_plan.Plan) -> AskAhead:
    """The next trial's point chosen while a trial renders (search/prefetch.py); by default on an
    accelerator only: on a CPU the sampler would take the render's cores. Off, it does nothing."""
    on = config.search.prefetch
    if on is None:
        on = objective.evaluator.engine.device.type != "cpu"
    ahead = AskAhead(study, make_storage(config) if on else None, total, fits=lambda: plan.fits(units=2))
    objective.on_point = ahead.start if on else None
    return ahead


def _next_step(plan: night_plan.Plan, confirmer: Optional[Confirmer], room: bool) -> night_plan.Step:
    """The night's decision (night.decide) from what the study says now."""
    fits = plan.fits(units=1)
    due = fits and plan.confirm_due()
    left = confirmer is not None and fits and (due or not room) and confirmer.work_left()
    return night_plan.decide(fits, room, due, left)


def _timed_export(config: Config, study: optuna.Study, store, plan: night_plan.Plan) -> None:
    """Export best.*, timing it: the night keeps time for the last export."""
    begun = time.time()
    export_best(config, study, store)
    plan.exports.append(time.time() - begun)
