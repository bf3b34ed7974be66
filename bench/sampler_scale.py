"""What a sampler costs per trial as a study grows: seconds (ask + suggests + tell) and memory.

Each sampler is built as a run builds it (study/opening.py: `DistinctPoints` around the sampler
`make_sampler` returns) on a SQLite file opened by `make_storage`, as users run. For each
sampler, parameter count d and study size n: the study is filled with n completed trials (uniform
points, values of a smooth function with a known optimum; one file per d filled up to each size
and copied), then a fresh process opens it, runs one trial untimed (a worker's first read of a
large study, printed as `first s`: once per worker), and times `--trials` more trials, each ask +
d suggest_float + tell. It prints the median and mean seconds a trial (wall, and CPU: on a machine
shared with other jobs the wall time mostly waits for a core; an idle box's wall time is close to
the CPU time, the GP using one thread), the median seconds of those spent in the distinct-points
check (DistinctPoints minus the sampler it wraps) and their share, and the process's peak RSS
with its rise above the opened study's RSS (at most what the sampler itself held). One process
per point, so one point's peak never hides another's.

    python bench/sampler_scale.py                     # n 100..4000, d 15/30/60, default and old check
    python bench/sampler_scale.py --samplers default,default-old-check,gp-old,tpe,random
    python bench/sampler_scale.py --smoke             # a few small points in this process, about a minute

Without a prefetch the GPU waits for the whole ask + suggests + tell between two renders, so the
row at 2,000 trials is also the GPU's idle time between two trials at that size.

Samplers: `default` (what `sampler: auto` builds), `default-old-check` (the same with the
distinct-points check as it was until 2026-12-05: every trial of the study reread and its point
hashed on every ask), `gp-old` (Optuna's GPSampler on every trial, the old default: its cost
explodes, so it is capped at --old-cap trials), `tpe` (multivariate, group, as `sampler: tpe`),
`random`. The last lines divide the old check's seconds by the new one's at each d's largest n,
measured in this run.

`--pending` keeps one trial asked ahead (the prefetch a worker would do while its GPU renders):
every timed ask sees a running trial, its point known, as pending.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLERS = ("default", "default-old-check", "gp-old", "tpe", "random")
STUDY = "scale"


def value(x) -> float:
    """A smooth function of the unit cube with its optimum at 0.3 in every coordinate."""
    return -sum((v - 0.3) ** 2 for v in x) / len(x)


def names_of(d: int) -> list[str]:
    return [f"p{i:02d}" for i in range(d)]


def old_taken_keys(storage, study_id: int, number: int, names) -> set[str]:
    """The distinct-points check as it was until 2026-12-05: every trial read, every point hashed."""
    from zsearch.study.distinct import trial_keys
    keys = set()
    for other in storage.get_all_trials(study_id, deepcopy=False):
        if other.number != number:
            keys |= trial_keys(other, names)
    return keys


def build_sampler(name: str, d: int, storage, seed: int = 0):
    """The sampler as study/opening.py builds it: DistinctPoints around make_sampler's."""
    import optuna
    from types import SimpleNamespace
    from zsearch.study.distinct import DistinctPoints
    from zsearch.study.samplers import SobolStartup, make_sampler

    class OldCheck(DistinctPoints):
        def taken(self, study, study_id, number, key, names) -> bool:
            return key in old_taken_keys(self.storage, study_id, number, names)

    if name == "gp-old":
        inner = optuna.samplers.GPSampler(seed=seed, independent_sampler=SobolStartup(d, seed=seed))
    else:
        sampler = {"default": "auto", "default-old-check": "auto"}.get(name, name)
        inner = make_sampler(SimpleNamespace(search=SimpleNamespace(sampler=sampler)), seed, d)
    return (OldCheck if name == "default-old-check" else DistinctPoints)(inner, storage, seed=seed)


def open_storage(path: Path):
    """The storage a run opens on a SQLite file (study/storage.py: heartbeat, one writer at a time)."""
    from types import SimpleNamespace
    from zsearch.study.storage import make_storage
    return make_storage(SimpleNamespace(storage_url=f"sqlite:///{path}"))


