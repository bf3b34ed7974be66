"""Is a gain real? Paired statistics over per-job scores.

Two weightings scored on the same jobs (prompt × seed) are paired samples: the seed's layout
moves both scores alike, so only the per-job differences carry the evidence. Every comparison
in zsearch (a trial against the baseline, validation, screening) goes through `compare`:

- the gain is the mean per-job difference;
- its interval is a percentile bootstrap of that mean (resampling jobs, seeded: reproducible);
- the p-value is the exact one-sided Wilcoxon signed-rank test (normal approximation beyond
  `EXACT_MAX` jobs), which does not assume normal differences;
- the verdict says in one word what the numbers allow.

Pure functions of lists of floats; no study, no torch.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Optional, Sequence

CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 4000
EXACT_MAX = 30  # exact signed-rank distribution up to this many non-zero differences

CONCLUSIVE, SUGGESTIVE, NO_GAIN = "conclusive", "suggestive", "no gain"
CONCLUSIVE_P = 0.05  # one-sided signed-rank p for a conclusive gain (with the interval above 0)
SUGGESTIVE_P = 0.25


def paired_differences(candidate: Sequence[float], reference: Sequence[float]) -> list[float]:
    """candidate − reference per job; both in the same job order, jobs missing in either dropped."""
    if len(candidate) != len(reference):
        raise ValueError(f"paired scores need the same jobs: {len(candidate)} vs {len(reference)}")
    return [c - r for c, r in zip(candidate, reference) if _finite(c) and _finite(r)]


def bootstrap_interval(differences: Sequence[float], confidence: float = CONFIDENCE,
                       resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean difference (jobs resampled with replacement)."""
    n = len(differences)
    if n == 0:
        return math.nan, math.nan
    rng = random.Random(seed)
    means = sorted(sum(rng.choices(differences, k=n)) / n for _ in range(resamples))
    tail = (1 - confidence) / 2
    return _quantile(means, tail), _quantile(means, 1 - tail)


def signed_rank_p(differences: Sequence[float]) -> float:
    """One-sided p-value that the differences are centred above 0 (Wilcoxon signed-rank).

    Zero differences are dropped (Wilcoxon's convention); tied magnitudes get their mean rank.
    Exact for up to EXACT_MAX non-zero differences (the statistic's distribution counted over
    all 2^n sign patterns, on doubled ranks so ties stay integers), normal approximation with a
    tie correction beyond.
    """
    nonzero = [d for d in differences if d != 0]
    n = len(nonzero)
    if n == 0:
        return 1.0
    ranks = _ranks([abs(d) for d in nonzero])
    w_plus = sum(r for r, d in zip(ranks, nonzero) if d > 0)
    if n <= EXACT_MAX:
        doubled = [round(2 * r) for r in ranks]  # mean ranks of ties are multiples of 1/2
        counts = [1] + [0] * sum(doubled)  # counts[s]: sign patterns whose doubled W+ is s
        for r in doubled:
            for s in range(len(counts) - 1, r - 1, -1):
                counts[s] += counts[s - r]
        at_least = sum(counts[round(2 * w_plus):])
        return at_least / 2 ** n
    mean = n * (n + 1) / 4
    tie_term = sum(t ** 3 - t for t in _tie_sizes(ranks)) / 48
    sd = math.sqrt(n * (n + 1) * (2 * n + 1) / 24 - tie_term)
    if sd == 0:
        return 1.0
    z = (w_plus - mean) / sd
    return 0.5 * math.erfc(z / math.sqrt(2))


@dataclass(frozen=True)
class Comparison:
    """candidate vs reference on the same jobs."""

    gain: float  # mean per-job difference
    low: float  # bootstrap interval of the gain
    high: float
    p: float  # one-sided signed-rank p that the candidate is better
    jobs: int  # paired jobs compared

    @property
    def verdict(self) -> str:
        return verdict(self)

    def describe(self) -> str:
        """'+0.0123 (95 % interval +0.0040 to +0.0210, p = 0.004, 12 paired jobs): conclusive'."""
        return (f"{self.gain:+.4f} (95 % interval {self.low:+.4f} to {self.high:+.4f}, p = {self.p:.3g}, "
                f"{self.jobs} paired jobs): {self.verdict}")

    def to_dict(self) -> dict:
        return {"gain": self.gain, "low": self.low, "high": self.high, "p": self.p, "jobs": self.jobs,
                "verdict": self.verdict}


def compare(candidate: Sequence[float], reference: Sequence[float], seed: int = 0) -> Optional[Comparison]:
    """Paired comparison of per-job scores; None when no job was scored by both."""
    differences = paired_differences(candidate, reference)
    if not differences:
        return None
    low, high = bootstrap_interval(differences, seed=seed)
    return Comparison(gain=sum(differences) / len(differences), low=low, high=high,
                      p=signed_rank_p(differences), jobs=len(differences))


def verdict(c: Comparison) -> str:
    """conclusive: the interval is above 0 and the signed-rank test agrees (p ≤ 0.05);
    suggestive: a positive gain that one of them supports weakly; no gain: anything else."""
    if c.gain <= 0:
        return NO_GAIN
    if c.low > 0 and c.p <= CONCLUSIVE_P:
        return CONCLUSIVE
    if c.low > 0 or c.p <= SUGGESTIVE_P:
        return SUGGESTIVE
    return NO_GAIN


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _quantile(sorted_values: list[float], q: float) -> float:
    """Linear interpolation between order statistics (numpy's default 'linear' method)."""
    position = q * (len(sorted_values) - 1)
    below = math.floor(position)
    above = min(below + 1, len(sorted_values) - 1)
    return sorted_values[below] + (sorted_values[above] - sorted_values[below]) * (position - below)


def _ranks(values: list[float]) -> list[float]:
    """1-based ranks, ties sharing their mean rank."""
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def _tie_sizes(ranks: list[float]) -> list[int]:
    sizes: dict[float, int] = {}
    for r in ranks:
        sizes[r] = sizes.get(r, 0) + 1
    return [t for t in sizes.values() if t > 1]


def nanmean(values: list[float]) -> float:
    """The mean of the values that are not NaN (jobs not run); NaN when none was."""
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else math.nan
