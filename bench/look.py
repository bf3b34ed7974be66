"""A cheap known-optimum problem for bench/search.py: LoRAs with a look, a judge that sees it.

Rendering the tiny diffusion model costs ~0.1 s an image on this CPU, and its random CLIP
groups images by seed, not by look (issue 13). For the hundreds of searches the sampler and
pruning comparisons need, this module stands in for the renderer and the judge while keeping
what makes the real problem hard and everything zsearch computes real (config, search space,
recipes, per-module scales, Evaluator, records, pruner, sampler):

- three real LoRA objects (random, on every Z-Image module of a narrow model); a recipe's
  per-module scales come from zsearch's own `recipe_scales`;
- the look of a weighting is a fixed random linear read-out of its summed weight delta
  L = Σᵢₘ sᵢₘ · probe_m(ΔWᵢₘ) (K numbers), so the look is consistent across seeds and prompts,
  and LoRAs, components and layers change it differently;
- an "image" (3×8×8) is the seed's and prompt's content plus the look drawn as K fixed
  patterns with a saturating gain (tanh); the content leaks into the read-out: seed noise;
- the judge reads the K patterns off the image (it sees the look, not the seed's layout) and
  scores closeness to the mean look of the references; the prompt score is the image's
  cosine to its prompt's template;
- the references are rendered at w* from seeds disjoint from the search's.

Closeness to w* is measured in weight space: `WeightDistance`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from zsearch.lora.blocks import N_LAYERS, all_modules
from zsearch.settings.schema import Config
from zsearch.settings.load import load_config
from zsearch.engine.weighting import recipe_scales
from zsearch.lora.synth import make_random_lora, save_in_format
from zsearch.lora.recipe import LoraWeights, Recipe
from zsearch.study.space import SearchSpace
from zsearch.judges.base import Batch, Judge, Panel
from zsearch.search.evaluate import Scorers

DIM, RANK, LOOK = 16, 2, 16  # model width, LoRA rank, look dimensions
SIDE = 8  # "images" are 3×8×8
CONTENT = 0.8  # how much a seed's content leaks into the judge's read-out (seed noise)
SPACE = {"ratio": [0.0, 1.5], "components": [0.25, 1.75], "layers": "none", "tie": ["attn", "ffn"]}
W_STAR = [  # inside SPACE; the third LoRA nearly off, as in the problem
    {"ratio": 0.9, "components": {"attn": 1.4, "ffn": 0.6, "adaLN": 1.0}},
    {"ratio": 0.6, "components": {"attn": 0.5, "ffn": 1.5, "adaLN": 0.5}},
    {"ratio": 0.1, "components": {"attn": 1.0, "ffn": 1.0, "adaLN": 1.0}},
]
PROMPTS = ["a lighthouse at dusk", "a bowl of fruit", "a city street in rain", "a portrait of an old sailor"]
SEEDS = [1, 2, 3]
REFERENCE_SEEDS = list(range(900, 912))  # disjoint from the search's and the validation's


def weighting_scales(recipe: Recipe, loras) -> list[dict[str, float]]:
    return [recipe_scales(weights, lora.module_objects) for weights, lora in zip(recipe.loras, loras)]


class WeightDistance:
    """d(s) = ‖Σᵢ (sᵢ − s*ᵢ) ΔWᵢ‖ / ‖Σᵢ s*ᵢ ΔWᵢ‖ over all modules (Frobenius), from per-module Gram
    matrices of the LoRAs' deltas, so each distance costs a few small dot products."""

    def __init__(self, loras, star: list[dict[str, float]]):
        self.paths = sorted({p for lora in loras for p in lora.modules})
        self.gram = {}
        for path in self.paths:
            deltas = [lora.modules[path].delta().flatten() if path in lora.modules else None for lora in loras]
            self.gram[path] = [[float(a @ b) if a is not None and b is not None else 0.0 for b in deltas]
                               for a in deltas]
        self.star = star
        self.norm = math.sqrt(self._squared(star))

    def _squared(self, scales: list[dict[str, float]]) -> float:
        total = 0.0
        for path in self.paths:
            s = [scale.get(path, 0.0) for scale in scales]
            g = self.gram[path]
            total += sum(s[i] * g[i][j] * s[j] for i in range(len(s)) for j in range(len(s)))
        return total

    def __call__(self, scales: list[dict[str, float]]) -> float:
        diff = [{p: sc.get(p, 0.0) - st.get(p, 0.0) for p in self.paths} for sc, st in zip(scales, self.star)]
        return math.sqrt(max(self._squared(diff), 0.0)) / self.norm


