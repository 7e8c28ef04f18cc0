"""Correlation analysis: the reference table of docs/theory.md, section 2, Sheppard, Monte-Carlo."""

import jax
import numpy as np
import pytest

from paper_repro.core import correlation as C
from paper_repro.core import quantize as Q
from paper_repro.experiments.quantizers import REFERENCE_R

# docs/theory.md, section 2, "Reference correlations" (unit variance, optimal parameters).
REFERENCE = REFERENCE_R


@pytest.mark.parametrize("density,scheme", list(REFERENCE))
def test_reference_table(density, scheme):
    for bits, ref in REFERENCE[(density, scheme)].items():
        r = float(Q.fit_moments(C.density_moments(density), scheme=scheme, bits=bits)["r"])
        # the table holds 4 decimals: the fitted optimum matches it to rounding
        assert abs(r - ref) < 1e-4, (density, scheme, bits, r, ref)


def test_sign_closed_form():
    # r of sign(w) is E|w| / sqrt(E w^2): sqrt(2/pi) for a Gaussian, 1/sqrt(2) for Laplace.
    for d, ref in (("gaussian", np.sqrt(2 / np.pi)), ("laplace", 1 / np.sqrt(2))):
        r = float(Q.fit_moments(C.density_moments(d), scheme="sign", bits=1)["r"])
        assert r == pytest.approx(ref, abs=1e-5)


@pytest.mark.parametrize("density", C.DENSITIES)
def test_density_r_matches_monte_carlo(density):
    # 2e6 samples: the sample r has standard error ~1e-4 at these r; tolerance 1e-3.
    key = jax.random.key(3)
    w = (jax.random.normal(key, (2_000_000,)) if density == "gaussian"
         else jax.random.laplace(key, (2_000_000,)) / np.sqrt(2))
    dm = C.density_moments(density)
    for scheme, bits in (("linear", 3), ("exponential", 4), ("lloyd_max", 2)):
        out = Q.fit_moments(dm, scheme=scheme, bits=bits)
        p = out["p"]
        lower = Q.lower_bounds(p, zero=Q.has_zero(scheme))
        levels, thr = Q.full_codebook(p, lower, zero=Q.has_zero(scheme))
        theory = float(C.density_r(levels, thr, density))
        assert theory == pytest.approx(float(out["r"]), abs=1e-6)
        w_hat = levels[np.searchsorted(np.asarray(thr), np.asarray(w))]
        assert float(C.sample_r(w, w_hat)) == pytest.approx(theory, abs=1e-3)


def test_sheppard_monte_carlo():
    # Two Gaussian fields with correlation r agree in sign with prob 1 - arccos(r)/pi.
    k1, k2 = jax.random.split(jax.random.key(0))
    x, e = jax.random.normal(k1, (400_000,)), jax.random.normal(k2, (400_000,))
    for r in (0.0, 0.5, 0.9, 0.99):
        y = r * x + np.sqrt(1 - r * r) * e
        agree = float(np.mean(np.sign(x) == np.sign(y)))
        # binomial standard error <= 0.0008 at n = 4e5; 4 sigma.
        assert agree == pytest.approx(float(C.sheppard(r)), abs=0.0032)
    assert float(C.sheppard(1.0)) == 1.0
    assert float(C.noise_strength(0.5)) == pytest.approx(3.0)


def test_sample_r_basics():
    w = np.arange(10.0)
    assert float(C.sample_r(w, 2 * w + 1)) == pytest.approx(1.0)
    assert float(C.sample_r(w, -w)) == pytest.approx(-1.0)
    assert float(C.sample_r(w, np.zeros(10))) == 0.0
    with pytest.raises(ValueError, match="shapes differ"):
        C.sample_r(w, w[:5])
    with pytest.raises(ValueError, match="unknown density"):
        C.density_moments("cauchy")


def test_histogram_moments_agree_with_sample():
    w = np.random.default_rng(0).laplace(size=(3, 50_000)).astype(np.float32)
    hist = C.histogram_moments_rows(w, bins=1024)
    jhist = C.moments_from_histogram(w[1], bins=1024)
    samp = C.moments_from_sample(w[1])
    t = np.array([0.1, 0.7, 2.0, 5.0], np.float32)
    row1 = jax.tree_util.tree_map(lambda a: a[1], hist)
    for m in (row1, jhist):
        c0, c1 = m.cdf(t)
        s0, s1 = samp.cdf(t)
        # histogram interpolation error is at most one bin's mass (~1/1024 of the range)
        np.testing.assert_allclose(c0, s0, atol=2e-3)
        np.testing.assert_allclose(c1, s1, atol=2e-3)
    assert float(row1.m2) == pytest.approx(float(samp.m2), rel=1e-5)


def test_sample_r_zero_variance_and_huge_values():
    v = np.full(12, 0.3, np.float32)
    assert float(C.sample_r(v, v)) == 1.0  # a constant reproduced exactly
    assert float(C.sample_r(v, v * np.float32(1 + 2**-22))) == 1.0  # to float rounding
    assert float(C.sample_r(v, v * 0.5)) == 0.0  # a different constant: nothing in common
    assert float(C.sample_r(np.zeros(5), np.zeros(5))) == 1.0
    assert float(C.sample_r(np.zeros(5), np.arange(5.0))) == 0.0
    w = np.random.default_rng(1).laplace(size=1000).astype(np.float32)
    w_hat = np.round(w * 4) / 4
    r = float(C.sample_r(w, w_hat))
    for big in (1e37, 3e38 / np.abs(w).max()):  # E[w^2] overflows float32 unscaled
        wb = (w * np.float32(big)).astype(np.float32)
        assert float(C.sample_r(wb, (w_hat * np.float32(big)).astype(np.float32))) == \
            pytest.approx(r, abs=1e-6)


def test_tables_are_scale_normalised():
    w = np.random.default_rng(2).laplace(size=(4, 3000)).astype(np.float32)
    for k in (-40, 0, 100):
        m = C.histogram_moments_rows(w * np.float32(2.0**k), bins=512)
        m1 = C.histogram_moments_rows(w, bins=512)
        np.testing.assert_array_equal(m.scale, m1.scale * np.float32(2.0**k))
        for f in ("x", "c0", "c1", "m2", "top"):
            np.testing.assert_array_equal(getattr(m, f), getattr(m1, f))
        assert np.all((m.top >= 1) & (m.top < 2))
    j = C.moments_from_histogram(w[0] * np.float32(1e37), bins=512)
    assert np.isfinite(float(j.m2)) and float(j.scale) > 1e36
    # the same partial means in the weights' units (float64: 1e37 * 1e37 overflows float32)
    np.testing.assert_allclose(np.asarray(j.c1, np.float64)[-1] * float(j.scale),
                               float(m1.c1[0, -1]) * float(m1.scale[0]) * 1e37, rtol=1e-5)
