"""Confirmation: the night's top candidates re-rendered on new seed sets, so the morning's best is
chosen on many jobs, not on the 8 a trial ran (where the best of thousands is partly luck).

- A round renders one trial on one new seed set of the training prompts: as many jobs as a
  trial. Round r uses the same seeds for every trial, so two trials (and the baseline, the
  paired reference) are compared job by job on the rounds they share (stats.py).
- Contenders: the baseline, the `confirm.top_k` best trials by confirmed mean, and the not yet
  confirmed trials among the `top_k` best by training score. The contender with the fewest
  rounds goes next (the baseline first at a tie), up to `confirm.rounds` rounds each, so the
  contenders advance level by level and a new lucky trial is checked at once.
- Claims go through the storage: a round is claimed by a RUNNING trial of the study
  `<name>:confirm`, created with its key in one write; the lowest-numbered claim of a key wins
  (the storage numbers trials one at a time), so two workers never render the same round.
  A claim ends COMPLETE (scored), PRUNED (the render failed: not retried) or FAIL (abandoned:
  lost a race, or its worker died; the round is free again).
- Each round's per-job scores are kept in the main study (records.ConfirmRound) and the ranking
  is rewritten after each round (records.Confirmation); the one best-trial rule (study/choice.py)
  reads it.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from typing import Optional

import optuna
from optuna.trial import FrozenTrial, TrialState, create_trial

from zsearch.settings.schema import Config
from zsearch.study import records, stats
from zsearch.study.workers import WORKER_ID, is_dead
from zsearch.search.evaluate import Evaluator, TrialFailed

log = logging.getLogger("zsearch")

CLAIMS_SUFFIX = ":confirm"
KEY, WORKER, TOKEN = "key", "worker", "token"
STALE_S = 30 * 60  # a claim running this long is abandoned (its worker died on another machine)
TAKEN = (TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED)


def claims_study(config: Config, storage) -> optuna.Study:
    """The study that holds the claims, beside the search's study in the same storage."""
    return optuna.create_study(study_name=config.name + CLAIMS_SUFFIX, storage=storage, load_if_exists=True)


def round_seeds(config: Config, round_index: int) -> list[int]:
    """Round r's seeds: new ones, past every training, validation and noise seed, as many as a trial's."""
    used = [*config.seeds, *config.validation.seeds_for(config.seeds),
            *(seed for seeds in config.noise.seed_sets(config.seeds) for seed in seeds)]
    n = len(config.seeds)
    start = max(used) + 1 + round_index * n
    return [start + i for i in range(n)]


# ---------------------------------------------------------------- the ranking (pure)

def rank(rounds: list[records.ConfirmRound], baseline: Optional[int]) -> Optional[records.Confirmation]:
    """The confirmed ranking: each trial's mean over its confirmation jobs, best first, with its
    gain over the baseline paired on the seed sets both were rendered on."""
    by_trial: dict[int, dict[tuple, list[float]]] = {}
    for r in rounds:
        by_trial.setdefault(r.trial, {})[tuple(r.seeds)] = r.jobs
    if not by_trial:
        return None
    reference = by_trial.get(baseline, {}) if baseline is not None else {}
    rows = []
    for trial, sets in by_trial.items():
        jobs = [x for key in sorted(sets) for x in sets[key] if x == x]  # NaN: a job not scored
        if not jobs:
            continue
        shared = sorted(set(sets) & set(reference))
        gain = None
        if trial != baseline and shared:
            comparison = stats.compare([x for k in shared for x in sets[k]], [x for k in shared for x in reference[k]])
            gain = comparison.to_dict() if comparison else None
        rows.append(records.ConfirmedRow(trial=trial, rounds=len(sets), jobs=len(jobs), mean=sum(jobs) / len(jobs),
                                         baseline=trial == baseline, gain=gain))
    if not rows:
        return None
    rows.sort(key=lambda r: (-r.mean, r.trial))
    return records.Confirmation(rows=rows, chosen=rows[0].trial)


