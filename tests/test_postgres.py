"""Several workers on a real PostgreSQL server: started together on an empty database, all run.

The server is ZSEARCH_TEST_POSTGRES (a URL without a database; `.ci/run` starts one), or one this
module starts from the PostgreSQL binaries. Without either the tests skip, except under CI=true.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from search_helpers import REPO, demo_config, env, start, zsearch
from zsearch.study.records import SURPLUS

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _unavailable(reason: str):
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI must run the PostgreSQL tests: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def pg_server():
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        _unavailable("psycopg2 is not installed (pip install -e '.[test]')")
    if os.environ.get("ZSEARCH_TEST_POSTGRES"):
        yield os.environ["ZSEARCH_TEST_POSTGRES"].rstrip("/")
        return
    import pg_server as server
    if server.find_bin() is None:
        _unavailable("no PostgreSQL server (set ZSEARCH_TEST_POSTGRES or install postgresql)")
    folder = Path(tempfile.mkdtemp(prefix="zsearch-pg-"))
    try:
        yield server.start(folder)
    finally:
        server.stop(folder)
        subprocess.run(["rm", "-rf", str(folder)], check=False)


@pytest.fixture
def empty_db(pg_server):
    import pg_server as server
    return server.create_database(pg_server, f"t_{uuid.uuid4().hex[:10]}")


def test_workers_opening_an_empty_database_at_once_all_succeed(empty_db):
    """Optuna creates its tables on first open; three workers racing to do so all get a storage."""
    code = ("from types import SimpleNamespace\nfrom zsearch.study.storage import make_storage\n"
            f"make_storage(SimpleNamespace(storage_url={empty_db!r}))\nprint('ok')")
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env(), cwd=REPO, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(3)]
    results = [(p.wait(timeout=120), *p.communicate()) for p in procs]
    assert [(rc, out.strip()) for rc, out, _ in results] == [(0, "ok")] * 3, [err for _, _, err in results]


WORKERS, TRIALS = 4, 20  # short trials, many asks after the start-up design: races get their chance


def test_workers_started_together_share_one_study_without_a_duplicate(tmp_path, demo_assets, empty_db):
    config = demo_config(tmp_path, demo_assets, storage=empty_db, search={"trials": TRIALS, "prune": False})
    workers = [start("run", config, "--no-progress") for _ in range(WORKERS)]
    for proc in workers:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
    study = optuna.load_study(study_name="t", storage=empty_db)
    finished = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    # Workers that check the budget at the same moment both start a trial; the one numbered
    # after the budget gives its place up unrun (search/budget.py), so exactly `trials` finish.
    assert len(finished) == TRIALS
    others = [t for t in study.trials if t.state not in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert all(t.state == TrialState.FAIL and t.user_attrs.get(SURPLUS) for t in others), others
    assert [t.user_attrs.get("role") for t in study.trials].count("baseline") == 1  # queued once
    params = [tuple(sorted(t.params.items())) for t in study.trials if t.params]
    assert len(set(params)) == len(params), _duplicates(study)  # no point run twice
    assert len({t.user_attrs["zsearch.worker"] for t in finished}) >= 2
    best = yaml.safe_load((tmp_path / "out" / "t" / "best.yaml").read_text())
    assert best["info"]["trial"] == study.best_trial.number


def _duplicates(study) -> list[str]:
    seen: dict = {}
    for t in study.trials:
        seen.setdefault(tuple(sorted(t.params.items())), []).append(
            f"{t.number} {t.state.name} {t.user_attrs.get('zsearch.worker', '?')[-6:]} {t.datetime_start}")
    return [" / ".join(v) for v in seen.values() if len(v) > 1]


@pytest.mark.parametrize("which, expected", [("database", 'database "no_such_db" does not exist'),
                                             ("port", "connection")])
def test_a_bad_postgres_url_names_the_real_cause(tmp_path, demo_assets, pg_server, which, expected):
    host_port = pg_server.rsplit("@", 1)[1]
    host, port = host_port.split(":")
    if which == "port":
        import socket
        with socket.socket() as s:  # a port nothing listens on
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
    url = f"postgresql+psycopg2://zsearch:s3cret@{host}:{port}/no_such_db"
    config = demo_config(tmp_path, demo_assets, storage=url)
    result = zsearch("run", config, "--no-progress")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0].lower(), result.stderr
    assert "s3cret" not in result.stderr  # the password is never printed
