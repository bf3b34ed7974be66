"""Opening a study: created with its sampler and pruner and its first trials queued, or resumed when
it measured the same inputs (by content), or refused when it measured others.

Several workers may share one study (PostgreSQL across machines; SQLite or a journal file on one
machine). A trial whose worker died is failed and retried by Optuna's own bounded retry callback —
found at once through the worker leases on the same machine (`workers.py`), through the RDB
heartbeat on other machines.
"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path
from typing import Optional

import numpy as np
import optuna
from optuna.trial import TrialState

from zsearch.errors import UserError
from zsearch.lora.recipe import load_recipe
from zsearch.settings.fingerprint import FileHashes, same_measurement
from zsearch.settings.schema import Config
from zsearch.study import records
from zsearch.study.distinct import DistinctPoints
from zsearch.study.samplers import make_sampler
from zsearch.study.space import SearchSpace, screening_values
from zsearch.study.storage import make_storage, shown_url
from zsearch.study.workers import WORKER_ID, fail_dead_workers

log = logging.getLogger("zsearch")

SETUP_WAIT_S = 60  # how long a joining worker waits for the creator to queue the first trials


def make_pruner(config: Config) -> optuna.pruners.BasePruner:
    if not config.search.prune or config.objective.pareto or len(config.seeds) * len(config.prompt_list) < 2:
        return optuna.pruners.NopPruner()
    # Each job (prompt × seed) is one step, paired with the same job of the best trial: the
    # Wilcoxon signed-rank test suits paired samples. A stopped trial completes as partial
    # (pruning.py), so the sampler still learns from it.
    return optuna.pruners.WilcoxonPruner(p_threshold=0.1, n_startup_steps=2)


def check_recipe_fits(path: Path, recipe, config: Config, hashes: Optional[FileHashes] = None) -> None:
    """A recipe's weights apply to the config's LoRAs in order: refuse one with another number of
    LoRAs, or whose LoRA file at some place is another LoRA than the config's (by content; a file
    that is not on this machine, e.g. a best.yaml from elsewhere, is taken at its place)."""
    if len(recipe.loras) != len(config.loras):
        raise UserError(f"{path}: the recipe has {len(recipe.loras)} LoRAs, the config "
                        f"{len(config.loras)}; list them in the same order")
    hashes = hashes or FileHashes()
    for i, (weights, entry) in enumerate(zip(recipe.loras, config.loras)):
        ours, theirs = Path(weights.path), Path(entry.path)
        if ours.exists() and theirs.exists() and _lora_identity(ours, hashes) != _lora_identity(theirs, hashes):
            raise UserError(f"{path}: loras[{i}] is {ours}, another LoRA than the config's loras[{i}] ({theirs}); "
                            f"its weights would apply to the config's LoRA: list the config's LoRAs in its order")


def _lora_identity(path: Path, hashes: FileHashes) -> list[str]:
    from zsearch.lora.read import lora_files
    return [hashes.of(file) for file in lora_files(path)]


def check_fingerprint(config: Config, study: optuna.Study, hashes: Optional[FileHashes] = None) -> None:
    """Refuse a study that measured other inputs (by content) or another search space."""
    recorded = study.user_attrs.get(records.FINGERPRINT)
    if recorded is None:
        return
    changed = same_measurement(recorded, config.fingerprint(hashes))
    if changed:
        raise UserError(
            f"{config.source}: study '{config.name}' measured other inputs; changed: {', '.join(changed)}; "
            f"set a new 'name:' to start a new study (or restore them to resume)")


def _never_measured(study: optuna.Study) -> bool:
    return not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING))


def mark_setup_failed(study: optuna.Study) -> None:
    """Called when a run fails: a study it never measured (a typo, a missing model) may be replaced
    by the fixed command. An unmarked one may belong to a worker still loading its model, so a run
    with other inputs is refused instead of deleting it."""
    if _never_measured(study):
        study.set_user_attr(records.SETUP_FAILED, True)


def _replaceable(study: optuna.Study) -> bool:
    return _never_measured(study) and bool(study.user_attrs.get(records.SETUP_FAILED))


def open_study(config: Config, space: SearchSpace) -> optuna.Study:
    """Create or resume the study; refuse a resume whose inputs, search space or scoring changed.

    Only the process that creates the study queues its first trials and uses the config's seed
    as is; a resume or a joining worker mixes in its trial count and worker id, so no two
    samplers replay the same points. A study that never measured anything because its first run
    failed while setting up is replaced, so the fixed command runs.
    """
    storage = make_storage(config)
    directions = ["maximize"] * len(config.pareto_terms) if config.objective.pareto else ["maximize"]
    start_recipes = [(path, load_recipe(path)) for path in config.start]  # fail before touching the study
    hashes = FileHashes(config.cache_dir / "file-hashes.json")
    for path, recipe in start_recipes:
        check_recipe_fits(path, recipe, config, hashes)
    for attempt in range(3):
        try:
            optuna.create_study(study_name=config.name, storage=storage, directions=directions)
            created = True
        except optuna.exceptions.DuplicatedStudyError:
            created = False
        study = optuna.load_study(study_name=config.name, storage=storage)
        if created:
            break
        _wait_for_setup(study)
        try:
            check_fingerprint(config, study, hashes)
            break
        except UserError:
            if attempt == 2 or not _replaceable(study):
                raise
            log.warning("study '%s' never measured a trial (its set-up failed); starting it afresh", config.name)
            try:
                optuna.delete_study(study_name=config.name, storage=storage)
            except KeyError:
                pass  # another worker replaced it first
    seed = config.search.seed if created else _resume_seed(config.search.seed, len(study.trials))
    # the seed needed the trial count first; workers asking at once must not get the same point
    study.sampler = DistinctPoints(make_sampler(config, seed, len(space)), storage, seed=seed)
    study.pruner = make_pruner(config)
    if created or "fingerprint" not in study.user_attrs:  # (or its creator died while setting it up)
        _enqueue_first(config, space, study, start_recipes)
        study.set_metric_names(config.pareto_terms if config.objective.pareto else ["score"])
        study.set_user_attr(records.SPACE, space.describe())
        study.set_user_attr(records.FINGERPRINT, config.fingerprint(hashes))  # last: it marks the set-up done
    hashes.save()
    fail_dead_workers(config, study)
    return study


def _wait_for_setup(study: optuna.Study) -> None:
    """A worker joining a study its creator is still setting up waits for the first trials."""
    deadline = time.time() + SETUP_WAIT_S
    while "fingerprint" not in study.user_attrs and time.time() < deadline:
        time.sleep(0.25)


def _resume_seed(seed: int, n_trials: int) -> int:
    """A fresh seed per resume (and per worker), so no run replays earlier points."""
    worker = int(WORKER_ID.rsplit("-", 1)[1], 16)  # unique across machines and containers
    return int(np.random.SeedSequence([seed, n_trials, worker]).generate_state(1)[0])


def _enqueue_first(config: Config, space: SearchSpace, study: optuna.Study, start_recipes) -> None:
    study.enqueue_trial(space.baseline(), user_attrs={records.ROLE: records.BASELINE_ROLE}, skip_if_exists=True)
    if config.search.screen:
        for role, params in screening_values(space):
            study.enqueue_trial(params, user_attrs={records.ROLE: role}, skip_if_exists=True)
    for path, recipe in start_recipes:
        study.enqueue_trial(space.params_of(recipe), user_attrs={records.ROLE: f"{records.START_ROLE}:{path.name}"},
                            skip_if_exists=True)


def open_existing_study(config: Config) -> optuna.Study:
    """The config's study, or a one-line UserError; never creates a database or a study."""
    url = config.storage_url
    missing = None
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        missing = None if path.is_file() else path
    elif url.startswith("journal:"):
        path = Path(url.removeprefix("journal:"))
        path = path if path.is_absolute() else config.source.resolve().parent / path
        missing = None if path.is_file() else path
    if missing is not None:
        raise UserError(f"no study '{config.name}' yet: {missing} does not exist; run `zsearch run {config.source}` first")
    with warnings.catch_warnings():  # heartbeats are "experimental": not the reader's concern
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        storage = make_storage(config)
    try:
        return optuna.load_study(study_name=config.name, storage=storage)
    except KeyError:
        raise UserError(f"no study '{config.name}' yet in {shown_url(url)}; run `zsearch run {config.source}` first "
                        f"(or check 'name:' in the config)") from None
