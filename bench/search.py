"""How many trials the search needs, TPE against random search, and what the study storage costs.

The known-optimum problem (as in tests/test_search.py): references rendered at hidden weights w*
inside the searched space of 8 parameters (per LoRA: ratio, attn, ffn, adaLN). For each sampler and seed, the number
of trials until a trial scores >= 0.99 of w*'s score (median over seeds; a run that never gets
there counts as budget + 1). Then the storage overhead per trial: the same trivial trials
(with the user attributes a real trial records) on SQLite and on a journal file.

    python bench/search.py [--budget 80] [--seeds 5] [--fraction 0.99]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import optuna
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from search_helpers import known_optimum_config  # noqa: E402

from zsearch.demo import build_demo  # noqa: E402
from zsearch.search import session as session_module  # noqa: E402
from zsearch.search.evaluate import Evaluator  # noqa: E402
from zsearch.search.space import SearchSpace  # noqa: E402
from zsearch.search.study import make_sampler  # noqa: E402

def known_optimum(folder: Path):
    """The tests' known-optimum problem: references rendered at W_STAR (8 parameters)."""
    assets = build_demo(folder / "demo")
    return known_optimum_config(folder, assets)


def trials_to_reach(config, space, evaluator, sampler_name: str, seed: int, target: float, budget: int):
    config.search.sampler = sampler_name
    study = optuna.create_study(direction="maximize", sampler=make_sampler(config, seed, len(space)))
    study.enqueue_trial(space.baseline())
    for number in range(1, budget + 1):
        trial = study.ask()
        value = evaluator.evaluate(space.suggest(trial)).value
        study.tell(trial, value)
        if value >= target:
            return number, study.best_value
    return budget + 1, study.best_value


def storage_overhead(n: int) -> dict[str, float]:
    """Seconds per trial spent in the storage alone (the objective does nothing)."""
    attrs = {"per_prompt": [0.1] * 6, "style": 0.5, "prompt": 0.3, "score": 0.6,
             "seconds": {"set": 0.001, "render": 1.0, "score": 0.01}}
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        storages = {
            "sqlite": optuna.storages.RDBStorage(f"sqlite:///{folder}/s.db"),
            "journal": optuna.storages.JournalStorage(
                optuna.storages.journal.JournalFileBackend(f"{folder}/j.log")),
            "in-memory": None,
        }
        for name, storage in storages.items():
            study = optuna.create_study(storage=storage, direction="maximize",
                                        sampler=optuna.samplers.RandomSampler(seed=0))

            def objective(trial):
                for k in range(8):
                    trial.suggest_float(f"p{k}", 0.0, 2.0)
                for key, value in attrs.items():
                    trial.set_user_attr(key, value)
                return 0.5

            start = time.perf_counter()
            study.optimize(objective, n_trials=n)
            results[name] = (time.perf_counter() - start) / n
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=int, default=100)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--fraction", type=float, default=0.99)
    parser.add_argument("--storage-trials", type=int, default=200)
    parser.add_argument("--samplers", default="gp,random,tpe,cmaes",
                        help="comma-separated; the first is compared with each other one")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 suits the tiny model)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    with tempfile.TemporaryDirectory() as folder:
        config, w_star = known_optimum(Path(folder))
        engine = session_module.load_engine(config)
        evaluator = Evaluator(config, engine, session_module.load_scorers(config, engine.device))
        space = SearchSpace(config)
        optimum = evaluator.evaluate(w_star).value
        baseline = evaluator.evaluate(space.recipe(space.baseline())).value
        target = args.fraction * optimum
        print(f"known optimum w*: score {optimum:.4f}; baseline {baseline:.4f}; target {target:.4f} "
              f"({args.fraction:.0%}); {len(space)} parameters; budget {args.budget} trials")
        medians = {}
        samplers = args.samplers.split(",")
        for sampler in samplers:
            counts = []
            for seed in range(args.seeds):
                started = time.perf_counter()
                n, best = trials_to_reach(config, space, evaluator, sampler, seed, target, args.budget)
                counts.append(n)
                print(f"  {sampler:6s} seed {seed}: {'>' + str(args.budget) if n > args.budget else n:>4} trials "
                      f"(best {best:.4f} = {best / optimum:.3f} of w*, {time.perf_counter() - started:.0f} s)")
            medians[sampler] = statistics.median(counts)
        print(f"median trials to {args.fraction:.0%} of w* ({args.budget + 1} = not reached): "
              + ", ".join(f"{name} {count}" for name, count in medians.items()))
        first = samplers[0]
        for other in samplers[1:]:
            ratio = medians[first] / medians[other]
            print(f"  {first}/{other} = {ratio:.2f} (target <= 0.33: {'met' if ratio <= 1 / 3 else 'NOT MET'}"
                  f"{', an upper bound: ' + other + ' never got there' if medians[other] > args.budget else ''})")

    overhead = storage_overhead(args.storage_trials)
    base = overhead["in-memory"]
    print("storage overhead per trial: " + ", ".join(
        f"{name} {seconds * 1000:.1f} ms" for name, seconds in overhead.items())
          + f"; sqlite/journal = {overhead['sqlite'] / overhead['journal']:.2f}, "
            f"sqlite/in-memory = {overhead['sqlite'] / base:.1f}")


if __name__ == "__main__":
    main()
