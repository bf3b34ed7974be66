"""The morning review: a person compares the top candidates' renders, two at a time.

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

import json
import logging
import string
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Optional

import optuna
from optuna.artifacts import upload_artifact
from optuna.trial import FrozenTrial, TrialState

from zsearch.settings.schema import Config
from zsearch.errors import UserError
from zsearch.study import records
from zsearch.review.bradley_terry import bradley_terry, round_robin

REVIEW_ATTR = "review"  # the search study's record of the review
CANDIDATE_ATTR = "candidate"  # on a review trial: the search trial it shows
RENDER_ATTR = "render"  # on a review trial: the artifact id of its picture
PAIR_ATTR = "pair"  # on a review trial: which pair of the schedule it belongs to
PRIOR = 1.0  # Bradley-Terry virtual games per candidate (see preference.py)
log = logging.getLogger("zsearch")


# ---------------------------------------------------------------- which candidates

def pick_candidates(study: optuna.Study, top_k: int) -> list[FrozenTrial]:
    """The baseline, then the top-k other complete trials (never a partial one): those validated
    first (by held-out score), then the rest by training score."""
    if top_k < 1:
        raise UserError("--top-k must be at least 1")
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    baseline = records.baseline_of(complete)
    validation = records.read_validation(study)
    held_out = {row.trial: row.validation for row in validation.rows} if validation else {}
    others = [t for t in records.candidates(complete) if t is not baseline]
    others.sort(key=lambda t: (t.number in held_out, held_out.get(t.number, 0.0), records.trial_score(t) or 0.0),
                reverse=True)
    chosen = ([baseline] if baseline else []) + others[:top_k]
    if len(chosen) < 2:
        raise UserError(f"study '{study.study_name}' has {len(chosen)} complete trial(s); a review needs two "
                        f"or more, so run more trials first")
    return chosen


# ---------------------------------------------------------------- their renders on held-out seeds

def render_candidates(config: Config, trials: list[FrozenTrial], folder: Path) -> dict[int, Path]:
    """One grid per candidate (a column per validation prompt, a row per held-out seed).

    Kept in `folder` with what they were rendered from; only missing or outdated ones are rendered.
    """
    from zsearch.outputs.grid import job_grid, save_png
    from zsearch.search.evaluate import make_jobs
    from zsearch.search.session import load_engine, prepare
    from zsearch.study.space import SearchSpace

    prepare(config)  # reads the prompt files (and builds the demo's models when asked)
    seeds = config.validation.seeds_for(config.seeds)
    prompts = list(config.validation_prompts)
    folder.mkdir(parents=True, exist_ok=True)
    index_file = folder / "renders.json"
    try:
        index = json.loads(index_file.read_text())
    except (OSError, ValueError):
        index = {}
    key = {"seeds": seeds, "prompts": prompts, "render": config.render.model_dump(mode="json")}
    paths = {t.number: folder / f"trial-{t.number:05d}.png" for t in trials}
    todo = [t for t in trials if not paths[t.number].is_file()
            or index.get(str(t.number)) != {**key, "params": t.params}]
    if todo:
        engine = load_engine(config)
        space = SearchSpace(config)
        jobs = make_jobs(prompts, seeds, engine.prompts)
        r = config.render
        import torch
        for trial in todo:
            engine.set_recipe(space.recipe(trial.params))
            images = torch.cat([engine.render(jobs[i:i + r.batch], steps=r.steps, width=r.width, height=r.height,
                                              batch=r.batch, guidance=r.guidance)
                                for i in range(0, len(jobs), r.batch)]).float().cpu()
            save_png(job_grid(images, len(prompts)), paths[trial.number])
            index[str(trial.number)] = {**key, "params": trial.params}
        engine.close()
        from zsearch.util.atomic import write_text_atomic
        write_text_atomic(index_file, json.dumps(index, indent=1))
    return paths


# ---------------------------------------------------------------- the review study

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
    names = {s.study_name for s in optuna.get_all_study_summaries(study._storage)}
    base = f"{config.name}:review"
    name, n = base, 1
    while name in names:
        existing = optuna.load_study(study_name=name, storage=study._storage)
        if existing.user_attrs.get("candidates") == numbers:
            break
        n += 1
        name = f"{base}-{n}"
    fresh = name not in names
    # The sampler is never asked (the review adds its own trials); an explicit one keeps
    # optuna-dashboard from requiring BoTorch for its default preferential GP.
    review = create_study(n_generate=2, storage=study._storage, study_name=name, load_if_exists=True,
                          sampler=optuna.samplers.RandomSampler(seed=0))
    if fresh:
        register_preference_feedback_component(review, "artifact", artifact_key=RENDER_ATTR)
        review.set_user_attr("candidates", numbers)
        review.set_user_attr("labels", dict(zip(map(str, numbers), _labels(len(numbers)))))
        review.set_user_attr("pairs", [list(p) for p in round_robin(len(numbers))])
        review.set_user_attr("search_study", config.name)
        review.set_user_attr("seeds", config.validation.seeds_for(config.seeds))
    return Review(study, review, renders, store)


class Review:
    """Keeps one pair on show and the search study's record up to date."""

    def __init__(self, study: optuna.Study, review, renders: dict[int, Path], store):
        self.study = study  # the search study
        self.review = review  # optuna_dashboard.preferential.PreferentialStudy
        self.renders = renders
        self.store = store
        self.candidates: list[int] = review.user_attrs["candidates"]
        self.labels: dict[str, str] = review.user_attrs["labels"]
        self.pairs: list[list[int]] = review.user_attrs["pairs"]
        self._lock = threading.Lock()

    @property
    def study_id(self) -> int:
        return self.review._study._study_id

    def _state(self):
        from optuna_dashboard.preferential._system_attrs import get_preferences, get_skipped_trial_ids
        storage = self.review._study._storage
        attrs = storage.get_study_system_attrs(self.study_id)  # before the trials, as the dashboard does
        trials = self.review.get_trials(deepcopy=False)
        preferences = get_preferences(attrs)
        worse = {w for _, w in preferences}
        skipped = set(get_skipped_trial_ids(attrs))
        active = [t for t in trials if t.state in (TrialState.RUNNING, TrialState.COMPLETE)
                  and t.number not in worse and t._trial_id not in skipped]
        return trials, preferences, active

    def step(self) -> dict:
        """Retire the survivor of an answered pair, show the next pair, update the record."""
        from optuna_dashboard.preferential._system_attrs import report_skip
        with self._lock:
            trials, preferences, active = self._state()
            if len(active) == 1:  # the person chose (or skipped one): retire the other
                report_skip(self.study_id, active[0]._trial_id, self.review._study._storage)
                active = []
            shown = len({t.user_attrs.get(PAIR_ATTR) for t in trials if PAIR_ATTR in t.user_attrs})
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
        trial.set_user_attr(CANDIDATE_ATTR, candidate)
        trial.set_user_attr(PAIR_ATTR, pair)
        trial.set_user_attr(RENDER_ATTR, artifact)  # last: the dashboard shows the card once this is set

    def sync(self, trials=None, preferences=None) -> dict:
        """The ranking from the choices so far, written to the search study; returned."""
        if trials is None or preferences is None:
            trials, preferences, _ = self._state()
        by_number = {t.number: t.user_attrs.get(CANDIDATE_ATTR) for t in trials}
        position = {c: i for i, c in enumerate(self.candidates)}
        choices = [(by_number[b], by_number[w]) for b, w in preferences
                   if by_number.get(b) is not None and by_number.get(w) is not None and by_number[b] != by_number[w]]
        strengths = bradley_terry(len(self.candidates), comparisons=[(position[b], position[w]) for b, w in choices],
                                  prior=PRIOR)
        rows = [{"trial": c, "label": self.labels[str(c)], "strength": strengths[i],
                 "wins": sum(1 for b, _ in choices if b == c), "losses": sum(1 for _, w in choices if w == c)}
                for i, c in enumerate(self.candidates)]
        rows.sort(key=lambda r: r["strength"], reverse=True)
        shown = len({t.user_attrs.get(PAIR_ATTR) for t in trials if PAIR_ATTR in t.user_attrs})
        record = {"study": self.review.study_name, "candidates": self.candidates, "choices": [list(c) for c in choices],
                  "ranking": rows, "chosen": rows[0]["trial"] if choices else None, "pairs_shown": shown,
                  "pairs": len(self.pairs), "model": f"bradley-terry (prior {PRIOR:g})"}
        if self.study.user_attrs.get(REVIEW_ATTR) != record:
            self.study.set_user_attr(REVIEW_ATTR, record)
        return record

    @property
    def finished(self) -> bool:
        record = self.study.user_attrs.get(REVIEW_ATTR) or {}
        _, _, active = self._state()
        return record.get("pairs_shown") == len(self.pairs) and not active


