"""Trials the pruner stops are visible: a marker in the log line and the progress bar, a user
attribute and a dashboard note "partial: stopped after k of n jobs", the run's summary and the
report count them one way, and the report's importance and slices leave them out.

One real tiny-demo run: a planted best scoring 10 on every job makes WilcoxonPruner stop the
next search trials after 4 of their 6 jobs (p = 1/16 < 0.1; after 2 jobs p = 1/4).
"""

from __future__ import annotations

import re

import optuna
import pytest
from optuna.trial import TrialState
from optuna_dashboard._note import get_note_from_system_attrs  # what the dashboard's trial page reads

from search_helpers import demo_config, plant_best
from zsearch.cli import main
from zsearch.report import plots, write_report
from zsearch.report.facts import gather
from zsearch.search.progress import Progress
from zsearch.settings.load import check_inputs, load_config
from zsearch.study import records


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory, demo_assets):
    """(config, terminal output, study) after `zsearch run` with a planted best."""
    tmp_path = tmp_path_factory.mktemp("partial")
    path = demo_config(tmp_path, demo_assets, render={"batch": 2, "steps": 2, "width": 32, "height": 32},
                       search={"trials": 4, "prune": True})
    config = load_config(path)
    check_inputs(config)
    study = plant_best(config)
    import contextlib
    import io
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["run", str(path), "--no-progress"]) == 0
    study = optuna.load_study(study_name=config.name, storage=config.storage_url)
    return config, out.getvalue(), study


def _stopped(study):
    return [t for t in study.trials if t.state == TrialState.COMPLETE and records.is_partial(t)]


def test_a_stopped_trial_says_so_in_its_attribute_its_dashboard_note_and_the_log(stopped_run):
    config, _, study = stopped_run
    stopped = _stopped(study)
    assert len(stopped) == 2  # every search trial after the planted best
    system_attrs = study._storage.get_study_system_attrs(study._study_id)
    log = (config.out_dir / "zsearch.log").read_text()
    for trial in stopped:
        ran = sum(1 for v in records.job_scores(trial) if v == v)
        assert ran == 4
        note = f"partial: stopped after {ran} of 6 jobs"
        assert trial.user_attrs[records.STOPPED_NOTE] == note
        body = get_note_from_system_attrs(system_attrs, trial._trial_id)["body"]
        assert note in body and "stand-in" in body
        line = re.search(rf"trial {trial.number}: score [-0-9.]+ \[(.*?)\]", log)
        assert line and line.group(1) == f"{note}; stand-in score"
    full = [t for t in study.trials if t.state == TrialState.COMPLETE and not records.is_partial(t)]
    for trial in full:  # no marker, no note, no attribute on a trial that ran every job
        assert records.STOPPED_NOTE not in trial.user_attrs
        assert get_note_from_system_attrs(system_attrs, trial._trial_id)["body"] == ""
        assert re.search(rf"trial {trial.number}: score [-0-9.]+ \(best", log) or trial.value == 10.0


def test_the_summary_and_the_report_count_the_trials_one_way(stopped_run):
    config, terminal, study = stopped_run
    states = [t.state for t in study.trials]
    stopped = len(_stopped(study)) + states.count(TrialState.PRUNED)
    complete = states.count(TrialState.COMPLETE) - len(_stopped(study))
    failed = states.count(TrialState.FAIL)
    expected = (complete + stopped + failed, complete, stopped, failed)
    assert stopped == 2 and complete == 2 and failed == 0

    assert f"trials: {complete} complete, {stopped} stopped early, {failed} failed" in terminal

    text = write_report(config).read_text()
    sentence = re.search(r"(\d+) trials finished — (\d+) complete, (\d+) stopped early, (\d+) failed", text)
    table = re.search(r"\| trials \| (\d+) complete, (\d+) stopped early, (\d+) failed \|", text)
    assert tuple(map(int, sentence.groups())) == expected
    assert tuple(map(int, table.groups())) == expected[1:]
    # No other wording of the same counts anywhere in the report.
    assert "pruned" not in text.lower().replace("optuna keeps it as pruned", "")
    judged = [t for t in study.trials if t.state == TrialState.COMPLETE and records.STYLE in t.user_attrs]
    assert len(judged) == 3  # the baseline and the two stopped (the planted best has no terms)
    assert "The 1 complete trial, best score first" in text  # the judges' table: complete trials only


def test_the_report_leaves_stopped_trials_out_of_importance_and_slices(stopped_run):
    config, _, study = stopped_run
    text = write_report(config).read_text()
    searched = [t for t in study.trials if t.state == TrialState.COMPLETE and not records.is_partial(t)
                and t.params and not records.is_screening(t)]
    importance = text.split("## Parameter importance")[1].split("\n## ")[0]
    assert (f"Over the {len(searched)} complete search trials, leaving out 2 stopped early" in importance
            or f"Not enough complete search trials ({len(searched)})" in importance
            or "could not be computed" in importance)
    facts = gather(study)
    fig = plots.slices_figure(facts, list(facts.ranges))
    drawn = sum(len(c.get_offsets()) for c in fig.axes[0].collections)
    # On the first parameter's axes: one dot per complete trial, and the best's star.
    assert drawn == len([t for t in facts.complete if t.params]) + 1
    assert "Trials stopped early are left out" in text


def test_the_progress_bar_counts_the_trials_stopped_early():
    with Progress(total=10, done=0, deadline=None, enabled=True) as progress:
        progress.update(4, 0.5123, stopped_early=3)
        assert "best 0.5123" in progress.bar.postfix and "3 stopped early" in progress.bar.postfix
        progress.update(5, 0.5123)
        assert "stopped early" not in progress.bar.postfix
