"""Terminal progress for a long search: trials done/total, elapsed, ETA, best so far, s/trial."""

from __future__ import annotations

import sys
import time
from typing import Optional

from tqdm import tqdm


class Progress:
    """With a deadline the bar is the night: it fills as the hours pass, and says the phase, the
    trials done, the best so far with its interval and the time left. Without one, trials done of
    the trial budget."""

    def __init__(self, total: Optional[int], done: int, deadline: Optional[float], enabled: bool = True,
                 start: Optional[float] = None):
        self.total, self.start_done, self.deadline = total, done, deadline
        self.started = time.time()
        self.night_start = start if start is not None else self.started
        if deadline is not None:
            span = max(1, int(deadline - self.night_start))
            self.bar = tqdm(total=span, initial=min(span, int(self.started - self.night_start)), unit="s",
                            dynamic_ncols=True, file=sys.stderr, disable=not enabled,
                            bar_format="{percentage:3.0f}%|{bar}| {desc}")
        else:
            self.bar = tqdm(total=total, initial=done, unit="trial", dynamic_ncols=True, file=sys.stderr,
                            disable=not enabled,
                            bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.bar.close()

    def eta_seconds(self, done: int) -> Optional[float]:
        """Time left: the night's, else by the trial rate of this run."""
        if self.deadline is not None:
            return max(0.0, self.deadline - time.time())
        ran = done - self.start_done
        if ran <= 0 or self.total is None:
            return None
        return (time.time() - self.started) / ran * (self.total - done)

    def update(self, done: int, best: Optional[float], stopped_early: int = 0, phase: Optional[str] = None,
               interval: Optional[str] = None) -> None:
        ran = done - self.start_done
        per_trial = (time.time() - self.started) / ran if ran > 0 else None
        eta = self.eta_seconds(done)
        parts = [phase or "",
                 f"best {best:.4f}" + (f" {interval}" if interval else "") if best is not None else "best -",
                 f"{stopped_early} stopped early" if stopped_early else "",
                 f"{per_trial:.1f} s/trial" if per_trial else "",
                 (f"{_clock(eta)} left" if self.deadline is not None else f"ETA {_clock(eta)}") if eta is not None else ""]
        if self.deadline is not None:  # the bar is the night; what happened in it, after the bar
            self.bar.set_description_str(" · ".join(p for p in [f"{done} trials", *parts] if p), refresh=False)
            self.bar.update(max(0, min(self.bar.total, int(time.time() - self.night_start)) - self.bar.n))
        else:
            self.bar.set_postfix_str(" · ".join(p for p in parts if p), refresh=False)
            self.bar.update(max(0, done - self.bar.n))


def best_interval(study, trial) -> Optional[str]:
    """The best's gain over the baseline with its 95 % interval: on its confirmation jobs once
    confirmed (many jobs, new seeds), else on its training jobs; None for the baseline itself."""
    from optuna.trial import TrialState

    from zsearch.study import records
    if trial is None or records.is_baseline(trial):
        return None
    confirmation = records.read_confirmation(study)
    row = confirmation.row(trial.number) if confirmation else None
    gain, where = (row.gain, "confirmed") if row is not None and row.gain else (None, "training")
    if gain is None:
        baseline = records.baseline_of(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
        comparison = records.gain_over(trial, baseline) if baseline is not None else None
        gain = comparison.to_dict() if comparison else None
    if gain is None:
        return None
    return f"({gain['gain']:+.4f} [{gain['low']:+.4f}, {gain['high']:+.4f}] on {gain['jobs']} {where} jobs)"


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
