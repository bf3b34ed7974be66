"""best.png: the references, the baseline and the best side by side, a few seeds per prompt."""

from __future__ import annotations

import io

import numpy as np
import optuna
import pytest
from PIL import Image

from search_helpers import demo_config
from zsearch.settings.load import load_config
from zsearch.study.storage import artifact_store, make_storage

pytestmark = pytest.mark.usefixtures("single_thread")


def _find(picture: np.ndarray, tile: np.ndarray) -> list[tuple[int, int]]:
    """Every (y, x) where `tile` sits in `picture` pixel for pixel."""
    h, w = tile.shape[:2]
    ys, xs = np.nonzero(np.all(picture[: picture.shape[0] - h + 1, : picture.shape[1] - w + 1] == tile[0, 0], axis=-1))
    return [(y, x) for y, x in zip(ys, xs) if np.array_equal(picture[y:y + h, x:x + w], tile)]


def _tile(grid: Image.Image, prompt: int, seed: int, side: int) -> np.ndarray:
    """One render out of a trial's stored grid (torchvision's make_grid: 2 px padding)."""
    return np.asarray(grid.crop((2 + prompt * (side + 2), 2 + seed * (side + 2),
                                 2 + prompt * (side + 2) + side, 2 + seed * (side + 2) + side)))


@pytest.fixture(scope="module")
def searched(demo_assets, tmp_path_factory):
    from zsearch.search.run import run
    config = load_config(demo_config(tmp_path_factory.mktemp("best"), demo_assets, search={"trials": 3}))
    return config, run(config, show_progress=False)


def test_best_png_shows_references_baseline_and_best(searched, demo_assets):
    config, best = searched
    picture = np.asarray(Image.open(config.out_dir / "best.png").convert("RGB"))
    side = demo_assets.width  # 64 px renders: shown at their own size (never scaled up)

    # small enough to take in at a glance: at most 6 references, 2 candidates x 2 seeds across
    assert picture.shape[1] <= 6 * (side + 2) + 240 and picture.shape[0] <= 500, picture.shape

    references = sorted(demo_assets.references.glob("*.png"))
    shown = [np.asarray(Image.open(p).convert("RGB")) for p in references[:6]]
    places = [_find(picture, ref) for ref in shown]
    assert all(places), "a reference is missing from best.png"
    assert len({y for found in places for y, _ in found}) == 1  # one row of references, on top
    top = places[0][0][0]

    study = optuna.load_study(study_name=config.name, storage=make_storage(config))
    baseline = next(t for t in study.trials if t.user_attrs.get("role") == "baseline")
    store = artifact_store(config)
    found = {}
    for name, trial in (("baseline", baseline), ("best", best)):
        with store.open_reader(trial.user_attrs["grid_full_artifact"]) as reader:
            grid = Image.open(io.BytesIO(reader.read())).convert("RGB")
        found[name] = [[_find(picture, _tile(grid, p, s, side)) for s in range(2)] for p in range(3)]
        assert all(f for row in found[name] for f in row), f"a render of the {name} is missing"
    for p in range(3):  # per prompt one row: the baseline's seeds, then the best's, side by side
        b0, b1 = found["baseline"][p][0][0], found["baseline"][p][1][0]
        w0 = found["best"][p][0][0] if best.number != baseline.number else None
        assert b0[0] == b1[0] > top and b1[1] == b0[1] + side + 2
        if w0 is not None:
            assert w0[0] == b0[0] and w0[1] > b1[1] + side
    rows = sorted({found["baseline"][p][0][0][0] for p in range(3)})
    assert len(rows) == 3  # the prompts below each other


def test_the_review_page_shows_the_references(searched, demo_assets):
    """In the review study's note (above the pair on the dashboard's preference page), as an artifact."""
    from optuna_dashboard._note import get_note_from_system_attrs
    from zsearch.review.candidates import pick_candidates
    from zsearch.review.study import open_review
    from zsearch.study.records import REVIEW_REFERENCES

    config, _ = searched
    storage = make_storage(config)
    study = optuna.load_study(study_name=config.name, storage=storage)
    candidates = pick_candidates(study, 1)
    store = artifact_store(config)
    review = open_review(config, study, candidates, {}, store)
    artifact = review.review.user_attrs[REVIEW_REFERENCES]
    with store.open_reader(artifact) as reader:
        sheet = np.asarray(Image.open(io.BytesIO(reader.read())).convert("RGB"))
    for path in sorted(demo_assets.references.glob("*.png"))[:6]:
        assert _find(sheet, np.asarray(Image.open(path).convert("RGB")))
    study_id = storage.get_study_id_from_name(review.review.study_name)
    note = get_note_from_system_attrs(storage.get_study_system_attrs(study_id), None)["body"]
    assert f"/artifacts/{study_id}/{artifact}" in note
    again = open_review(config, study, candidates, {}, store)  # reopened: the same picture, not another
    assert again.review.user_attrs[REVIEW_REFERENCES] == artifact
