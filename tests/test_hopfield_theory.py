"""Replica-symmetric capacity with static coupling noise (docs/theory.md §3)."""

import math

import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import brentq
from scipy.special import erf

from paper_repro.hopfield import theory as ht


def test_float_capacity_is_ags():
    # AGS: 0.1379; the golden-section search is float32, good to ~1e-6.
    assert abs(float(ht.capacity(1.0)) - 0.1379) < 0.0005
    assert abs(float(ht.capacity_overlap(1.0)) - 0.967) < 0.001


def test_sign_capacity():
    r = math.sqrt(2 / math.pi)
    assert abs(float(ht.capacity(r)) - 0.1018) < 0.0015
    assert abs(float(ht.naive_capacity(r)) - 0.0879) < 5e-4


@pytest.mark.parametrize("r2, expected", [(0.8098, 0.1197), (0.8825, 0.1268),
                                          (0.9655, 0.1347), (0.9905, 0.1370)])
def test_table_capacities(r2, expected):
    # docs/theory.md table values are quoted to 4 decimals.
    assert abs(float(ht.capacity(math.sqrt(r2))) - expected) < 2e-4


def test_capacity_vectorized_and_monotone():
    r = jnp.linspace(0.6, 1.0, 9)
    ac = np.asarray(ht.capacity(r))
    assert ac.shape == (9,)
    assert np.all(np.diff(ac) > 0)
    np.testing.assert_allclose(ac[-1], float(ht.capacity(1.0)), rtol=1e-6)


def test_overlap_curve_solves_equations():
    alpha = jnp.array([0.0, 0.05, 0.1, 0.13, 0.2])
    for r in (1.0, 0.9):
        m = np.asarray(ht.overlap_curve(alpha, r))
        assert m[0] == 1.0
        assert np.isnan(m[-1])  # above capacity: no retrieval solution
        d2 = 1 / r**2 - 1
        for a, mm in zip(np.asarray(alpha)[1:-1], m[1:-1], strict=True):
            if np.isnan(mm):
                continue
            # plug back: m = erf(m / sqrt(2 s2)) with s2 = alpha (R + delta^2)
            def resid(s2, a=a, mm=mm, d2=d2):
                C = math.sqrt(2 / math.pi) / math.sqrt(s2) * math.exp(-mm**2 / (2 * s2))
                return s2 - a * (1 / (1 - C) ** 2 + d2)

            s2 = brentq(resid, 1e-4, 1.0)
            assert abs(erf(mm / math.sqrt(2 * s2)) - mm) < 1e-4  # float32 solution


def test_overlap_curve_shape_and_decreasing():
    m = np.asarray(ht.overlap_curve(jnp.linspace(0.01, 0.12, 12), jnp.array([1.0, 0.95])))
    assert m.shape == (2, 12)
    assert np.all(np.diff(m, axis=-1) <= 0)  # float32: m rounds to 1 at tiny alpha
    assert np.all(np.diff(m[:, 5:], axis=-1) < 0)
    assert np.all(m[0] >= m[1])


def test_gaussian_r_matches_science_table():
    # docs/theory.md, section 2 reference correlations (Gaussian), quoted to 4 decimals;
    # the fit's grid search is float32 and reproduces them to ~2e-4.
    assert abs(ht.gaussian_r("sign", 1)[0] - 0.7979) < 2e-4
    assert abs(ht.gaussian_r("linear", 2)[0] - 0.8999) < 2e-4
    assert abs(ht.gaussian_r("lloyd_max", 3)[0] - 0.9826) < 2e-4
    with pytest.raises(ValueError, match="top="):
        ht.gaussian_r("linear", 3, fit="max")


def test_theory_row_ternary():
    row = ht.theory_row("linear", 2)
    assert abs(row["r2"] - 0.8098) < 5e-4
    assert abs(row["alpha_c"] - 0.1197) < 5e-4
    assert row["n_levels"] == 3
