"""What a search costs to find the known optimum, in rendered images; and what storage costs.

The known-optimum problem is bench/look.py: three LoRAs with a look, 12 parameters (per LoRA:
ratio, attn, ffn, adaLN), a judge that reads the look, references rendered at w* from seeds
disjoint from the search's, 4 prompts × 3 seeds = 12 jobs a trial, render batch 2. zsearch's own
config, search space, Evaluator, records, sampler, pruner and per-job pruning run unchanged.

For each sampler × pruning mode × seed: the number of rendered images until the exported best
(the best complete, non-partial trial by training score) is within 0.3 × the baseline's
weight-space distance of w* AND scores ≥ 0.99 of w*'s score on the training jobs. Median over
seeds; a run that never gets there within the image budget counts as budget + 1 (a lower bound).

    python bench/search.py [--budget 1200] [--seeds 5] [--variants default,random,...]

Variants are SAMPLER[+PRUNING][/STARTUP]: sampler auto|gp|random|tpe|cmaes; pruning off|pruned|partial
(default: partial, the shipped behaviour); startup sobol|random[N] (GP start-up design, N trials).
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import tempfile
import time
from pathlib import Path

import optuna
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import look  # noqa: E402

from zsearch.search import pruning

from zsearch.study import records
from zsearch.search.evaluate import Evaluator  # noqa: E402
from zsearch.study.storage import STARTUP, STARTUP_TRIALS, make_pruner, make_sampler  # noqa: E402

DISTANCE_FRACTION = 0.3
SCORE_FRACTION = 0.99
DEFAULT_VARIANTS = ("auto+partial,auto+off,auto+pruned,gp+partial/random,random+partial,random+off,"
                    "tpe+partial,tpe+off,cmaes+partial,cmaes+off")


class Counting:
    """Counts the images an engine renders."""

    def __init__(self, engine):
        self.engine, self.images = engine, 0
        self.prompts, self.device = engine.prompts, engine.device

    def set_recipe(self, recipe):
        self.engine.set_recipe(recipe)

    def render(self, jobs, **kwargs):
        self.images += len(jobs)
        return self.engine.render(jobs, **kwargs)


def parse_variant(text: str) -> tuple[str, str, str, int]:
    """'auto+partial/sobol5' -> ('auto', 'partial', 'sobol', 5)."""
    sampler, _, rest = text.partition("+")
    mode, _, startup = rest.partition("/")
    design = startup.rstrip("0123456789") or STARTUP
    return sampler, mode or pruning.PARTIAL, design, int(startup[len(design):] or STARTUP_TRIALS)


def images_to_target(problem, variant: str, seed: int, budget: int) -> tuple[int, float, float]:
    """(images until the target, best's distance, best's score / w*'s) for one search."""
    sampler, mode, startup, startup_trials = parse_variant(variant)
    config, space = problem.config, problem.space
    config.search.sampler = sampler
    config.search.prune = mode != "off"
    counter = Counting(problem.engine)
    evaluator = Evaluator(config, counter, problem.scorers())
    study = optuna.create_study(direction="maximize", sampler=make_sampler(config, seed, len(space), startup, startup_trials),
                                pruner=make_pruner(config))
    study.enqueue_trial(space.baseline(), user_attrs={records.ROLE: records.BASELINE_ROLE})
    d_target = DISTANCE_FRACTION * problem.baseline_distance
    s_target = SCORE_FRACTION * problem.star_score
    best, d_best = None, float("nan")
    while counter.images < budget:
        trial = study.ask()
        recipe = space.suggest(trial)
        try:
            evaluation = pruning.evaluate_trial(trial, evaluator, recipe, prunable=records.ROLE not in trial.user_attrs,
                                                on_stop=pruning.PRUNED if mode == "pruned" else pruning.PARTIAL)
        except optuna.TrialPruned:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            continue
        value = pruning.stand_in_value(study, evaluation) if evaluation.partial else evaluation.value
        records.write_evaluation(trial, evaluation, value)
        study.tell(trial, value)
        frozen = study.get_trials(deepcopy=False)[trial.number]  # no copy of every trial per trial
        if records.can_be_best(frozen) and (best is None or records.trial_score(frozen) > records.trial_score(best)):
            best, d_best = frozen, problem.d(frozen.params)
            if d_best <= d_target and records.trial_score(best) >= s_target:
                return counter.images, d_best, records.trial_score(best) / problem.star_score
    return budget + 1, d_best, records.trial_score(best) / problem.star_score


def storage_overhead(n: int) -> dict[str, float]:
    """Seconds per trial spent in the storage alone (the objective does nothing)."""
    attrs = {records.JOBS: [0.1] * 12, records.PER_PROMPT: [0.1] * 4, records.STYLE: 0.5, records.PROMPT: 0.3,
             records.SCORE: 0.6, records.SECONDS: {"set": 0.001, "render": 1.0, "score": 0.01}}
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
    parser.add_argument("--budget", type=int, default=1200, help="images per search (100 trials of 12 jobs)")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--variants", default=DEFAULT_VARIANTS,
                        help="comma-separated SAMPLER[+PRUNING][/STARTUP]; the first is compared with the others")
    parser.add_argument("--storage-trials", type=int, default=0, help="also time the storages (0: skip)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    import warnings
    warnings.filterwarnings("ignore")

    with tempfile.TemporaryDirectory() as folder:
        problem = look.build(Path(folder))
        evaluator = Evaluator(problem.config, problem.engine, problem.scorers())
        problem.star_score = evaluator.evaluate(problem.w_star).value
        baseline = evaluator.evaluate(problem.space.recipe(problem.space.baseline())).value
        print(f"{datetime.date.today()}: known optimum w* scores {problem.star_score:.4f}, baseline {baseline:.4f} "
              f"(distance {problem.baseline_distance:.3f}); target: distance <= {DISTANCE_FRACTION} x baseline's "
              f"and score >= {SCORE_FRACTION} x w*'s; {len(problem.space)} parameters, "
              f"{len(evaluator.jobs)} jobs a trial, budget {args.budget} images, {args.seeds} seeds")
        medians = {}
        variants = args.variants.split(",")
        for variant in variants:
            counts, started = [], time.perf_counter()
            for seed in range(args.seeds):
                n, d, ratio = images_to_target(problem, variant, seed, args.budget)
                counts.append(n)
                print(f"  {variant:20s} seed {seed}: {'>' + str(args.budget) if n > args.budget else n:>6} images "
                      f"(best: distance {d / problem.baseline_distance:.2f} x baseline's, score {ratio:.3f} of w*)",
                      flush=True)
            medians[variant] = statistics.median(counts)
            print(f"{variant:22s} median {medians[variant]:.0f} images ({time.perf_counter() - started:.0f} s)", flush=True)
        first = variants[0]
        print(f"median images to target ({args.budget + 1} = not reached): "
              + ", ".join(f"{name} {count:.0f}" for name, count in medians.items()))
        for other in variants[1:]:
            ratio = medians[first] / medians[other]
            bound = f"; {other} never got there: an upper bound" if medians[other] > args.budget else ""
            print(f"  {first} / {other} = {ratio:.2f}{bound}")

    if args.storage_trials:
        overhead = storage_overhead(args.storage_trials)
        base = overhead["in-memory"]
        print("storage overhead per trial: " + ", ".join(
            f"{name} {seconds * 1000:.1f} ms" for name, seconds in overhead.items())
              + f"; sqlite/journal = {overhead['sqlite'] / overhead['journal']:.2f}, "
                f"sqlite/in-memory = {overhead['sqlite'] / base:.1f}")


if __name__ == "__main__":
    main()
