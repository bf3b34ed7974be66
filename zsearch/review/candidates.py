"""Which candidates a person reviews, and their renders on the held-out seeds."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial

from zsearch.errors import UserError
from zsearch.settings.schema import Config
from zsearch.study import records
from zsearch.study.choice import top_candidates
from zsearch.util.atomic import make_folder


def pick_candidates(study: optuna.Study, top_k: int) -> list[FrozenTrial]:
    """The baseline, then the top-k other complete trials (never a partial one): those validated
    first (by held-out score), then the rest by training score."""
    if top_k < 1:
        raise UserError("--top-k must be at least 1")
    validation = records.read_validation(study)
    held_out = {row.trial: row.validation for row in validation.rows} if validation else {}
    chosen = top_candidates(study.get_trials(deepcopy=False), top_k, held_out)
    if len(chosen) < 2:
        raise UserError(f"study '{study.study_name}' has {len(chosen)} complete trial(s); a review needs two "
                        f"or more, so run more trials first")
    return chosen


# ---------------------------------------------------------------- their renders on held-out seeds

# Two candidates' grids side by side, with the Worst buttons below them, fit one screen: at most
# two rows (held-out seeds) of renders, each at most 512 px a side.
REVIEW_ROWS = 2
REVIEW_SIDE = 512


def review_seeds(config: Config) -> list[int]:
    """The held-out seeds a review shows: the first REVIEW_ROWS of validation's."""
    return config.validation.seeds_for(config.seeds)[:REVIEW_ROWS]


def render_candidates(config: Config, trials: list[FrozenTrial], folder: Path) -> dict[int, Path]:
    """One grid per candidate (a column per validation prompt, a row per held-out seed).

    Kept in `folder` with what they were rendered from; only missing or outdated ones are rendered.
    """
    from zsearch.outputs.grid import job_grid, save_png, shrink
    from zsearch.search.evaluate import Evaluator
    from zsearch.search.session import load_engine, prepare
    from zsearch.study.space import SearchSpace

    prepare(config)  # reads the prompt files
    seeds = review_seeds(config)
    prompts = list(config.validation_prompts)
    make_folder(folder)
    index_file = folder / "renders.json"
    try:
        index = json.loads(index_file.read_text())
    except (OSError, ValueError):
        index = {}
    key = {"seeds": seeds, "prompts": prompts, "render": config.render.model_dump(mode="json")}
    paths = {t.number: folder / f"trial-{t.number:05d}.png" for t in trials}
    todo = [t for t in trials if not paths[t.number].is_file()
            or index.get(str(t.number)) != {**key, "params": t.params}]
    if todo:
        engine = load_engine(config)
        space = SearchSpace(config)
        evaluator = Evaluator(config, engine, scorers=None, prompts=prompts, seeds=seeds)
        for trial in todo:
            images = evaluator.render(space.recipe(trial.params))
            save_png(job_grid(shrink(images, REVIEW_SIDE), len(prompts)), paths[trial.number])
            index[str(trial.number)] = {**key, "params": trial.params}
        engine.close()
        from zsearch.util.atomic import write_text_atomic
        write_text_atomic(index_file, json.dumps(index, indent=1))
    return paths
