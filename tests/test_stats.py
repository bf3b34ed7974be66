"""Paired statistics against independent computations (scipy, numpy, enumeration)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import stats as ss

from zsearch.study.stats import (CONCLUSIVE, NO_GAIN, SUGGESTIVE, Comparison, bootstrap_interval, compare,
                                  paired_differences, signed_rank_p, verdict)


@pytest.mark.parametrize("n", [1, 3, 5, 8, 13])
@pytest.mark.parametrize("shift", [-0.3, 0.0, 0.4])
def test_signed_rank_p_matches_scipy_exact(n, shift):
    rng = np.random.default_rng(n * 7 + int(shift * 10))
    diffs = (rng.normal(size=n) + shift).tolist()
    expected = ss.wilcoxon(diffs, alternative="greater", method="exact").pvalue
    assert signed_rank_p(diffs) == pytest.approx(expected, rel=1e-12)


def test_signed_rank_p_with_ties_matches_enumeration_of_sign_patterns():
    diffs = [0.1, 0.1, -0.2, 0.3, 0.3, 0.3, -0.1, 0.2]
    mags = [abs(d) for d in diffs]
    ranks = ss.rankdata(mags)  # mean ranks for ties
    w = sum(r for r, d in zip(ranks, diffs) if d > 0)
    patterns = list(itertools.product([0, 1], repeat=len(diffs)))
    at_least = sum(1 for signs in patterns if sum(r for r, s in zip(ranks, signs) if s) >= w - 1e-9)
    assert signed_rank_p(diffs) == pytest.approx(at_least / len(patterns), rel=1e-12)


def test_signed_rank_p_drops_zeros_and_uses_the_normal_approximation_for_many_jobs():
    rng = np.random.default_rng(3)
    diffs = np.round(rng.normal(0.1, 1.0, size=60), 1).tolist() + [0.0, 0.0]  # ties and zeros
    expected = ss.wilcoxon(diffs, alternative="greater", zero_method="wilcox", method="approx",
                           correction=False).pvalue
    assert signed_rank_p(diffs) == pytest.approx(expected, rel=1e-9)
    assert signed_rank_p([0.0, 0.0]) == 1.0


def test_smallest_p_with_three_jobs_is_one_eighth():
    # Why three prompts could never be pruned at p < 0.1: 1/2^3 is the floor.
    assert signed_rank_p([0.1, 0.2, 0.3]) == pytest.approx(0.125)
    assert signed_rank_p([0.1, 0.2, 0.3, 0.4, 0.5]) == pytest.approx(1 / 32)


def test_bootstrap_interval_agrees_with_scipy_percentile_bootstrap():
    rng = np.random.default_rng(0)
    diffs = rng.normal(0.05, 0.1, size=12).tolist()
    low, high = bootstrap_interval(diffs, resamples=20000, seed=1)
    ref = ss.bootstrap((np.array(diffs),), np.mean, n_resamples=20000, method="percentile",
                       confidence_level=0.95, rng=np.random.default_rng(2)).confidence_interval
    width = ref.high - ref.low
    assert low == pytest.approx(ref.low, abs=0.03 * width)
    assert high == pytest.approx(ref.high, abs=0.03 * width)
    assert low < np.mean(diffs) < high


def test_bootstrap_interval_is_reproducible_and_degenerate_when_all_differences_agree():
    diffs = [0.3, -0.1, 0.2, 0.05]
    assert bootstrap_interval(diffs, seed=5) == bootstrap_interval(diffs, seed=5)
    assert bootstrap_interval([0.25] * 6) == pytest.approx((0.25, 0.25))


def test_paired_differences_pair_by_position_and_drop_unscored_jobs():
    assert paired_differences([1.0, 2.0, float("nan"), 4.0], [0.5, 2.5, 1.0, 1.0]) == [0.5, -0.5, 3.0]
    with pytest.raises(ValueError, match="same jobs"):
        paired_differences([1.0], [1.0, 2.0])


def test_pairing_sees_a_gain_that_the_seed_spread_hides():
    # Jobs differ a lot (seed layouts), the candidate is better on every job by a little.
    rng = np.random.default_rng(4)
    base = rng.normal(0.0, 1.0, size=8)
    cand = base + 0.05 + rng.normal(0, 0.01, size=8)
    c = compare(cand.tolist(), base.tolist())
    assert c.jobs == 8 and c.gain == pytest.approx(float(np.mean(cand - base)))
    assert c.low > 0 and c.p == pytest.approx(1 / 256)
    assert c.verdict == CONCLUSIVE
    # Unpaired, the same gain is far inside one standard deviation of the baseline.
    assert c.gain < 0.2 * float(np.std(base))


def test_verdicts():
    assert verdict(Comparison(0.1, 0.02, 0.2, 0.01, 8)) == CONCLUSIVE
    assert verdict(Comparison(0.1, 0.02, 0.2, 0.125, 3)) == SUGGESTIVE  # interval above 0, p weak
    assert verdict(Comparison(0.1, -0.02, 0.2, 0.2, 8)) == SUGGESTIVE
    assert verdict(Comparison(0.1, -0.05, 0.2, 0.4, 8)) == NO_GAIN
    assert verdict(Comparison(-0.1, -0.2, -0.05, 0.99, 8)) == NO_GAIN
    assert compare([1.0], [float("nan")]) is None
    text = compare([0.3, 0.4, 0.5, 0.6, 0.7, 0.8], [0.1] * 6).describe()
    assert text.startswith("+0.4500 (95 % interval") and text.endswith("6 paired jobs): conclusive")
