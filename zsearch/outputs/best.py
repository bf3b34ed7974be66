"""The best outputs: best.yaml (recipe), best.safetensors (its merge), best.png (references, baseline, best).

Written from the study's storage alone, so any machine that reaches the storage (and the
artifact folder) can export them; a file lock and atomic renames keep two workers from
corrupting them.
"""

from __future__ import annotations

import io
import json
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import optuna
import yaml
from filelock import FileLock
from PIL import Image
from optuna.trial import FrozenTrial, TrialState

from zsearch import __version__
from zsearch.settings.schema import Config
from zsearch.outputs.grid import REFERENCES_SHOWN, comparison, job_tiles, save_png
from zsearch.util.images import image_files
from zsearch.lora.merge import merge_recipe
from zsearch.lora.write import merge_metadata, save_lora
from zsearch.outputs.provenance import provenance_metadata
from zsearch.lora.recipe import Recipe, save_recipe
from zsearch.study import records
from zsearch.study.choice import CONFIRMATION, PERSON, TRAINING, choose_best
from zsearch.study.records import trial_score
from zsearch.study.space import SearchSpace
from zsearch.util.atomic import make_folder

def pick_best(config: Config, study: optuna.Study) -> Optional[FrozenTrial]:
    """The best trial by the one rule (study/choice.py); None before any trial completed fully."""
    choice = choose_best(study)
    return choice.trial if choice else None


def chosen_by(study: optuna.Study, trial: FrozenTrial) -> dict:
    """How the best trial was chosen: by a person's review, by confirmation, by validation, or by the
    training score."""
    choice = choose_best(study)
    if choice is None or choice.trial.number != trial.number:
        return {"by": TRAINING}
    if choice.by == PERSON:
        record = choice.review
        return {"by": PERSON, "review": record["study"], "choices": len(record["choices"]),
                "candidates": record["candidates"], "model": record["model"],
                "ranking": [{"trial": r["trial"], "strength": round(r["strength"], 4)} for r in record["ranking"]]}
    if choice.by == CONFIRMATION:  # the best mean over the confirmation jobs, and the ranking
        confirmation = records.read_confirmation(study)
        row = confirmation.row(trial.number)
        return {"by": CONFIRMATION, "rounds": row.rounds, "jobs": row.jobs,
                "ranking": [{"trial": r.trial, "mean": round(r.mean, 6), "jobs": r.jobs} for r in confirmation.rows[:5]]}
    return {"by": choice.by}


@contextmanager
def _locked(folder: Path):
    make_folder(folder)
    with FileLock(str(folder / ".best.lock")):  # an OS lock on Windows, macOS and Linux alike
        yield


def read_best_info(folder: Path) -> Optional[dict]:
    """The `info` of the best.yaml in `folder` (trial, scores, chosen_by, ...), None when absent or unreadable."""
    try:
        info = yaml.safe_load((folder / "best.yaml").read_text())["info"]
    except (OSError, TypeError, KeyError, yaml.YAMLError):
        return None
    return info if isinstance(info, dict) else None


def _up_to_date(folder: Path, study: optuna.Study, trial: FrozenTrial) -> bool:
    """best.* on disk already hold this trial, with the same scores and the same reason."""
    info = read_best_info(folder) or {}
    return (info.get("trial") == trial.number and info.get("scores") == best_scores(study, trial)
            and info.get("chosen_by") == chosen_by(study, trial) and (folder / "best.safetensors").exists())