def reviewed_best(study: optuna.Study, fallback: FrozenTrial) -> tuple[FrozenTrial, Optional[dict]]:
    """The person's choice when a review has one (and the trial is complete), else `fallback`."""
    record = study.user_attrs.get(REVIEW_ATTR)
    if not record or record.get("chosen") is None:
        return fallback, None
    trials = study.get_trials(deepcopy=False)
    chosen = record["chosen"]
    if chosen >= len(trials) or trials[chosen].state != TrialState.COMPLETE:
        return fallback, None
    return trials[chosen], record


# ---------------------------------------------------------------- serving

class ReviewServer:
    """optuna-dashboard on 127.0.0.1 (a thread) and the review's step loop (another thread)."""

    def __init__(self, review: Review, storage, store, port: int = 8080, interval: float = 0.5):
        from socketserver import ThreadingMixIn
        from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

        import optuna_dashboard

        class Quiet(WSGIRequestHandler):
            def log_message(self, *args):  # the dashboard polls; one line per request is noise
                pass

        class Threading(ThreadingMixIn, WSGIServer):
            daemon_threads = True

        self.review = review
        self.interval = interval
        app = optuna_dashboard.wsgi(storage, artifact_store=store)
        try:
            self.server = make_server("127.0.0.1", port, app, server_class=Threading, handler_class=Quiet)
        except OSError as exc:
            raise UserError(f"cannot serve on 127.0.0.1:{port} ({exc.strerror}); pick another --port") from None
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self.server.serve_forever, daemon=True),
                         threading.Thread(target=self._loop, daemon=True)]
        self.error: Optional[BaseException] = None

    @property
    def port(self) -> int:
        return self.server.server_port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/dashboard/studies/{self.review.study_id}"  # a preferential study's page

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.review.step()
            except Exception as exc:  # noqa: BLE001 - reported by wait()/stop(); the server stays up
                self.error = exc
                log.warning("review: %s", exc)
            self._stop.wait(self.interval)

    def start(self) -> "ReviewServer":
        self.review.step()  # the first pair is on show before the first page load
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> dict:
        self._stop.set()
        self.server.shutdown()
        self.server.server_close()
        for thread in self._threads:
            thread.join(timeout=10)
        return self.review.sync()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def wait_until(condition, timeout: float, interval: float = 0.2) -> bool:
    """Poll `condition()` until true or `timeout` seconds pass (tests and the CLI's --until)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return bool(condition())
