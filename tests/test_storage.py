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
    assert got_meta["model"] == "tiny" and got_meta["format_version"] == 3  # no fill leaf
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
    from paper_repro.experiments.storage import synthetic_params
    from paper_repro.feedforward import weights as W

    params = synthetic_params("mobilenet", 0.25, seed=0)
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


def test_pack_compact_folds_batch_norms_into_codebooks(tmp_path, capsys):
    """``pack --compact``: format 4, batch norms folded (the same network), smaller file."""
    import jax

    from paper_repro.experiments.storage import synthetic_params
    from paper_repro.feedforward import models
    from paper_repro.feedforward import weights as W

    params = synthetic_params("mobilenet", 0.25, seed=0)
    h5 = W.save_h5(params, tmp_path / "mobilenet_2_5_224_tf.h5")
    q = ["--scheme", "exponential", "--bits", "5", "--granularity", "channel", "--gain"]
    out = {}
    for tag, extra in (("plain", []), ("compact", ["--compact"])):
        f = tmp_path / f"{tag}.prq"
        assert cli.main(["pack", "--model", "mobilenet", "--alpha", "0.25", "--weights", str(h5),
                         *q, *extra, "--out", str(f), "--json"]) == 0
        out[tag] = (json.loads(capsys.readouterr().out), *S.load_packed(f))
    (a, pa, ma), (b, pb, mb) = out["plain"], out["compact"]
    assert ma["format_version"] == 3 and mb["format_version"] == 4 and b["roundtrip_exact"]
    assert b["meta"]["compact"] == {"folded_batch_norms": 27} and b["fill_leaves"] >= 3 * 27
    assert b["packed_bytes"] < a["packed_bytes"] and b["float_kept_bytes"] < a["float_kept_bytes"]
    apply = models.make_apply(models.get("mobilenet", 0.25))
    x = jax.random.uniform(jax.random.key(0), (2, 224, 224, 3), minval=-1, maxval=1)
    ya, yb = np.asarray(apply(pa, x)), np.asarray(apply(pb, x))
    assert np.abs(yb - ya).max() <= 1e-4 * np.abs(ya).max()
    # unpack describes and writes a format-4 file like any other
    f = tmp_path / "compact.prq"
    assert cli.main(["unpack", str(f), "--json", "--out", str(tmp_path / "deq.h5")]) == 0
    info = json.loads(capsys.readouterr().out)
    fills = [r for r in info["leaves"] if r["kind"] == "fill"]
    assert len(fills) == b["fill_leaves"] and all(r["bytes"] == 0 for r in fills)
    assert S.trees_equal(W.load("mobilenet", tmp_path / "deq.h5", alpha=0.25), pb)
    assert cli.main(["unpack", str(f)]) == 0
    assert "conv1_bn/gamma" in capsys.readouterr().out


def test_storage_experiment_needs_real_weights_and_its_smoke_run_is_synthetic():
    from paper_repro.experiments import base
    from paper_repro.experiments import storage as ES

    exp = base.get("storage")
    assert exp.needs(False) == ("mobilenet-0.75-keras",) and exp.needs(True) == ()
    assert ES.default_config(False)["source"]["kind"] == "keras"
    assert ES.default_config(True)["source"]["kind"] == "synthetic-laplace"
    params = ES.synthetic_params("mobilenet", 0.25, seed=0)
    assert S.trees_equal(params, ES.synthetic_params("mobilenet", 0.25, seed=0))
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


# --- integrity: checksum, header validation, refusal of damaged and foreign files ----------------


def small_packed(coding="fixed"):
    """A small packed tree with every stored form: parameter codebooks (exponential, per
    channel and per tensor), Lloyd-Max-like halves, full codebooks, batch norm kept in float,
    float16 and bfloat16 leaves (one quantized, one kept). ``(params, quantized tree, packed)``."""
    import ml_dtypes

    params = keras_tree()
    params["half"] = {"kernel": params["fc"]["kernel"].astype(np.float16),
                      "bias": np.arange(10, dtype=np.float32).astype(ml_dtypes.bfloat16)}
    # large enough for entropy coding to pay for its model (smaller layers stay bit-packed)
    params["wide"] = {"kernel": np.random.default_rng(6).laplace(size=(40, 30)).astype(
        np.float32)}
    new, report = Q.quantize_tree(params, scheme="exponential", bits=4, fit="max",
                                  granularity="channel",
                                  select=r"conv1/kernel|sep/pointwise_kernel|half/kernel|"
                                         r"wide/kernel")
    w = params["conv_dw_1"]["depthwise_kernel"]
    rng = np.random.default_rng(5)
    for path, lv in (("conv_dw_1/depthwise_kernel",  # symmetric: stored as a half
                      S._full_from_half(np.sort(rng.uniform(0.1, 2, 8)).astype(np.float32), 16)),
                     ("sep/depthwise_kernel",  # asymmetric: stored in full
                      np.sort(rng.normal(size=16)).astype(np.float32))):
        layer = path.split("/")[0]
        arr = params[layer][path.split("/")[1]]
        q = hand_quantizer(lv, scheme="lloyd_max", bits=4, granularity="tensor")
        report.append({"path": path, "codes": np_encode(arr, q), "quantizer": q})
        new[layer] = {**new[layer], path.split("/")[1]: np_decode(report[-1]["codes"], q)}
    assert w is params["conv_dw_1"]["depthwise_kernel"]
    packed = S.pack_tree(params, report, meta={"model": "tiny"}, coding=coding)
    forms = {e["codebook"]["form"] for e in packed.header["leaves"] if e["kind"] == "quantized"}
    assert forms == {"params", "half", "full"}
    return params, np_tree(new), packed


