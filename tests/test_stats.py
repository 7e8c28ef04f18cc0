"""Tests of paper_repro.core.stats: Wilson interval, exact McNemar, paired bootstrap."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
from scipy import stats as st

from paper_repro.core import stats

# Newcombe (1998), Stat. Med. 17:857, Table II, method 3 (Wilson score, no continuity
# correction), 4 decimals as printed.
NEWCOMBE_WILSON = [((81, 263), (0.2553, 0.3662)), ((15, 148), (0.0624, 0.1605)),
                   ((0, 20), (0.0000, 0.1611)), ((1, 29), (0.0061, 0.1718))]


@pytest.mark.parametrize("kn,want", NEWCOMBE_WILSON)
def test_wilson_textbook_values(kn, want):
    lo, hi = stats.wilson_interval(*kn)
    assert lo == pytest.approx(want[0], abs=5e-5)
    assert hi == pytest.approx(want[1], abs=5e-5)


def test_wilson_matches_scipy_and_edges():
    """Against scipy's independent implementation (``BinomTestResult.proportion_ci``)."""
    for k, n in [(0, 10), (10, 10), (3, 7), (780, 1000), (1, 1), (81, 263)]:
        for conf in (0.9, 0.95, 0.99):
            lo, hi = stats.wilson_interval(k, n, confidence=conf)
            ref = st.binomtest(k, n).proportion_ci(confidence_level=conf, method="wilson")
            assert lo == pytest.approx(ref.low, abs=1e-12)
            assert hi == pytest.approx(ref.high, abs=1e-12)
            assert 0.0 <= lo <= k / n <= hi <= 1.0
    # The bounds invert the score test: |p_hat - p| / sqrt(p (1 - p) / n) = z at each one.
    z = st.norm.ppf(0.975)
    lo, hi = stats.wilson_interval(780, 1000)
    for p in (lo, hi):
        assert abs(0.78 - p) / math.sqrt(p * (1 - p) / 1000) == pytest.approx(z, rel=1e-9)
    assert stats.wilson_interval(0, 10)[0] == 0.0 and stats.wilson_interval(10, 10)[1] == 1.0
    assert stats.wilson_interval(0, 0) == (0.0, 1.0)


@pytest.mark.parametrize("k,n", [(-1, 5), (6, 5)])
def test_wilson_rejects_bad_counts(k, n):
    with pytest.raises(ValueError, match="0 <= k <= n"):
        stats.wilson_interval(k, n)


def test_mcnemar_exact_matches_binomtest():
    a = np.array([1, 1, 1, 1, 1, 1, 0, 0, 1, 0, 1, 1], bool)
    b = np.array([1, 0, 0, 0, 0, 1, 1, 0, 1, 0, 1, 0], bool)
    r = stats.mcnemar_exact(a, b)
    assert (r.only_a, r.only_b, r.n) == (5, 1, 12)
    assert r.p_value == pytest.approx(st.binomtest(1, 6, 0.5).pvalue, rel=1e-12)
    # Symmetric in A and B; no discordant pair gives p = 1.
    assert stats.mcnemar_exact(b, a).p_value == pytest.approx(r.p_value, rel=1e-12)
    assert stats.mcnemar_exact(a, a).p_value == 1.0


def test_paired_inputs_validated():
    with pytest.raises(ValueError, match="same length"):
        stats.mcnemar_exact(np.ones(3, bool), np.ones(4, bool))
    with pytest.raises(TypeError, match="boolean"):
        stats.mcnemar_exact(np.ones(3), np.ones(3))


def test_bootstrap_matches_index_resampling():
    # The multinomial shortcut and classic index resampling estimate the same distribution:
    # compare their 95 % bounds (Monte-Carlo error of 20k resamples at n=400 is ~0.002).
    rng = np.random.default_rng(1)
    a = rng.random(400) < 0.8
    b = a & (rng.random(400) < 0.9) | (~a & (rng.random(400) < 0.2))
    r = stats.paired_bootstrap(a, b, n_resamples=20_000, seed=3)
    assert r.drop == pytest.approx(a.mean() - b.mean(), abs=1e-15)
    idx = rng.integers(0, 400, size=(20_000, 400))
    d = (a[idx].mean(1) - b[idx].mean(1))
    lo, hi = np.quantile(d, [0.025, 0.975])
    assert r.low == pytest.approx(lo, abs=0.006)
    assert r.high == pytest.approx(hi, abs=0.006)
    assert r.low < r.drop < r.high
    # Deterministic given the seed.
    assert stats.paired_bootstrap(a, b, n_resamples=20_000, seed=3) == r


def test_paired_comparison_on_results():
    a = SimpleNamespace(
        correct1=np.array([1, 1, 1, 0], bool), correct5=np.ones(4, bool), indices=np.arange(4)
    )
    b = SimpleNamespace(
        correct1=np.array([1, 0, 1, 0], bool), correct5=np.ones(4, bool), indices=np.arange(4)
    )
    c = stats.paired_comparison(a, b, n_resamples=1000)
    assert c.acc_a == 0.75 and c.acc_b == 0.5 and c.drop == 0.25
    assert (c.only_a, c.only_b) == (1, 0)
    assert "drop +25.00 points" in str(c)
    assert stats.paired_comparison(a, b, metric="top5").drop == 0.0
    other = SimpleNamespace(correct1=b.correct1, correct5=b.correct5, indices=np.arange(1, 5))
    with pytest.raises(ValueError, match="different images"):
        stats.paired_comparison(a, other)
