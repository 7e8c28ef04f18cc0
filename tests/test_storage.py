"""Bit-packed storage: packing properties, bit-exact round trips, honest size accounting."""

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from paper_repro import cli
from paper_repro.core import quantize as Q
from paper_repro.core import storage as S


def keras_tree(seed=0):
    """A small Keras-layout tree: conv, depthwise, pointwise, dense kernels, BN, biases."""
    rng = np.random.default_rng(seed)
    lap = lambda *s: rng.laplace(size=s).astype(np.float32)  # noqa: E731
    return {
        "conv1": {"kernel": lap(3, 3, 3, 8)},
        "conv1_bn": {"gamma": np.ones(8, np.float32), "beta": lap(8),
                     "moving_mean": lap(8), "moving_variance": np.abs(lap(8)) + 0.1},
        "conv_dw_1": {"depthwise_kernel": lap(3, 3, 8, 1)},
        "sep": {"depthwise_kernel": lap(3, 3, 8, 2), "pointwise_kernel": lap(1, 1, 16, 12),
                "bias": lap(12)},
        "fc": {"kernel": rng.normal(size=(12, 10)).astype(np.float32), "bias": lap(10)},
    }


def np_tree(tree):
    return {k: {v: np.asarray(a) for v, a in d.items()} for k, d in tree.items()}


# --- bit packing ---------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_pack_unpack_roundtrip_and_size(data):
    bits = data.draw(st.integers(1, 8), label="bits")
    codes = np.asarray(data.draw(st.lists(st.integers(0, 2**bits - 1), max_size=300)), np.uint8)
    buf = S.pack_codes(codes, bits)
    assert buf.dtype == np.uint8
    assert buf.size == math.ceil(codes.size * bits / 8) == S.packed_size(codes.size, bits)
    np.testing.assert_array_equal(S.unpack_codes(buf, bits, codes.size), codes)
    np.testing.assert_array_equal(S.unpack_codes(buf.tobytes(), bits, codes.size), codes)


@pytest.mark.parametrize("bits", range(1, 9))
def test_zero_level_codebooks_fit_in_b_bits(bits):
    # linear / exponential at b bits have 2^b - 1 levels; their codes still take b bits
    assert S.code_bits(2**bits - 1 if bits > 1 else 2) == bits
    assert S.code_bits(2**bits) == bits


def test_bit_layout_is_lsb_first():
    # codes 1, 2, 3 at 2 bits: stream bits 1 0 | 0 1 | 1 1 -> 0b00111001
    np.testing.assert_array_equal(S.pack_codes([1, 2, 3], 2), [0b00111001])
    np.testing.assert_array_equal(S.pack_codes([5, 3], 3), [0b00011101])  # 101 | 110 -> LSB first


def test_pack_errors_say_what_is_wrong():
    with pytest.raises(ValueError, match="0..3"):
        S.pack_codes([4], 2)
    with pytest.raises(ValueError, match="1..8"):
        S.pack_codes([0], 9)
    with pytest.raises(ValueError, match="need 2 bytes"):
        S.unpack_codes(np.zeros(1, np.uint8), 3, 5)


# --- round trips against the quantizer ------------------------------------------------------------


# Fixed bases and max-anchored fits keep the compile-heavy searches out of this fast test;
# the stored codes and codebooks do not depend on how the levels were found.
@pytest.mark.parametrize("scheme,bits,granularity,kw", [
    ("linear", 4, "tensor", dict(fit="max")),
    ("exponential", 5, "channel", dict(fit="max", base=0.6)),
    ("sign", 1, "channel", dict(fit="corr")),
])
def test_quantize_tree_roundtrip_bit_exact(tmp_path, scheme, bits, granularity, kw):
    params = keras_tree()
    new, report = Q.quantize_tree(params, scheme=scheme, bits=bits, granularity=granularity,
                                  **kw)
    meta = {"model": "tiny", "scheme": scheme, "bits": bits, "granularity": granularity}
    sizes = S.save_packed(tmp_path / "m.prq", params, report, meta=meta)
    loaded, got_meta = S.load_packed(tmp_path / "m.prq")
    want = np_tree(new)
    assert list(S.flatten(loaded)) == list(S.flatten(params))  # same leaves, same order
    for path, w in S.flatten(want).items():
        x = S.flatten(loaded)[path]
        assert x.dtype == w.dtype and x.shape == w.shape, path
        assert np.array_equal(x, w), path
    assert S.trees_equal(loaded, want)
    assert got_meta["model"] == "tiny" and got_meta["format_version"] == S.FORMAT_VERSION
    assert sizes["packed_bytes"] == (tmp_path / "m.prq").stat().st_size
    assert {e["path"] for e in S.describe(S.read_packed(tmp_path / "m.prq"))["leaves"]
            if e["kind"] == "quantized"} == {r["path"] for r in report}