def regions(packed):
    """Byte ranges of a packed file by class: magic, header length, header JSON, checksum, and
    each payload blob (``codebook``, ``model``, ``codes``, ``array:<path>``)."""
    H = len(packed.stored_header())
    start = S._PREFIX + H
    out = {"magic": range(0, 8), "header_length": range(8, 12),
           "header_json": range(12, start)}
    for e in packed.header["leaves"]:
        path = "/".join(e["keys"])
        locs = ([(f"array:{path}", e)] if e["kind"] == "array" else
                [(f"codebook:{path}", e["codebook"]), (f"codes:{path}", e["codes"])]
                + ([(f"model:{path}", e["codes"]["model"])] if "model" in e["codes"] else []))
        for name, loc in locs:
            if loc["nbytes"]:
                out[name] = range(start + loc["offset"], start + loc["offset"] + loc["nbytes"])
    total = packed.file_nbytes()
    out["checksum"] = range(total - 32, total)
    return out


def assert_one_line_error(excinfo, name):
    msg = str(excinfo.value)
    assert "\n" not in msg and msg.startswith(str(name)), msg


def refused(blob, f, allow_unverified=False):
    f.write_bytes(blob)
    with pytest.raises(ValueError) as ei:
        S.load_packed(f, allow_unverified=allow_unverified)
    assert_one_line_error(ei, f)
    return str(ei.value)


@pytest.mark.parametrize("coding", ["fixed", "ans"])
def test_every_flipped_byte_is_refused_with_one_line(tmp_path, coding):
    params, want, packed = small_packed(coding)
    f = tmp_path / "m.prq"
    S.save_packed(f, packed)
    loaded, _ = S.load_packed(f)
    assert S.trees_equal(loaded, want)  # float16 / bfloat16 leaves included
    blob = f.read_bytes()
    reg = regions(packed)
    assert sum(len(r) for r in reg.values()) == len(blob)  # the classes tile the file
    assert any(k.startswith("array:conv1_bn/moving_variance") for k in reg)
    if coding == "ans":
        assert any(k.startswith("model:") for k in reg)
    seen = {}
    for name, r in reg.items():
        for pos in r:
            for mask in (0x01, 0x80):  # low bit, and the sign bit of a little-endian float
                bad = bytearray(blob)
                bad[pos] ^= mask
                msg = refused(bytes(bad), f)
                seen.setdefault(name.split(":")[0], set()).add(msg.split(": ", 2)[1][:20])
    assert {"magic", "header_length", "header_json", "checksum", "codebook", "codes",
            "array"} <= set(seen)
    assert "not a packed paper-repro model (bad" in next(iter(seen["magic"])) or seen["magic"]


def reseal(header, data):
    """A format-3 file with a valid checksum around any header: exercises the validation."""
    return S.PackedModel(header=header, data=data).to_bytes()


def test_header_fields_are_validated_even_with_a_valid_checksum(tmp_path):
    import copy

    _, want, packed = small_packed()
    f = tmp_path / "m.prq"
    leaves = packed.header["leaves"]
    qi = next(i for i, e in enumerate(leaves) if e["kind"] == "quantized"
              and e["granularity"] == "channel")
    ai = next(i for i, e in enumerate(leaves) if e["kind"] == "array")

    def edited(fn):
        h = copy.deepcopy(packed.header)
        fn(h)
        return reseal(h, packed.data)

    cases = {
        "bits": lambda h: h["leaves"][qi].update(bits=28),
        "bits 40": lambda h: h["leaves"][qi].update(bits=40),
        "levels": lambda h: h["leaves"][qi].update(n_levels=31),
        "channel axis": lambda h: h["leaves"][qi].update(channel_axis=7),
        "channel axis -1": lambda h: h["leaves"][qi].update(channel_axis=-1),
        "offset": lambda h: h["leaves"][ai].update(offset=-4),
        "overlap": lambda h: h["leaves"][ai].update(offset=h["leaves"][ai]["offset"] - 4),
        "size": lambda h: h["leaves"][ai].update(nbytes=h["leaves"][ai]["nbytes"] + 4),
        "shape": lambda h: h["leaves"][ai].update(shape=[10**9, 10**9]),
        "dtype": lambda h: h["leaves"][ai].update(dtype="float128"),
        "raw bytes dtype": lambda h: h["leaves"][ai].update(dtype="<V2"),
        "missing key": lambda h: h["leaves"][qi].pop("codebook"),
        "missing codes bits": lambda h: h["leaves"][qi]["codes"].pop("bits"),
        "scheme": lambda h: h["leaves"][qi].update(scheme="cubic"),
        "form": lambda h: h["leaves"][qi]["codebook"].update(form="half"),
        "coding": lambda h: h["leaves"][qi]["codes"].update(coding="zip"),
        "bool": lambda h: h["leaves"][qi].update(bits=True),
        "kind": lambda h: h["leaves"][ai].update(kind="tensor"),
        "duplicate": lambda h: h["leaves"].append(h["leaves"][ai]),
        "version": lambda h: h.update(format_version=S.FORMAT_VERSION + 1),
        "leaves": lambda h: h.update(leaves={}),
    }
    for name, fn in cases.items():
        msg = refused(edited(fn), f)
        assert "corrupt packed model" in msg, (name, msg)
    assert "bits=28 out of range" in refused(edited(cases["bits"]), f)
    assert "newer than this package" in refused(edited(cases["version"]), f)
    # extra bytes after the data, a header length past the end, a huge header length
    assert "accounts for" in refused(reseal(packed.header, packed.data + b"\0" * 4), f)
    body = bytearray(packed.to_bytes()[:-32])
    body[8:12] = (2**31).to_bytes(4, "little")
    assert "does not fit" in refused(bytes(body) + bytes(32), f)
    # payload checks after the checksum: codes outside the codebook, non-zero padding bits
    h = copy.deepcopy(packed.header)
    e = h["leaves"][qi]
    data = bytearray(packed.data)
    c = e["codes"]
    data[c["offset"]:c["offset"] + c["nbytes"]] = b"\xff" * c["nbytes"]  # code 15 of 15 levels
    assert "outside the 15-level codebook" in refused(reseal(h, bytes(data)), f)


