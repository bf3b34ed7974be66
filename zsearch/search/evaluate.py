"""One evaluation of a weighting: set it, render every (prompt, seed) job, score the renders.

Scores are reported job by job (prompt × seed), in an order shuffled per trial, so a pruner's
paired test gets one sample per job and sees every prompt early; `stop()` is asked after each
render batch and ends the evaluation there (the jobs not run are NaN).
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch

from zsearch.settings.schema import Config
from zsearch.study.stats import nanmean
from zsearch.engine.render import Job
from zsearch.lora.recipe import Recipe


class TrialFailed(Exception):
    """The trial cannot produce a score (out of memory, NaN render); the study goes on."""


@dataclass
class Evaluation:
    style: list[float]  # per prompt, mean over the seeds it ran
    prompt: list[float]
    combined: list[float]  # per prompt, weighted by the objective
    identity: Optional[list[float]]  # per prompt, when an identity scorer is configured
    images: torch.Tensor  # (jobs, 3, H, W) in job order: prompt-major, then seed; black = not rendered
    seconds: dict[str, float] = field(default_factory=dict)
    jobs: list[float] = field(default_factory=list)  # combined score per job, job order; NaN = not run
    terms: dict[str, list[float]] = field(default_factory=dict)  # every judge's term, per prompt (ran jobs)

    def mean_term(self, name: str) -> float:
        return nanmean(self.terms[name])

    @property
    def mean_style(self) -> float:
        return nanmean(self.style)

    @property
    def mean_prompt(self) -> float:
        return nanmean(self.prompt)

    @property
    def value(self) -> float:
        """The mean combined score over the jobs that ran (all of them unless stopped early)."""
        return nanmean(self.jobs) if self.jobs else nanmean(self.combined)

    @property
    def jobs_run(self) -> int:
        return sum(not math.isnan(x) for x in self.jobs)

    @property
    def partial(self) -> bool:
        return self.jobs_run < len(self.jobs)


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
        self.panel = None
        if scorers is not None:
            from zsearch.judges import build_panel
            self.panel = scorers.panel or build_panel(scorers.clip, scorers.identity)
        self.prompts = prompts if prompts is not None else config.prompt_list
        self.jobs = make_jobs(self.prompts, seeds if seeds is not None else config.seeds, engine.prompts)
        self._local = {prompt: i for i, prompt in enumerate(self.prompts)}  # prompt -> row of the scores

    def order(self, order_seed: Optional[int]) -> list[int]:
        """The job indices in evaluation order: as listed, or shuffled by `order_seed` (a trial number)."""
        order = list(range(len(self.jobs)))
        if order_seed is not None:
            random.Random(order_seed).shuffle(order)
        return order

    def render(self, recipe: Recipe) -> torch.Tensor:
        """Every job rendered with `recipe`, unscored, in the canonical order: (N, 3, H, W) on the CPU."""
        self.engine.set_recipe(recipe)
        r = self.config.render
        return torch.cat([self.engine.render(self.jobs[at:at + r.batch], steps=r.steps, width=r.width,
                                             height=r.height, batch=r.batch, guidance=r.guidance)
                          for at in range(0, len(self.jobs), r.batch)]).float().cpu()

    def evaluate(self, recipe: Recipe, report: Optional[Callable[[int, float], None]] = None,
                 stop: Optional[Callable[[], bool]] = None, order_seed: Optional[int] = None) -> Evaluation:
        """Render and score every job of `recipe`.

        `report(job_index, combined_score)` is called as each job is scored (job_index in the
        canonical order, so the same step means the same job in every trial); it may raise.
        `stop()`, asked after each render batch, ends the evaluation early when it returns True.
        """
        render = self.config.render
        term_weights = self.config.term_weights()
        seconds = {"set": 0.0, "render": 0.0, "score": 0.0}
        start = time.perf_counter()
        self.engine.set_recipe(recipe)
        seconds["set"] = time.perf_counter() - start

        n_jobs = len(self.jobs)
        terms = {name: [math.nan] * n_jobs for name in self.panel.terms}  # every judge's term, per job
        combined = [math.nan] * n_jobs
        images: list[Optional[torch.Tensor]] = [None] * n_jobs
        order = self.order(order_seed)
        for at in range(0, n_jobs, render.batch):
            indices = order[at:at + render.batch]
            chunk = [self.jobs[i] for i in indices]
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
            for k, i in enumerate(indices):
                images[i] = batch[k].detach().float().cpu()
                for name in terms:
                    terms[name][i] = scores[name][k]
                # the objective: the weighted sum of the judges' terms
                combined[i] = sum(term_weights[name] * terms[name][i] for name in terms)
                if report is not None:
                    report(i, combined[i])
            if stop is not None and at + render.batch < n_jobs and stop():
                break
        blank = torch.zeros_like(next(im for im in images if im is not None))
        per_prompt = {name: self._per_prompt(values) for name, values in terms.items()}
        no_term = [0.0] * len(self.prompts)
        return Evaluation(style=per_prompt.get("style", no_term), prompt=per_prompt.get("prompt", no_term),
                          combined=self._per_prompt(combined), identity=per_prompt.get("identity"),
                          images=torch.stack([blank if im is None else im for im in images]),
                          seconds=seconds, jobs=combined, terms=per_prompt)

    def _per_prompt(self, per_job: list[float]) -> list[float]:
        rows: list[list[float]] = [[] for _ in self.prompts]
        for job, value in zip(self.jobs, per_job):
            rows[self._local[job.prompt]].append(value)
        return [nanmean(row) for row in rows]
