"""What a search costs to find the known optimum, in rendered images; and what storage costs.

The known-optimum problem is bench/look.py: three LoRAs with a look, 12 parameters (per LoRA:
ratio, attn, ffn, adaLN), a judge that reads the look, references rendered at w* from seeds
disjoint from the search's, 4 prompts × 3 seeds = 12 jobs a trial, render batch 2. zsearch's own
config, search space, Evaluator, records, sampler, pruner and per-job pruning run unchanged.

For each sampler × pruning mode × seed: the number of rendered images until the exported best
(the best complete, non-partial trial by training score) is within 0.3 × the baseline's
weight-space distance of w* AND scores ≥ 0.99 of w*'s score on the training jobs. Median over
seeds; a run that never gets there within the image budget counts as budget + 1 (a lower bound).

The second problem (`--problem pair`, `build_pair`) differs in every count the first fixes: two
LoRAs (rank 4) read back from a kohya file with alpha 2 and a diffusers file with alpha 8, 14
parameters (per LoRA: ratio, attn, ffn, adaLN and three layer bands), a look of 48 numbers, 4
prompts x 4 seeds = 16 jobs a trial, its own probes, w* and 24 reference seeds. Why 48: the 14
parameters act as 12 independent ones (ratio x components is one product), and a random read-out
of 16 numbers, as in the first problem, left a direction along which a whole baseline's distance in
weight space moved the look by 0.09 (the first problem's weakest: 0.51): w* was not identifiable
(the training score peaked 0.21 x the baseline's distance away, at 1.043 x w*'s, and points 4 x
the baseline's distance away scored 0.99 x w*'s). With 48 the weakest moves it by 1.49 and the
training score's own peak lies 0.09 x away at 1.010 x w*'s (first problem: 0.14 x, 1.011 x).

    python bench/search.py [--problem look,pair] [--budget 1200] [--seeds 5] [--variants default,random,...]
    python bench/search.py --problem pair --budget 8000 --variants random+partial   # random's count on pair
    python bench/search.py --smoke      # one seed, 60 images, both problems: tests the script (< 30 s idle)

Variants are SAMPLER[+PRUNING][/STARTUP]: sampler auto|gp|gpold|random|tpe|cmaes (gpold: Optuna's
GPSampler on every trial, the default before the bounded one); pruning off|pruned|partial
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
from zsearch.study.samplers import STARTUP, STARTUP_TRIALS, SobolStartup, make_sampler  # noqa: E402
from zsearch.study.opening import make_pruner  # noqa: E402

PAIR_SPACE = {"ratio": [0.0, 1.5], "components": [0.25, 1.75], "layers": "bands", "tie": ["attn", "ffn"]}
PAIR_FORMATS = (("kohya", 2.0), ("diffusers", 8.0))  # (format, alpha) of each LoRA, rank 4
PAIR_STAR = [
    {"ratio": 1.1, "components": {"attn": 0.6, "ffn": 1.4, "adaLN": 1.3},
     "layers": {"0-9": 1.4, "10-19": 0.9, "20-29": 0.5}},
    {"ratio": 0.5, "components": {"attn": 1.5, "ffn": 0.6, "adaLN": 0.7},
     "layers": {"0-9": 0.6, "10-19": 1.2, "20-29": 1.6}},
]
PAIR_LOOK = 48  # look numbers: enough to tell 12 effective parameters apart (docstring)
PAIR_PROMPT_WEIGHT = 0.3
PAIR_GAIN = 1.2  # w*'s mean |look| before tanh, as in bench/look.py
PAIR_INSTANCE = 1  # which random LoRAs and probes
PAIR_SEEDS = [1, 2, 3, 4]
PAIR_REFERENCE_SEEDS = list(range(700, 724))
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
    config.search.sampler = "gp" if sampler == "gpold" else sampler
    config.search.prune = mode != "off"
    counter = Counting(problem.engine)
    evaluator = Evaluator(config, counter, problem.scorers())
    if sampler == "gpold":  # the old default: Optuna's GPSampler on every trial
        chosen = optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup_trials,
                                           independent_sampler=SobolStartup(len(space), seed=seed))
    else:
        chosen = make_sampler(config, seed, len(space), startup, startup_trials)
    study = optuna.create_study(direction="maximize", sampler=chosen, pruner=make_pruner(config))
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


def build_pair(folder: Path, seed: int | None = None, batch: int = 2) -> look.Problem:
    """The second known-optimum problem: two LoRAs in kohya and diffusers files, 14 parameters."""
    seed = PAIR_INSTANCE if seed is None else seed
    import yaml
    from zsearch.engine.render import Job
    from zsearch.lora.blocks import N_LAYERS, all_modules
    from zsearch.lora.read import load_lora
    from zsearch.lora.recipe import LoraWeights, Recipe
    from zsearch.lora.synth import make_random_lora, save_in_format
    from zsearch.settings.load import load_config
    from zsearch.study.space import SearchSpace
    folder.mkdir(parents=True, exist_ok=True)
    loras, paths = [], []
    for i, (fmt, alpha) in enumerate(PAIR_FORMATS):
        path = save_in_format(make_random_lora(look.DIM, 4, all_modules(N_LAYERS), seed=300 + 31 * seed + i,
                                               alpha=alpha), folder / f"pair_{fmt}.safetensors", fmt)
        lora = load_lora(path)  # the engine sees what zsearch's reader makes of the file, alpha included
        lora.module_objects = look._module_objects(lora)
        loras.append(lora)
        paths.append(path)
    (folder / "refs").mkdir(exist_ok=True)
    data = {"name": "pair", "model": "look-bench", "references": str(folder / "refs"), "prompts": look.PROMPTS,
            "seeds": PAIR_SEEDS, "loras": [{"path": str(p), "ratio": 1.0, "search": dict(PAIR_SPACE)} for p in paths],
            "render": {"steps": 1, "width": 16, "height": 16, "batch": batch},
            "objective": {"style": 1.0, "prompt": PAIR_PROMPT_WEIGHT},
            "search": {"trials": 100, "sampler": "auto", "seed": 0, "prune": True, "bands": 3},
            "noise": {"repeats": 0}, "validation": {"top_k": 0}, "output": str(folder / "out")}
    config_path = folder / "pair.yaml"
    config_path.write_text(yaml.safe_dump(data, sort_keys=False))
    config = load_config(config_path)
    engine = look.LookEngine(loras, look.PROMPTS, seed=seed, dims=PAIR_LOOK)
    w_star = Recipe([LoraWeights(path=p, **w) for p, w in zip(paths, PAIR_STAR)])
    engine.gain = PAIR_GAIN / float(engine.look_of(w_star).abs().mean())
    engine.set_recipe(w_star)
    references = engine.render([Job(i % len(look.PROMPTS), look.PROMPTS[i % len(look.PROMPTS)], s)
                                for i, s in enumerate(PAIR_REFERENCE_SEEDS)])
    space = SearchSpace(config)
    distance = look.WeightDistance(loras, look.weighting_scales(w_star, loras))
    problem = look.Problem(config, space, engine, look.LookJudge(engine, references), w_star, distance, 0.0)
    problem.baseline_distance = problem.d(space.baseline())
    return problem


PROBLEMS = {"look": look.build, "pair": build_pair}


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


def compare(name: str, problem, args) -> None:
    """Every variant on one problem, seeds 0..N-1; the first variant against the others."""
    evaluator = Evaluator(problem.config, problem.engine, problem.scorers())
    problem.star_score = evaluator.evaluate(problem.w_star).value
    baseline = evaluator.evaluate(problem.space.recipe(problem.space.baseline())).value
    print(f"{datetime.date.today()} problem {name}: known optimum w* scores {problem.star_score:.4f}, baseline "
          f"{baseline:.4f} (distance {problem.baseline_distance:.3f}); target: distance <= {DISTANCE_FRACTION} x "
          f"baseline's and score >= {SCORE_FRACTION} x w*'s; {len(problem.space)} parameters, "
          f"{len(evaluator.jobs)} jobs a trial, budget {args.budget} images, {args.seeds} seeds", flush=True)
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
    print(f"{name}: median images to target ({args.budget + 1} = not reached): "
          + ", ".join(f"{v} {count:.0f}" for v, count in medians.items()))
    for other in variants[1:]:
        ratio = medians[first] / medians[other]
        bound = f"; {other} never got there: an upper bound" if medians[other] > args.budget else ""
        print(f"  {first} / {other} = {ratio:.2f}{bound}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=int, default=1200, help="images per search (100 trials of 12 jobs)")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--variants", default=DEFAULT_VARIANTS,
                        help="comma-separated SAMPLER[+PRUNING][/STARTUP]; the first is compared with the others")
    parser.add_argument("--storage-trials", type=int, default=0, help="also time the storages (0: skip)")
    parser.add_argument("--problem", default="look", help="comma-separated: look (bench/look.py), pair (build_pair)")
    parser.add_argument("--smoke", action="store_true", help="one seed, 60 images, both problems, two variants")
    args = parser.parse_args()
    if args.smoke:
        args.budget, args.seeds, args.problem, args.variants = 60, 1, "look,pair", "auto+partial,random+partial"
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    import warnings
    warnings.filterwarnings("ignore")

    for name in args.problem.split(","):
        with tempfile.TemporaryDirectory() as folder:
            compare(name, PROBLEMS[name](Path(folder)), args)

    if args.storage_trials:
        overhead = storage_overhead(args.storage_trials)
        base = overhead["in-memory"]
        print("storage overhead per trial: " + ", ".join(
            f"{name} {seconds * 1000:.1f} ms" for name, seconds in overhead.items())
              + f"; sqlite/journal = {overhead['sqlite'] / overhead['journal']:.2f}, "
                f"sqlite/in-memory = {overhead['sqlite'] / base:.1f}")


if __name__ == "__main__":
    main()