def np_encode(w, q):
    """Nearest-level codes in NumPy (the hand-built codebooks below need no jit compile)."""
    if q.granularity == "tensor":
        return np.searchsorted(q.thresholds, w).astype(np.uint8)
    moved = np.moveaxis(w, q.channel_axis, 0)
    codes = np.stack([np.searchsorted(t, r) for t, r in zip(q.thresholds, moved, strict=True)])
    return np.moveaxis(codes, 0, q.channel_axis).astype(np.uint8)


def np_decode(codes, q):
    if q.granularity == "tensor":
        return q.levels[codes]
    moved = np.moveaxis(codes, q.channel_axis, 0)
    w = np.stack([lv[c] for lv, c in zip(q.levels, moved, strict=True)])
    return np.moveaxis(w, 0, q.channel_axis)


def hand_quantizer(levels, *, scheme, bits, granularity, channel_axis=-1):
    levels = np.asarray(levels, np.float32)
    thresholds = 0.5 * (levels[..., 1:] + levels[..., :-1])
    return Q.Quantizer(levels=levels, thresholds=thresholds, params={}, scheme=scheme,
                       bits=bits, granularity=granularity, channel_axis=channel_axis)


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("zero", [False, True])
@pytest.mark.parametrize("symmetric", [False, True])
def test_every_width_and_codebook_form(bits, zero, symmetric):
    """Codebooks of 2^b and 2^b - 1 levels, symmetric ("half") or not ("full"), per tensor
    and per channel (depthwise layout, channel axis 2): decoding gives levels[codes]."""
    if zero and bits == 1:
        pytest.skip("a zero level plus a sign needs 2 bits")
    rng = np.random.default_rng(bits)
    w = rng.laplace(size=(3, 3, 5, 1)).astype(np.float32)
    L = 2**bits - int(zero)
    K = L // 2
    p = np.sort(rng.uniform(0.05, 3.0, size=(5, K))).astype(np.float32)
    full = S._full_from_half(p, L)
    if not symmetric:
        full = np.sort(full + rng.normal(scale=1e-3, size=full.shape).astype(np.float32))
    report = []
    for name, gran, lv in (("t", "tensor", full[0]), ("c", "channel", full)):
        q = hand_quantizer(lv, scheme="linear" if zero else "lloyd_max", bits=bits,
                           granularity=gran, channel_axis=2)
        report.append({"path": f"{name}/depthwise_kernel", "codes": np_encode(w, q),
                       "quantizer": q})
    params = {"t": {"depthwise_kernel": w}, "c": {"depthwise_kernel": w}}
    packed = S.pack_tree(params, report)
    forms = {e["codebook"]["form"] for e in packed.header["leaves"]}
    assert forms == ({"half"} if symmetric else {"full"})
    out = S.unpack_tree(S.PackedModel.from_bytes(packed.to_bytes()))
    for row in report:
        want = np_decode(row["codes"], row["quantizer"])
        layer = row["path"].split("/")[0]
        assert np.array_equal(out[layer]["depthwise_kernel"], want)
    assert all(e["codes"]["bits"] == bits for e in packed.header["leaves"])


# --- size accounting ------------------------------------------------------------------------------


def test_sizes_add_up_and_approach_32_over_b(tmp_path):
    rng = np.random.default_rng(1)
    w = rng.laplace(size=(256, 512)).astype(np.float32)
    params = {"fc": {"kernel": w, "bias": np.zeros(512, np.float32)}}
    levels = S._full_from_half(np.linspace(0.1, 3, 15, dtype=np.float32), 31)
    q = hand_quantizer(levels, scheme="exponential", bits=5, granularity="tensor")
    report = [{"path": "fc/kernel", "codes": np_encode(w, q), "quantizer": q, "r": 0.99}]
    s = S.save_packed(tmp_path / "a.prq", params, report, meta={"m": 1})
    assert s["packed_bytes"] == (tmp_path / "a.prq").stat().st_size
    assert s["packed_bytes"] == (s["codes_bytes"] + s["codebook_bytes"] + s["float_kept_bytes"]
                                 + s["header_bytes"])
    assert s["float_bytes"] == 4 * (w.size + 512)
    assert s["codes_bytes"] == math.ceil(w.size * 5 / 8)
    assert s["codebook_bytes"] == 15 * 4  # the positive half, float32
    assert s["float_kept_bytes"] == 512 * 4
    assert s["ideal_ratio"] == pytest.approx(6.4)
    assert 6.2 < s["ratio"] < 6.4  # overheads: bias, codebook, header
    assert S.zlib_bytes(S.read_packed(tmp_path / "a.prq")) > 0
    assert 0 < S.code_entropy_bits(S.read_packed(tmp_path / "a.prq")) <= 5


