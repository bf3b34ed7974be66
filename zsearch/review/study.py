"""The review study: a person compares the top candidates' renders, two at a time.

`zsearch review CONFIG` renders the baseline and the top-k trials on the held-out seeds, and puts
them in a preferential study of optuna-dashboard (`<name>:review`, in the same storage). The
dashboard's preference page shows two candidates; the person clicks the worse one ("Worst").
This module keeps exactly two on show: after each choice it retires the survivor and shows the
next pair of a round-robin over all pairs. The choices are the dashboard's own records in the
review study; after each one a Bradley-Terry fit ranks the candidates, and the ranking and its
winner are written to the search study (user attribute `review`), which `zsearch best` follows.

Renders are shown blind (candidate A, B, ...); the mapping to trials is in the record.
"""

from __future__ import annotations

import string
import tempfile
import threading
import warnings
from pathlib import Path

import optuna
from optuna.artifacts import upload_artifact
from optuna.trial import FrozenTrial

from zsearch.review import dashboard
from zsearch.review.bradley_terry import bradley_terry, round_robin
from zsearch.review.candidates import review_seeds
from zsearch.settings.schema import Config
from zsearch.study import records
from zsearch.study.storage import make_storage

PRIOR = 1.0  # Bradley-Terry virtual games per candidate (see bradley_terry.py)


def _labels(n: int) -> list[str]:
    letters = string.ascii_uppercase
    return [letters[i] if i < 26 else f"{letters[i // 26 - 1]}{letters[i % 26]}" for i in range(n)]


def open_review(config: Config, study: optuna.Study, candidates: list[FrozenTrial], renders: dict[int, Path],
                store) -> "Review":
    """The preferential study for these candidates: resumed when it already exists for the same
    ones, else a new `<name>:review-N` (an earlier review and its choices are kept)."""
    from optuna_dashboard import register_preference_feedback_component
    from optuna_dashboard.preferential import create_study

    numbers = [t.number for t in candidates]
    storage = make_storage(config)
    names = {s.study_name for s in optuna.get_all_study_summaries(storage)}
    base = f"{config.name}:review"
    name, n = base, 1
    while name in names:
        existing = optuna.load_study(study_name=name, storage=storage)
        if existing.user_attrs.get(records.REVIEW_CANDIDATES) == numbers:
            break
        n += 1
        name = f"{base}-{n}"
    fresh = name not in names
    # The sampler is never asked (the review adds its own trials); an explicit one keeps
    # optuna-dashboard from requiring BoTorch for its default preferential GP.
    review = create_study(n_generate=2, storage=storage, study_name=name, load_if_exists=True,
                          sampler=optuna.samplers.RandomSampler(seed=0))
    if fresh:
        register_preference_feedback_component(review, "artifact", artifact_key=records.RENDER)
        review.set_user_attr(records.REVIEW_CANDIDATES, numbers)
        review.set_user_attr(records.REVIEW_LABELS, dict(zip(map(str, numbers), _labels(len(numbers)))))
        review.set_user_attr(records.REVIEW_PAIRS, [list(p) for p in round_robin(len(numbers))])
        review.set_user_attr(records.REVIEW_SEARCH_STUDY, config.name)
        review.set_user_attr(records.REVIEW_SEEDS, review_seeds(config))
    if records.REVIEW_REFERENCES not in review.user_attrs:
        show_references(config, storage, name, store)
    return Review(study, review, storage, renders, store)


def show_references(config: Config, storage, name: str, store) -> None:
    """The references beside the pairs: a small picture of them, uploaded to the review study
    and shown in its note (the dashboard's preference page shows the note above the pair)."""
    from optuna_dashboard import save_note
    from zsearch.outputs.best import reference_images
    from zsearch.outputs.grid import image_row, save_png

    images = reference_images(config)
    if not images:
        return
    review = optuna.load_study(study_name=name, storage=storage)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "references.png"
        save_png(image_row(images), path)
        artifact = upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=review,
                                   mimetype="image/png")
    review.set_user_attr(records.REVIEW_REFERENCES, artifact)
    study_id = storage.get_study_id_from_name(name)
    save_note(review, f"## The look you are after: the references ({len(images)} shown)\n\n"
                      f"![references](/artifacts/{study_id}/{artifact})\n\n"
                      f"Click **Worst** on the render further from this look.\n")


