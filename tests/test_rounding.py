"""Tests of the SQuant-style data-free rounding (paper_repro.feedforward.rounding)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from paper_repro.core import quantize as Q
from paper_repro.feedforward import digits, repairs
from paper_repro.feedforward import rounding as RD


def _nearest(w, *, scheme="linear", bits=4, granularity="channel", axis=-1, **kw):
    q = Q.fit(jnp.asarray(w, jnp.float32), scheme=scheme, bits=bits, fit="corr",
              granularity=granularity, channel_axis=axis, **kw)
    return q, np.asarray(Q.encode(jnp.asarray(w, jnp.float32), q))


def _decode(codes, q):
    return np.asarray(Q.decode(codes, q), np.float64)


@pytest.fixture(scope="module")
def digits_params():
    return digits.load_or_train()


def _kernels(digits_params):
    """The digits CNN's 3x3 convolutions and dense layers, plus a depthwise kernel."""
    rng = np.random.default_rng(0)
    out = [(p, np.asarray(x), Q.default_channel_axis(p, x))
           for p, x in Q.tree_paths(digits_params) if p.endswith("kernel")]
    dw = rng.laplace(size=(3, 3, 12, 1)).astype(np.float32) * 0.1
    out.append(("dw/depthwise_kernel", dw, -2))
    return out


def test_kernel_rows_layouts_round_trip():
    rng = np.random.default_rng(1)
    w = rng.normal(size=(3, 3, 4, 5))
    rows, back = RD.kernel_rows(w, out_axis=-1)
    assert rows.shape == (5, 4, 9)
    assert np.array_equal(back(rows), w)
    np.testing.assert_array_equal(rows[2, 1], w[:, :, 1, 2].reshape(-1))
    dw = rng.normal(size=(3, 3, 6, 1))  # Keras depthwise: output channels on axis -2
    rows, back = RD.kernel_rows(dw, out_axis=-2)
    assert rows.shape == (6, 1, 9)
    assert np.array_equal(back(rows), dw)
    dense = rng.normal(size=(7, 3))
    rows, back = RD.kernel_rows(dense, out_axis=-1)
    assert rows.shape == (3, 7, 1)
    assert np.array_equal(back(rows), dense)
    with pytest.raises(ValueError, match="spatial"):
        RD.kernel_rows(w, out_axis=0)
    with pytest.raises(ValueError, match="2 or more"):
        RD.kernel_rows(np.ones(4), out_axis=0)


@pytest.mark.parametrize("scheme", ["linear", "exponential"])
@pytest.mark.parametrize("granularity", ["tensor", "channel"])
def test_squant_only_adjacent_levels_and_less_accumulated_error(digits_params, scheme,
                                                                granularity):
    for path, w, ax in _kernels(digits_params):
        q, c0 = _nearest(w, scheme=scheme, granularity=granularity, axis=ax, gain=True)
        c1 = RD.squant_codes(w, c0, q, out_axis=ax)
        lo, hi = RD.neighbour_codes(w, q, out_axis=ax)
        assert np.all((c1 == lo) | (c1 == hi)), path  # each weight on a neighbouring level
        assert c1.dtype == c0.dtype and c1.shape == c0.shape
        e0 = RD.accumulated_errors(w, _decode(c0, q), q, out_axis=ax)
        e1 = RD.accumulated_errors(w, _decode(c1, q), q, out_axis=ax)
        assert e1["channel"].sum() < e0["channel"].sum(), path
        assert e1["channel"].max() <= e0["channel"].max() + 1e-12, path
        if w.ndim == 4:  # kernels of more than one tap
            assert e1["kernel"].sum() < e0["kernel"].sum(), path


def test_squant_uniform_levels_bound_half_a_step():
    """Weights inside the codebook's range, uniform levels: after the kernel stage every
    kernel's accumulated error is within half a step; after both stages every channel's is."""
    rng = np.random.default_rng(2)
    w = rng.uniform(-0.9, 0.9, size=(3, 3, 16, 8))
    q = Q.Quantizer(levels=jnp.linspace(-1.0, 1.0, 15), thresholds=jnp.linspace(
        -1.0, 1.0, 15)[:-1] + 1 / 14, params={}, scheme="linear", bits=4)
    step = 2.0 / 14
    c0 = np.asarray(Q.encode(jnp.asarray(w, jnp.float32), q))
    e0 = RD.accumulated_errors(w, _decode(c0, q), out_axis=-1)
    assert e0["kernel"].max() > step and e0["channel"].max() > step  # nearest does not cancel
    ck = RD.squant_codes(w, c0, q, out_axis=-1, channel=False)
    ek = RD.accumulated_errors(w, _decode(ck, q), out_axis=-1)
    assert ek["kernel"].max() <= step / 2 + 1e-9
    cc = RD.squant_codes(w, c0, q, out_axis=-1)
    ec = RD.accumulated_errors(w, _decode(cc, q), out_axis=-1)
    assert ec["channel"].max() <= step / 2 + 1e-9
    assert ec["kernel"].max() <= step + 1e-9  # the channel stage adds at most one flip each
    # each weight moved at most one level, and only where it is not exactly on a level
    assert np.abs(cc.astype(int) - c0.astype(int)).max() == 1
    # flips are the cheapest: the flipped weights sit nearer the midpoint than the average
    moved = cc != c0
    resid = np.abs(_decode(c0, q) - w) / step
    assert resid[moved].mean() > resid[~moved].mean() + 0.15


