"""Entropy coding of codes: the stored model, exact round trips, refusal of bad streams."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from paper_repro.core import entropy as E


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_roundtrip_model_and_size(data):
    L = data.draw(st.integers(2, 256), label="L")
    n = data.draw(st.integers(0, 400), label="n")
    skew = data.draw(st.floats(0.05, 5.0), label="skew")
    seed = data.draw(st.integers(0, 2**32 - 1), label="seed")
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.full(L, skew))
    codes = rng.choice(L, size=n, p=p).astype(np.uint8)
    w = E.model_weights(codes, L)
    assert w.dtype == np.dtype("<u2") and w.shape == (L,)
    assert int(w.astype(np.int64).sum()) == E.TOTAL and w.min() >= 1
    if n:  # each weight is 1 plus the code's share of the rest, rounded down or up
        share = np.bincount(codes, minlength=L) * (E.TOTAL - L) / n
        assert np.all(np.abs(w - 1 - share) < 1)
    stream = E.encode(codes, w)
    assert len(stream) % 4 == 0
    np.testing.assert_array_equal(E.decode(stream, w, n), codes)
    assert E.coded_nbytes(codes, L) == 2 * L + len(stream)
    assert E.encode(codes, w) == stream  # deterministic


def test_rate_approaches_the_empirical_entropy():
    rng = np.random.default_rng(0)
    codes = np.clip(np.round(rng.laplace(size=200_000) * 2) + 7, 0, 14).astype(np.uint8)
    H = E.entropy_bits(codes, 15)
    counts = np.bincount(codes, minlength=15) / codes.size
    assert H == pytest.approx(-(counts[counts > 0] * np.log2(counts[counts > 0])).sum())
    rate = 8 * len(E.encode(codes, E.model_weights(codes, 15))) / codes.size
    assert H <= rate < H + 0.002  # within 0.2 millibits of the bound at this size
    assert 3.0 < H < 3.6  # and well under the 4 bits a packed code takes


def test_degenerate_layers_cost_almost_nothing_and_stay_exact():
    codes = np.full(100_000, 7, np.uint8)
    w = E.model_weights(codes, 15)
    assert w[7] == E.TOTAL - 14 and (np.delete(w, 7) == 1).all()
    stream = E.encode(codes, w)
    assert len(stream) <= 16
    np.testing.assert_array_equal(E.decode(stream, w, codes.size), codes)
    assert E.entropy_bits(codes, 15) == 0.0


def test_bad_streams_are_refused():
    rng = np.random.default_rng(1)
    codes = rng.integers(0, 31, 5000).astype(np.uint8)
    w = E.model_weights(codes, 31)
    stream = E.encode(codes, w)
    with pytest.raises(ValueError, match="unread words"):
        E.decode(stream, w, 4000)  # fewer codes than were encoded
    with pytest.raises(ValueError, match="whole 32-bit words"):
        E.decode(stream[:-1], w, 5000)
    with pytest.raises(ValueError, match="cannot fit"):
        E.decode(stream[:8], w, 10**12)  # a header claiming far more codes than the stream holds
    with pytest.raises(ValueError, match="sum to"):
        E.check_model(np.full(31, 7, np.uint16), 31)
    with pytest.raises(ValueError, match="0..3"):
        E.model_weights(np.array([4]), 4)
    with pytest.raises(ValueError, match="2..256"):
        E.model_weights(np.array([0]), 1)
