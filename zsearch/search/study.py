"""The Optuna study: storage, sampler, pruner, resume rules and the trials queued first."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np
import optuna
from optuna.artifacts import FileSystemArtifactStore
from optuna.trial import TrialState

from ..config import Config
from ..errors import UserError
from ..recipe import load_recipe
from .space import SearchSpace
from .startup import SobolStartup
from .trust import screening_values

WORKER_ATTR = "zsearch.worker"  # host:pid of the process running a trial
RETRY_ATTR = "retry_of"


def make_storage(config: Config) -> optuna.storages.BaseStorage:
    """An Optuna storage from the config: any RDB URL, or `journal:PATH` for a journal file."""
    url = config.storage_url
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend, JournalStorage
        path = Path(url.removeprefix("journal:"))
        if not path.is_absolute():
            path = config.source.resolve().parent / path
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    try:
        # Heartbeats let a study fail trials of a worker that died on another machine.
        return optuna.storages.RDBStorage(
            url, heartbeat_interval=60, grace_period=180,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(),
            engine_kwargs={"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None)
    except (ImportError, ModuleNotFoundError) as exc:
        raise UserError(f"storage: {url} needs the database driver '{exc.name}'; pip install it") from None
    except Exception as exc:  # noqa: BLE001 - SQLAlchemy raises many kinds for a bad URL
        raise UserError(f"storage: cannot open {url} ({exc.__class__.__name__}); check the URL") from None


def artifact_store(config: Config) -> FileSystemArtifactStore:
    folder = config.out_dir / "artifacts"
    folder.mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(str(folder))


GP_MAX_PARAMS = 32  # beyond this a Gaussian process fits slowly and TPE is the better bet
STARTUP_TRIALS = 10  # trials drawn from the start-up design before the GP fits (Optuna's default)
STARTUP = "sobol"  # the start-up design: "sobol" or "random" (bench/search.py measures both)


def sampler_name(config: Config, n_params: int) -> str:
    """The sampler `auto` stands for: trials cost seconds to minutes, so sample efficiency rules
    (bench/search.py: a GP reaches the known optimum in far fewer images than TPE or random)."""
    name = config.search.sampler
    if name == "auto":
        name = "gp" if n_params <= GP_MAX_PARAMS else "tpe"
    return name


def make_sampler(config: Config, seed: int, n_params: int, startup: str = STARTUP,
                 startup_trials: int = STARTUP_TRIALS) -> optuna.samplers.BaseSampler:
    name = sampler_name(config, n_params)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, n_startup_trials=1)
    if name == "gp":
        design = SobolStartup(n_params, seed=seed) if startup == "sobol" else None
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup_trials, independent_sampler=design)
    # Multivariate TPE models the interactions between block weights; `group` lets it cope with
    # the smaller space left after screening freezes parameters.
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True,
                                      n_startup_trials=min(10, 2 + n_params))


def make_pruner(config: Config) -> optuna.pruners.BasePruner:
    if not config.search.prune or config.objective.pareto or len(config.seeds) * len(config.prompt_list) < 2:
        return optuna.pruners.NopPruner()
    # Each job (prompt × seed) is one step, paired with the same job of the best trial: the
    # Wilcoxon signed-rank test suits paired samples. A stopped trial completes as partial
    # (pruning.py), so the sampler still learns from it.
    return optuna.pruners.WilcoxonPruner(p_threshold=0.1, n_startup_steps=2)


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover_orphans(study: optuna.Study) -> int:
    """Fail and re-queue the running trials of dead zsearch processes on this machine.

    A `kill -9` leaves its trial RUNNING forever; on this host we can tell at once that its
    process is gone. (Workers on other machines are covered by storage heartbeats.)
    """
    host = socket.gethostname()
    recovered = 0
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = trial.system_attrs.get(WORKER_ATTR, "")
        owner_host, _, pid = owner.rpartition(":")
        if owner_host != host or not pid.isdigit() or _pid_alive(int(pid)):
            continue
        try:
            study._storage.set_trial_user_attr(trial._trial_id, "fail_reason", "worker process died")
            study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        except RuntimeError:  # another worker got there first (UpdateFinishedTrialError)
            continue
        # Keep its role (baseline, screening point): the retry stands in for it.
        attrs = {k: v for k, v in trial.user_attrs.items() if k == "role"}
        study.enqueue_trial(trial.params, user_attrs={**attrs, RETRY_ATTR: trial.number}, skip_if_exists=False)
        recovered += 1
    return recovered


def check_fingerprint(config: Config, study: optuna.Study) -> None:
    """Refuse a study that was run with another search space or scoring set-up."""
    recorded = study.user_attrs.get("fingerprint")
    current = config.fingerprint()
    if recorded is not None and recorded != current:
        changed = sorted(k for k in current if recorded.get(k) != current[k])
        raise UserError(
            f"{config.source}: study '{config.name}' was run with a different {', '.join(changed)}; "
            f"set a new 'name:' to start a new study (or restore the old settings to resume)")


def open_study(config: Config, space: SearchSpace) -> optuna.Study:
    """Create or resume the study; refuse a resume whose search space or scoring changed.

    Only the process that creates the study queues its first trials and uses the config's seed
    as is; a resume or a joining worker mixes in its trial count and pid, so no two samplers
    replay the same points.
    """
    storage = make_storage(config)
    directions = ["maximize"] * len(config.pareto_terms) if config.objective.pareto else ["maximize"]
    start_recipes = [(path, load_recipe(path)) for path in config.start]  # fail before touching the study
    for path, recipe in start_recipes:
        if len(recipe.loras) != len(config.loras):
            raise UserError(f"{path}: the recipe has {len(recipe.loras)} LoRAs, the config "
                            f"{len(config.loras)}; list them in the same order")
    try:
        optuna.create_study(study_name=config.name, storage=storage, directions=directions)
        created = True
    except optuna.exceptions.DuplicatedStudyError:
        created = False
    study = optuna.load_study(study_name=config.name, storage=storage)
    if not created:
        check_fingerprint(config, study)
    seed = config.search.seed if created else _resume_seed(config.search.seed, len(study.trials))
    study.sampler = make_sampler(config, seed, len(space))  # the seed needed the trial count first
    study.pruner = make_pruner(config)
    if created or "fingerprint" not in study.user_attrs:  # (or its creator died while setting it up)
        _enqueue_first(config, space, study, start_recipes)
        study.set_metric_names(config.pareto_terms if config.objective.pareto else ["score"])
        study.set_user_attr("space", space.describe())
        study.set_user_attr("fingerprint", config.fingerprint())
    recover_orphans(study)
    return study


def _resume_seed(seed: int, n_trials: int) -> int:
    """A fresh seed per resume (and per worker), so no run replays earlier points."""
    return int(np.random.SeedSequence([seed, n_trials, os.getpid()]).generate_state(1)[0])


def _enqueue_first(config: Config, space: SearchSpace, study: optuna.Study, start_recipes) -> None:
    study.enqueue_trial(space.baseline(), user_attrs={"role": "baseline"}, skip_if_exists=True)
    if config.search.screen:
        for role, params in screening_values(space):
            study.enqueue_trial(params, user_attrs={"role": role}, skip_if_exists=True)
    for path, recipe in start_recipes:
        study.enqueue_trial(space.params_of(recipe), user_attrs={"role": f"start:{path.name}"},
                            skip_if_exists=True)


def baseline_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if trial.user_attrs.get("role") == "baseline":
            return trial
    return None