def test_channel_stage_alone_matches_mean_preserving_bound():
    """The channel stage on 1x1 kernels is a mean-preserving re-rounding: both bring every
    channel's sum within half a step of the float sum."""
    rng = np.random.default_rng(3)
    w = rng.uniform(-0.9, 0.9, size=(1, 1, 64, 16))
    q = Q.Quantizer(levels=jnp.linspace(-1.0, 1.0, 15), thresholds=jnp.linspace(
        -1.0, 1.0, 15)[:-1] + 1 / 14, params={}, scheme="linear", bits=4)
    c0 = np.asarray(Q.encode(jnp.asarray(w, jnp.float32), q))
    sq = RD.squant_codes(w, c0, q, out_axis=-1)
    mp = repairs.mean_preserving_codes(w, c0, q, channel_axis=-1)
    for c in (sq, mp):
        err = RD.accumulated_errors(w, _decode(c, q), out_axis=-1)["channel"]
        assert err.max() <= 1 / 14 + 1e-9


def test_squant_leaves_clipped_weights_and_is_deterministic():
    rng = np.random.default_rng(4)
    w = rng.normal(size=(3, 3, 8, 4)).astype(np.float32)
    w[0, 0, 0, 0] = 50.0  # far beyond the top level: no level above to flip to
    q, c0 = _nearest(w, scheme="exponential", granularity="tensor", axis=-1)
    c1 = RD.squant_codes(w, c0, q, out_axis=-1)
    assert c1[0, 0, 0, 0] in (c0[0, 0, 0, 0], c0[0, 0, 0, 0] - 1)
    assert np.array_equal(c1, RD.squant_codes(w, c0, q, out_axis=-1))


def test_squant_refuses_mismatched_inputs():
    w = np.ones((3, 3, 2, 2))
    q, c0 = _nearest(w + np.arange(4).reshape(2, 2) * 0.1, granularity="channel", axis=-1)
    with pytest.raises(ValueError, match="shape"):
        RD.squant_codes(w, c0[..., :1], q, out_axis=-1)
    with pytest.raises(ValueError, match="another axis"):
        RD.squant_codes(w, c0, q, out_axis=-2)


def test_apply_squant_updates_tree_and_report(digits_params):
    qp, report = Q.quantize_tree(digits_params, scheme="linear", bits=3,
                                 granularity="channel", gain=True)
    new, rep = RD.apply_squant(qp, report, digits_params)
    flat_new = dict(Q.tree_paths(new))
    flat_f = dict(Q.tree_paths(digits_params))
    for r0, r1 in zip(report, rep):
        w_hat = np.asarray(flat_new[r1["path"]])
        np.testing.assert_array_equal(w_hat, np.asarray(Q.decode(r1["codes"], r1["quantizer"])))
        assert r1["quantizer"] is r0["quantizer"]
        w = np.asarray(flat_f[r1["path"]])
        assert r1["r"] == pytest.approx(np.corrcoef(w.ravel(), w_hat.ravel())[0, 1], abs=1e-5)
    # biases untouched
    for p, x in Q.tree_paths(digits_params):
        if p.endswith("bias"):
            assert np.array_equal(np.asarray(flat_new[p]), np.asarray(x))
    # some codes changed, and the channel sums are closer to the float ones
    assert any(not np.array_equal(np.asarray(a["codes"]), np.asarray(b["codes"]))
               for a, b in zip(report, rep))
    old_q = dict(Q.tree_paths(qp))
    for r in rep:
        w = np.asarray(flat_f[r["path"]], np.float64)
        ax = Q.default_channel_axis(r["path"], w)
        before = RD.accumulated_errors(w, np.asarray(old_q[r["path"]]), out_axis=ax)
        after = RD.accumulated_errors(w, np.asarray(flat_new[r["path"]]), out_axis=ax)
        assert after["channel"].sum() < before["channel"].sum()