class Review:
    """Keeps one pair on show and the search study's record up to date."""

    def __init__(self, study: optuna.Study, review, storage, renders: dict[int, Path], store):
        self.study = study  # the search study
        self.review = review  # optuna_dashboard.preferential.PreferentialStudy
        self.page = dashboard.Page(storage, review)
        self.renders = renders
        self.store = store
        self.candidates: list[int] = review.user_attrs[records.REVIEW_CANDIDATES]
        self.labels: dict[str, str] = review.user_attrs[records.REVIEW_LABELS]
        self.pairs: list[list[int]] = review.user_attrs[records.REVIEW_PAIRS]
        self._lock = threading.Lock()

    @property
    def study_id(self) -> int:
        return self.page.study_id

    def _state(self):
        return self.page.state()

    def step(self) -> dict:
        """Retire the survivor of an answered pair, show the next pair, update the record."""
        with self._lock:
            trials, preferences, active = self._state()
            if len(active) == 1:  # the person chose (or skipped one): retire the other
                self.page.retire(active[0])
                active = []
            shown = len({t.user_attrs.get(records.PAIR) for t in trials if records.PAIR in t.user_attrs})
            if not active and shown < len(self.pairs):
                for position in self.pairs[shown]:
                    self._show(self.candidates[position], shown)
            return self.sync(trials=self.review.get_trials(deepcopy=False), preferences=preferences)

    def _show(self, candidate: int, pair: int) -> None:
        with warnings.catch_warnings():  # the shared storage's heartbeat is meant for the search's optimize()
            warnings.simplefilter("ignore", UserWarning)
            trial = self.review.ask()
        label = self.labels[str(candidate)]
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / f"candidate-{label}.png"
            path.write_bytes(self.renders[candidate].read_bytes())
            artifact = upload_artifact(artifact_store=self.store, file_path=str(path), study_or_trial=trial,
                                       mimetype="image/png")
        trial.set_user_attr(records.CANDIDATE, candidate)
        trial.set_user_attr(records.PAIR, pair)
        trial.set_user_attr(records.RENDER, artifact)  # last: the dashboard shows the card once this is set

    def sync(self, trials=None, preferences=None) -> dict:
        """The ranking from the choices so far, written to the search study; returned."""
        if trials is None or preferences is None:
            trials, preferences, _ = self._state()
        by_number = {t.number: t.user_attrs.get(records.CANDIDATE) for t in trials}
        position = {c: i for i, c in enumerate(self.candidates)}
        choices = [(by_number[b], by_number[w]) for b, w in preferences
                   if by_number.get(b) is not None and by_number.get(w) is not None and by_number[b] != by_number[w]]
        strengths = bradley_terry(len(self.candidates), comparisons=[(position[b], position[w]) for b, w in choices],
                                  prior=PRIOR)
        rows = [{"trial": c, "label": self.labels[str(c)], "strength": strengths[i],
                 "wins": sum(1 for b, _ in choices if b == c), "losses": sum(1 for _, w in choices if w == c)}
                for i, c in enumerate(self.candidates)]
        rows.sort(key=lambda r: r["strength"], reverse=True)
        shown = len({t.user_attrs.get(records.PAIR) for t in trials if records.PAIR in t.user_attrs})
        record = {"study": self.review.study_name, "candidates": self.candidates, "choices": [list(c) for c in choices],
                  "ranking": rows, "chosen": rows[0]["trial"] if choices else None, "pairs_shown": shown,
                  "pairs": len(self.pairs), "model": f"bradley-terry (prior {PRIOR:g})"}
        if self.study.user_attrs.get(records.REVIEW) != record:
            self.study.set_user_attr(records.REVIEW, record)
        return record

    @property
    def finished(self) -> bool:
        record = self.study.user_attrs.get(records.REVIEW) or {}
        _, _, active = self._state()
        return record.get("pairs_shown") == len(self.pairs) and not active
