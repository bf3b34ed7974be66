"""Bradley-Terry and the pair schedule: exact cases, optimality, and ranking."""

from __future__ import annotations

import itertools
import math

import pytest

from zsearch.review.bradley_terry import bradley_terry, round_robin


def log_likelihood(p, comparisons, prior: float = 1.0) -> float:
    """The objective `bradley_terry` maximises (with its virtual games), written out independently."""
    total = sum(math.log(p[a] / (p[a] + p[b])) for a, b in comparisons)
    total += prior * sum(math.log(x / (x + 1)) + math.log(1 / (x + 1)) for x in p)
    return total


def test_two_items_ratio_is_wins_over_losses():
    p = bradley_terry(2, comparisons=[(0, 1)] * 3 + [(1, 0)], prior=0)
    assert p[0] / p[1] == pytest.approx(3.0, rel=1e-9)
    assert p[0] * p[1] == pytest.approx(1.0, rel=1e-9)  # geometric mean 1


def test_exact_expected_wins_recover_the_strengths():
    truth = [1.0, 2.0, 4.0, 0.5]
    n = 10.0
    wins = [[n * truth[i] / (truth[i] + truth[j]) if i != j else 0 for j in range(4)] for i in range(4)]
    p = bradley_terry(4, wins=wins, prior=0)
    g = math.exp(sum(map(math.log, truth)) / 4)
    assert p == pytest.approx([t / g for t in truth], rel=1e-8)


def test_map_fit_is_a_stationary_point_and_finite_for_the_undefeated():
    comparisons = [(0, 1), (0, 2), (1, 2), (0, 3), (3, 2)]
    p = bradley_terry(4, comparisons=comparisons, prior=1.0)
    assert all(math.isfinite(x) and x > 0 for x in p)
    assert max(range(4), key=p.__getitem__) == 0  # the undefeated one ranks first
    assert min(range(4), key=p.__getitem__) == 2  # the one that never won ranks last
    best = log_likelihood(p, comparisons)
    for i, step in itertools.product(range(4), (1e-4, -1e-4)):  # no small move improves it
        moved = list(p)
        moved[i] *= math.exp(step)
        assert log_likelihood(moved, comparisons) <= best + 1e-12


def test_one_choice_with_the_prior_has_a_closed_form():
    # One win of 0 over 1, prior 1. Swapping the items and inverting strengths leaves the
    # objective unchanged, so p1 = 1/p0 = 1/x, and L(x) = 4 log x - log(x^2+1) - 4 log(1+x);
    # dL/dx = 0  <=>  x^3 - x^2 - 2 = 0.
    p = bradley_terry(2, comparisons=[(0, 1)], prior=1.0)
    x = p[0]
    assert p[1] == pytest.approx(1 / x, rel=1e-9)
    assert x ** 3 - x ** 2 - 2 == pytest.approx(0.0, abs=1e-9)
    assert x == pytest.approx(1.69562076956, rel=1e-9)


def test_plain_likelihood_refuses_an_undefeated_item():
    with pytest.raises(ValueError, match="item 0 has no losses"):
        bradley_terry(2, comparisons=[(0, 1)], prior=0)


@pytest.mark.parametrize("n", [2, 3, 4, 5, 6])
def test_round_robin_shows_every_pair_once(n):
    pairs = round_robin(n)
    assert sorted(pairs) == list(itertools.combinations(range(n), 2))
    for first, second in zip(pairs, pairs[1:]):  # consecutive pairs share no item within a round
        if n >= 4 and pairs.index(second) % (n // 2) != 0:
            assert not set(first) & set(second)
