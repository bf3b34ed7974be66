"""Worker identity and liveness without PID probing: a lease the OS drops when a process dies."""

from __future__ import annotations

import subprocess
import sys
import time

from search_helpers import REPO, env
from zsearch.study.workers import WORKER_ID, Lease, is_dead, lease_path

HOLDER = """
import sys, time
from pathlib import Path
from zsearch.study.workers import Lease, WORKER_ID
with Lease(Path(sys.argv[1])):
    print(WORKER_ID, flush=True)
    time.sleep(600)
"""


def test_a_killed_workers_lease_reads_dead_a_live_one_alive(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], stdout=subprocess.PIPE,
                            text=True, env=env(), cwd=REPO)
    try:
        worker = proc.stdout.readline().strip()
        assert worker and worker != WORKER_ID
        assert not is_dead(tmp_path, worker)  # it holds its lease
        assert lease_path(tmp_path, worker).exists()
    finally:
        proc.kill()  # like kill -9: no clean-up code runs
        proc.wait()
    deadline = time.time() + 10
    while not is_dead(tmp_path, worker) and time.time() < deadline:
        time.sleep(0.1)
    assert not lease_path(tmp_path, worker).exists()  # read dead once, and its lease removed


def test_unknown_workers_and_this_one_are_never_dead(tmp_path):
    assert not is_dead(tmp_path, "other-machine-0123")  # no lease here: the heartbeat decides
    assert not is_dead(tmp_path, None)
    with Lease(tmp_path):
        assert not is_dead(tmp_path, WORKER_ID)
    assert not lease_path(tmp_path, WORKER_ID).exists()  # a clean exit leaves nothing


def test_worker_ids_differ_between_processes():
    code = "from zsearch.study.workers import WORKER_ID; print(WORKER_ID)"
    ids = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env(),
                          cwd=REPO).stdout.strip() for _ in range(2)}
    assert len(ids) == 2 and WORKER_ID not in ids
