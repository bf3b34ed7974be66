"""zsearch's own progress for a long step outside the trial loop: steps done, elapsed, ETA.

On a terminal only (tqdm turns itself off when stderr is not one), so logs and pipes stay clean.
"""

from __future__ import annotations

import sys
from typing import Optional

from tqdm import tqdm


def step_bar(label: str, total: int, enabled: Optional[bool] = None, unit: str = "step") -> tqdm:
    """A bar 'zsearch: <label>: 3/8 [00:41<01:10]'; `enabled` None: on when stderr is a terminal."""
    return tqdm(total=total, desc=f"zsearch: {label}", unit=unit, file=sys.stderr, dynamic_ncols=True,
                disable=None if enabled is None else not enabled, leave=True,
                bar_format="{desc}: {n_fmt}/{total_fmt} {unit}s [{elapsed}<{remaining}]")
