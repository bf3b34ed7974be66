"""`zsearch render`: the config's prompts and seeds rendered with one recipe, as PNGs and a grid."""

from __future__ import annotations

from pathlib import Path

from zsearch.settings.schema import Config
from zsearch.outputs.grid import job_grid, save_png
from zsearch.search.evaluate import Evaluator
from zsearch.search.session import Session
from zsearch.util.atomic import make_folder


def render_recipe(config: Config, recipe, out_dir: Path) -> list[Path]:
    """Render the config's prompts and seeds with `recipe` to PNGs and a grid (`zsearch render`)."""
    from zsearch.engine.render import save_pngs
    engine = Session(config).engine
    evaluator = Evaluator(config, engine, scorers=None)
    jobs, images = evaluator.jobs, evaluator.render(recipe)
    paths = [out_dir / f"p{job.prompt_index:02d}-s{job.seed}.png" for job in jobs]
    make_folder(out_dir)
    save_pngs(images, paths)
    grid = out_dir / "grid.png"
    save_png(job_grid(images, len(config.prompt_list)), grid)
    return [*paths, grid]
