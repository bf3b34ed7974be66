"""The morning review, end to end on the demo models: a real study, the candidates' held-out
renders, optuna-dashboard's own HTTP API on 127.0.0.1 (and a real headless browser clicking
'Worst'), the Bradley-Terry ranking in the study, and `zsearch best` following the person."""

from __future__ import annotations

import json
import os
import shutil
import signal
import urllib.request

import optuna
import pytest
import yaml
from PIL import Image

from search_helpers import demo_config, start, wait_until, zsearch
from zsearch.settings.load import load_config
from zsearch.review.bradley_terry import bradley_terry
from zsearch.review.candidates import REVIEW_ROWS, pick_candidates, render_candidates
from zsearch.review.server import ReviewServer
from zsearch.review.study import open_review
from zsearch.study.records import REVIEW as REVIEW_ATTR
from zsearch.study.storage import artifact_store, make_storage

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def searched(demo_assets, tmp_path_factory):
    """A finished 5-trial study of the demo (no validation, no noise runs: they are not under test)."""
    tmp = tmp_path_factory.mktemp("review")
    path = demo_config(tmp, demo_assets, name="rv", search={"trials": 5})
    from zsearch.search.run import run
    assert run(load_config(path), show_progress=False) is not None  # in-process: no second start-up
    return path


def _study(config):
    return optuna.load_study(study_name=config.name, storage=make_storage(config))


def _get(url):
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.status, response.read()


def _post(url, body):
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status


def _active(detail):
    """The trials the dashboard's preference page shows: as its own page code filters them."""
    clicked = {h["history"]["clicked"] for h in detail.get("preference_history", []) if not h["is_removed"]}
    skipped = set(detail.get("skipped_trial_numbers", []))
    return [t for t in detail["trials"] if t["state"] in ("Running", "Complete")
            and t["number"] not in clicked | skipped]


def test_candidates_are_the_baseline_and_the_top_k(searched):
    config = load_config(searched)
    study = _study(config)
    candidates = pick_candidates(study, 2)
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    by_score = sorted((t for t in complete if t.user_attrs.get("role") != "baseline"),
                      key=lambda t: t.user_attrs["score"], reverse=True)
    assert candidates[0].user_attrs["role"] == "baseline"
    assert [t.number for t in candidates[1:]] == [t.number for t in by_score[:2]]


def test_renders_are_held_out_grids_and_reused(searched):
    config = load_config(searched)
    candidates = pick_candidates(_study(config), 2)
    folder = config.out_dir / "review"
    paths = render_candidates(config, candidates, folder)
    n_prompts, n_seeds = len(config.validation_prompts), min(REVIEW_ROWS, len(config.validation.seeds_for(config.seeds)))
    for trial in candidates:
        with Image.open(paths[trial.number]) as image:  # torchvision grid: 2 px padding
            assert image.size == (n_prompts * (config.render.width + 2) + 2, n_seeds * (config.render.height + 2) + 2)
    index = json.loads((folder / "renders.json").read_text())
    assert index[str(candidates[0].number)]["seeds"] == config.validation.seeds_for(config.seeds)[:REVIEW_ROWS]
    assert not set(index[str(candidates[0].number)]["seeds"]) & set(config.seeds)  # held out
    stamps = {p: p.stat().st_mtime_ns for p in paths.values()}
    render_candidates(config, candidates, folder)  # nothing to do the second time
    assert {p: p.stat().st_mtime_ns for p in paths.values()} == stamps
    # the baseline's and a tuned trial's renders differ (they are different weightings)
    first, second = (Image.open(paths[t.number]).tobytes() for t in candidates[:2])
    assert first != second


