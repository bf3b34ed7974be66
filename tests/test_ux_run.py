"""What a search tells the person at the terminal, and what its shared output carries (tiny real models)."""

from __future__ import annotations

import json
import os
import signal
import stat
import sys

import optuna
import pytest
from safetensors import safe_open

from search_helpers import demo_config
from zsearch.cli import main
from zsearch.settings.load import load_config

pytestmark = pytest.mark.usefixtures("single_thread")


def _study(config):
    from zsearch.study.storage import make_storage
    return optuna.load_study(study_name=config.name, storage=make_storage(config))


@pytest.fixture(scope="module")
def finished(tmp_path_factory, demo_assets):
    """A finished 2-trial study with a noise band and validation, run through the CLI."""
    tmp_path = tmp_path_factory.mktemp("ux-run")
    path = demo_config(tmp_path, demo_assets, name="ux", search={"trials": 2}, validation={"top_k": 1},
                       noise={"repeats": 1})
    assert main(["run", str(path)]) == 0
    return path, demo_assets


def test_the_summary_says_what_to_load(finished, capsys):
    path, _ = finished
    config = load_config(path)
    # the first run's lines went to the terminal before this test; `best` prints the same summary
    assert main(["best", str(path)]) == 0
    out = capsys.readouterr().out
    assert "load `best.safetensors` alone, at strength 1.0, in place of the source LoRAs" in out
    assert "ComfyUI" in out and "LoraLoaderModelOnly" in out and "strength_model: 1.0" in out
    assert f'pipe.load_lora_weights("{(config.out_dir / "best.safetensors").as_posix()}")' in out


def test_the_run_names_the_device_auto_picked(finished):
    from zsearch.engine.device import pick_device
    log = (load_config(finished[0]).out_dir / "zsearch.log").read_text()
    assert f"on {pick_device('auto')} (auto) ..." in log and " on auto ..." not in log


def test_a_finished_study_says_so_on_the_terminal_with_the_way_on(finished, capsys):
    path, _ = finished
    assert main(["run", str(path)]) == 0
    captured = capsys.readouterr()
    assert "already has 2 finished trials (budget 2): nothing to run" in captured.err
    assert f"`zsearch run {path} --trials 4`" in captured.err
    assert captured.out.startswith("best: trial ")  # introduced by the line above as the best so far


def test_validate_after_a_run_says_it_already_ran_and_what_it_does_now(finished, capsys):
    path, _ = finished
    config = load_config(path)
    record = _study(config).user_attrs["validation"]
    assert main(["validate", str(path)]) == 0
    err = capsys.readouterr().err
    assert (f"validation already ran for this study ({len(record['rows'])} trials re-scored, it chose trial "
            f"{record['chosen']}); validating again: the baseline and the current top 1 trials") in err


def test_the_run_span_is_recorded_and_covers_the_trials(finished):
    from zsearch.report.facts import gather
    from zsearch.study import records
    config = load_config(finished[0])
    study = _study(config)
    start, end = records.read_run_span(study)
    trials = study.get_trials(deepcopy=False)
    assert start is not None and end is not None
    assert start <= min(t.datetime_start for t in trials) and end >= max(t.datetime_complete for t in trials)
    assert gather(study).wall_seconds == pytest.approx((end - start).total_seconds(), abs=1e-6)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permission bits")
def test_best_outputs_follow_the_umask(finished, capsys):
    config = load_config(finished[0])
    before = os.umask(0o027)
    try:
        assert main(["best", str(finished[0])]) == 0  # rewrites every best.* file
    finally:
        os.umask(before)
    for name in ("best.safetensors", "best.yaml", "best.png"):
        assert stat.S_IMODE((config.out_dir / name).stat().st_mode) == 0o640, name