def test_bad_files_raise_clear_errors(tmp_path):
    f = tmp_path / "x.prq"
    f.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="bad magic"):
        S.load_packed(f)
    params = keras_tree()
    q = hand_quantizer([-1.0, 0.0, 1.0], scheme="linear", bits=2, granularity="tensor")
    report = [{"path": "fc/kernel", "codes": np_encode(params["fc"]["kernel"], q),
               "quantizer": q}]
    blob = S.pack_tree(params, report).to_bytes()
    f.write_bytes(blob[:-7])
    with pytest.raises(ValueError, match="truncated"):
        S.load_packed(f)
    with pytest.raises(FileNotFoundError):
        S.load_packed(tmp_path / "missing.prq")
    with pytest.raises(ValueError, match="not in params"):
        S.pack_tree({"a": {"kernel": np.zeros(3, np.float32)}}, report)
    with pytest.raises(ValueError, match="summary"):
        S.pack_tree(params, Q.summary(report))
    with pytest.raises(TypeError, match="nested dicts"):
        S.pack_tree([np.zeros(3)], [])


# --- command line ---------------------------------------------------------------------------------


def test_pack_and_unpack_commands(tmp_path, capsys):
    from paper_repro.feedforward import weights as W

    params = S.synthetic_params("mobilenet", 0.25, seed=0)
    h5 = W.save_h5(params, tmp_path / "mobilenet_2_5_224_tf.h5")
    out = tmp_path / "m.prq"
    rc = cli.main(["pack", "--model", "mobilenet", "--alpha", "0.25", "--weights", str(h5),
                   "--scheme", "sign", "--bits", "1", "--select",
                   r"conv1/kernel|conv_preds/kernel", "--out", str(out), "--json"])
    assert rc == 0
    rep = json.loads(capsys.readouterr().out)
    assert {"float_bytes", "packed_bytes", "ratio"} <= set(rep)
    assert rep["roundtrip_exact"] and rep["packed_bytes"] == out.stat().st_size
    assert rep["meta"]["scheme"] == "sign" and rep["n_quantized_leaves"] == 2

    assert cli.main(["unpack", str(out), "--json", "--out", str(tmp_path / "deq.h5")]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["meta"]["bits"] == 1 and info["sizes"]["packed_bytes"] == rep["packed_bytes"]
    loaded, _ = S.load_packed(out)
    assert S.trees_equal(W.load("mobilenet", tmp_path / "deq.h5", alpha=0.25), loaded)
    assert cli.main(["unpack", str(out)]) == 0
    assert "conv1/kernel" in capsys.readouterr().out


def test_without_shared_data_the_sweep_uses_a_synthetic_tree(tmp_path, monkeypatch):
    monkeypatch.setenv("PAPER_REPRO_SHARED_DATA", str(tmp_path / "absent"))
    src = S.weights_source("mobilenet", 0.25)
    assert src["kind"] == "synthetic-laplace" and "PAPER_REPRO_SHARED_DATA" in src["note"]
    params = S.model_params("mobilenet", 0.25, src)
    assert S.trees_equal(params, S.synthetic_params("mobilenet", 0.25, seed=0))
    assert params["conv1"]["kernel"].dtype == np.float32


def test_codebooks_stored_as_parameters_rebuild_bit_exactly():
    rng = np.random.default_rng(3)
    params = {"c1": {"kernel": rng.laplace(size=(3, 3, 8, 16)).astype(np.float32)},
              "dw": {"depthwise_kernel": rng.laplace(size=(3, 3, 16, 1)).astype(np.float32)},
              "bn": {"gamma": np.ones(16, np.float32)}}
    for scheme, gran, form, width in (("linear", "channel", "params", 1),
                                      ("exponential", "channel", "params", 2),
                                      ("pow2", "tensor", "params", 1),
                                      ("lloyd_max", "channel", "half", 16)):
        new, report = Q.quantize_tree(params, scheme=scheme, bits=5, granularity=gran,
                                      gain=True)
        packed = S.pack_tree(params, report, meta={})
        entries = [e for e in packed.header["leaves"] if e["kind"] == "quantized"]
        assert {e["codebook"]["form"] for e in entries} == {form}
        assert all(e["codebook"]["shape"][-1] == width for e in entries)
        back = S.unpack_tree(packed)
        for k in new:
            for v in new[k]:
                assert np.array_equal(np.asarray(new[k][v]), back[k][v]), (scheme, k, v)
