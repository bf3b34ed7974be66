"""Every user mistake, for every command: one line on stderr, exit 2, nothing of theirs touched."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys

import optuna
import pytest

from search_helpers import REPO, demo_config, env, zsearch

optuna.logging.set_verbosity(optuna.logging.WARNING)


def one_line(result, *expected):
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("args, expected", [
    ([], "COMMAND"),
    (["frobnicate"], "invalid choice"),
    (["run"], "config"),
    (["run", "c.yaml", "--trials", "many"], "--trials"),
    (["merge", "a.safetensors"], "-o/--output"),
    (["dashboard", "c.yaml", "--port", "70000"], "70000"),
    (["review", "c.yaml", "--port", "70000"], "1-65535"),  # one port rule for both servers
    (["dashboard", "c.yaml", "--port", "http"], "not a port number"),
])
def test_argparse_mistakes_are_one_line_with_a_pointer_to_help(tmp_path, args, expected):
    line = one_line(zsearch(*args, cwd=tmp_path), expected)
    assert "--help" in line


def _study(tmp_path, demo_assets, **overrides):
    config = demo_config(tmp_path, demo_assets, **overrides)
    out = tmp_path / "out" / "t"
    out.mkdir(parents=True)
    optuna.create_study(study_name="t", storage=f"sqlite:///{out / 'study.db'}")
    return config


def test_a_busy_dashboard_port_fails_before_the_server_banner(tmp_path, demo_assets):
    config = _study(tmp_path, demo_assets)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        result = zsearch("dashboard", config, "--port", busy.getsockname()[1])
    one_line(result, "pick another --port")
    assert "Listening" not in result.stdout + result.stderr and "Bottle" not in result.stdout + result.stderr


@pytest.mark.parametrize("key", ["output", "cache"])
def test_an_output_folder_that_is_a_file_is_refused_before_anything_is_written(tmp_path, demo_assets, key):
    blocker = tmp_path / "a-file"
    blocker.write_text("mine")
    path = blocker / "sub" if key == "cache" else blocker
    config = demo_config(tmp_path, demo_assets, **{key: str(path)})
    one_line(zsearch("run", config, "--no-progress"), key, "is a file")
    assert blocker.read_text() == "mine"


def test_a_storage_path_that_cannot_be_written_is_one_line(tmp_path, demo_assets):
    blocker = tmp_path / "a-file"
    blocker.write_text("mine")
    config = demo_config(tmp_path, demo_assets, storage=f"sqlite:///{blocker / 'study.db'}")
    one_line(zsearch("run", config, "--no-progress"), "storage")
    assert blocker.read_text() == "mine"


def test_render_into_a_path_under_a_file_is_refused(tmp_path, demo_assets):
    blocker = tmp_path / "a-file"
    blocker.write_text("mine")
    config = demo_config(tmp_path, demo_assets)
    one_line(zsearch("render", config, "-o", blocker / "renders"), "-o", "is a file")


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes anywhere")
def test_a_read_only_results_folder_is_one_line_for_run_best_and_report(tmp_path, demo_assets):
    config = _study(tmp_path, demo_assets)
    out = tmp_path / "out" / "t"
    out.chmod(0o555)
    try:
        for command in ("run", "best", "report"):
            one_line(zsearch(command, config), "not writable")
    finally:
        out.chmod(0o755)


def test_a_closed_pipe_ends_quietly(tmp_path, demo_assets):
    """`zsearch inspect ... | head`: the reader closed the pipe; no traceback, no noise."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first line is written
    try:
        result = subprocess.run([sys.executable, "-m", "zsearch.cli", "inspect", *map(str, demo_assets.loras)],
                                stdout=write_end, stderr=subprocess.PIPE, text=True, env=env(), cwd=REPO,
                                timeout=300)
    finally:
        os.close(write_end)
    assert result.returncode == 0 and result.stderr == "", result.stderr


def test_a_full_disk_during_merge_keeps_the_old_output_and_says_so(tmp_path, demo_assets, monkeypatch, capsys):
    """The write fails part-way with ENOSPC: one line, exit 2, the earlier output intact, no leftovers."""
    import builtins

    import zsearch.lora.write as write_module
    from zsearch.cli import main

    target = tmp_path / "merged.safetensors"
    assert main(["merge", *map(str, demo_assets.loras), "--ratio", "1", "-o", str(target)]) == 0
    before = target.read_bytes()

    class FullDisk:
        def __init__(self, handle):
            self.handle, self.written = handle, 0

        def write(self, data):
            self.written += len(data)
            if self.written > 1000:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return self.handle.write(data)

        def __getattr__(self, name):
            return getattr(self.handle, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

    def full_open(path, mode="r", *args, **kwargs):
        handle = builtins.open(path, mode, *args, **kwargs)
        return FullDisk(handle) if "w" in mode else handle

    monkeypatch.setattr(write_module, "open", full_open, raising=False)
    capsys.readouterr()
    code = main(["merge", *map(str, demo_assets.loras), "--ratio", "0.5", "-o", str(target), "--force"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "no space left" in err, err
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged.safetensors"]  # no temporary file left


def test_merge_into_a_path_under_a_file_is_one_line(tmp_path, demo_assets):
    blocker = tmp_path / "a-file"
    blocker.write_text("mine")
    result = zsearch("merge", *demo_assets.loras, "--ratio", "1", "-o", blocker / "m.safetensors")
    one_line(result, "a-file", "a file stands where a folder is needed")
    assert blocker.read_text() == "mine"
