"""Workers sharing a SQLite study: a queued trial (the baseline, a screening point, a start
recipe) goes to one worker only.

Optuna hands a queued trial out by reading that it waits, then marking it running. PostgreSQL
locks the row between the two; SQLite ignores that lock, so two workers could both read
"waiting" and both run the trial. Here worker A is held between its read and its write until
worker B has asked too (or 5 s have passed, when B waits for A's lock).
"""

from __future__ import annotations

import threading
from types import SimpleNamespace

import optuna
import pytest
from sqlalchemy import event

from zsearch.study.storage import make_storage

optuna.logging.set_verbosity(optuna.logging.WARNING)
pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # asked, not optimised, here


def test_a_queued_trial_goes_to_one_worker_only(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    storage_a, storage_b = (make_storage(SimpleNamespace(storage_url=url)) for _ in range(2))
    study_a = optuna.create_study(study_name="s", storage=storage_a)
    study_a.enqueue_trial({"x": 1.0})
    study_b = optuna.load_study(study_name="s", storage=storage_b)
    armed, a_has_read, b_has_asked = threading.Event(), threading.Event(), threading.Event()

    @event.listens_for(storage_a.engine, "after_cursor_execute")
    def hold_after_reading_the_trial(conn, cursor, statement, *args):
        if armed.is_set() and statement.lstrip().upper().startswith("SELECT") and "trial_id = ?" in statement:
            armed.clear()
            a_has_read.set()
            b_has_asked.wait(5)

    numbers = {}

    def ask(name, study):
        numbers[name] = study.ask().number
        if name == "b":
            b_has_asked.set()

    armed.set()
    a = threading.Thread(target=ask, args=("a", study_a))
    a.start()
    assert a_has_read.wait(60)
    b = threading.Thread(target=ask, args=("b", study_b))
    b.start()
    for thread in (a, b):
        thread.join(120)
    assert sorted(numbers.values()) == [0, 1], numbers  # one ran the queued trial, the other a new one
    assert numbers["a"] == 0  # the queued trial is A's: it read first


def test_commits_go_to_a_write_ahead_log_that_other_workers_read(tmp_path):
    """A trial commits ~20 times: with the write-ahead log a commit does not wait for the disk
    (synchronous NORMAL), and another worker still reads it at once."""
    import sqlite3
    url = f"sqlite:///{tmp_path / 'study.db'}"
    storage_a, storage_b = (make_storage(SimpleNamespace(storage_url=url)) for _ in range(2))
    with storage_a.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
    study_a = optuna.create_study(study_name="s", storage=storage_a)
    study_b = optuna.load_study(study_name="s", storage=storage_b)
    study_a.add_trial(optuna.trial.create_trial(value=0.5, params={"x": 0.5},
                                                distributions={"x": optuna.distributions.FloatDistribution(0, 1)}))
    assert [t.value for t in study_b.get_trials()] == [0.5]
    plain = sqlite3.connect(tmp_path / "study.db")  # any SQLite reader (a dashboard, a copy tool) too
    assert plain.execute("select count(*) from trials").fetchone() == (1,)
    plain.close()
