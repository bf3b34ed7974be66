"""Terminal progress for a long search: trials done/total, elapsed, ETA, best so far, s/trial."""

from __future__ import annotations

import sys
import time
from typing import Optional

from tqdm import tqdm


class Progress:
    def __init__(self, total: int, done: int, deadline: Optional[float], enabled: bool = True):
        self.total, self.start_done, self.deadline = total, done, deadline
        self.started = time.time()
        self.bar = tqdm(total=total, initial=done, unit="trial", dynamic_ncols=True, file=sys.stderr,
                        disable=not enabled, bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.bar.close()

    def eta_seconds(self, done: int) -> Optional[float]:
        """Time left: by the trial rate of this run, capped by the `hours` budget."""
        ran = done - self.start_done
        if ran <= 0:
            return None
        by_trials = (time.time() - self.started) / ran * (self.total - done)
        if self.deadline is not None:
            return max(0.0, min(by_trials, self.deadline - time.time()))
        return by_trials

    def update(self, done: int, best: Optional[float], stopped_early: int = 0) -> None:
        ran = done - self.start_done
        per_trial = (time.time() - self.started) / ran if ran > 0 else None
        eta = self.eta_seconds(done)
        parts = [f"best {best:.4f}" if best is not None else "best -",
                 f"{stopped_early} stopped early" if stopped_early else "",
                 f"{per_trial:.1f} s/trial" if per_trial else "",
                 f"ETA {_clock(eta)}" if eta is not None else ""]
        self.bar.set_postfix_str(" · ".join(p for p in parts if p), refresh=False)
        self.bar.update(max(0, done - self.bar.n))


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
