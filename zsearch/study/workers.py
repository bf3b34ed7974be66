"""Who runs a trial, and whether that worker is still alive — the same on Windows, macOS and Linux.

Each process has an identity unique across machines and containers (a fresh uuid4), and holds
an OS file lock `<output>/workers/<id>.lock` while it runs. The OS drops the lock when the
process dies however it dies, so a later worker that can take the lock knows its owner is gone.
Workers on other machines, that do not share the output folder, are covered by the storage's
heartbeat instead.
"""

from __future__ import annotations

import logging
import socket
import uuid
from pathlib import Path
from typing import Optional

import optuna
from filelock import FileLock, Timeout
from optuna.trial import TrialState

from zsearch.settings.schema import Config
from zsearch.study.records import WORKER, RetryDeadTrial

log = logging.getLogger("zsearch")

WORKER_ID = f"{socket.gethostname()}-{uuid.uuid4().hex}"  # one per process


def lease_path(folder: Path, worker: str) -> Path:
    return folder / "workers" / f"{worker}.lock"


class Lease:
    """This process's lock, held while it works on the study."""

    def __init__(self, folder: Path, worker: str = WORKER_ID):
        self.path = lease_path(folder, worker)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = FileLock(str(self.path))

    def __enter__(self):
        self._lock.acquire(timeout=10)
        return self

    def __exit__(self, *exc):
        self._lock.release()
        try:
            self.path.unlink(missing_ok=True)  # a clean exit leaves no lease behind
        except OSError:
            pass


def is_dead(folder: Path, worker: Optional[str]) -> bool:
    """True only when `worker` held a lease here and no longer does; unknown workers are alive."""
    if not worker or worker == WORKER_ID:
        return False
    path = lease_path(folder, worker)
    if not path.exists():
        return False  # another machine, or an older zsearch: the heartbeat decides
    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return False
    lock.release()
    path.unlink(missing_ok=True)
    return True


MAX_RETRIES = 2  # a trial whose worker died is run again at most this often


def retry_failed() -> RetryDeadTrial:
    return RetryDeadTrial(max_retry=MAX_RETRIES)


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