class LookEngine:
    """The Engine interface the Evaluator uses (prompts, device, set_recipe, render)."""

    def __init__(self, loras, prompts: list[str], seed: int = 0, dims: int = LOOK):
        g = torch.Generator().manual_seed(seed)
        self.loras, self.prompts, self.device, self.dims = loras, list(prompts), torch.device("cpu"), dims
        self.probes = {}  # module path -> the look that a unit scale of each LoRA's delta adds
        for path in sorted({p for lora in loras for p in lora.modules}):
            shape = next(lora.modules[path].delta().shape for lora in loras if path in lora.modules)
            u, v = torch.randn(dims, shape[0], generator=g), torch.randn(dims, shape[1], generator=g)
            self.probes[path] = [torch.einsum("ko,oi,ki->k", u, lora.modules[path].delta(), v)
                                 if path in lora.modules else torch.zeros(dims) for lora in loras]
        self.patterns = torch.linalg.qr(torch.randn(3 * SIDE * SIDE, dims, generator=g)).Q  # orthonormal
        self.templates = torch.randn(len(self.prompts), 3 * SIDE * SIDE, generator=g)
        self.gain = 1.0
        self.look = torch.zeros(dims)

    def look_of(self, recipe: Recipe) -> torch.Tensor:
        look = torch.zeros(self.dims)
        for i, scales in enumerate(weighting_scales(recipe, self.loras)):
            for path, s in scales.items():
                look += s * self.probes[path][i]
        return self.gain * look

    def set_recipe(self, recipe: Recipe) -> None:
        self.look = self.look_of(recipe)

    def render(self, jobs, **_) -> torch.Tensor:
        out = []
        for job in jobs:
            g = torch.Generator().manual_seed(10_000 + job.seed)
            noise = torch.randn(3 * SIDE * SIDE, generator=g)
            content = 0.5 * self.templates[job.prompt_index] / math.sqrt(3 * SIDE * SIDE) * 8 + noise
            content = CONTENT * content / content.norm() * math.sqrt(LOOK)  # the same noise per read number at any dims
            out.append((content + self.patterns @ torch.tanh(self.look)).view(3, SIDE, SIDE))
        return torch.stack(out)


class LookJudge(Judge):
    """A Judge (terms style and prompt): reads the look."""

    name = "look"
    terms = ("style", "prompt")

    def __init__(self, engine: LookEngine, references: torch.Tensor):
        self.engine, self.device = engine, engine.device
        self.centroid = self.read(references).mean(0)

    def read(self, images: torch.Tensor) -> torch.Tensor:
        return images.flatten(1) @ self.engine.patterns

    def score(self, batch: Batch) -> dict[str, torch.Tensor]:
        images, prompts = batch.images, batch.prompts
        distance = (self.read(images) - self.centroid).pow(2).sum(1) / self.engine.dims
        templates = self.engine.templates[[self.engine.prompts.index(p) for p in prompts]]
        prompt = torch.nn.functional.cosine_similarity(images.flatten(1), templates, dim=1)
        return {"style": 1.0 / (1.0 + 4.0 * distance), "prompt": prompt}


