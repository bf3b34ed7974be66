"""The Optuna study: storage, sampler, pruner, resume rules and the trials queued first.

Several workers may share one study (PostgreSQL across machines; SQLite or a journal file on one
machine). A trial whose worker died is failed with `study.tell(..., state=FAIL)` and retried by
Optuna's own bounded retry callback — found at once through the worker leases on the
same machine (`workers.py`), through the RDB heartbeat on other machines.
"""

from __future__ import annotations

import inspect
import logging
import os
import random
import time
import warnings
from pathlib import Path
from typing import Optional

import numpy as np
import optuna
from optuna.artifacts import FileSystemArtifactStore
from optuna.trial import TrialState

from zsearch.settings.schema import Config
from zsearch.errors import UserError
from zsearch.settings.fingerprint import FileHashes, same_measurement
from zsearch.lora.recipe import load_recipe
from zsearch.study.space import SearchSpace, screening_values
from zsearch.study.distinct import DistinctPoints
from zsearch.study.samplers import make_sampler
from zsearch.study import records
from zsearch.study.records import WORKER, RetryDeadTrial
from zsearch.study.workers import WORKER_ID, is_dead

log = logging.getLogger("zsearch")

MAX_RETRIES = 2  # a trial whose worker died is run again at most this often
HEARTBEAT_S, GRACE_S = 60, 180
OPEN_ATTEMPTS = 6  # workers started together race to create the schema; the losers retry
SETUP_WAIT_S = 60  # how long a joining worker waits for the creator to queue the first trials


def retry_failed() -> RetryDeadTrial:
    return RetryDeadTrial(max_retry=MAX_RETRIES)


def shown_url(url: str) -> str:
    """The storage URL without its password, for messages."""
    try:
        from sqlalchemy.engine import make_url
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not an SQLAlchemy URL: nothing to hide
        return url


def _cause(exc: BaseException) -> str:
    """The driver's own first line (e.g. 'connection refused', 'password authentication failed')."""
    inner = getattr(exc, "orig", None) or exc.__cause__ or exc
    text = str(inner).strip().splitlines()
    return f"{inner.__class__.__name__}: {text[0].strip()}" if text else inner.__class__.__name__


def _schema_race(exc: BaseException) -> bool:
    """An error from another worker creating the same tables at the same moment."""
    from sqlalchemy.exc import IntegrityError, ProgrammingError, OperationalError
    text = str(exc).lower()
    return isinstance(exc, IntegrityError) or (
        isinstance(exc, (ProgrammingError, OperationalError))
        and any(k in text for k in ("already exists", "duplicate", "database is locked")))


def _rdb_storage(url: str) -> optuna.storages.RDBStorage:
    # Heartbeats let a study fail trials of a worker that died on another machine. The
    # callback's keyword was renamed in Optuna 4.9; take whichever this Optuna has.
    params = inspect.signature(optuna.storages.RDBStorage).parameters
    callback = ("heartbeat_stale_trial_callback" if "heartbeat_stale_trial_callback" in params
                else "failed_trial_callback")
    sqlite = url.startswith("sqlite")
    storage = optuna.storages.RDBStorage(
        url, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S, **{callback: retry_failed()},
        # the driver's own transactions off: _one_writer_at_a_time begins them
        engine_kwargs={"connect_args": {"timeout": 60, "isolation_level": None}} if sqlite else None)
    if sqlite:
        _one_writer_at_a_time(storage.engine)
    return storage


def _one_writer_at_a_time(engine) -> None:
    """SQLite: every transaction takes the write lock as it begins (BEGIN IMMEDIATE).

    Optuna hands a queued trial out by reading that it waits, then marking it running; PostgreSQL
    locks the row in between, SQLite ignores that lock, so two workers could both run the trial.
    With the lock taken first, the second reads "running" and gets a trial of its own.
    """
    from sqlalchemy import event

    event.listen(engine, "begin", lambda connection: connection.exec_driver_sql("BEGIN IMMEDIATE"))


