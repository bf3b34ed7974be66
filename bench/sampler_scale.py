"""What a sampler costs per trial as a study grows: seconds (ask + suggests + tell) and memory.

For each sampler, parameter count d and study size n: a fresh process fills an in-memory study
with n completed trials (uniform points, values of a smooth function with a known optimum), then
times `--trials` more trials, each ask + d suggest_float + tell, and prints the median and mean
seconds a trial (wall, and CPU: on a machine shared with other jobs the wall time mostly
waits for a core; an idle box's wall time is close to the CPU time, the GP using one thread)
and the process's peak RSS, with its rise above the filled study's RSS (at most
what the sampler itself held: the fill's own peak is counted in it too). One process per point, so one point's peak never hides another's.

    python bench/sampler_scale.py                     # n 100..4000, d 15/30/60, four samplers
    python bench/sampler_scale.py --smoke             # a few small points in this process, < 30 s

Without a prefetch the GPU waits for the whole ask + suggests + tell between two renders, so the
row at 2,000 trials is also the GPU's idle time between two trials at that size.

Samplers: `default` (what `sampler: auto` builds), `gp-old` (Optuna's GPSampler on every trial,
the old default: its cost explodes, so it is capped at --old-cap trials), `tpe` (multivariate,
group, as `sampler: tpe`), `random`.

`--pending` keeps one trial asked ahead (the prefetch a worker would do while its GPU renders):
every timed ask sees a running trial, its point known, as pending.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLERS = ("default", "gp-old", "tpe", "random")


def value(x) -> float:
    """A smooth function of the unit cube with its optimum at 0.3 in every coordinate."""
    return -sum((v - 0.3) ** 2 for v in x) / len(x)


def build_sampler(name: str, d: int, seed: int = 0):
    import optuna
    from types import SimpleNamespace
    from zsearch.study.samplers import SobolStartup, make_sampler
    if name == "gp-old":
        return optuna.samplers.GPSampler(seed=seed, independent_sampler=SobolStartup(d, seed=seed))
    config = SimpleNamespace(search=SimpleNamespace(sampler={"default": "auto"}.get(name, name)))
    return make_sampler(config, seed, d)


def measure(name: str, d: int, n: int, trials: int, pending: bool) -> dict:
    """One point, in this process."""
    import resource
    import numpy as np
    import optuna
    import torch
    from optuna.distributions import FloatDistribution
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    import warnings
    warnings.filterwarnings("ignore")
    rng = np.random.default_rng(n + d)
    names = [f"p{i:02d}" for i in range(d)]
    dists = {p: FloatDistribution(0.0, 2.0) for p in names}
    study = optuna.create_study(direction="maximize", sampler=build_sampler(name, d))
    points = rng.random((n, d)) * 2.0
    study.add_trials([optuna.trial.create_trial(params=dict(zip(names, map(float, x))), distributions=dists,
                                                value=value(x / 2.0)) for x in points])
    base = _rss_mb()
    def asked():
        trial = study.ask()
        return trial, np.array([trial.suggest_float(p, 0.0, 2.0) for p in names])

    ahead = asked() if pending else None  # a trial asked ahead: running, its point known
    seconds, cpu = [], []
    for _ in range(trials):
        start, start_cpu = time.perf_counter(), time.process_time()
        trial, x = asked()
        if ahead is not None:  # the one asked ahead finishes; this one now waits for the GPU
            (trial, x), ahead = ahead, (trial, x)
        study.tell(trial, value(x / 2.0))
        seconds.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    peak = _peak_mb(resource)
    return {"sampler": name, "d": d, "n": n, "median_s": statistics.median(seconds),
            "mean_s": statistics.fmean(seconds), "cpu_s": statistics.median(cpu), "max_s": max(seconds), "peak_mb": peak,
            "rise_mb": max(0.0, peak - base)}  # an upper bound of what the timed trials added


def _rss_mb() -> float:
    try:
        import psutil
        return psutil.Process().memory_info().rss / 2**20
    except ImportError:
        return 0.0


def _peak_mb(resource) -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB elsewhere


def run_point(name: str, d: int, n: int, trials: int, pending: bool, timeout: float, fresh: bool) -> dict | None:
    if not fresh:
        return measure(name, d, n, trials, pending)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    command = [sys.executable, __file__, "--point", json.dumps([name, d, n, trials, pending])]
    try:
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None
    if done.returncode != 0:
        print(done.stderr[-2000:], file=sys.stderr)
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,500,1000,2000,4000")
    parser.add_argument("--params", default="15,30,60")
    parser.add_argument("--samplers", default=",".join(SAMPLERS))
    parser.add_argument("--trials", type=int, default=5, help="timed trials a point")
    parser.add_argument("--old-cap", type=int, default=1000, help="largest study the old GP is timed on")
    parser.add_argument("--pending", action="store_true", help="one trial asked ahead is running while timing")
    parser.add_argument("--timeout", type=float, default=900, help="seconds a point may take")
    parser.add_argument("--smoke", action="store_true", help="a few small points (< 30 s)")
    parser.add_argument("--point", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.point:
        print(json.dumps(measure(*json.loads(args.point))))
        return
    if args.smoke:
        args.sizes, args.params, args.trials, args.old_cap = "100,300", "15", 2, 100
        args.samplers = "default,gp-old,random"  # in this process: its peaks add up, its timings stand
    print(f"{datetime.date.today()}, {platform.machine()}, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else "", flush=True)
    print("| sampler | params | trials in study | median s/trial | mean | max | median CPU s/trial | peak RSS MB "
          "| rise MB |")
    print("|---|---|---|---|---|---|---|---|---|", flush=True)
    for d in map(int, args.params.split(",")):
        for name in args.samplers.split(","):
            for n in map(int, args.sizes.split(",")):
                if name == "gp-old" and n > args.old_cap:
                    print(f"| {name} | {d} | {n} | not run (capped at {args.old_cap}: seconds to minutes a trial) |",
                          flush=True)
                    continue
                r = run_point(name, d, n, args.trials, args.pending, args.timeout, fresh=not args.smoke)
                if r is None:
                    print(f"| {name} | {d} | {n} | failed or over {args.timeout:.0f} s |", flush=True)
                    continue
                print(f"| {name} | {d} | {n} | {r['median_s']:.3f} | {r['mean_s']:.3f} | {r['max_s']:.3f} "
                      f"| {r['cpu_s']:.3f} | {r['peak_mb']:.0f} | {r['rise_mb']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
