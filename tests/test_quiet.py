"""zsearch's own voice: the libraries it drives print nothing of theirs (util/quiet.py).

Subprocesses, so that the libraries are imported afresh as in a real command.
"""

from __future__ import annotations

import subprocess
import sys

from search_helpers import REPO, demo_config, env, zsearch

LIBRARY_LINES = ("Writing model shards", "Loading pipeline components", "Loading weights",
                 "A new study created", "[I 20", "[W 20", "it/s]")


def _build_and_load(folder, quiet: bool) -> subprocess.CompletedProcess:
    code = ("import contextlib, sys\nfrom zsearch.util.quiet import quiet_libraries\n"
            "from zsearch.demo.pipeline import build_tiny_pipeline, load_pipeline\n"
            f"with {'quiet_libraries()' if quiet else 'contextlib.nullcontext()'}:\n"
            "    load_pipeline(build_tiny_pipeline(sys.argv[1]))\n")
    return subprocess.run([sys.executable, "-c", code, str(folder)], env=env(), cwd=REPO, capture_output=True,
                          text=True, timeout=600)


def test_writing_and_loading_a_pipeline_prints_nothing_when_quiet(tmp_path):
    loud = _build_and_load(tmp_path / "loud", quiet=False)
    assert loud.returncode == 0, loud.stderr
    assert "Writing model shards" in loud.stderr and "Loading pipeline components" in loud.stderr  # the libraries' bars
    quiet = _build_and_load(tmp_path / "quiet", quiet=True)
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr == "" and quiet.stdout == ""


def test_a_run_prints_only_zsearch_lines(tmp_path, demo_assets):
    config = demo_config(tmp_path, demo_assets, search={"trials": 2})
    result = zsearch("run", config)
    assert result.returncode == 0, result.stderr
    assert not [phrase for phrase in LIBRARY_LINES if phrase in result.stderr + result.stdout], result.stderr
    steps = [line for line in result.stderr.replace("\r", "\n").splitlines() if line.startswith("zsearch: ")]
    assert steps and steps[0].startswith("zsearch: loading ")
    assert "Optuna" not in result.stderr and "optuna" not in result.stderr.lower().replace(str(tmp_path).lower(), "")


def test_nested_quiet_contexts_import_a_library_for_the_first_time(tmp_path):
    """`zsearch run` on a fresh machine: the command's quiet context holds the demo build's, and
    diffusers is first imported inside both (it recursed without end between the two finders)."""
    code = ("from zsearch.util.quiet import quiet_libraries\n"
            "with quiet_libraries():\n"
            "    with quiet_libraries():\n"
            "        import diffusers, diffusers.utils.logging as l\n"
            "    assert l.get_verbosity() == l.ERROR, l.get_verbosity()\n"
            "print('imported')\n")
    done = subprocess.run([sys.executable, "-c", code], env=env(), cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "imported", done.stderr[-2000:]