def make_storage(config: Config) -> optuna.storages.BaseStorage:
    """An Optuna storage from the config: any RDB URL, or `journal:PATH` for a journal file.

    A journal has no heartbeat, so it is for workers on one machine (they find each other's
    dead trials through their leases); use PostgreSQL across machines.
    """
    url = config.storage_url
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend, JournalStorage
        path = Path(url.removeprefix("journal:"))
        if not path.is_absolute():
            path = config.source.resolve().parent / path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            return JournalStorage(JournalFileBackend(str(path)))
        except OSError as exc:
            raise UserError(f"storage: cannot write the journal {path} ({exc.strerror or exc}); "
                            f"check 'storage:'") from None
    if url.startswith("sqlite:///"):
        folder = Path(url.removeprefix("sqlite:///")).parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"storage: cannot create {folder} ({exc.strerror or exc}); "
                            f"check 'storage:' or 'output:'") from None
        if not os.access(folder, os.W_OK):
            raise UserError(f"storage: {folder} is not writable; check 'storage:' or 'output:'")
    for attempt in range(OPEN_ATTEMPTS):
        try:
            return _rdb_storage(url)
        except (ImportError, ModuleNotFoundError) as exc:
            name = getattr(exc, "name", None) or getattr(exc.__cause__, "name", None) or "its driver"
            raise UserError(f"storage: {shown_url(url)} needs the database driver '{name}'; "
                            f"pip install it (PostgreSQL: psycopg2-binary)") from None
        except Exception as exc:  # noqa: BLE001 - SQLAlchemy raises many kinds for a bad URL
            if _schema_race(exc) and attempt + 1 < OPEN_ATTEMPTS:
                time.sleep(0.2 + random.random() * 0.5 * (attempt + 1))  # the winner finishes the schema
                continue
            raise UserError(f"storage: cannot open {shown_url(url)} ({_cause(exc)}); "
                            f"check the URL, the server and its user's rights") from None
    raise AssertionError("unreachable")


def artifact_store(config: Config) -> FileSystemArtifactStore:
    folder = config.out_dir / "artifacts"
    folder.mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(str(folder))


def make_pruner(config: Config) -> optuna.pruners.BasePruner:
    if not config.search.prune or config.objective.pareto or len(config.seeds) * len(config.prompt_list) < 2:
        return optuna.pruners.NopPruner()
    # Each job (prompt × seed) is one step, paired with the same job of the best trial: the
    # Wilcoxon signed-rank test suits paired samples. A stopped trial completes as partial
    # (pruning.py), so the sampler still learns from it.
    return optuna.pruners.WilcoxonPruner(p_threshold=0.1, n_startup_steps=2)


def fail_dead_workers(config: Config, study: optuna.Study) -> int:
    """Fail and retry the running trials of workers that died on this machine (kill -9, power cut)."""
    recovered = 0
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not is_dead(config.out_dir, trial.user_attrs.get(WORKER)):
            continue
        study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
        failed = study.get_trials(deepcopy=False)[trial.number]
        if failed.state == TrialState.FAIL:
            log.warning("trial %d: its worker died; running it again", trial.number)
            retry_failed()(study, failed)  # the same bounded retry as the heartbeat's
            recovered += 1
    return recovered


def check_fingerprint(config: Config, study: optuna.Study, hashes: Optional[FileHashes] = None) -> None:
    """Refuse a study that measured other inputs (by content) or another search space."""
    recorded = study.user_attrs.get(records.FINGERPRINT)
    if recorded is None:
        return
    changed = same_measurement(recorded, config.fingerprint(hashes))
    if changed:
        raise UserError(
            f"{config.source}: study '{config.name}' measured other inputs; changed: {', '.join(changed)}; "
            f"set a new 'name:' to start a new study (or restore them to resume)")


def _never_measured(study: optuna.Study) -> bool:
    return not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING))


def mark_setup_failed(study: optuna.Study) -> None:
    """Called when a run fails: a study it never measured (a typo, a missing model) may be replaced
    by the fixed command. An unmarked one may belong to a worker still loading its model, so a run
    with other inputs is refused instead of deleting it."""
    if _never_measured(study):
        study.set_user_attr(records.SETUP_FAILED, True)


def _replaceable(study: optuna.Study) -> bool:
    return _never_measured(study) and bool(study.user_attrs.get(records.SETUP_FAILED))


