"""The GPU's idle time between two trials' renders in a large study, with and without prefetch.

On configs/demo.yaml's search space, pipeline and judges, a fresh study is filled with --n
completed trials (uniform points of the space, a smooth synthetic score below any real one),
then `zsearch run` runs --trials more with the default sampler (the bounded GP), once with
`search.prefetch: false` (each point is chosen after the previous trial ends) and once with
`search.prefetch: true` (chosen while the previous trial renders, search/prefetch.py). Each
trial's evaluation (set the weights, render, score: the work on the GPU) is timed from its start
to its end; the gap between one evaluation's end and the next one's start is the idle time: the
sampler's wait, the trial's records, the grid upload, tell, the callbacks (best.* exported when a
trial is a new best, in both modes alike). Printed per mode: median / mean / max gap, the median
evaluation, the part of each gap the loop waited for the point (the sampler choosing it in the
loop, or the loop waiting for the thread that chose it ahead) and the ratio of the median gaps.
The modes alternate (--rounds), each on its own study.

    python bench/prefetch.py [--n 2000] [--trials 8] [--rounds 2] [--threads 1]
    python bench/prefetch.py --smoke          # n 30, 3 trials, one round (tests the script)
    python bench/prefetch.py --config configs/style.yaml --n 2000 --trials 6 --rounds 1   # on a GPU

On a CPU the sampler's thread and the render share the cores (and the interpreter's lock), so the
render slows with prefetch (the evaluation column) and a trial, start to start, may take longer:
that is why `search.prefetch` defaults to off on a CPU. On a GPU the render runs on the device.
With ZSEARCH_BENCH_DEMO set, the demo assets there are used instead of building them.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import optuna
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from demo_setup import demo_config  # noqa: E402
from zsearch.demo.build import build_demo  # noqa: E402
from zsearch.search import run as run_module  # noqa: E402
from zsearch.search import session  # noqa: E402
from zsearch.search.evaluate import Evaluator  # noqa: E402
from zsearch.search.prefetch import AskAhead  # noqa: E402
from zsearch.settings.load import load_config  # noqa: E402
from zsearch.study.distinct import DistinctPoints  # noqa: E402


def bench_config(folder: Path, assets_dir: Path, n: int, trials: int, prefetch: bool):
    # no pruning: every trial renders all its jobs, so the evaluations are alike; + 1: the baseline
    return demo_config(folder, assets_dir, {"output": str(folder / "out"), "validation": {"top_k": 0},
                                            "noise": {"repeats": 0}},
                       search={"trials": n + 1 + trials, "prune": False, "prefetch": prefetch}, file_name="bench.yaml")


def own_config(path: Path, folder: Path, n: int, trials: int, prefetch: bool):
    """A user's config (a full-size model on a GPU), run into `folder` with the same settings."""
    config = load_config(path)
    search = config.search.model_copy(update={"trials": n + 1 + trials, "hours": None, "prune": False,
                                              "prefetch": prefetch})
    config = config.model_copy(update={
        "output": folder / "out", "storage": None, "search": search, "start": [],
        "validation": config.validation.model_copy(update={"top_k": 0}),
        "noise": config.noise.model_copy(update={"repeats": 0})})
    session.prepare(config)
    return config


def fill(config, n: int, seed: int = 0) -> None:
    """n completed trials at uniform points, scored below any real trial (a smooth bowl)."""
    opened = session.Session(config)
    study, space = opened.study, opened.space  # opened as `zsearch run` opens it (baseline queued first)
    rng = np.random.default_rng(seed)
    dists = {p.name: optuna.distributions.FloatDistribution(p.low, p.high) for p in space.params}
    trials = []
    for _ in range(n):
        u = rng.random(len(space.params))
        params = {p.name: p.low + x * (p.high - p.low) for p, x in zip(space.params, u)}
        trials.append(optuna.trial.create_trial(params=params, distributions=dists,
                                                value=-1.0 + 0.5 * (1 - float(np.mean((u - 0.3) ** 2)))))
    study.add_trials(trials)


