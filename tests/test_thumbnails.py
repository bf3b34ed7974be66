"""Per-trial dashboard grids are thumbnails; the baseline, start points and top trials keep full size."""

from __future__ import annotations

import io
from types import SimpleNamespace

import optuna
import pytest
import torch
from optuna.artifacts import FileSystemArtifactStore
from PIL import Image

from zsearch.search.evaluate import Evaluation
from zsearch.search.objective import Objective

optuna.logging.set_verbosity(optuna.logging.WARNING)


def renders(n: int, side: int, seed: int = 0) -> torch.Tensor:
    """Render-like images: smooth shapes with a little grain (not pure noise, which no codec shrinks)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 8, 8, generator=g)
    smooth = torch.nn.functional.interpolate(coarse, size=(side, side), mode="bicubic", align_corners=False)
    return (smooth + 0.03 * torch.randn(n, 3, side, side, generator=g)).clamp(0, 1)


def _objective(tmp_path, top_k: int = 1):
    study = optuna.create_study(direction="maximize")
    store = FileSystemArtifactStore(str(tmp_path))
    config = SimpleNamespace(validation=SimpleNamespace(top_k=top_k), objective=SimpleNamespace(pareto=False))
    evaluator = SimpleNamespace(prompts=["a", "b", "c", "d"])
    return Objective(config, space=None, evaluator=evaluator, store=store, study=study), study, store


def _run_trial(objective, study, score: float, side: int, role: str | None = None):
    trial = study.ask()
    if role:
        trial.set_user_attr("role", role)
    images = renders(8, side, seed=int(score * 1000))  # 4 prompts x 2 seeds
    objective._upload_grid(trial, Evaluation([score], [score], [score], None, images), score)
    trial.set_user_attr("score", score)
    study.tell(trial, score)
    return study.trials[-1]


def _image(store, artifact) -> tuple[Image.Image, int]:
    with store.open_reader(artifact) as reader:
        data = reader.read()
    return Image.open(io.BytesIO(data)), len(data)


def test_thumbnails_are_jpeg_at_most_256_px_an_image_and_full_size_is_kept_for_the_right_trials(tmp_path):
    objective, study, store = _objective(tmp_path, top_k=1)
    baseline = _run_trial(objective, study, 0.50, 1024, role="baseline")
    better = _run_trial(objective, study, 0.60, 1024)   # top 2 so far (top_k + 1): full size kept
    worse = _run_trial(objective, study, 0.40, 1024)    # below the top 2: thumbnail only
    best = _run_trial(objective, study, 0.70, 1024)
    for trial in (baseline, better, worse, best):
        thumb, _ = _image(store, trial.user_attrs["grid_artifact"])
        assert thumb.format == "JPEG"
        # 4 columns (prompts) x 2 rows (seeds), 2 px padding: each image 256 px, not 1024.
        assert thumb.size == (4 * 256 + 5 * 2, 2 * 256 + 3 * 2)
    assert {t.number for t in (baseline, better, worse, best) if "grid_full_artifact" in t.user_attrs} \
        == {baseline.number, better.number, best.number}
    full, _ = _image(store, best.user_attrs["grid_full_artifact"])
    assert full.format == "PNG" and full.size == (4 * 1024 + 5 * 2, 2 * 1024 + 3 * 2)

    # A new best pushes `better` out of the top 2: its full size goes, its thumbnail stays; the
    # baseline's full size stays whatever its score.
    newest = _run_trial(objective, study, 0.80, 1024)
    kept = {p.name for p in tmp_path.iterdir()}
    assert better.user_attrs["grid_full_artifact"] not in kept and better.user_attrs["grid_artifact"] in kept
    for trial in (baseline, best, newest):
        assert trial.user_attrs["grid_full_artifact"] in kept
    from zsearch.outputs.best import _load_grid
    assert _load_grid(store, study.trials[better.number]).size == (4 * 256 + 5 * 2, 2 * 256 + 3 * 2)
    assert _load_grid(store, study.trials[best.number]).size == full.size


def test_small_renders_are_never_enlarged(tmp_path):
    objective, study, store = _objective(tmp_path)
    trial = _run_trial(objective, study, 0.5, 64)
    thumb, _ = _image(store, trial.user_attrs["grid_artifact"])
    assert thumb.size == (4 * 64 + 5 * 2, 2 * 64 + 3 * 2)


def test_a_night_of_1024px_trials_stays_under_a_gigabyte(tmp_path, capsys):
    """500 trials of 4 prompts x 2 seeds at 1024 px: thumbnails for all, full size for the few tops."""
    objective, study, store = _objective(tmp_path, top_k=5)
    trial = _run_trial(objective, study, 0.1, 1024)
    _, thumb_bytes = _image(store, trial.user_attrs["grid_artifact"])
    _, full_bytes = _image(store, trial.user_attrs["grid_full_artifact"])
    # Full size stays for the baseline and the top 6 (top_k + 1) only; a new top member may briefly
    # make it 8 while the one it displaces is removed.
    night = 500 * thumb_bytes + 8 * full_bytes
    with capsys.disabled():
        print(f"\nthumbnail {thumb_bytes / 1e3:.0f} kB, full {full_bytes / 1e6:.1f} MB a trial; "
              f"500 trials <= {night / 1e9:.2f} GB (all full size: {500 * full_bytes / 1e9:.1f} GB)")
    assert night <= 1e9
    assert thumb_bytes * 10 < full_bytes