def refresh_ranking(study: optuna.Study) -> Optional[records.Confirmation]:
    baseline = records.baseline_of(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    confirmation = rank(records.read_confirm_rounds(study), baseline.number if baseline else None)
    if confirmation is not None:
        records.write_confirmation(study, confirmation)
    return confirmation


# ---------------------------------------------------------------- what to confirm next

def taken_rounds(claims: optuna.Study) -> dict[int, set[int]]:
    """{trial: rounds claimed or done}; abandoned (FAIL) claims leave their round free."""
    taken: dict[int, set[int]] = {}
    for claim in claims.get_trials(deepcopy=False, states=TAKEN):
        trial, index = _parse_key(claim.user_attrs.get(KEY))
        if trial is not None:
            taken.setdefault(trial, set()).add(index)
    return taken


def contenders(study: optuna.Study, top_k: int, confirmed_trials: set[int]) -> list[FrozenTrial]:
    """The baseline, the top_k by confirmed mean, and the unconfirmed among the top_k by training score."""
    complete = records.candidates(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    baseline = records.baseline_of(complete)
    others = sorted((t for t in complete if t is not baseline), key=records.trial_score, reverse=True)
    record = records.read_confirmation(study)
    by_number = {t.number: t for t in others}
    confirmed = [by_number[r.trial] for r in (record.rows if record else []) if r.trial in by_number][:top_k]
    fresh = [t for t in others[:top_k] if t.number not in confirmed_trials]
    chosen, seen = [], set()
    for t in ([baseline] if baseline else []) + confirmed + fresh:
        if t.number not in seen:
            seen.add(t.number)
            chosen.append(t)
    return chosen


def next_round(study: optuna.Study, claims: optuna.Study, top_k: int, max_rounds: int
               ) -> Optional[tuple[FrozenTrial, int]]:
    """(trial, round) to confirm next: the contender with the fewest rounds, or None when all are done."""
    taken = taken_rounds(claims)
    order = contenders(study, top_k, set(taken))
    open_ = [(len(taken.get(t.number, ())), i, t) for i, t in enumerate(order)
             if len(taken.get(t.number, ())) < max_rounds]
    if not open_:
        return None
    _, _, trial = min(open_, key=lambda x: x[:2])
    index = next(r for r in range(max_rounds + len(taken.get(trial.number, ()))) if r not in taken.get(trial.number, ()))
    return trial, index


# ---------------------------------------------------------------- claims through the storage

def release_stale(config: Config, claims: optuna.Study, now: Optional[float] = None) -> int:
    """Fail the running claims of dead workers (this machine's leases) or older than STALE_S."""
    now = time.time() if now is None else now
    released = 0
    for claim in claims.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        age = now - claim.datetime_start.timestamp() if claim.datetime_start else 0.0
        if age > STALE_S or is_dead(config.out_dir, claim.user_attrs.get(WORKER)):
            claims.tell(claim.number, state=TrialState.FAIL, skip_if_finished=True)
            released += 1
    return released


def claim(claims: optuna.Study, trial: int, round_index: int) -> Optional[int]:
    """Claim (trial, round) for this worker: the claim's number, or None when another worker has it."""
    key, token = f"{trial}:{round_index}", uuid.uuid4().hex
    claims.add_trial(create_trial(state=TrialState.RUNNING,
                                  user_attrs={KEY: key, WORKER: WORKER_ID, TOKEN: token}))
    same = [c for c in claims.get_trials(deepcopy=False) if c.user_attrs.get(KEY) == key]
    mine = next(c.number for c in same if c.user_attrs.get(TOKEN) == token)
    first = min(c.number for c in same if c.state in TAKEN)
    if first != mine:
        claims.tell(mine, state=TrialState.FAIL, skip_if_finished=True)  # lost the race: not ours to run
        return None
    return mine


def _parse_key(value) -> tuple[Optional[int], int]:
    try:
        trial, index = (int(part) for part in str(value).split(":"))
        return trial, index
    except ValueError:
        return None, 0


# ---------------------------------------------------------------- a round

@dataclass
class Confirmer:
    """Runs confirmation rounds for one worker, on its engine and judges."""

    config: Config
    study: optuna.Study
    claims: optuna.Study
    space: object  # SearchSpace: a trial's params to its recipe
    engine: object
    scorers: object

    def work_left(self) -> bool:
        c = self.config.search.confirm
        return next_round(self.study, self.claims, c.top_k, c.rounds) is not None

    def step(self, only: Optional[int] = None) -> Optional[records.ConfirmRound]:
        """Claim and render the next round (of trial `only`, when given); None when nothing was run."""
        c = self.config.search.confirm
        release_stale(self.config, self.claims)
        if only is None:
            picked = next_round(self.study, self.claims, c.top_k, c.rounds)
        else:
            taken = taken_rounds(self.claims).get(only, set())
            picked = None if taken else (self.study.get_trials(deepcopy=False)[only], 0)
        if picked is None:
            return None
        trial, index = picked
        number = claim(self.claims, trial.number, index)
        if number is None:
            return None
        return self._render(trial, index, number)

    def _render(self, trial: FrozenTrial, index: int, claim_number: int) -> Optional[records.ConfirmRound]:
        seeds = round_seeds(self.config, index)
        evaluator = Evaluator(self.config, self.engine, self.scorers, seeds=seeds)
        try:
            evaluation = evaluator.evaluate(self.space.recipe(trial.params))
        except TrialFailed as exc:
            log.warning("confirmation of trial %d, round %d failed: %s", trial.number, index, exc)
            self.claims.tell(claim_number, state=TrialState.PRUNED, skip_if_finished=True)  # not retried
            return None
        result = records.ConfirmRound(trial=trial.number, round=index, seeds=seeds, jobs=evaluation.jobs)
        records.write_confirm_round(self.study, result)  # before the claim completes: a finished claim has its scores
        self.claims.tell(claim_number, evaluation.value, skip_if_finished=True)
        confirmation = refresh_ranking(self.study)
        row = confirmation.row(trial.number) if confirmation else None
        log.info("confirmation: trial %d round %d (seeds %s) scored %.5f; over %d rounds %.5f; leader trial %s",
                 trial.number, index, seeds, evaluation.value, row.rounds if row else 0,
                 row.mean if row else float("nan"), confirmation.chosen if confirmation else "-")
        return result

    def training_best_unconfirmed(self) -> Optional[int]:
        """The training best's number when it has no round yet while others do (the last check of a night)."""
        complete = records.candidates(self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
        record = records.read_confirmation(self.study)
        if not complete or record is None:
            return None
        best = max(complete, key=records.trial_score)
        return None if best.number in taken_rounds(self.claims) else best.number