def test_resealed_header_flips_decode_identically_or_are_refused(tmp_path):
    """Every one-byte change of the header JSON behind a valid checksum either decodes to the
    same arrays (a renamed key, r, meta) or is refused with one line; no other exception."""
    _, want, packed = small_packed("ans")
    raw = packed.header_bytes()
    f = tmp_path / "m.prq"
    leaf_bytes = lambda p: [S.decode_leaf(p, e).tobytes() for e in p.header["leaves"]]  # noqa
    want_arrays = leaf_bytes(packed)
    outcomes = {"refused": 0, "same": 0}
    for pos in range(len(raw)):
        for mask in (0x01, 0x04):
            bad = bytearray(raw)
            bad[pos] ^= mask
            blob = (S.MAGIC + len(bad).to_bytes(4, "little") + bytes(bad) + packed.data)
            f.write_bytes(blob + __import__("hashlib").sha256(blob).digest())
            try:
                S.load_packed(f)
                got = S.read_packed(f)
            except ValueError as err:
                assert "\n" not in str(err) and str(err).startswith(str(f))
                outcomes["refused"] += 1
                continue
            assert leaf_bytes(got) == want_arrays, (pos, raw[pos - 20:pos + 20])
            outcomes["same"] += 1
    assert outcomes["refused"] > 0.8 * 2 * len(raw)


