"""Windows and macOS run what Linux runs: the main commands work with POSIX-only modules unimportable."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from search_helpers import REPO, demo_config, env

POSIX_ONLY = ("fcntl", "termios", "pwd", "grp", "resource", "pty", "tty")
# Third-party libraries pick a per-OS backend (psutil's Linux one needs `resource`, on Windows it
# loads another), so these are refused to zsearch's own code only. fcntl, the lock module zsearch
# once used, is refused to everyone: the locks must work without it (filelock picks msvcrt there).
OWN_CODE_ONLY = ("termios", "pwd", "grp", "resource", "pty", "tty")

PRELUDE = textwrap.dedent(f"""
    import importlib.abc, os, sys
    def importer():
        frame = sys._getframe(2)
        while frame is not None and frame.f_globals.get("__name__", "").startswith(("importlib", "_frozen")):
            frame = frame.f_back
        return frame.f_globals.get("__name__", "") if frame is not None else ""
    class NoPosix(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            top = name.split('.')[0]
            if top in {POSIX_ONLY!r} and (top not in {OWN_CODE_ONLY!r} or importer().startswith("zsearch")):
                raise ModuleNotFoundError(f"No module named '{{name}}' (blocked: not on Windows)", name=name)
    for name in {POSIX_ONLY!r}:
        if name not in {OWN_CODE_ONLY!r}:
            sys.modules.pop(name, None)
    sys.meta_path.insert(0, NoPosix())
    def no_pid_probing(*args):
        raise AssertionError("os.kill called: PID probing does not work on Windows")
    os.kill = no_pid_probing
""")


def test_main_commands_run_without_posix_only_modules(tmp_path, demo_assets):
    config = demo_config(tmp_path, demo_assets, search={"trials": 3}, validation={"top_k": 1})
    merged = tmp_path / "merged.safetensors"
    commands = [["run", str(config), "--no-progress"], ["best", str(config)], ["validate", str(config)],
                ["render", str(config), "-o", str(tmp_path / "renders")], ["report", str(config)],
                ["inspect", str(demo_assets.loras[0])],
                ["merge", *map(str, demo_assets.loras), "--ratio", "0.7", "-o", str(merged)]]
    script = PRELUDE + textwrap.dedent(f"""
        from zsearch.cli import main
        for argv in {commands!r}:
            code = main(argv)
            print("EXIT", argv[0], code, flush=True)
        assert not [m for m in sys.modules if m.split('.')[0] in {POSIX_ONLY!r} and m not in {OWN_CODE_ONLY!r}]
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env(),
                            cwd=REPO, timeout=900)
    exits = [line.split()[1:] for line in result.stdout.splitlines() if line.startswith("EXIT")]
    assert result.returncode == 0 and exits == [[c[0], "0"] for c in commands], result.stderr[-3000:]
    out = tmp_path / "out" / "t"
    assert (out / "best.safetensors").is_file() and merged.is_file()
    assert len(list((tmp_path / "renders").glob("*.png"))) >= 2


def test_the_blocker_really_blocks(tmp_path):
    for code in ("import fcntl", "import zsearch_probe"):
        (tmp_path / "zsearch_probe.py").write_text("import resource\n")  # as zsearch code would
        result = subprocess.run([sys.executable, "-c", PRELUDE + code], capture_output=True, text=True,
                                cwd=tmp_path, env={**env(), "PYTHONPATH": str(tmp_path)})
        assert result.returncode != 0 and "blocked" in result.stderr, (code, result.stderr)
