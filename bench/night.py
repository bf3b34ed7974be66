"""A short night on the demo: does the plan end in time, and does confirmation pick better?

On configs/demo.yaml's search space and objective, with 2 seeds (6 jobs a trial: a real night's
trial is 8 jobs, so its training score is as noisy), `search.hours` set and no trial cap, for
search seeds 0..N-1:
- time: the night's deadline against the end of the run (validation and export included), and the
  seconds left unused at the end;
- work: trials, confirmation rounds;
- choice: the training best (the top training score) and the morning's best (best.yaml, chosen by
  confirmation), each re-scored on fresh jobs that neither training, confirmation nor validation
  used (8 new seed sets of the prompts), and their weight-space distance to the hidden w*.

    python bench/night.py [--minutes 4] [--runs 3] [--threads 1] [--smoke]

--smoke: one 30-second night, fresh jobs on 2 seed sets (tests that the script runs); with
ZSEARCH_BENCH_DEMO set, the demo assets there are used instead of building them.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import optuna
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from demo_setup import demo_config  # noqa: E402
from zsearch.demo.build import build_demo  # noqa: E402
from zsearch.lora.read import load_loras  # noqa: E402
from zsearch.search import run as run_module  # noqa: E402
from zsearch.search import session  # noqa: E402
from zsearch.search.distance import weight_distance  # noqa: E402
from zsearch.search.evaluate import Evaluator  # noqa: E402
from zsearch.study import records  # noqa: E402
from zsearch.study.space import SearchSpace  # noqa: E402

FRESH_SEEDS = [60000 + i for i in range(16)]  # 8 sets of 2: apart from every seed the run uses


def night_config(folder: Path, assets_dir: Path, minutes: float, search_seed: int):
    return demo_config(folder, assets_dir, {"output": str(folder / "out"), "seeds": [1, 2], "validation": {"top_k": 3}},
                       search={"seed": search_seed, "hours": minutes / 60, "trials": None}, file_name="night.yaml")


def one_night(config, assets, loras, fresh_seeds: list[int] = FRESH_SEEDS) -> dict:
    began = time.time()
    run_module.run(config, show_progress=False)
    ended = time.time()
    study = optuna.load_study(study_name=config.name, storage=config.storage_url)
    night = records.read_night(study)
    complete = records.candidates(study.get_trials(deepcopy=False))
    train_best = max(complete, key=records.trial_score)
    chosen = yaml.safe_load((config.out_dir / "best.yaml").read_text())["info"]
    space = SearchSpace(config)
    engine = session.load_engine(config)
    scorers = session.load_scorers(config, engine.device)
    fresh = Evaluator(config, engine, scorers, seeds=fresh_seeds)
    picks = {"training best": train_best.number, "morning best": chosen["trial"]}
    scores = {name: fresh.evaluate(space.recipe(study.trials[n].params)).value for name, n in picks.items()}
    distances = {name: weight_distance(loras, space.recipe(study.trials[n].params), assets.hidden_recipe)
                 for name, n in picks.items()}
    confirmation = records.read_confirmation(study)
    return {"seconds": ended - began, "budget": night.deadline - night.start, "left": night.deadline - ended,
            "trials": len(study.trials), "rounds": sum(r.rounds for r in confirmation.rows) if confirmation else 0,
            "picks": picks, "chosen_by": chosen["chosen_by"]["by"], "fresh": scores, "distance": distances}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=4.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--smoke", action="store_true", help="one 30-second night (tests the script)")
    args = parser.parse_args()
    if args.smoke:
        args.minutes, args.runs = 0.5, 1
    torch.set_num_threads(args.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        assets = build_demo(Path(os.environ.get("ZSEARCH_BENCH_DEMO") or Path(tmp) / "assets"))
        loras = load_loras(assets.loras)
        results = []
        for seed in range(args.runs):
            config = night_config(Path(tmp) / f"night{seed}", assets.root, args.minutes, seed)
            r = one_night(config, assets, loras, FRESH_SEEDS[:4] if args.smoke else FRESH_SEEDS)
            results.append(r)
            print(f"seed {seed}: {r['trials']} trials + {r['rounds']} confirmation rounds in {r['seconds']:.0f} s "
                  f"of {r['budget']:.0f} s ({r['left']:.1f} s left); training best {r['picks']['training best']} "
                  f"fresh {r['fresh']['training best']:.4f} d {r['distance']['training best']:.3f}; morning best "
                  f"{r['picks']['morning best']} ({r['chosen_by']}) fresh {r['fresh']['morning best']:.4f} "
                  f"d {r['distance']['morning best']:.3f}", flush=True)
        gains = [r["fresh"]["morning best"] - r["fresh"]["training best"] for r in results]
        print(f"all {len(results)} nights ended before the deadline: {all(r['left'] >= 0 for r in results)}; "
              f"median seconds left {statistics.median(r['left'] for r in results):.1f}; "
              f"morning best minus training best on fresh jobs: median {statistics.median(gains):+.4f}, "
              f"differs in {sum(g != 0 for g in gains)} of {len(gains)}")


if __name__ == "__main__":
    main()
