"""Ctrl-C at every stage of a command: exit 130, "zsearch: interrupted", and nothing from the
libraries above it (no progress bars, banners or INFO lines).

Each test lets the stage's real work run (so its libraries have had their chance to print), then
raises KeyboardInterrupt where the stage ends, in-process through zsearch.cli.main.
"""

from __future__ import annotations

import re

import pytest
import yaml

from search_helpers import demo_config
from zsearch.cli import main

pytestmark = pytest.mark.usefixtures("single_thread")
ZSEARCH_BAR = re.compile(r"^(\s*\d+%\|[^|]*\| \d+/\d+ \[[^\]]*\])+$")  # search/progress.py's format


def _then_interrupt(real):
    def stage(*args, **kwargs):
        real(*args, **kwargs)
        raise KeyboardInterrupt
    return stage


def _interrupted(argv, capfd) -> None:
    capfd.readouterr()
    assert main([str(a) for a in argv]) == 130
    out, err = capfd.readouterr()
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert lines[-1] == "zsearch: interrupted", err
    # zsearch's own one-line steps and its trial bar (no title) only; a library's bar has a
    # title ("Loading pipeline components...:  40%|####| 2/5 [...]")
    assert all(line.startswith("zsearch: ") or ZSEARCH_BAR.match(line) for line in lines), err
    assert "Loading" not in out + err and "it/s" not in out + err


def test_ctrl_c_while_building_the_demo(tmp_path, demo_assets, capfd, monkeypatch):
    """The demo's tiny pipeline is written and loaded again (diffusers' and transformers' bars)."""
    from zsearch.demo import clip
    monkeypatch.setattr(clip, "load_pipeline", _then_interrupt(clip.load_pipeline))
    config = demo_config(tmp_path, demo_assets)
    data = yaml.safe_load(config.read_text())
    data["demo"] = str(tmp_path / "fresh-demo")
    config.write_text(yaml.safe_dump(data))
    _interrupted(["run", config, "--no-progress"], capfd)
    assert (tmp_path / "fresh-demo" / "tiny-z-image" / "model_index.json").is_file()  # it did get that far


@pytest.mark.parametrize("stage", ["load", "noise", "trials", "validation"])
def test_ctrl_c_during_a_search(tmp_path, demo_assets, capfd, monkeypatch, stage):
    from zsearch.search import objective, run, session
    if stage == "load":
        monkeypatch.setattr(session, "load_scorers", _then_interrupt(session.load_scorers))
    elif stage == "noise":
        monkeypatch.setattr(run, "measure_noise", _then_interrupt(run.measure_noise))
    elif stage == "trials":
        monkeypatch.setattr(objective.Objective, "__call__", _then_interrupt(objective.Objective.__call__))
    else:
        monkeypatch.setattr(run, "validate", _then_interrupt(run.validate))
    config = demo_config(tmp_path, demo_assets, search={"trials": 2}, noise={"repeats": 1},
                         validation={"top_k": 1})
    _interrupted(["run", config], capfd)  # with zsearch's progress: its steps are "zsearch: ..." lines


def test_ctrl_c_while_the_review_sets_up(tmp_path, demo_assets, capfd, monkeypatch):
    """Opening the review creates its preference study (Optuna: "A new study created in RDB")."""
    from zsearch.review import study as session
    from zsearch.search.run import run
    from zsearch.settings.load import load_config
    config = demo_config(tmp_path, demo_assets, search={"trials": 2})
    run(load_config(config), show_progress=False)
    monkeypatch.setattr(session, "open_review", _then_interrupt(session.open_review))
    _interrupted(["review", config, "--top-k", "1", "--port", "0"], capfd)