def _timed(owner, name: str, into: list, main_only: bool = False):
    """Wrap owner.name so that each call appends (start, end) to `into`; returns the original."""
    original = getattr(owner, name)

    def timed(*args, **kwargs):
        begun = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            if not main_only or threading.current_thread() is threading.main_thread():
                into.append((begun, time.perf_counter()))

    setattr(owner, name, timed)
    return original


def timed_run(config) -> tuple[list, list]:
    """Run the config; (start, end) of every evaluation, and of every wait for a point in the loop
    (the sampler choosing it there, or the loop waiting for the thread that chose it ahead)."""
    spans, waits = [], []
    originals = [(Evaluator, "evaluate", _timed(Evaluator, "evaluate", spans)),
                 (DistinctPoints, "sample_relative", _timed(DistinctPoints, "sample_relative", waits, True)),
                 (AskAhead, "wait", _timed(AskAhead, "wait", waits))]
    try:
        run_module.run(config, show_progress=False)
    finally:
        for owner, name, original in originals:
            setattr(owner, name, original)
    return spans, waits


def split(spans: list, waits: list) -> tuple[list[float], list[float]]:
    """Each gap between two evaluations, and the part of it spent waiting for the point."""
    gaps, waited = [], []
    for (_, end), (start, _) in zip(spans, spans[1:]):
        gaps.append(start - end)
        waited.append(sum(b - a for a, b in waits if end <= a < start))
    return gaps, waited


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="completed trials in the study before timing")
    parser.add_argument("--trials", type=int, default=8, help="trials run per mode and round")
    parser.add_argument("--rounds", type=int, default=2, help="off/on pairs, alternating")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--config", type=Path, help="a zsearch config to measure (default: the demo's)")
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    if args.smoke:
        args.n, args.trials, args.rounds = 30, 3, 1
    torch.set_num_threads(args.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    gaps: dict[bool, list[float]] = {False: [], True: []}
    evals: dict[bool, list[float]] = {False: [], True: []}
    cycles: dict[bool, list[float]] = {False: [], True: []}  # start to start: what a trial costs the night
    sampler: dict[bool, list[float]] = {False: [], True: []}
    with tempfile.TemporaryDirectory() as tmp:
        if args.config is None:
            assets = build_demo(Path(os.environ.get("ZSEARCH_BENCH_DEMO") or Path(tmp) / "assets"))
        for r in range(args.rounds):
            for prefetch in (False, True):
                folder = Path(tmp) / f"r{r}-{prefetch}"
                config = (bench_config(folder, assets.root, args.n, args.trials, prefetch) if args.config is None
                          else own_config(args.config, folder, args.n, args.trials, prefetch))
                begun = time.perf_counter()
                fill(config, args.n, seed=r)
                filled = time.perf_counter() - begun
                spans, waits = timed_run(config)
                gap, wait = split(spans, waits)
                gaps[prefetch] += gap
                sampler[prefetch] += wait
                evals[prefetch] += [end - start for start, end in spans]
                cycles[prefetch] += [b[0] - a[0] for a, b in zip(spans, spans[1:])]
                print(f"round {r}, prefetch {'on ' if prefetch else 'off'}: {len(spans)} trials after {args.n} "
                      f"(filled in {filled:.0f} s); gaps {' '.join(f'{g:.3f}' for g in gap)} s, of which "
                      f"waiting for the point {' '.join(f'{w:.3f}' for w in wait)} s", flush=True)
    print(f"\n{time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, "
          f"n = {args.n}, {args.trials} trials x {args.rounds} rounds per mode" if hasattr(os, "getloadavg") else "")
    print("| prefetch | gaps | median gap s | mean | max | of which waiting for the point: median | max "
          "| median evaluation s | median trial, start to start s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for prefetch in (False, True):
        g, w = gaps[prefetch], sampler[prefetch]
        print(f"| {'on' if prefetch else 'off'} | {len(g)} | {statistics.median(g):.3f} | {statistics.fmean(g):.3f} "
              f"| {max(g):.3f} | {statistics.median(w):.3f} | {max(w):.3f} | {statistics.median(evals[prefetch]):.3f} "
              f"| {statistics.median(cycles[prefetch]):.3f} |")
    print(f"median gap, off / on: {statistics.median(gaps[False]) / max(1e-9, statistics.median(gaps[True])):.1f}x")


if __name__ == "__main__":
    main()