@dataclass
class Problem:
    config: Config
    space: SearchSpace
    engine: LookEngine
    judge: LookJudge
    w_star: Recipe
    distance: WeightDistance
    baseline_distance: float

    def scorers(self) -> Scorers:
        return Scorers(self.judge, panel=Panel([self.judge]))

    def d(self, params: dict) -> float:
        return self.distance(weighting_scales(self.space.recipe(params), self.engine.loras))


def build(folder: Path, seed: int = 0, batch: int = 2) -> Problem:
    """Write the LoRAs and a config into `folder`; render the references at w* (disjoint seeds)."""
    folder.mkdir(parents=True, exist_ok=True)
    modules = all_modules(N_LAYERS)
    loras, paths = [], []
    for i in range(len(W_STAR)):
        lora = make_random_lora(DIM, RANK, modules, seed=100 + 17 * seed + i)
        path = folder / f"look_{'abc'[i]}.safetensors"
        save_in_format(lora, path, "ai-toolkit")
        loras.append(lora)
        paths.append(path)
    (folder / "refs").mkdir(exist_ok=True)
    data = {"name": "look", "model": "look-bench", "references": str(folder / "refs"), "prompts": PROMPTS,
            "seeds": SEEDS, "loras": [{"path": str(p), "ratio": 1.0, "search": dict(SPACE)} for p in paths],
            "render": {"steps": 1, "width": 16, "height": 16, "batch": batch},
            "objective": {"style": 1.0, "prompt": 0.3},
            "search": {"trials": 100, "sampler": "auto", "seed": 0, "prune": True},
            "noise": {"repeats": 0}, "validation": {"top_k": 0}, "output": str(folder / "out")}
    config_path = folder / "look.yaml"
    config_path.write_text(yaml.safe_dump(data, sort_keys=False))
    config = load_config(config_path)
    for lora in loras:
        lora.module_objects = _module_objects(lora)
    engine = LookEngine(loras, PROMPTS, seed=seed)
    w_star = Recipe([LoraWeights(path=p, **w) for p, w in zip(paths, W_STAR)])
    engine.gain = 1.2 / float(engine.look_of(w_star).abs().mean())  # w*'s look in tanh's bend, not saturated
    from zsearch.engine.render import Job
    engine.set_recipe(w_star)
    references = engine.render([Job(i % len(PROMPTS), PROMPTS[i % len(PROMPTS)], s)
                                for i, s in enumerate(REFERENCE_SEEDS)])
    judge = LookJudge(engine, references)
    space = SearchSpace(config)
    distance = WeightDistance(loras, weighting_scales(w_star, loras))
    problem = Problem(config, space, engine, judge, w_star, distance, 0.0)
    problem.baseline_distance = problem.d(space.baseline())
    return problem


def _module_objects(lora):
    from zsearch.lora.blocks import parse_module
    return {path: parse_module(path) for path in lora.modules}


def main(argv: list[str] | None = None) -> None:
    """Build the problem and print its yardsticks: w*'s score, the baseline's, and its distance."""
    import argparse
    import sys
    import tempfile

    from zsearch.search.evaluate import Evaluator

    parser = argparse.ArgumentParser(description="the known-optimum problem of bench/search.py, built once")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="the same (it takes seconds): tests this module")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as folder:
        problem = build(Path(folder), seed=args.seed)
        evaluator = Evaluator(problem.config, problem.engine, problem.scorers())
        star = evaluator.evaluate(problem.w_star).value
        baseline = evaluator.evaluate(problem.space.recipe(problem.space.baseline())).value
    print(f"look problem (seed {args.seed}): w* scores {star:.4f}, baseline {baseline:.4f}, baseline distance "
          f"{problem.baseline_distance:.3f}; {len(problem.space)} parameters", file=sys.stdout)
    if not star > baseline:
        raise SystemExit("look problem: the judge does not prefer w* to the baseline")


if __name__ == "__main__":
    import sys
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
