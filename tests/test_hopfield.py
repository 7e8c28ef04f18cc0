"""Hopfield simulation: couplings, dynamics invariants, measurements (docs/theory.md §3)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from paper_repro.core import correlation, quantize
from paper_repro.hopfield import network as hf

KEY = jax.random.PRNGKey(12345)  # differs from the pattern seeds used in _net


def _net(N=200, M=10, seed=0):
    xi = hf.patterns(jax.random.PRNGKey(seed), M, N)
    return xi, hf.hebbian(xi)


def test_patterns_and_hebbian():
    xi, T = _net(N=300, M=40)
    assert xi.shape == (40, 300) and xi.dtype == jnp.int8
    assert set(np.unique(np.asarray(xi))) == {-1, 1}
    T = np.asarray(T)
    assert T.shape == (300, 300) and T.dtype == np.float32
    np.testing.assert_array_equal(T, T.T)
    assert np.all(np.diag(T) == 0)
    off = T[~np.eye(300, dtype=bool)]
    np.testing.assert_array_equal(off, np.round(off))  # integers, exact in float32
    assert np.all(np.abs(off) % 2 == 0)  # M even: entries have the parity of M
    # off-diagonal variance is M; 90k nearly independent entries: 3 % relative tolerance
    assert abs(off.var() / 40 - 1) < 0.03
    # incremental build equals the full one
    T2 = hf.hebbian_update(hf.hebbian(xi[:15]), xi[15:])
    np.testing.assert_array_equal(np.asarray(T2), T)


def test_same_key_same_patterns():
    a = hf.patterns(jax.random.PRNGKey(3), 5, 50)
    b = hf.patterns(jax.random.PRNGKey(3), 5, 50)
    c = hf.patterns(jax.random.PRNGKey(4), 5, 50)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert np.any(np.asarray(a) != np.asarray(c))


def test_stored_patterns_are_fixed_points_at_tiny_load():
    xi, T = _net(N=400, M=4)
    st = hf.stability(T, xi)
    assert float(st["bits"]) == 1.0 and float(st["patterns"]) == 1.0
    s, steps, fixed = hf.sync_dynamics(T, xi)
    np.testing.assert_array_equal(np.asarray(s), np.asarray(xi, np.float32))
    assert int(steps) == 1 and bool(jnp.all(fixed))
    s, sweeps, fixed = hf.async_dynamics(T, xi[:2], KEY, max_sweeps=50)
    np.testing.assert_array_equal(np.asarray(s), np.asarray(xi[:2], np.float32))
    assert int(sweeps) == 1


def test_energy_non_increasing_under_async():
    xi, T = _net(N=60, M=15)  # alpha = 0.25: far above capacity, long descents
    s = jnp.where(jax.random.bernoulli(KEY, 0.5, (8, 60)), 1.0, -1.0)
    energies = [np.asarray(hf.energy(T, s))]
    key = jax.random.PRNGKey(1)
    for _ in range(6):
        key, sub = jax.random.split(key)
        s, _, _ = hf.async_dynamics(T, s, sub, max_sweeps=1)
        energies.append(np.asarray(hf.energy(T, s)))
    e = np.stack(energies)
    assert np.all(np.diff(e, axis=0) <= 0)  # integer energies: exact comparison
    assert np.all(e[-1] < e[0])
    # converged async states are fixed points of the synchronous rule too
    s_end, _, fixed = hf.async_dynamics(T, s, key, max_sweeps=50)
    assert bool(jnp.all(fixed))
    s_sync, steps, _ = hf.sync_dynamics(T, s_end)
    np.testing.assert_array_equal(np.asarray(s_sync), np.asarray(s_end))


def test_async_energy_non_increasing_quantized():
    xi, T = _net(N=60, M=15)
    Q, _ = hf.quantize_couplings(T, scheme="linear", bits=3, M=15, fit_sample=4096)
    s0 = jnp.where(jax.random.bernoulli(KEY, 0.5, (8, 60)), 1.0, -1.0)
    e0 = hf.energy(Q, s0)
    s, _, fixed = hf.async_dynamics(Q, s0, KEY, max_sweeps=50)
    # linear levels come as integers (level / step): exact energies
    assert np.all(np.asarray(hf.energy(Q, s)) <= np.asarray(e0))
    assert bool(jnp.all(fixed))


def test_sync_ends_in_fixed_point_or_two_cycle():
    xi, T = _net(N=150, M=30)
    s0 = jnp.where(jax.random.bernoulli(KEY, 0.5, (16, 150)), 1.0, -1.0)
    s, steps, fixed = hf.sync_dynamics(T, s0, max_steps=500)
    assert int(steps) < 500
    s1 = jnp.where(s @ T > 0, 1.0, jnp.where(s @ T < 0, -1.0, s))
    s2 = jnp.where(s1 @ T > 0, 1.0, jnp.where(s1 @ T < 0, -1.0, s1))
    np.testing.assert_array_equal(np.asarray(s2), np.asarray(s))  # period 1 or 2
    np.testing.assert_array_equal(np.asarray(fixed), np.all(np.asarray(s1 == s), -1))


def test_jit_matches_no_jit():
    xi, T = _net(N=40, M=8)
    s0 = hf.corrupt(KEY, xi[:3], 0.4)
    s_j, t_j, f_j = hf.sync_dynamics(T, s0, max_steps=10)
    e_j = hf.energy(T, s0)
    with jax.disable_jit():
        s_n, t_n, f_n = hf.sync_dynamics(T, s0, max_steps=10)
        e_n = hf.energy(T, s0)
    np.testing.assert_array_equal(np.asarray(s_j), np.asarray(s_n))
    assert int(t_j) == int(t_n)
    np.testing.assert_array_equal(np.asarray(e_j), np.asarray(e_n))
    # the sparse (flipped-neurons-only) field update gives the same trajectory as the full one
    s_full, t_full, _ = hf.sync_dynamics(T, s0, max_steps=10, sparse_fraction=0.0)
    np.testing.assert_array_equal(np.asarray(s_j), np.asarray(s_full))
    assert int(t_j) == int(t_full)


def _numpy_sync(T, s0, max_steps):
    """Plain NumPy synchronous dynamics (dense product per step, same stopping rule):
    ``(s, steps, fixed)``."""
    T, s = np.asarray(T, np.float64), np.asarray(s0, np.float64)
    s_prev, active, t = s, np.ones(len(s), bool), 0
    while t < max_steps and active.any():
        h = s @ T
        s_new = np.where(active[:, None], np.where(h > 0, 1.0, np.where(h < 0, -1.0, s)), s)
        settled = np.all(s_new == s, -1) | np.all(s_new == s_prev, -1)
        s_prev, s, active, t = s, s_new, active & ~settled, t + 1
    h = s @ T
    return s, t, np.all(np.where(h > 0, 1.0, np.where(h < 0, -1.0, s)) == s, -1)


@pytest.mark.parametrize("scheme,bits", [("float", None), ("sign", None), ("linear", 2)])
def test_sync_field_updates_are_exact_for_integer_couplings(scheme, bits):
    """Near capacity (long transients, a few flips per state, many states): every way of
    updating the fields -- flipped-neuron union, row by row, full product, padded batch --
    gives the dense NumPy trajectory exactly: integer couplings, exact sums."""
    N, M = 400, 60
    xi, T = _net(N=N, M=M, seed=3)
    Q, _ = hf.quantize_couplings(T, scheme=scheme, bits=bits, M=M, key=KEY, fit_sample=4096)
    assert bool(hf._exact_fields(Q))
    s0 = jnp.concatenate([xi[:21].astype(jnp.float32), hf.corrupt(KEY, xi[21:37], 0.5)])
    want = _numpy_sync(Q, s0, 60)
    assert want[1] > 10 and not want[2].all()  # long transients, some never settle
    for kw in ({}, dict(sparse_fraction=0.0, row_fraction=1.0),
               dict(sparse_fraction=0.0, row_fraction=0.0), dict(row_fraction=0.0)):
        s, steps, fixed = hf.sync_dynamics(Q, s0, max_steps=60, **kw)
        assert s.shape == (37, N) and fixed.shape == (37,)  # padding rows dropped
        np.testing.assert_array_equal(np.asarray(s), want[0], err_msg=str(kw))
        assert int(steps) == want[1]
        np.testing.assert_array_equal(np.asarray(fixed), want[2])


def test_exact_fields_detects_integer_couplings():
    xi, T = _net(N=100, M=10)
    assert bool(hf._exact_fields(T))
    Qe, _ = hf.quantize_couplings(T, scheme="exponential", bits=3, M=10, key=KEY,
                                  fit_sample=4096)
    assert not bool(hf._exact_fields(Qe))  # float levels: padding and row updates are off
    assert not bool(hf._exact_fields(T * 2.0**20))  # sums could exceed 2^24


def test_determinism_same_key():
    xi, T = _net(N=60, M=15)
    r1 = hf.retrieve(T, xi[:8], m0=0.5, key=KEY, dynamics="async", max_steps=50)
    r2 = hf.retrieve(T, xi[:8], m0=0.5, key=KEY, dynamics="async", max_steps=50)
    np.testing.assert_array_equal(np.asarray(r1["m"]), np.asarray(r2["m"]))
    np.testing.assert_array_equal(np.asarray(r1["m0"]), np.asarray(r2["m0"]))


def test_corrupt_flips_exact_count():
    xi, _ = _net(N=200, M=5)
    s = hf.corrupt(KEY, xi, 0.7)
    flips = np.sum(np.asarray(s) != np.asarray(xi, np.float32), axis=-1)
    np.testing.assert_array_equal(flips, 30)
    np.testing.assert_allclose(np.asarray(hf.overlap(xi, s)), 0.7, atol=1e-6)


def test_retrieval_below_capacity():
    xi, T = _net(N=1000, M=50)
    res = hf.retrieve(T, xi, m0=0.6, key=KEY)
    assert float(jnp.mean(res["m"])) > 0.99
    with pytest.raises(ValueError, match="key="):
        hf.retrieve(T, xi, m0=0.5)


def test_quantize_couplings():
    xi, T = _net(N=300, M=60)
    Q, info = hf.quantize_couplings(T, scheme="linear", bits=3, M=60, key=KEY, fit_sample=4096)
    assert np.all(np.diag(np.asarray(Q)) == 0)
    assert set(np.unique(np.asarray(Q))) <= {-3, -2, -1, 0, 1, 2, 3}  # integer level units
    # Same codes as quantize.encode/decode (the module uses a faster search method).
    q = quantize.Quantizer(levels=jnp.asarray(info["levels"]),
                           thresholds=jnp.asarray(info["thresholds"]), params={},
                           scheme="linear", bits=3)
    W = T / math.sqrt(60)
    ref = quantize.decode(quantize.encode(W, q), q) * (1 - jnp.eye(300))
    np.testing.assert_allclose(np.asarray(Q) * info["levels"][-1] / 3, np.asarray(ref),
                               rtol=1e-6)
    # r of a corr-fitted 3-bit linear quantizer on Gaussian couplings is 0.9763; the binomial
    # lattice of T and a 4096-element fitting sample move it by < 0.006.
    assert abs(info["r"] - 0.9763) < 0.006
    Qf, inf_f = hf.quantize_couplings(T, scheme="float")
    assert Qf is T and inf_f["r"] == 1.0
    _, info_s = hf.quantize_couplings(T, scheme="sign", M=60, scale="std", key=KEY,
                                      fit_sample=4096)
    assert abs(info_s["r"] - math.sqrt(2 / math.pi)) < 0.005
    with pytest.raises(ValueError, match="M"):
        hf.quantize_couplings(T, scheme="sign")
    with pytest.raises(ValueError, match="scale"):
        hf.quantize_couplings(T, scheme="sign", M=60, scale="bogus")


def test_lloyd_max_dither_escapes_lattice_trap():
    xi, T = _net(N=400, M=50)
    _, on = hf.quantize_couplings(T, scheme="lloyd_max", bits=3, M=50, fit_dither=True,
                                  fit_sample=1 << 15)
    _, off = hf.quantize_couplings(T, scheme="lloyd_max", bits=3, M=50, fit_dither=False,
                                   fit_sample=1 << 15)
    assert on["r"] > off["r"]
    assert abs(on["r"] - 0.9826) < 0.004  # Gaussian Lloyd-Max 3-bit r


def test_sheppard_vs_monte_carlo():
    # Pure Gaussian check: 2e5 pairs, standard error ~1e-3.
    k1, k2 = jax.random.split(KEY)
    r = 0.8
    x = jax.random.normal(k1, (200_000,))
    y = r * x + math.sqrt(1 - r * r) * jax.random.normal(k2, (200_000,))
    mc = float(jnp.mean(jnp.sign(x) == jnp.sign(y)))
    assert abs(mc - float(correlation.sheppard(r))) < 0.005
    # Hopfield fields of T and sign(T) at random states.
    xi, T = _net(N=400, M=60)
    Q, info = hf.quantize_couplings(T, scheme="sign", M=60, key=KEY, fit_sample=4096)
    agree = float(hf.field_agreement(T, Q, KEY, n_states=256))
    # 1e5 fields, rows share T: allow 4x the binomial standard error (~1.3e-3)
    assert abs(agree - float(correlation.sheppard(info["r"]))) < 0.006


def test_capacity_from_curve_and_extrapolation():
    alpha = np.array([0.10, 0.12, 0.14, 0.16])
    m = np.array([0.99, 0.95, 0.65, 0.4])
    assert abs(hf.capacity_from_curve(alpha, m, threshold=0.8) - 0.13) < 1e-12
    assert math.isnan(hf.capacity_from_curve(alpha, np.ones(4)))
    N = np.array([500, 1000, 2000, 4000])
    ext = hf.extrapolate_capacity(N, 0.138 + 0.4 / np.sqrt(N))
    assert abs(ext["alpha_inf"] - 0.138) < 1e-10 and abs(ext["slope"] - 0.4) < 1e-8


def test_experiment_overlap_sweep_tiny(tmp_path, monkeypatch):
    monkeypatch.setenv("PAPER_REPRO_RESULTS", str(tmp_path))
    from paper_repro.experiments import hopfield as ex

    cfg = dict(N=120, alphas=[0.05, 0.3], seeds=2, n_probe=8, max_steps=20,
               specs=[ex.spec("float"), ex.spec("sign")], scale="sqrt_m", seed=0)
    d = ex.compute_overlap_vs_alpha(cfg, name="t/ova")
    assert d["m"].shape == (2, 2, 2)
    assert np.all(d["m"][:, 0] > 0.95)  # alpha = 0.05 at N = 120 retrieves
    assert np.all(np.nanmean(d["m"][:, 1], -1) < d["m"][:, 0].mean(-1))
    d2 = ex.compute_overlap_vs_alpha(cfg, name="t/ova")  # resumed from the table
    np.testing.assert_array_equal(d["m"], d2["m"])
