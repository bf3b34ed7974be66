"""Every benchmark runs in its smoke mode (small sizes, on the CPU), so none can rot unseen.

Scripts are found, not listed: every bench/*.py with a `__main__` block is run with --smoke, and
bench/gpu.sh --smoke. Each must exit 0 and print its key line (KEY_LINES; a new script without an
entry must at least print something)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
SCRIPTS = sorted(p.name for p in BENCH.glob("*.py") if "__main__" in p.read_text(encoding="utf-8"))
KEY_LINES = {  # the line each script exists to print
    "trial.py": r"side: naive s/trial ÷ side s/trial = [\d.]+×",
    "merge.py": r"time\s+[\d.]+ s / 3 s target",
    "fullrun.py": r"\| exit code of `zsearch run` \| 0 \|",
    "look.py": r"look problem \(seed 0\): w\* scores [\d.]+, baseline",
    "search.py": r"median images to target",
    "demo_faithfulness.py": r"nudges lower than w\*: \d+%",
    "sampler_scale.py": r"^\| \w+ \| \d+ \| \d+ \| [\d.]+ \|",
    "night.py": r"nights ended before the deadline: True",
    "fidelity.py": r"^\| half steps \| 0\.50 \| -?[\d.]+ \|",
    "prefetch.py": r"median gap, off / on: [\d.]+x",
}


def _env(demo_assets) -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
            "ZSEARCH_BENCH_DEMO": str(demo_assets.root)}  # the demo the suite built: not built again


def test_every_script_is_found():
    assert {"trial.py", "merge.py", "fullrun.py", "search.py", "demo_faithfulness.py"} <= set(SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_bench_script_smoke(script, demo_assets, tmp_path):
    done = subprocess.run([sys.executable, str(BENCH / script), "--smoke"], capture_output=True, text=True,
                          cwd=tmp_path, env=_env(demo_assets), timeout=600)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    key = KEY_LINES.get(script)
    if key is None:
        assert done.stdout.strip(), f"bench/{script} --smoke printed nothing; add its key line to KEY_LINES"
    else:
        assert re.search(key, done.stdout, flags=re.M), done.stdout[-3000:]


@pytest.mark.skipif(os.name == "nt", reason="a bash script")
def test_gpu_script_smoke(demo_assets, tmp_path):
    env = {**_env(demo_assets), "OUT": str(tmp_path / "out"), "WORK": str(tmp_path / "work"),
           "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(BENCH / "gpu.sh"), "--smoke"], capture_output=True, text=True, env=env,
                          timeout=1500)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    figures = (tmp_path / "out" / "gpu-figures.md").read_text()
    steps = re.findall(r"^- (\d\w?) .*: exit (\d+) in", figures, flags=re.M)
    assert [s for s, _ in steps] == ["1", "2", "3", "4", "5", "6a", "6b"], figures[-3000:]
    assert all(code == "0" for _, code in steps), figures[-3000:]
    assert re.search(r"naive s/trial ÷ side s/trial", figures)
    assert re.search(r"^\| half size \| 0\.\d+ \| -?[\d.]+ \|", figures, flags=re.M)  # step 5's table