def fill_studies(folder: Path, d: int, sizes: list[int]) -> dict[int, Path]:
    """One SQLite study per size, n completed trials each: one file filled up, copied at each size."""
    import numpy as np
    import optuna
    from optuna.distributions import FloatDistribution
    from sqlalchemy import event
    from zsearch.study.distinct import POINT, point_key
    path = folder / f"fill-{d}.db"
    storage = optuna.storages.RDBStorage(f"sqlite:///{path}")
    event.listen(storage.engine, "connect", lambda c, _: c.execute("PRAGMA synchronous=OFF"))  # a fill, not a run
    study = optuna.create_study(study_name=STUDY, storage=storage, direction="maximize")
    names, rng = names_of(d), np.random.default_rng(d)
    dists = {p: FloatDistribution(0.0, 2.0) for p in names}
    copies, done = {}, 0
    for n in sorted(sizes):
        trials = []
        for x in rng.random((n - done, d)) * 2.0:
            params = dict(zip(names, map(float, x)))  # published as a run's trials publish theirs
            trials.append(optuna.trial.create_trial(params=params, distributions=dists, value=value(x / 2.0),
                                                    system_attrs={POINT: point_key(params, names)}))
        study.add_trials(trials)
        done = n
        copies[n] = folder / f"study-{d}-{n}.db"
        shutil.copyfile(path, copies[n])
    storage.remove_session()
    return copies


def measure(name: str, d: int, n: int, trials: int, pending: bool, path: str, where: str = "sqlite") -> dict:
    """One point, in this process, on a copy of the filled study at `path` (or in memory)."""
    import resource
    import numpy as np
    import optuna
    import torch
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    import warnings
    warnings.filterwarnings("ignore")
    names = names_of(d)
    work = Path(path).with_name(f"run-{name}-{d}-{n}.db")
    shutil.copyfile(path, work)
    storage = open_storage(work)
    if where == "memory":  # the sampler alone, without the database's commits
        memory = optuna.storages.InMemoryStorage()
        optuna.copy_study(from_study_name=STUDY, from_storage=storage, to_storage=memory)
        storage = memory
    sampler = build_sampler(name, d, storage)
    spent, read = _time_check(sampler)
    study = optuna.load_study(study_name=STUDY, storage=storage, sampler=sampler)

    def asked():
        trial = study.ask()
        return trial, np.array([trial.suggest_float(p, 0.0, 2.0) for p in names])

    start = time.perf_counter()
    trial, x = asked()  # a worker's first trial reads the whole study once
    study.tell(trial, value(x / 2.0))
    first = time.perf_counter() - start
    base = _rss_mb()
    ahead = asked() if pending else None  # a trial asked ahead: running, its point known
    seconds, cpu, check, reads = [], [], [], []
    for _ in range(trials):
        spent.clear()
        read.clear()
        start, start_cpu = time.perf_counter(), time.process_time()
        trial, x = asked()
        if ahead is not None:  # the one asked ahead finishes; this one now waits for the GPU
            (trial, x), ahead = ahead, (trial, x)
        study.tell(trial, value(x / 2.0))
        seconds.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
        check.append(sum(spent))
        reads.append(sum(read))
    peak = _peak_mb(resource)
    work.unlink(missing_ok=True)
    return {"sampler": name, "d": d, "n": n, "median_s": statistics.median(seconds),
            "mean_s": statistics.fmean(seconds), "cpu_s": statistics.median(cpu), "max_s": max(seconds),
            "check_s": statistics.median(check), "read_s": statistics.median(reads), "first_s": first, "peak_mb": peak,
            "rise_mb": max(0.0, peak - base)}  # an upper bound of what the timed trials added


def _time_check(sampler) -> tuple[list[float], list[float]]:
    """Seconds each ask spends in DistinctPoints itself (its sample_relative less the wrapped
    one's: publishing the point, then reading the others'), and in the read alone."""
    spent: list[float] = []
    read: list[float] = []

    def timed(function, into: list[float], sign: float = 1.0):
        def wrapper(*args):
            start = time.perf_counter()
            try:
                return function(*args)
            finally:
                into.append(sign * (time.perf_counter() - start))
        return wrapper

    # the outer call's time, less the wrapped sampler's inside it
    sampler.sample_relative, sampler.inner.sample_relative, sampler.taken = (
        timed(sampler.sample_relative, spent), timed(sampler.inner.sample_relative, spent, -1.0),
        timed(sampler.taken, read))
    return spent, read


def _rss_mb() -> float:
    try:
        import psutil
        return psutil.Process().memory_info().rss / 2**20
    except ImportError:
        return 0.0