def test_empty_random_truncated_and_foreign_files_are_refused(tmp_path):
    f = tmp_path / "x.prq"
    assert "too short" in refused(b"", f) or True
    with pytest.raises(ValueError, match="empty file"):
        S.weights_kind(f)
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, 4096, dtype=np.uint8).tobytes()
    assert "bad magic" in refused(noise, f)
    with pytest.raises(ValueError, match="neither a packed model"):
        S.weights_kind(f)
    _, _, packed = small_packed()
    blob = packed.to_bytes()
    for cut in (5, 12, 40, len(blob) // 2, len(blob) - 1):
        refused(blob[:cut], f)
    f.write_bytes(blob[:1] + b"X" + blob[2:])
    with pytest.raises(ValueError, match="damaged packed model"):
        S.weights_kind(f)
    f.write_bytes(blob)
    assert S.weights_kind(f) == "packed"
    h5 = tmp_path / "w.h5"
    h5.write_bytes(S.HDF5_MAGIC + bytes(100))
    assert S.weights_kind(h5) == "hdf5"
    h5.write_bytes(bytes(512) + S.HDF5_MAGIC + bytes(100))  # after a user block
    assert S.weights_kind(h5) == "hdf5"
    with pytest.raises(FileNotFoundError):
        S.weights_kind(tmp_path / "absent.h5")


def legacy_bytes(packed):
    """The same model as a format-2 file (no checksum, numpy dtype strings)."""
    import copy

    h = copy.deepcopy(packed.header)
    h["format_version"] = 2
    for e in h["leaves"]:
        e["dtype"] = np.dtype(S._dtype_of(e["dtype"])).str
        if e["kind"] == "quantized":
            assert e["codes"].pop("coding") == "fixed"
    raw = json.dumps(h, separators=(",", ":")).encode()
    return S.LEGACY_MAGIC + len(raw).to_bytes(4, "little") + raw + packed.data


def test_format_2_files_are_refused_unless_asked_then_checked(tmp_path):
    params = keras_tree()
    new, report = Q.quantize_tree(params, scheme="linear", bits=3, fit="max",
                                  select=r"fc/kernel|conv1/kernel")
    packed = S.pack_tree(params, report)
    f = tmp_path / "old.prq"
    f.write_bytes(legacy_bytes(packed))
    msg = refused(f.read_bytes(), f)
    assert "format 1-2" in msg and "allow_unverified" in msg
    loaded, meta = S.load_packed(f, allow_unverified=True)
    assert S.trees_equal(loaded, np_tree(new)) and meta["format_version"] == 2
    assert S.sizes(S.read_packed(f, allow_unverified=True))["packed_bytes"] == f.stat().st_size
    bad = bytearray(f.read_bytes())
    bad[-len(packed.data) - 3] ^= 0x01  # inside the header JSON, near its end
    refused(bytes(bad), f, allow_unverified=True)
    assert "format 1-2" in refused(legacy_bytes(packed) + b"\0", f, allow_unverified=True)


# --- float16 / bfloat16 ------------------------------------------------------------------------


def test_float16_and_bfloat16_leaves_roundtrip_bit_exactly(tmp_path):
    import ml_dtypes

    rng = np.random.default_rng(2)
    bf = ml_dtypes.bfloat16
    params = {"a": {"kernel": rng.laplace(size=(3, 3, 4, 8)).astype(bf),
                    "bias": rng.normal(size=8).astype(bf)},
              "b": {"kernel": rng.laplace(size=(8, 6)).astype(np.float16),
                    "bias": rng.normal(size=6).astype(np.float16),
                    "steps": np.arange(3, dtype=np.int64)}}
    new, report = Q.quantize_tree(params, scheme="linear", bits={"a/kernel": 3, "b/kernel": 6},
                                  fit="max", granularity="channel")
    for coding in ("fixed", "ans"):
        S.save_packed(tmp_path / "h.prq", params, report, coding=coding)
        loaded, _ = S.load_packed(tmp_path / "h.prq")
        assert loaded["a"]["kernel"].dtype == bf and loaded["b"]["kernel"].dtype == np.float16
        assert loaded["a"]["bias"].dtype == bf and loaded["b"]["steps"].dtype == np.int64
        assert S.trees_equal(loaded, np_tree(new))  # quantize_tree's own casts, bit for bit
        assert S.trees_equal({k: {v: loaded[k][v] for v in ("bias",)} for k in "ab"},
                             {k: {"bias": params[k]["bias"]} for k in "ab"})
    entry = S.read_packed(tmp_path / "h.prq").header["leaves"][0]
    assert entry["dtype"] == "bfloat16"


@st.composite
def random_tree(draw):
    """A small tree of float32/float16/bfloat16/int leaves, some quantized with hand-built
    codebooks of random widths, forms and granularities (no fitting: any codebook is storable)."""
    import ml_dtypes

    seed = draw(st.integers(0, 2**32 - 1), label="seed")
    rng = np.random.default_rng(seed)
    n_leaves = draw(st.integers(1, 5), label="n_leaves")
    params, report, want = {}, [], {}
    for i in range(n_leaves):
        dt = draw(st.sampled_from(["float32", "float16", "bfloat16", "int8", "uint16"]))
        shape = tuple(draw(st.lists(st.integers(1, 5), min_size=1, max_size=3)))
        dtype = np.dtype(ml_dtypes.bfloat16) if dt == "bfloat16" else np.dtype(dt)
        arr = (rng.normal(size=shape) * 3).astype(dtype)
        params[f"l{i}"] = {"w": arr}
        want[f"l{i}"] = {"w": arr}
        if dtype.kind == "i" or dtype.kind == "u" or not draw(st.booleans()):
            continue
        scheme = draw(st.sampled_from(["linear", "lloyd_max", "exponential", "sign"]))
        lo = 2 if scheme in ("linear", "exponential") else 1
        bits = 1 if scheme == "sign" else draw(st.integers(lo, 8), label="bits")
        L = Q.n_levels(scheme, bits)
        gran = draw(st.sampled_from(["tensor", "channel"]))
        ax = draw(st.integers(0, len(shape) - 1))
        books = 1 if gran == "tensor" else shape[ax]
        if draw(st.booleans()):  # symmetric: stored as a half
            half = np.sort(rng.uniform(0.01, 4, (books, L // 2)), axis=1).astype(np.float32)
            levels = S._full_from_half(half, L)
        else:
            levels = np.sort(rng.normal(size=(books, L)), axis=1).astype(np.float32)
        levels = levels[0] if gran == "tensor" else levels
        q = hand_quantizer(levels, scheme=scheme, bits=bits, granularity=gran, channel_axis=ax)
        codes = rng.integers(0, L, shape).astype(np.uint8)
        if draw(st.booleans()):
            codes[...] = codes.flat[0]  # a degenerate layer
        report.append({"path": f"l{i}/w", "codes": codes, "quantizer": q})
        canon = np.dtype(jax.dtypes.canonicalize_dtype(dtype))
        want[f"l{i}"] = {"w": np_decode(codes, q).astype(canon)}
    return params, report, want


import jax  # noqa: E402  (used by the strategy above)


@settings(max_examples=120, deadline=None)
@given(random_tree(), st.sampled_from(["fixed", "ans"]), st.booleans())
def test_pack_unpack_roundtrip_property(tree, coding, symmetric):
    params, report, want = tree
    packed = S.pack_tree(params, report, coding=coding, symmetric_codebook=symmetric)
    blob = packed.to_bytes()
    back = S.PackedModel.from_bytes(blob)
    assert S.trees_equal(S.unpack_tree(back), want)
    predicted = S.packed_nbytes(params, report, coding=coding, symmetric_codebook=symmetric)
    assert json.dumps(predicted) == json.dumps(S.sizes(back))  # (NaN ratios of empty parts)
    assert predicted["packed_bytes"] == len(blob)


# --- one source of truth for storage cost --------------------------------------------------------


@pytest.mark.parametrize("scheme,bits,granularity,kw", [
    ("linear", 4, "tensor", dict(fit="max")),
    ("linear", {"conv1/kernel": 2, "sep/pointwise_kernel": 7, "fc/kernel": 5}, "channel",
     dict(fit="max")),
    ("exponential", 5, "channel", dict(fit="max")),
    ("exponential", 3, "tensor", dict(fit="max")),
    ("pow2", 4, "channel", dict(fit="max")),
    ("sign", 1, "tensor", dict(fit="corr")),
    ("lloyd_max", 3, "channel", dict(fit="corr")),
    ("lloyd_max", {"conv1/kernel": 2, "sep/pointwise_kernel": 4, "fc/kernel": 3}, "tensor",
     dict(fit="corr")),
])
def test_predicted_sizes_equal_the_written_file(tmp_path, scheme, bits, granularity, kw):
    from paper_repro.feedforward import repairs, sweep

    params = keras_tree()
    select = r"conv1/kernel|sep/pointwise_kernel|fc/kernel|conv_dw_1/depthwise_kernel"
    if isinstance(bits, dict):
        select = "|".join(bits)
    _, report = Q.quantize_tree(params, scheme=scheme, bits=bits, granularity=granularity,
                                select=select, **kw)
    for coding in ("fixed", "ans"):
        for symmetric in (True, False):
            f = tmp_path / f"{coding}{symmetric}.prq"
            s = S.save_packed(f, params, report, coding=coding, symmetric_codebook=symmetric)
            pred = S.packed_nbytes(params, report, coding=coding, symmetric_codebook=symmetric)
            assert pred["packed_bytes"] == f.stat().st_size == s["packed_bytes"]
            assert pred == s
            entries = {"/".join(e["keys"]): e for e in S.read_packed(f).header["leaves"]}
            for r in report:
                e, q = entries[r["path"]], r["quantizer"]
                n_books = 1 if granularity == "tensor" else q.levels.shape[0]
                spec = S.codebook_nbytes(scheme=scheme, bits=r["bits"], granularity=granularity,
                                         n_channels=n_books, symmetric=symmetric)
                assert spec == S.codebook_nbytes(q, symmetric=symmetric) == \
                    e["codebook"]["nbytes"], r["path"]
                code = e["codes"]["nbytes"] + e["codes"].get("model", {"nbytes": 0})["nbytes"]
                assert S.codes_nbytes(r["size"], r["n_levels"], codes=r["codes"],
                                      coding=coding) == code
                assert S.layer_nbytes(q, codes=r["codes"], coding=coding,
                                      symmetric=symmetric) == code + spec
                if symmetric:
                    assert 4 * repairs.codebook_floats(q) == spec
    # the sweep tables and the bit allocator count what the file holds (header aside)
    s = S.sizes(S.read_packed(tmp_path / "fixedTrue.prq"))
    acc = sweep.storage_accounting(params, report)
    assert acc["code_bytes"] == s["codes_bytes"] and acc["codebook_bytes"] == s["codebook_bytes"]
    assert acc["quantized_bytes"] == s["packed_bytes"] - s["header_bytes"]
    if not isinstance(bits, dict):
        cfg = sweep.QuantConfig(scheme=scheme, fit=kw["fit"], bits=bits, granularity=granularity,
                                select=select)
        assert sweep.planned_compression(params, cfg) == pytest.approx(
            acc["compression_ratio"], rel=1e-12)


def test_codebook_nbytes_arguments():
    assert S.codebook_nbytes(scheme="exponential", bits=4, granularity="channel",
                             n_channels=10) == 80
    assert S.codebook_nbytes(scheme="lloyd_max", bits=4) == 32  # 8 positive levels
    assert S.codebook_nbytes(scheme="linear", bits=4, symmetric=False) == 60  # every level
    with pytest.raises(ValueError, match="n_channels"):
        S.codebook_nbytes(scheme="linear", bits=4, granularity="tensor", n_channels=3)
    with pytest.raises(ValueError, match="out of range"):
        S.codebook_nbytes(scheme="linear", bits=12)
    with pytest.raises(ValueError, match="pass codes="):
        S.codes_nbytes(10, 15, coding="ans")


# --- entropy coding in the file -----------------------------------------------------------------


def test_entropy_coding_is_smaller_exact_and_near_the_entropy(tmp_path):
    rng = np.random.default_rng(4)
    params = {"fc": {"kernel": rng.laplace(size=(256, 300)).astype(np.float32),
                     "bias": np.zeros(300, np.float32)}}
    new, report = Q.quantize_tree(params, scheme="linear", bits=5, fit="max")
    fixed = S.save_packed(tmp_path / "f.prq", params, report)
    ans = S.save_packed(tmp_path / "a.prq", params, report, coding="ans")
    loaded, _ = S.load_packed(tmp_path / "a.prq")
    assert S.trees_equal(loaded, np_tree(new))
    H = S.code_entropy_bits(S.read_packed(tmp_path / "a.prq"))
    assert H == pytest.approx(S.code_entropy_bits(S.read_packed(tmp_path / "f.prq")))
    assert fixed["code_bits_per_weight"] == pytest.approx(5, abs=1e-4)
    assert H < ans["code_bits_per_weight"] < H + 0.01  # model + stream within 0.01 bit of H
    assert ans["ratio"] > fixed["ratio"] * 4.9 / (H + 0.1)
    assert ans["entropy_coded_leaves"] == 1 and ans["code_model_bytes"] == 2 * 31
    assert S.codes_nbytes(report[0]["size"], 31, codes=report[0]["codes"], coding="ans") == \
        ans["codes_bytes"]


def test_entropy_coding_keeps_small_layers_bit_packed(tmp_path):
    """A layer whose model would cost more than the coding saves stays bit-packed, so an
    entropy-coded file is never larger than the bit-packed one."""
    rng = np.random.default_rng(5)
    params = {"small": {"kernel": rng.normal(size=(3, 3, 1, 2)).astype(np.float32)},
              "big": {"kernel": rng.laplace(size=(3, 3, 64, 64)).astype(np.float32)}}
    new, report = Q.quantize_tree(params, scheme="exponential", bits=4)
    fixed = S.save_packed(tmp_path / "f.prq", params, report)
    ans = S.save_packed(tmp_path / "a.prq", params, report, coding="ans")
    assert ans["entropy_coded_leaves"] == 1 and ans["packed_bytes"] < fixed["packed_bytes"]
    codings = {tuple(e["keys"]): e["codes"]["coding"]
               for e in S.read_packed(tmp_path / "a.prq").header["leaves"]
               if e["kind"] == "quantized"}
    assert codings == {("small", "kernel"): "fixed", ("big", "kernel"): "ans"}
    loaded, _ = S.load_packed(tmp_path / "a.prq")
    assert S.trees_equal(loaded, np_tree(new))
    assert S.packed_nbytes(params, report, coding="ans")["packed_bytes"] == ans["packed_bytes"]
    small = next(r for r in report if r["path"] == "small/kernel")
    assert S.codes_nbytes(small["size"], small["n_levels"], codes=small["codes"],
                          coding="ans") == S.codes_nbytes(small["size"], small["n_levels"])


# --- command line: damaged files -------------------------------------------------------------------


def mobilenet_packed(tmp_path, capsys, *extra):
    from paper_repro.experiments.storage import synthetic_params
    from paper_repro.feedforward import weights as W

    params = synthetic_params("mobilenet", 0.25, seed=0)
    h5 = W.save_h5(params, tmp_path / "mobilenet_2_5_224_tf.h5")
    out = tmp_path / "m.prq"
    assert cli.main(["pack", "--model", "mobilenet", "--alpha", "0.25", "--weights", str(h5),
                     "--scheme", "sign", "--bits", "1", "--select",
                     r"conv1/kernel|conv_preds/kernel", "--out", str(out), "--json",
                     *extra]) == 0
    return h5, out, json.loads(capsys.readouterr().out)


def test_evaluate_and_unpack_refuse_damaged_files_in_one_line(tmp_path, capsys):
    import time

    h5, out, rep = mobilenet_packed(tmp_path, capsys, "--entropy-coding")
    assert rep["meta"]["coding"] == "ans" and rep["roundtrip_exact"]
    assert rep["code_bits_per_weight"] <= 1.01 and rep["code_entropy_bits"] <= 1
    blob = bytearray(out.read_bytes())
    blob[len(blob) // 2] ^= 0x10
    bad = tmp_path / "corrupt.prq"
    bad.write_bytes(bytes(blob))
    junk = tmp_path / "junk.prq"
    junk.write_bytes(np.random.default_rng(0).integers(0, 256, 999, np.uint8).tobytes())
    empty = tmp_path / "empty.h5"
    empty.write_bytes(b"")
    for f, what in ((bad, "checksum mismatch"), (junk, "neither a packed model"),
                    (empty, "empty file")):
        t0 = time.perf_counter()
        rc = cli.main(["evaluate", "--model", "mobilenet", "--alpha", "0.25", "--weights",
                       str(f), "--data", str(tmp_path), "--json"])
        cap = capsys.readouterr()
        assert rc == 2 and cap.out == "", f
        assert len(cap.err.strip().splitlines()) == 1 and what in cap.err, cap.err
        assert "Traceback" not in cap.err and time.perf_counter() - t0 < 10
    target = tmp_path / "deq.npz"
    assert cli.main(["unpack", str(bad), "--out", str(target)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "checksum mismatch" in err
    assert not target.exists() and not list(tmp_path.glob(".deq*"))
    assert cli.main(["unpack", str(junk)]) == 2
    assert "bad magic" in capsys.readouterr().err
    assert cli.main(["pack", "--model", "mobilenet", "--alpha", "0.25", "--weights", str(junk),
                     "--scheme", "sign", "--bits", "1", "--out", str(tmp_path / "x.prq")]) == 2
    assert "neither a packed model" in capsys.readouterr().err
    # the intact file still unpacks, entropy-coded codes included
    assert cli.main(["unpack", str(out), "--out", str(target)]) == 0
    assert "ans" in capsys.readouterr().out
    with np.load(target) as z:
        assert S.trees_equal(S.load_packed(out)[0],
                             S._build([(k.split("/"), z[k]) for k in z.files]))


def test_pack_accepts_every_model_evaluate_accepts(tmp_path, capsys):
    """digits_cnn packs from its embedded checkpoint; evaluate reads the packed file and scores
    what on-the-fly quantization with the same settings scores."""
    from paper_repro.feedforward import sweep

    out = tmp_path / "d.prq"
    assert cli.main(["pack", "--model", "digits_cnn", "--scheme", "linear", "--bits", "4",
                     "--granularity", "channel", "--out", str(out), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["meta"]["model"] == "digits_cnn" and rep["roundtrip_exact"]
    assert rep["n_quantized_leaves"] == 4
    assert cli.main(["evaluate", "--model", "digits_cnn", "--weights", str(out), "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["packed_file"] == "d.prq" and row["compression_ratio"] == rep["ratio"]
    task = sweep.digits_task()
    want, _ = sweep.evaluate_config(task, sweep.QuantConfig(scheme="linear", bits=4,
                                                            granularity="channel"),
                                    progress=False)
    assert row["top1"] == want["top1"] and row["top5"] == want["top5"]
    h5 = tmp_path / "w.h5"
    h5.write_bytes(S.HDF5_MAGIC + bytes(64))
    assert cli.main(["evaluate", "--model", "digits_cnn", "--weights", str(h5)]) == 2
    assert "reads packed files" in capsys.readouterr().err


# --- real MobileNet ----------------------------------------------------------------------------------


@pytest.mark.shared_data
def test_random_flips_of_a_packed_real_mobilenet_are_refused(shared_data, tmp_path):
    from paper_repro.feedforward import weights as W

    params = W.load("mobilenet", shared_data / "keras-weights" / "mobilenet_7_5_224_tf.h5",
                    alpha=0.75)
    assert sum(a.size for a in S.flatten(params).values()) == 2_601_976
    report = []
    for path, w in S.flatten(params).items():  # 4-bit linear per-channel codebooks, in NumPy
        if not path.endswith("kernel"):
            continue
        ax = Q.default_channel_axis(path, w) % w.ndim
        top = np.abs(np.moveaxis(w, ax, 0).reshape(w.shape[ax], -1)).max(1).astype(np.float32)
        levels = S._full_from_half(Q.canonical_levels("linear", 4, top, xp=np), 15)
        q = hand_quantizer(levels, scheme="linear", bits=4, granularity="channel",
                           channel_axis=ax)
        report.append({"path": path, "codes": np_encode(w, q), "quantizer": q})
    rng = np.random.default_rng(0)
    for coding in ("fixed", "ans"):
        packed = S.pack_tree(params, report, coding=coding)
        f = tmp_path / f"m_{coding}.prq"
        S.save_packed(f, packed)
        want = S.unpack_tree(packed)
        assert S.trees_equal(S.load_packed(f)[0], want)
        blob = f.read_bytes()
        reg = regions(packed)
        picks = list(rng.integers(0, len(blob), 150))
        picks += [int(rng.choice(r)) for r in reg.values()]  # at least one in every region
        for pos in picks:
            bad = bytearray(blob)
            bad[pos] ^= int(rng.integers(1, 256))
            refused(bytes(bad), f)


def test_written_files_follow_the_umask(tmp_path):
    import os

    packed = S.pack_tree(keras_tree(), [])
    old = os.umask(0o022)
    try:
        S.save_packed(tmp_path / "m.prq", packed)
        assert cli.main(["unpack", str(tmp_path / "m.prq"), "--out", str(tmp_path / "d.npz")]) == 0
    finally:
        os.umask(old)
    assert (tmp_path / "m.prq").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "d.npz").stat().st_mode & 0o777 == 0o644


def test_unpack_refuses_to_write_bfloat16_as_raw_bytes(tmp_path, capsys):
    _, _, packed = small_packed()
    S.save_packed(tmp_path / "m.prq", packed)
    for out in ("d.npz", "d.h5"):
        assert cli.main(["unpack", str(tmp_path / "m.prq"), "--out", str(tmp_path / out)]) == 2
        assert "bfloat16" in capsys.readouterr().err and not (tmp_path / out).exists()


def test_constant_leaves_are_stored_as_one_number(tmp_path):
    """``fill=True``: constant arrays of more than 16 bytes become format-4 fill leaves that
    decode bit for bit; other arrays, -0.0 and small constants stay arrays; without fill
    leaves the file stays format 3, byte for byte as before."""
    import copy

    params, _, _ = small_packed()
    tree = copy.deepcopy(params)
    tree["bn_like"] = {"gamma": np.ones(32, np.float32), "mean": np.zeros(32, np.float32),
                       "var": np.full(32, np.float32(1 - 1e-3)),
                       "negzero": np.full(32, -0.0, np.float32),
                       "small": np.ones(4, np.float32), "count": np.full(8, 7, np.int64),
                       "flag": np.ones(40, bool), "h": np.full(16, 0.1, np.float16)}
    _, report = Q.quantize_tree(params, scheme="exponential", bits=4, fit="max",
                                granularity="channel", select=r"fc/kernel")
    plain = S.pack_tree(tree, report)
    filled = S.pack_tree(tree, report, fill=True)
    assert plain.header["format_version"] == 3 and plain.to_bytes()[:8] == S.MAGIC
    assert filled.header["format_version"] == 4 and filled.to_bytes()[:8] == S.MAGIC_4
    kinds = {"/".join(e["keys"]): e["kind"] for e in filled.header["leaves"]}
    quantized = {r["path"] for r in report}
    constant = {p for p, a in S.flatten(tree).items() if p not in quantized
                and a.nbytes > 16 and len({a.reshape(-1)[i:i + 1].tobytes()
                                           for i in range(a.size)}) == 1}
    assert {"bn_like/gamma", "bn_like/var", "bn_like/negzero", "bn_like/flag"} <= constant
    assert {k for k, v in kinds.items() if v == "fill"} == constant
    assert kinds["bn_like/small"] == "array"  # 16 bytes: one number would not be smaller
    f = tmp_path / "m.prq"
    out = S.save_packed(f, filled)
    loaded, meta = S.load_packed(f)
    assert meta["format_version"] == 4 and out["fill_leaves"] == len(constant)
    assert S.trees_equal(loaded, S.unpack_tree(plain))
    for k, v in tree["bn_like"].items():
        assert loaded["bn_like"][k].dtype == v.dtype
        assert loaded["bn_like"][k].tobytes() == v.tobytes(), k
    saved = sum(S.flatten(tree)[p].nbytes for p in constant)
    assert out["float_kept_bytes"] == S.sizes(plain)["float_kept_bytes"] - saved
    assert S.packed_nbytes(tree, report, fill=True) == out  # the accounting predicts the file
    # what the reader refuses: fill leaves under the format-3 magic, and bad values
    gi = next(i for i, e in enumerate(filled.header["leaves"])
              if e["keys"] == ["bn_like", "gamma"])
    fi = next(i for i, e in enumerate(filled.header["leaves"])
              if e["keys"] == ["bn_like", "flag"])
    ii = next(i for i, e in enumerate(filled.header["leaves"])
              if e["keys"] == ["bn_like", "count"])
    hi = next(i for i, e in enumerate(filled.header["leaves"]) if e["keys"] == ["bn_like", "h"])
    h3 = copy.deepcopy(filled.header)
    h3["format_version"] = 3
    assert "unknown kind" in refused(S.PackedModel(header=h3, data=filled.data).to_bytes(), f)
    for i, value, why in ((gi, "1", "not a bool/int/float"), (gi, True, "is a bool"),
                          (gi, float("inf"), "not a finite"), (fi, 1, "not a bool"),
                          (ii, 2**70, "not a int64"), (hi, 0.1, "not a finite float16"),
                          (gi, None, "not a bool/int/float")):
        h = copy.deepcopy(filled.header)
        h["leaves"][i]["value"] = value
        msg = refused(S.PackedModel(header=h, data=filled.data).to_bytes(), f)
        assert "corrupt packed model" in msg and why in msg, (value, msg)
    h = copy.deepcopy(filled.header)
    del h["leaves"][gi]["value"]
    assert "lacks 'value'" in refused(S.PackedModel(header=h, data=filled.data).to_bytes(), f)


def test_format_4_header_is_compressed_and_checked(tmp_path):
    """Format 4 stores the header zlib-compressed: smaller, and every damage - a flipped byte
    anywhere, a header that is plain JSON, not one zlib stream, or inflates past 64 MiB - is
    refused in one line."""
    import hashlib
    import zlib

    params, _, _ = small_packed()
    params["bn"] = {"gamma": np.ones(64, np.float32), "mean": np.zeros(64, np.float32)}
    _, report = Q.quantize_tree(params, scheme="exponential", bits=4, fit="max",
                                granularity="channel", select=r"fc/kernel")
    packed = S.pack_tree(params, report, fill=True)
    blob = packed.to_bytes()
    assert blob[:8] == S.MAGIC_4 and len(packed.stored_header()) < len(packed.header_bytes())
    assert zlib.decompress(packed.stored_header()) == packed.header_bytes()
    f = tmp_path / "m.prq"
    S.save_packed(f, packed)
    assert S.trees_equal(S.load_packed(f)[0], S.unpack_tree(packed))
    for pos in range(len(blob)):
        bad = bytearray(blob)
        bad[pos] ^= 0x10
        refused(bytes(bad), f)

    def sealed(header_raw: bytes, data: bytes = packed.data) -> bytes:
        body = S.MAGIC_4 + len(header_raw).to_bytes(4, "little") + header_raw + data
        return body + hashlib.sha256(body).digest()

    raw = packed.header_bytes()
    assert "does not inflate" in refused(sealed(raw), f)
    assert "one zlib stream" in refused(sealed(zlib.compress(raw) + b"\0"), f)
    bomb = zlib.compress(b" " * (S.MAX_HEADER_BYTES + 1), 9)
    assert "one zlib stream" in refused(sealed(bomb), f)
    f.write_bytes(sealed(packed.stored_header()))  # the same bytes, sealed by hand: accepted
    assert S.load_packed(f)[1]["format_version"] == 4
