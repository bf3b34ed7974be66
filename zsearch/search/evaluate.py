"""One evaluation of a weighting: set it, render every (prompt, seed) job, score the renders.

Scores are reported prompt by prompt, so a pruner can stop a hopeless trial early.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch

from ..config import Config
from ..engine.render import Job
from ..recipe import Recipe


class TrialFailed(Exception):
    """The trial cannot produce a score (out of memory, NaN render); the study goes on."""


@dataclass
class Evaluation:
    style: list[float]  # per prompt, mean over seeds
    prompt: list[float]
    combined: list[float]  # per prompt, weighted by the objective
    identity: Optional[list[float]]  # per prompt, when an identity scorer is configured
    images: torch.Tensor  # (jobs, 3, H, W) in job order: prompt-major, then seed
    seconds: dict[str, float] = field(default_factory=dict)
    terms: dict[str, list[float]] = field(default_factory=dict)  # every judge's term, per prompt

    def mean_term(self, name: str) -> float:
        return sum(self.terms[name]) / len(self.terms[name])

    @property
    def mean_style(self) -> float:
        return sum(self.style) / len(self.style)

    @property
    def mean_prompt(self) -> float:
        return sum(self.prompt) / len(self.prompt)

    @property
    def value(self) -> float:
        return sum(self.combined) / len(self.combined)


@dataclass
class Scorers:
    """The judges of a render: the CLIP scorer (style, prompt), optionally DINOv2 (identity), and
    the panel of every judge (these two and the config's `judges:`) that the evaluation asks."""

    clip: Any
    identity: Any = None
    panel: Any = None  # engine.judges.Panel; None: built from clip and identity


def make_jobs(prompts: list[str], seeds: list[int], engine_prompts: list[str]) -> list[Job]:
    """Jobs in prompt-major order; `prompt_index` points into the engine's prompt embeddings."""
    return [Job(engine_prompts.index(prompt), prompt, seed) for prompt in prompts for seed in seeds]


class Evaluator:
    """Renders and scores a config's jobs for any recipe, on one engine and scorer."""

    def __init__(self, config: Config, engine, scorers: Optional[Scorers], prompts: Optional[list[str]] = None,
                 seeds: Optional[list[int]] = None):
        self.config = config
        self.engine = engine
        self.scorer = scorers.clip if scorers else None
        self.identity = scorers.identity if scorers else None
        self.panel = None
        if scorers is not None:
            from ..engine.judges import build_panel
            self.panel = scorers.panel or build_panel(scorers.clip, scorers.identity)
        self.prompts = prompts if prompts is not None else config.prompt_list
        self.jobs = make_jobs(self.prompts, seeds if seeds is not None else config.seeds, engine.prompts)
        self._local = {prompt: i for i, prompt in enumerate(self.prompts)}  # prompt -> row of the scores

    def evaluate(self, recipe: Recipe, report: Optional[Callable[[int, float], None]] = None) -> Evaluation:
        """`report(prompt_index, combined_score)` is called as each prompt completes; it may raise."""
        render = self.config.render
        seconds = {"set": 0.0, "render": 0.0, "score": 0.0}
        start = time.perf_counter()
        self.engine.set_recipe(recipe)
        seconds["set"] = time.perf_counter() - start

        n_prompts = len(self.prompts)
        term_weights = self.config.term_weights()
        terms: dict[str, list[list[float]]] = {name: [[] for _ in range(n_prompts)] for name in self.panel.terms}
        counts = [0] * n_prompts
        per_prompt_jobs = len(self.jobs) // n_prompts
        combined: list[float] = [float("nan")] * n_prompts
        images = []
        for at in range(0, len(self.jobs), render.batch):
            chunk = self.jobs[at:at + render.batch]
            start = time.perf_counter()
            try:
                batch = self.engine.render(chunk, steps=render.steps, width=render.width,
                                           height=render.height, batch=render.batch, guidance=render.guidance)
            except torch.OutOfMemoryError:
                raise TrialFailed("CUDA out of memory even at batch size 1; lower render.width/height") from None
            seconds["render"] += time.perf_counter() - start
            if not torch.isfinite(batch).all():
                raise TrialFailed("the render contains NaN or Inf values")
            start = time.perf_counter()
            scores = {name: values.tolist() for name, values in
                      self.panel.score(batch, [job.prompt for job in chunk]).items()}
            seconds["score"] += time.perf_counter() - start
            images.append(batch.detach().float().cpu())
            for k, job in enumerate(chunk):
                i = self._local[job.prompt]
                for name in terms:
                    terms[name][i].append(scores[name][k])
                counts[i] += 1
                if counts[i] == per_prompt_jobs:  # the weighted sum of the judges' terms
                    combined[i] = sum(term_weights.get(name, 0.0) * _mean(terms[name][i]) for name in terms)
                    if report is not None:
                        report(i, combined[i])
        means = {name: [_mean(v) for v in rows] for name, rows in terms.items()}
        return Evaluation(style=means.get("style", [0.0] * n_prompts), prompt=means.get("prompt", [0.0] * n_prompts),
                          combined=combined, images=torch.cat(images), seconds=seconds,
                          identity=means.get("identity"), terms=means)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)