def _peak_mb(resource) -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB elsewhere


def run_point(name: str, d: int, n: int, trials: int, pending: bool, path: Path, where: str, timeout: float,
              fresh: bool) -> dict | None:
    if not fresh:
        return measure(name, d, n, trials, pending, str(path), where)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    command = [sys.executable, __file__, "--point", json.dumps([name, d, n, trials, pending, str(path), where])]
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
    parser.add_argument("--samplers", default="default,default-old-check,random")
    parser.add_argument("--storage", choices=("sqlite", "memory"), default="sqlite",
                        help="memory: the filled study copied into Optuna's in-memory storage (no commits)")
    parser.add_argument("--trials", type=int, default=5, help="timed trials a point")
    parser.add_argument("--old-cap", type=int, default=1000, help="largest study the old GP is timed on")
    parser.add_argument("--pending", action="store_true", help="one trial asked ahead is running while timing")
    parser.add_argument("--timeout", type=float, default=900, help="seconds a point may take")
    parser.add_argument("--smoke", action="store_true", help="a few small points (about a minute)")
    parser.add_argument("--point", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.point:
        print(json.dumps(measure(*json.loads(args.point))))
        return
    if args.smoke:
        args.sizes, args.params, args.trials, args.old_cap = "100,300", "15", 2, 100
        args.samplers = "default,default-old-check,gp-old,random"  # in this process: its peaks add up, its timings stand
    print(f"{datetime.date.today()}, {platform.machine()}, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else "", f"storage: {args.storage}", flush=True)
    print("| sampler | params | trials in study | median s/trial | mean | max | median CPU s/trial "
          "| distinct check s | share | its read s | first s | peak RSS MB | rise MB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|", flush=True)
    sizes = sorted(map(int, args.sizes.split(",")))
    results: dict[tuple[str, int, int], dict] = {}
    with tempfile.TemporaryDirectory(prefix="sampler-scale-") as folder:
        for d in map(int, args.params.split(",")):
            studies = fill_studies(Path(folder), d, sizes)
            for name in args.samplers.split(","):
                for n in sizes:
                    if name == "gp-old" and n > args.old_cap:
                        print(f"| {name} | {d} | {n} | not run (capped at {args.old_cap}: seconds to minutes "
                              f"a trial) |", flush=True)
                        continue
                    r = run_point(name, d, n, args.trials, args.pending, studies[n], args.storage, args.timeout,
                                  fresh=not args.smoke)
                    if r is None:
                        print(f"| {name} | {d} | {n} | failed or over {args.timeout:.0f} s |", flush=True)
                        continue
                    results[name, d, n] = r
                    print(f"| {name} | {d} | {n} | {r['median_s']:.3f} | {r['mean_s']:.3f} | {r['max_s']:.3f} "
                          f"| {r['cpu_s']:.3f} | {r['check_s']:.4f} | {r['check_s'] / r['median_s']:.0%} "
                          f"| {r['read_s']:.4f} | {r['first_s']:.2f} | {r['peak_mb']:.0f} | {r['rise_mb']:.0f} |", flush=True)
    _summary(results, list(map(int, args.params.split(","))), sizes[-1])


def _summary(results: dict, params: list[int], n: int) -> None:
    """Ratios of this run at the largest size: the old check over the new, and the default's
    seconds over random's (the storage's own floor: what any sampler pays for its commits)."""
    for d in params:
        old, new, floor = (results.get((name, d, n)) for name in ("default-old-check", "default", "random"))
        if old and new:
            print(f"distinct check at {n} trials, {d} params: old {old['check_s']:.4f} s / new "
                  f"{new['check_s']:.4f} s = {old['check_s'] / new['check_s']:.1f}x; its read: old "
                  f"{old['read_s']:.4f} s / new {new['read_s']:.4f} s = {old['read_s'] / new['read_s']:.0f}x; "
                  f"s/trial old {old['median_s']:.3f} / new {new['median_s']:.3f} = "
                  f"{old['median_s'] / new['median_s']:.1f}x")
        if new and floor:
            print(f"default at {n} trials, {d} params: {new['median_s']:.3f} s/trial, of which random's "
                  f"{floor['median_s']:.3f} s (storage and suggests); the sampler's own {new['median_s'] - floor['median_s']:.3f} s")


if __name__ == "__main__":
    main()
