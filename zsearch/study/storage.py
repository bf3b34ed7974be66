"""Where a study lives: its database (SQLite, a journal file, or any RDB URL such as PostgreSQL)
and its artifact folder, opened so that workers started together do not trip over each other."""

from __future__ import annotations

import inspect
import logging
import os
import time
import random
from pathlib import Path

import optuna
from optuna.artifacts import FileSystemArtifactStore

from zsearch.errors import UserError
from zsearch.settings.schema import Config
from zsearch.study.workers import retry_failed
from zsearch.util.atomic import make_folder

log = logging.getLogger("zsearch")

HEARTBEAT_S, GRACE_S = 60, 180
OPEN_ATTEMPTS = 6  # workers started together race to create the schema; the losers retry


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
        _write_ahead_log(storage.engine)
    return storage


def _write_ahead_log(engine) -> None:
    """SQLite: a write-ahead log, synced to disk at checkpoints, not at every commit.

    A trial commits about 20 times (ask, its point, each suggest, tell); with SQLite's default
    journal each commit waits for the disk (9-20 ms here, bench/README.md), more than the sampler
    costs. With the log a killed worker loses nothing; a power cut may lose the last commits, never
    the study. The mode stays with the file; a database on a network share belongs in PostgreSQL.
    """
    from sqlalchemy import event

    def on_connect(connection, _record) -> None:
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
        except Exception as exc:  # noqa: BLE001 - a file system without shared memory keeps its journal
            log.warning("SQLite storage: the write-ahead log is unavailable (%s); commits wait for the disk", exc)

    event.listen(engine, "connect", on_connect)
    engine.dispose()  # the connection Optuna opened to set up its tables gets the settings too


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
    folder = make_folder(config.out_dir / "artifacts", f"{config.source}: output")
    return FileSystemArtifactStore(str(folder))
