"""Cheaper screening (issue 21, item 3): do renders with fewer steps or at a smaller size rank
weightings as full renders do?

On the demo's config (configs/demo.yaml, its prompts, seeds and judge), K random weightings of the
search space are scored at full fidelity and at cheaper ones; the Spearman rank correlation of
each cheap fidelity with the full one, and its cost in pixel-steps, are printed. A screen pays
only where the agreement is high at a low cost.

    python bench/fidelity.py [--weightings 24] [--seed 0]
    python bench/fidelity.py --config configs/style.yaml --weightings 8   # your own problem, full size
    python bench/fidelity.py --smoke        # 4 weightings, one prompt: tests the script

Without --config it measures the demo; ZSEARCH_BENCH_DEMO names a built demo to reuse (else it is
built in a temporary folder). bench/gpu.sh runs it on its full-size config on the device.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
from datetime import date
from pathlib import Path

import torch
from scipy.stats import spearmanr

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from zsearch.commands.configs import load_for_rendering  # noqa: E402
from demo_setup import demo_config  # noqa: E402
from zsearch.demo.build import build_demo  # noqa: E402
from zsearch.search import session  # noqa: E402
from zsearch.search.evaluate import Evaluator  # noqa: E402
from zsearch.study.space import SearchSpace  # noqa: E402


def fidelities(render) -> dict[str, tuple[int, int]]:
    """name -> (steps, side): the full render, half the steps, half the side (a multiple of 16), both."""
    half_side = max(16, render.width // 2 // 16 * 16)
    half_steps = max(1, render.steps // 2)
    return {"full": (render.steps, render.width), "half steps": (half_steps, render.width),
            "half size": (render.steps, half_side), "both": (half_steps, half_side)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, help="a zsearch config to measure (default: the demo's)")
    parser.add_argument("--weightings", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--markdown", type=Path, help="append the table to this Markdown file")
    parser.add_argument("--smoke", action="store_true", help="4 weightings, one prompt")
    args = parser.parse_args()
    k, prompts = (4, 1) if args.smoke else (args.weightings, 99)
    if args.config is None:
        torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        if args.config is None:
            assets = build_demo(Path(os.environ.get("ZSEARCH_BENCH_DEMO") or Path(tmp) / "demo"))
            config = demo_config(Path(tmp), assets.root, {"output": str(Path(tmp) / "out")})
        else:
            config = load_for_rendering(args.config)
            session.prepare(config)
        config.prompt_list = config.prompt_list[:prompts]
        lines = measure(config, k, args.seed)
    table = "\n".join(lines)
    print(table)
    if args.markdown:
        with args.markdown.open("a", encoding="utf-8") as out:
            out.write(table + "\n\n")


def measure(config, k: int, seed: int) -> list[str]:
    """Score k random weightings at every fidelity; the table of cost and agreement with full."""
    engine = session.load_engine(config)
    scorers = session.load_scorers(config, engine.device)
    space = SearchSpace(config)
    rng = random.Random(seed)
    weightings = [space.recipe({p.name: rng.uniform(p.low, p.high) for p in space.params}) for _ in range(k)]
    full_render = config.render
    scores, cost = {}, {}
    for name, (steps, side) in fidelities(full_render).items():
        config.render = full_render.model_copy(update={"steps": steps, "width": side, "height": side})
        evaluator = Evaluator(config, engine, scorers)
        scores[name] = [evaluator.evaluate(w).value for w in weightings]
        cost[name] = steps * side * side
    config.render = full_render
    lines = [f"{date.today()}: {k} random weightings of {config.source}, {len(config.prompt_list)} prompts x "
             f"{len(config.seeds)} seeds, full = {full_render.steps} steps at {full_render.width} px, "
             f"device {engine.device}", "",
             "| fidelity | pixel-steps vs full | Spearman with full |", "|---|---|---|"]
    for name in scores:
        rho = spearmanr(scores["full"], scores[name]).statistic if k > 2 else float("nan")
        lines.append(f"| {name} | {cost[name] / cost['full']:.2f} | {rho:.3f} |")
    return lines

if __name__ == "__main__":
    main()