def test_review_through_the_dashboard_api_then_best_follows_the_person(searched):
    config = load_config(searched)
    study = _study(config)
    candidates = pick_candidates(study, 2)
    renders = render_candidates(config, candidates, config.out_dir / "review")
    store = artifact_store(config)
    review = open_review(config, study, candidates, renders, store)
    numbers = [t.number for t in candidates]
    # The person's hidden taste: the reverse of the training scores, so their favourite is the
    # candidate the search liked least (best.* must change to follow them).
    taste = sorted(numbers, key=lambda n: study.trials[n].user_attrs["score"])
    favourite = taste[0]
    assert favourite != max(numbers, key=lambda n: study.trials[n].user_attrs["score"])

    with ReviewServer(review, make_storage(config), store, port=0) as server:
        api = f"http://127.0.0.1:{server.port}/api/studies/{review.study_id}"
        assert _get(server.url)[0] == 200  # the dashboard's page itself
        for answered in range(len(review.pairs)):
            assert wait_until(lambda: len(_active(json.loads(_get(api)[1]))) == 2, 30)
            detail = json.loads(_get(api)[1])
            assert detail["is_preferential"] and detail["feedback_component_type"] == {
                "output_type": "artifact", "artifact_key": "render"}
            shown = _active(detail)
            candidate_of = {}
            for trial in shown:
                attrs = {a["key"]: a["value"] for a in trial["user_attrs"]}
                candidate_of[trial["number"]] = int(attrs["candidate"])
                artifact = next(a for a in trial["artifacts"] if a["artifact_id"] == attrs["render"])
                status, png = _get(f"http://127.0.0.1:{server.port}/artifacts/{review.study_id}/"
                                   f"{trial['trial_id']}/{artifact['artifact_id']}")
                assert status == 200 and png == renders[int(attrs["candidate"])].read_bytes()
                assert artifact["filename"].startswith("candidate-")  # blind: no trial number shown
            worse = max(candidate_of, key=lambda n: taste.index(candidate_of[n]))
            assert _post(f"{api}/preference", {"mode": "ChooseWorst", "candidates": list(candidate_of),
                                                "clicked": worse}) == 204
            assert wait_until(lambda: len(_study(config).user_attrs[REVIEW_ATTR]["choices"]) == answered + 1, 30)
    record = _study(config).user_attrs[REVIEW_ATTR]
    assert record["pairs_shown"] == len(review.pairs) == 3
    assert record["chosen"] == favourite
    assert [r["trial"] for r in record["ranking"]] == taste
    position = {n: i for i, n in enumerate(numbers)}
    expected = bradley_terry(len(numbers), comparisons=[(position[b], position[w]) for b, w in record["choices"]])
    assert [r["strength"] for r in sorted(record["ranking"], key=lambda r: position[r["trial"]])] == \
        pytest.approx(expected, rel=1e-12)

    result = zsearch("best", searched)
    assert result.returncode == 0, result.stderr
    assert f"best: trial {favourite}," in result.stdout and "chosen by you in the review (3 choices)" in result.stdout
    info = yaml.safe_load((config.out_dir / "best.yaml").read_text())["info"]
    assert info["trial"] == favourite
    assert info["chosen_by"]["by"] == "person" and info["chosen_by"]["choices"] == 3
    from safetensors import safe_open
    with safe_open(str(config.out_dir / "best.safetensors"), "pt") as f:
        provenance = json.loads(f.metadata()["zsearch.chosen_by"])
    assert provenance["by"] == "person" and provenance["candidates"] == numbers
    # The report follows the same rule: it names the person's choice, as best.yaml does.
    report = zsearch("report", searched)
    assert report.returncode == 0, report.stderr
    page = (config.out_dir / "report" / "index.md").read_text()
    assert f"hold trial {favourite}." in page and f"You chose trial {favourite} in `zsearch review`" in page
    assert "this report's pick is" not in page

    # reopening for the same candidates resumes that review; other candidates start a new one
    again = open_review(config, _study(config), candidates, renders, store)
    assert again.study_id == review.study_id
    other = open_review(config, _study(config), pick_candidates(_study(config), 3), renders | render_candidates(
        config, pick_candidates(_study(config), 3), config.out_dir / "review"), store)
    assert other.review.study_name == f"{config.name}:review-2"


def test_review_refuses_what_it_cannot_do(tmp_path, searched, demo_assets, capsys):
    from zsearch.cli import main
    assert main(["review", str(demo_config(tmp_path, demo_assets, name="none-yet"))]) == 2
    assert "no study 'none-yet' yet" in capsys.readouterr().err
    assert main(["review", str(searched), "--top-k", "0"]) == 2
    assert "--top-k must be at least 1" in capsys.readouterr().err


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


def _browser():
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        return None
    if not (CHROMIUM and CHROMEDRIVER):
        return None
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(flag)
    return webdriver, options, Service(CHROMEDRIVER)


def test_a_person_clicks_worst_in_a_real_browser(searched, tmp_path):
    found = _browser()
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("CI needs chromium, chromium-driver and selenium (tests/ci_browser_setup.sh)")
        pytest.skip("no chromium/chromedriver/selenium here (tests/ci_browser_setup.sh installs them)")
    webdriver, options, service = found
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    config = load_config(searched)
    process = start("review", searched, "--top-k", "1", "--port", "0")
    driver = None
    try:
        line = ""
        while "http://" not in line:
            line = process.stdout.readline()
            assert line or process.poll() is None, process.stderr.read()
        url = line[line.index("http://"):].split()[0]
        driver = webdriver.Chrome(service=service, options=options)
        driver.get(url)
        worst = WebDriverWait(driver, 60).until(
            lambda d: [b for b in d.find_elements(By.XPATH, "//button[contains(., 'Worst')]") if b.is_enabled()]
            if len(d.find_elements(By.XPATH, "//button[contains(., 'Worst')]")) == 2 else None)
        images = WebDriverWait(driver, 60).until(EC.presence_of_all_elements_located((By.TAG_NAME, "img")))
        assert images
        worst[0].click()
        assert wait_until(lambda: len((_study(config).user_attrs.get(REVIEW_ATTR) or {}).get("choices", [])) == 1
                          and _study(config).user_attrs[REVIEW_ATTR]["study"].startswith("rv:review"), 60)
    finally:
        if driver is not None:
            driver.quit()
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    record = _study(config).user_attrs[REVIEW_ATTR]
    assert len(record["candidates"]) == 2 and len(record["choices"]) == 1
    assert "review: 1 choices over 2 candidates" in out
    winner, loser = record["choices"][0]
    assert record["chosen"] == winner