def best_scores(study: optuna.Study, trial: FrozenTrial) -> dict:
    """Train, validation, baseline and noise figures of a trial, as far as they are known, and its
    gain over the baseline judged paired per job: on the held-out jobs once validated (the
    unbiased figure), else on its confirmation jobs (new seeds), else on the training jobs (biased
    upward: the best of many trials)."""
    baseline = records.baseline_of(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    scores = {"train": trial_score(trial), "baseline": trial_score(baseline)}
    noise = records.read_noise(study)
    if noise:
        scores["noise_std"] = noise.std
    validation = records.read_validation(study)
    row = validation.row(trial.number) if validation else None
    gain, where = (validation.gain(trial.number), "validation") if row else (None, None)
    if row:
        scores["validation"] = row.validation
        if validation.baseline is not None:
            scores["baseline_validation"] = validation.baseline
    confirmation = records.read_confirmation(study)
    confirmed = confirmation.row(trial.number) if confirmation else None
    if confirmed is not None:
        scores["confirmed"] = {"mean": confirmed.mean, "rounds": confirmed.rounds, "jobs": confirmed.jobs,
                               "gain": confirmed.gain}
        if gain is None and confirmed.gain is not None:
            gain, where = confirmed.gain, "confirmation"
    if gain is None and baseline is not None and baseline.number != trial.number:
        gain, where = records.gain_over(trial, baseline), "training"
    if gain is not None:
        scores["gain"] = {**(gain if isinstance(gain, dict) else gain.to_dict()), "on": where}
    return scores


def best_recipe(config: Config, space: SearchSpace, study: optuna.Study, trial: FrozenTrial) -> Recipe:
    recipe = space.recipe(trial.params)
    scores = best_scores(study, trial)
    recipe.info = {"study": config.name, "trial": trial.number, "score": scores["train"],
                   "values": list(trial.values), "baseline_score": scores["baseline"],
                   "scores": scores, "chosen_by": chosen_by(study, trial), "zsearch": __version__}
    return recipe


def export_best(config: Config, study: optuna.Study, store, force: bool = False) -> Optional[FrozenTrial]:
    """(Re)write best.yaml, best.safetensors and best.png if the best trial changed."""
    out = config.out_dir
    with _locked(out):
        trial = pick_best(config, study)  # inside the lock: another worker may have written a newer best
        if trial is None:
            return None
        if not force and _up_to_date(out, study, trial):
            return trial
        recipe = best_recipe(config, SearchSpace(config), study, trial)
        tensors, report = merge_recipe(recipe)
        target = out / "best.safetensors"
        metadata = {**merge_metadata(recipe, target, trial=trial.number), **report.metadata(),
                    **provenance_metadata(config, recipe, recipe.info["scores"]),
                    "zsearch.chosen_by": json.dumps(recipe.info["chosen_by"])}
        save_lora(tensors, target, metadata=metadata, force=True, inputs=[lw.path for lw in recipe.loras])
        _write_comparison(config, study, store, trial, out / "best.png")
        save_recipe(recipe, out / "best.yaml")  # last: it marks the set as complete
    return trial


def _load_grid(store, trial: Optional[FrozenTrial]) -> Optional[Image.Image]:
    """A trial's full-size grid, else its thumbnail (full size is kept for the top trials only)."""
    attrs = trial.user_attrs if trial else {}
    for artifact in (attrs.get(records.FULL_GRID), attrs.get(records.GRID)):
        if not artifact:
            continue
        try:
            with store.open_reader(artifact) as reader:
                return Image.open(io.BytesIO(reader.read())).convert("RGB")
        except Exception:  # noqa: BLE001 - a missing artifact only costs the picture
            continue
    return None


def reference_images(config: Config, limit: int = REFERENCES_SHOWN) -> list[Image.Image]:
    """The first reference images of the config (those that read), for the pictures a person sees."""
    images = []
    for path in image_files(config.references)[:limit]:
        try:
            with Image.open(path) as image:
                images.append(image.convert("RGB"))
        except OSError:
            continue
    return images


def _write_comparison(config: Config, study: optuna.Study, store, best: FrozenTrial, path: Path) -> None:
    """best.png: the references, then per prompt a few seeds of the baseline and of the best."""
    prompts = config.prompt_list
    columns = []
    baseline = records.baseline_of(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    validation = records.read_validation(study)
    for label, trial in (("baseline", baseline), (f"best (trial {best.number})", best)):
        grid = _load_grid(store, trial)
        tiles = job_tiles(grid, len(prompts), len(config.seeds)) if grid is not None else None
        if tiles is not None:
            columns.append((f"{label}  {_score_label(trial, validation)}", tiles))
    if columns:
        save_png(comparison(reference_images(config), columns, prompts), path)
    else:
        path.unlink(missing_ok=True)  # no renders to show: never leave an older best's picture


def _score_label(trial: Optional[FrozenTrial], validation) -> str:
    """The score the verdict uses: held-out once validation scored this trial, else training."""
    row = validation.row(trial.number) if validation is not None and trial is not None else None
    if row is not None:
        return f"held-out score {row.validation:.4f}"
    return f"training score {trial_score(trial):.4f}"
