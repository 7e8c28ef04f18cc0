"""Library baseline: qwix's uniform int-b weights, checked against its documented scheme."""

from __future__ import annotations

import numpy as np
import pytest

from paper_repro.feedforward import baselines as B


def _w(shape=(3, 3, 8, 16), seed=0):
    return np.random.default_rng(seed).laplace(size=shape).astype(np.float32)


def test_reference_scheme_levels_and_scale():
    w = _w()
    w_hat = B.uniform_reference(w, bits=4, channel_axis=-1)
    absmax = np.abs(w).max(axis=(0, 1, 2))
    scale = absmax / 7.5
    q = w_hat / scale
    np.testing.assert_allclose(q, np.round(q), atol=1e-4)  # integer codes times the scale
    assert q.min() >= -8 - 1e-4 and q.max() <= 7 + 1e-4
    # The top code 7 * scale sits below absmax: the +0.5 bound of qwix numerics.
    assert np.all(np.abs(w_hat).max(axis=(0, 1, 2)) <= absmax * 8 / 7.5 + 1e-6)
    # Error falls ~16x in variance from 4 to 8 bits (uniform steps, 16x finer).
    e4 = np.mean((w - w_hat) ** 2)
    e8 = np.mean((w - B.uniform_reference(w, bits=8)) ** 2)
    assert 150 < e4 / e8 < 350


def test_reference_per_tensor_and_zero_channel():
    w = _w((16, 4))
    w[:, 2] = 0.0
    out = B.uniform_reference(w, bits=4, channel_axis=-1)
    assert np.all(out[:, 2] == 0)
    assert len(np.unique(B.uniform_reference(w, bits=4, channel_axis=None))) <= 16


def test_reference_quantize_tree_report_and_no_mutation():
    params = {"conv": {"kernel": _w(), "bias": np.ones(16, np.float32)},
              "dw": {"depthwise_kernel": _w((3, 3, 16, 1), 1)}}
    before = params["conv"]["kernel"].copy()
    new, report = B.quantize_tree(params, bits=4, backend="reference")
    np.testing.assert_array_equal(params["conv"]["kernel"], before)
    np.testing.assert_array_equal(new["conv"]["bias"], params["conv"]["bias"])
    assert {r["path"] for r in report} == {"conv/kernel", "dw/depthwise_kernel"}
    assert all(0.95 < r["r"] < 1.0 for r in report)
    # depthwise: one scale per input channel (axis -2), so each of the 16 channels has its own
    dw = new["dw"]["depthwise_kernel"][..., 0]
    assert len({float(np.abs(dw[..., c]).max()) for c in range(16)}) > 8
    with pytest.raises(ValueError, match="backend"):
        B.quantize_tree(params, bits=4, backend="nope")


def test_qwix_matches_its_documented_scheme():
    pytest.importorskip("qwix", reason="qwix not installed: `pip install qwix==0.1.8` to run "
                                       "the library baseline check")
    w = _w()
    for bits in (4, 5, 8):
        for axis in (-1, -2, None):
            got = B.qwix_quantize(w, bits=bits, channel_axis=axis)
            ref = B.uniform_reference(w, bits=bits, channel_axis=axis)
            red = tuple(i for i in range(w.ndim) if axis is None or i != axis % w.ndim)
            absmax = np.abs(w).max(axis=red, keepdims=True)
            at_max = np.abs(w) == absmax
            # Away from the channel extremes the codes agree exactly. At w = -absmax,
            # w / scale is -7.5 up to one float32 ulp (XLA may divide by multiplying with the
            # reciprocal), so the code is -8 or -7: one step apart at most.
            np.testing.assert_allclose(got[~at_max], ref[~at_max], rtol=1e-6, atol=1e-7)
            step = absmax / (2 ** (bits - 1) - 0.5)
            assert np.all(np.abs(got - ref) <= step * 1.001)


def test_missing_qwix_says_how_to_install(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_qwix(name, *a, **k):
        if name == "qwix":
            raise ImportError("no qwix")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_qwix)
    assert not B.qwix_available()
    with pytest.raises(B.BaselineUnavailableError, match="qwix==0.1.8"):
        B.qwix_quantize(_w(), bits=4)


def test_compare_rows_are_one_table(tmp_path):
    pytest.importorskip("qwix", reason="qwix not installed: `pip install qwix==0.1.8`")
    import jax.numpy as jnp

    from paper_repro import results as R
    from paper_repro.feedforward import sweep as E

    rng = np.random.default_rng(0)
    kernel = rng.laplace(size=(12, 6)).astype(np.float32)
    x = rng.normal(size=(64, 1, 1, 12)).astype(np.float32)
    y = np.argmax(x.reshape(64, 12) @ kernel, axis=1).astype(np.int32)  # float: 100 %
    task = E.Task(name="toy", apply_fn=lambda p, v: jnp.reshape(v, (v.shape[0], -1))
                  @ p["dense"]["kernel"], params={"dense": {"kernel": kernel}},
                  data=(x, y), preprocess_mode=None, info={"model": "toy"}, batch_size=32)
    rows = B.compare(task, bits=(8,), log=lambda *_: None)
    assert [r["method"] for r in rows][0] == "float" and len(rows) == 4
    assert rows[0]["top1"] == 100.0
    assert all(r["r_mean"] > 0.999 for r in rows)  # 8 bits on a 72-weight Laplace matrix
    assert len({tuple(r) for r in rows}) == 1  # same columns: one CSV table
    R.write_csv(tmp_path / "t.csv", rows)
    assert "| float |" in B.markdown_table(rows)