def open_study(config: Config, space: SearchSpace) -> optuna.Study:
    """Create or resume the study; refuse a resume whose inputs, search space or scoring changed.

    Only the process that creates the study queues its first trials and uses the config's seed
    as is; a resume or a joining worker mixes in its trial count and worker id, so no two
    samplers replay the same points. A study that never measured anything because its first run
    failed while setting up is replaced, so the fixed command runs.
    """
    storage = make_storage(config)
    directions = ["maximize"] * len(config.pareto_terms) if config.objective.pareto else ["maximize"]
    start_recipes = [(path, load_recipe(path)) for path in config.start]  # fail before touching the study
    for path, recipe in start_recipes:
        if len(recipe.loras) != len(config.loras):
            raise UserError(f"{path}: the recipe has {len(recipe.loras)} LoRAs, the config "
                            f"{len(config.loras)}; list them in the same order")
    hashes = FileHashes(config.cache_dir / "file-hashes.json")
    for attempt in range(3):
        try:
            optuna.create_study(study_name=config.name, storage=storage, directions=directions)
            created = True
        except optuna.exceptions.DuplicatedStudyError:
            created = False
        study = optuna.load_study(study_name=config.name, storage=storage)
        if created:
            break
        _wait_for_setup(study)
        try:
            check_fingerprint(config, study, hashes)
            break
        except UserError:
            if attempt == 2 or not _replaceable(study):
                raise
            log.warning("study '%s' never measured a trial (its set-up failed); starting it afresh", config.name)
            try:
                optuna.delete_study(study_name=config.name, storage=storage)
            except KeyError:
                pass  # another worker replaced it first
    seed = config.search.seed if created else _resume_seed(config.search.seed, len(study.trials))
    # the seed needed the trial count first; workers asking at once must not get the same point
    study.sampler = DistinctPoints(make_sampler(config, seed, len(space)), storage, seed=seed)
    study.pruner = make_pruner(config)
    if created or "fingerprint" not in study.user_attrs:  # (or its creator died while setting it up)
        _enqueue_first(config, space, study, start_recipes)
        study.set_metric_names(config.pareto_terms if config.objective.pareto else ["score"])
        study.set_user_attr(records.SPACE, space.describe())
        study.set_user_attr(records.FINGERPRINT, config.fingerprint(hashes))  # last: it marks the set-up done
    hashes.save()
    fail_dead_workers(config, study)
    return study


def _wait_for_setup(study: optuna.Study) -> None:
    """A worker joining a study its creator is still setting up waits for the first trials."""
    deadline = time.time() + SETUP_WAIT_S
    while "fingerprint" not in study.user_attrs and time.time() < deadline:
        time.sleep(0.25)


def _resume_seed(seed: int, n_trials: int) -> int:
    """A fresh seed per resume (and per worker), so no run replays earlier points."""
    worker = int(WORKER_ID.rsplit("-", 1)[1], 16)  # unique across machines and containers
    return int(np.random.SeedSequence([seed, n_trials, worker]).generate_state(1)[0])


def _enqueue_first(config: Config, space: SearchSpace, study: optuna.Study, start_recipes) -> None:
    study.enqueue_trial(space.baseline(), user_attrs={records.ROLE: records.BASELINE_ROLE}, skip_if_exists=True)
    if config.search.screen:
        for role, params in screening_values(space):
            study.enqueue_trial(params, user_attrs={records.ROLE: role}, skip_if_exists=True)
    for path, recipe in start_recipes:
        study.enqueue_trial(space.params_of(recipe), user_attrs={records.ROLE: f"{records.START_ROLE}:{path.name}"},
                            skip_if_exists=True)


def open_existing_study(config: Config) -> optuna.Study:
    """The config's study, or a one-line UserError; never creates a database or a study."""
    url = config.storage_url
    missing = None
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        missing = None if path.is_file() else path
    elif url.startswith("journal:"):
        path = Path(url.removeprefix("journal:"))
        path = path if path.is_absolute() else config.source.resolve().parent / path
        missing = None if path.is_file() else path
    if missing is not None:
        raise UserError(f"no study '{config.name}' yet: {missing} does not exist; run `zsearch run {config.source}` first")
    with warnings.catch_warnings():  # heartbeats are "experimental": not the reader's concern
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        storage = make_storage(config)
    try:
        return optuna.load_study(study_name=config.name, storage=storage)
    except KeyError:
        raise UserError(f"no study '{config.name}' yet in {shown_url(url)}; run `zsearch run {config.source}` first "
                        f"(or check 'name:' in the config)") from None
