"""A person's pairwise choices -> a ranking: Bradley-Terry strengths, and the order pairs are shown.

Bradley-Terry: P(i preferred to j) = p_i / (p_i + p_j). The strengths are fitted by Hunter's
minorise-maximise iteration (2004), which increases the likelihood at every step. With a handful
of choices an undefeated candidate would get an infinite strength, so each candidate also plays
`prior` virtual wins and `prior` virtual losses against a reference of strength 1 (a MAP fit
that pulls every strength towards 1); prior=0 is the plain maximum-likelihood fit.
"""

from __future__ import annotations

import math
from typing import Sequence


def bradley_terry(n_items: int, wins: Sequence[Sequence[float]] | None = None,
                  comparisons: Sequence[tuple[int, int]] = (), prior: float = 1.0,
                  tol: float = 1e-12, max_iter: int = 100_000) -> list[float]:
    """Strengths p_0..p_{n-1} from `comparisons` [(winner, loser), ...] and/or a `wins` matrix
    (wins[i][j] = how often i was preferred to j; fractions allowed).

    prior > 0: every strength is finite and relative to the virtual reference (strength 1).
    prior = 0: maximum likelihood, scaled to a geometric mean of 1; it exists only when every
    item has won and lost at least once (more precisely: the comparison graph is strongly
    connected), else ValueError.
    """
    if prior < 0:
        raise ValueError("prior must be >= 0")
    w = [[0.0] * n_items for _ in range(n_items)]
    if wins is not None:
        for i in range(n_items):
            for j in range(n_items):
                w[i][j] += float(wins[i][j]) if i != j else 0.0
    for winner, loser in comparisons:
        if winner == loser:
            raise ValueError(f"item {winner} compared with itself")
        w[winner][loser] += 1.0
    total_wins = [sum(row) for row in w]
    games = [[w[i][j] + w[j][i] for j in range(n_items)] for i in range(n_items)]
    if prior == 0:
        for i in range(n_items):
            losses = sum(w[j][i] for j in range(n_items))
            if total_wins[i] == 0 or losses == 0:
                raise ValueError(f"item {i} has {'no wins' if total_wins[i] == 0 else 'no losses'}; "
                                 f"the maximum-likelihood strengths do not exist (use prior > 0)")
    p = [1.0] * n_items
    for _ in range(max_iter):
        new = []
        for i in range(n_items):
            denominator = sum(games[i][j] / (p[i] + p[j]) for j in range(n_items) if j != i and games[i][j])
            denominator += 2 * prior / (p[i] + 1.0)
            new.append((total_wins[i] + prior) / denominator if denominator > 0 else 1.0)
        if prior == 0:
            scale = math.exp(sum(math.log(x) for x in new) / n_items)
            new = [x / scale for x in new]
        change = max(abs(math.log(a) - math.log(b)) for a, b in zip(new, p)) if n_items else 0.0
        p = new
        if change < tol:
            break
    return p


def round_robin(n_items: int) -> list[tuple[int, int]]:
    """Every pair once, in rounds of disjoint pairs (the circle method), so that no item is shown
    twice in a row where avoidable and every item appears early."""
    slots = list(range(n_items)) + ([None] if n_items % 2 else [])
    m = len(slots)
    pairs = []
    for _ in range(m - 1):
        for k in range(m // 2):
            a, b = slots[k], slots[m - 1 - k]
            if a is not None and b is not None:
                pairs.append((min(a, b), max(a, b)))
        slots = [slots[0], slots[-1], *slots[1:-1]]
    return pairs