def test_best_safetensors_names_no_folder_of_this_machine(finished):
    path, assets = finished
    config = load_config(path)
    with safe_open(str(config.out_dir / "best.safetensors"), "pt") as f:
        metadata = f.metadata()
    folders = {str(assets.root), str(config.out_dir), str(path.parent), os.path.expanduser("~")}
    for key, value in metadata.items():
        assert not any(folder in value for folder in folders), (key, value)
        assert not any(part.startswith(("/", "..")) for part in value.replace('"', " ").split()), (key, value)
    assert metadata["zsearch.model"] == "tiny-z-image" and len(metadata["zsearch.model_sha256"]) == 64
    recipe = json.loads(metadata["zsearch.lora.recipe"])
    assert [lw["path"] for lw in recipe["loras"]] == [p.name for p in assets.loras]
    assert json.loads(metadata["zsearch.scorers"])["clip"].startswith("local-dir:tiny-clip")


def test_inspect_shows_how_a_search_output_was_made(finished, capsys):
    path, assets = finished
    config = load_config(path)
    best = config.out_dir / "best.safetensors"
    assert main(["inspect", "--json", str(best)]) == 0
    prov = json.loads(capsys.readouterr().out)["files"][0]["provenance"]
    assert prov["study"] == "ux" and prov["chosen_by"] == {"by": "validation"}
    assert set(prov["scores"]) >= {"train", "baseline", "validation"}
    assert [s["file"] for s in prov["sources"]] == [p.name for p in assets.loras]
    assert main(["inspect", str(best)]) == 0
    text = capsys.readouterr().out
    assert "made by zsearch" in text and f"(study ux, trial {prov['trial']}); chosen by held-out validation" in text
    assert f"held-out {prov['scores']['validation']:.4f}" in text
    for lora in prov["lora.recipe"]["loras"]:
        assert f"recipe  {lora['path']}  ratio {lora['ratio']}" in text
    assert "load `best.safetensors` alone, at strength 1.0" in text


def test_ctrl_c_says_on_the_terminal_that_validation_was_skipped(tmp_path, demo_assets, capsys, monkeypatch):
    from zsearch.search import progress
    path = demo_config(tmp_path, demo_assets, name="stop", search={"trials": 4}, validation={"top_k": 2})
    update = progress.Progress.update

    def interrupted_after_the_first_trial(self, *args, **kwargs):  # the person presses Ctrl-C once
        update(self, *args, **kwargs)
        signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(progress.Progress, "update", interrupted_after_the_first_trial)
    assert main(["run", str(path), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert f"stopped early: validation skipped (run `zsearch validate {path}` to validate now)" in err
    assert "validation" not in _study(load_config(path)).user_attrs


def test_the_dashboard_opens_the_studys_page_and_keeps_the_terminal_quiet(finished):
    import urllib.request

    from search_helpers import start
    path, _ = finished
    study = _study(load_config(path))
    process = start("dashboard", path, "--port", "0")  # 0: any free port, the line says which
    try:
        line = process.stdout.readline()
        assert "http://127.0.0.1:" in line, (line, process.stderr.read() if process.poll() is not None else "")
        url = line[line.index("http://"):].split()[0]
        assert url.endswith(f"/dashboard/studies/{study._study_id}") and ":0/" not in url
        base = url[:url.index("/dashboard")]
        for address in (url, f"{base}/api/studies/{study._study_id}", f"{base}/api/studies/{study._study_id}"):
            with urllib.request.urlopen(address, timeout=60) as response:
                assert response.status == 200
    finally:
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert "GET /" not in out + err and "HTTP/1.1" not in out + err


def test_the_report_says_what_to_load_and_counts_the_whole_run(finished):
    from zsearch.report import write_report
    from zsearch.study import records
    config = load_config(finished[0])
    text = write_report(config).read_text()
    assert "Load `best.safetensors` alone, at strength 1.0, in place of the source LoRAs" in text
    assert "`LoraLoaderModelOnly`" in text and "pipe.load_lora_weights(" in text
    start, end = records.read_run_span(_study(config))
    from zsearch.report.facts import duration
    assert f"| wall time | {duration((end - start).total_seconds())} |" in text
