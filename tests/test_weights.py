"""Tests for paper_repro.feedforward.weights: legacy Keras .h5 reading, layer matching, fetch, CLI.

No network: downloads go through file:// URLs or a fake opener. Synthetic weight files are
written with h5py in the layouts Keras 2 and Keras 3 use.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import tracemalloc
import urllib.error
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest

from paper_repro import cli
from paper_repro.feedforward import models
from paper_repro.feedforward import weights as W

MOBILENET_075_MD5 = "7544728a764377ce5d6838a5b221cacb"


def random_params(spec, seed=0, input_size=None):
    """Random params with the model's structure, without running the model."""
    rng = np.random.default_rng(seed)
    return {
        layer: {v: rng.normal(size=s).astype(np.float32) for v, s in d.items()}
        for layer, d in spec.param_shapes(input_size).items()
    }


def assert_same(a, b):
    assert list(a) == list(b)
    for layer in a:
        assert list(a[layer]) == list(b[layer]), layer
        for v in a[layer]:
            np.testing.assert_array_equal(a[layer][v], b[layer][v], err_msg=f"{layer}/{v}")


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No shared data and a private cache, whatever the machine has."""
    monkeypatch.setenv("PAPER_REPRO_SHARED_DATA", str(tmp_path / "no-shared-data"))
    monkeypatch.setenv("PAPER_REPRO_CACHE", str(tmp_path / "cache"))
    return tmp_path


@pytest.fixture(scope="module")
def small():
    spec = models.get("mobilenet", 0.25, include_top=False)
    return spec, random_params(spec)


@pytest.mark.parametrize("suffix", [":0", ""])
def test_roundtrip_keras2_and_keras3_names(tmp_path, small, suffix):
    spec, params = small
    path = W.save_h5(params, tmp_path / "w.h5", suffix=suffix)
    with h5py.File(path, "r") as f:
        assert f["conv_dw_1"].attrs["weight_names"][0].decode() == (
            f"conv_dw_1/depthwise_kernel{suffix}"
        )
    loaded = W.load(spec, path)
    assert_same(loaded, params)
    assert loaded["conv_dw_1"]["depthwise_kernel"].shape == (3, 3, 8, 1)
    assert list(loaded["conv1_bn"]) == ["gamma", "beta", "moving_mean", "moving_variance"]
    assert all(a.dtype == np.float32 for d in loaded.values() for a in d.values())


def test_model_weights_group_and_chunked_attributes(tmp_path, small):
    spec, params = small
    flat = W.save_h5(params, tmp_path / "flat.h5")
    full = tmp_path / "full.h5"
    with h5py.File(flat, "r") as src, h5py.File(full, "w") as dst:
        g = dst.create_group("model_weights")
        names = [n.encode() for n in ["input_1", *params, "reshape_1"]]
        # Keras splits attributes over 64 KB into name0, name1, ...
        g.attrs["layer_names0"] = np.array(names[:20])
        g.attrs["layer_names1"] = np.array(names[20:])
        g.create_group("input_1").attrs["weight_names"] = np.array([], dtype="S1")
        for layer in params:
            src.copy(src[layer], g, name=layer)
    assert_same(W.load(spec, full), params)


def test_renamed_layers_are_matched_by_order(tmp_path, small):
    spec, params = small
    renamed = {f"layer_{i:03d}": d for i, d in enumerate(params.values())}
    path = W.save_h5(renamed, tmp_path / "renamed.h5")
    assert_same(W.load(spec, path), params)


def test_old_variable_names_are_matched_by_order(tmp_path, small):
    spec, params = small
    odd = {
        layer: {f"param_{j}": a for j, a in enumerate(d.values())} for layer, d in params.items()
    }
    path = W.save_h5(odd, tmp_path / "odd.h5")
    assert_same(W.load(spec, path), params)


def test_auto_named_layers_follow_creation_order(tmp_path):
    """Xception's unnamed shortcut layers: Keras numbers them from a session-wide counter,
    and a file may list layers in any order."""
    spec = models.get("xception", include_top=False)
    params = random_params(spec, seed=1)
    shifted = {}
    for layer, d in params.items():
        m = W._AUTO_NAME.match(layer)
        shifted[f"{m.group(1)}_{int(m.group(2)) + 7}" if m else layer] = d
    items = list(shifted.items())
    rng = np.random.default_rng(0)
    shuffled = dict(items[i] for i in rng.permutation(len(items)))
    path = W.save_h5(shuffled, tmp_path / "x.h5", suffix="")
    assert_same(W.load(spec, path), params)


def test_top_file_loads_into_notop_model(tmp_path):
    top = models.get("mobilenet", 0.25)
    params = random_params(top)
    path = W.save_h5(params, tmp_path / "top.h5")
    notop = W.load(models.get("mobilenet", 0.25, include_top=False), path)
    assert "conv_preds" not in notop
    assert_same(notop, {k: v for k, v in params.items() if k != "conv_preds"})


def test_shape_mismatch_names_the_layer(tmp_path, small):
    spec, params = small
    path = W.save_h5(params, tmp_path / "a025.h5")
    with pytest.raises(ValueError, match=r"shape mismatch at layer 'conv1'"):
        W.load(models.get("mobilenet", 0.5, include_top=False), path)


def test_wrong_architecture_is_refused(tmp_path, small):
    _, params = small
    path = W.save_h5(params, tmp_path / "m.h5")
    with pytest.raises(ValueError, match="into vgg16: cannot match"):
        W.load("vgg16", path)


def test_not_a_keras_file(tmp_path):
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f.create_dataset("a", data=np.zeros(3))
    with pytest.raises(ValueError, match="not a Keras weight file"):
        W.read_h5(tmp_path / "x.h5")
    with h5py.File(tmp_path / "k3.weights.h5", "w") as f:
        f.create_group("layers")
    with pytest.raises(ValueError, match=r"Keras 3 '.weights.h5' file"):
        W.read_h5(tmp_path / "k3.weights.h5")
    with pytest.raises(FileNotFoundError):
        W.read_h5(tmp_path / "missing.h5")


def test_info_lists_layers_and_counts(tmp_path, small):
    _, params = small
    path = W.save_h5(params, tmp_path / "m.h5")
    rep = W.info(path)
    assert rep["n_layers"] == len(params)
    assert rep["n_params"] == sum(a.size for d in params.values() for a in d.values())
    assert rep["layers"][0] == {"name": "conv1", "vars": {"kernel": [3, 3, 3, 8]}, "n_params": 216}
    assert rep["md5"] == hashlib.md5(path.read_bytes()).hexdigest()
    assert rep["keras_version"] == "2.1.4"


# ----------------------------------------------------------------------------- fetch


def _served_file(tmp_path, payload=b"not really weights"):
    src = tmp_path / "server" / "file.h5"
    src.parent.mkdir(parents=True)
    src.write_bytes(payload)
    return src, hashlib.md5(payload).hexdigest(), hashlib.sha256(payload).hexdigest()


@pytest.mark.parametrize("algo", ["md5", "sha256"])
def test_fetch_file_url_verifies_checksum_and_caches(isolated, algo):
    src, md5, sha = _served_file(isolated)
    path = W.fetch("vgg16", url=src.as_uri(), expected_hash=md5 if algo == "md5" else sha)
    assert path == isolated / "cache" / "weights" / "vgg16_weights_tf_dim_ordering_tf_kernels.h5"
    assert path.read_bytes() == src.read_bytes()

    def no_network(*a, **k):
        raise AssertionError("should have used the cached file")

    assert W.fetch("vgg16", url=src.as_uri(), expected_hash=md5, opener=no_network) == path


def test_fetch_bad_checksum_leaves_nothing(isolated):
    src, _, _ = _served_file(isolated)
    with pytest.raises(ValueError, match="expected 0{32}"):
        W.fetch("resnet50", url=src.as_uri(), expected_hash="0" * 32)
    assert not any((isolated / "cache" / "weights").iterdir())
    # the official checksum applies by default
    with pytest.raises(ValueError, match="2cb95161c43110f7111970584f804107"):
        W.fetch("resnet50", url=src.as_uri())


def test_fetch_offline_fails_fast_with_instructions(isolated):
    calls = []

    def offline(url, timeout):
        calls.append((url, timeout))
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    t = time.perf_counter()
    with pytest.raises(W.WeightsUnavailableError) as e:
        W.fetch("mobilenet", alpha=0.75, opener=offline, timeout=3)
    assert time.perf_counter() - t < 5
    msg = str(e.value)
    url = "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet/mobilenet_7_5_224_tf.h5"
    assert calls == [(url, 3)]
    assert url in msg
    assert str(isolated / "cache" / "weights" / "mobilenet_7_5_224_tf.h5") in msg
    assert isinstance(e.value, FileNotFoundError)


def test_fetch_finds_shared_data_copy(tmp_path, monkeypatch):
    shared = tmp_path / "shared"
    (shared / "keras-weights").mkdir(parents=True)
    (shared / "keras-weights" / "mobilenet_7_5_224_tf.h5").write_bytes(b"x")
    monkeypatch.setenv("PAPER_REPRO_SHARED_DATA", str(shared))
    monkeypatch.setenv("PAPER_REPRO_CACHE", str(tmp_path / "cache"))
    path = W.fetch("mobilenet", alpha=0.75, opener=None)
    assert path == shared / "keras-weights" / "mobilenet_7_5_224_tf.h5"


def test_cache_folder_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv("PAPER_REPRO_CACHE", str(tmp_path))
    assert W.cache_folder() == tmp_path / "weights"
    assert W.cache_folder(tmp_path / "x") == tmp_path / "x"
    monkeypatch.delenv("PAPER_REPRO_CACHE")
    assert W.cache_folder() == Path.home() / ".cache" / "paper_repro" / "weights"


# ----------------------------------------------------------------------------- CLI


def test_cli_info(tmp_path, small, capsys):
    _, params = small
    path = W.save_h5(params, tmp_path / "m.h5")
    assert cli.main(["weights", "info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "conv_dw_1" in out and f"{len(params)} layers with weights" in out
    assert cli.main(["weights", "info", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n_layers"] == len(params)


def test_cli_fetch_offline_and_list(isolated, monkeypatch, capsys):
    def offline(url, timeout):
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(W.urllib.request, "urlopen", offline)
    assert cli.main(["weights", "fetch", "xception", "--timeout", "1"]) == 2
    err = capsys.readouterr().err
    assert "xception_weights_tf_dim_ordering_tf_kernels.h5" in err and "Download it" in err
    assert cli.main(["weights", "list"]) == 0
    assert "inception_v3" in capsys.readouterr().out


# ----------------------------------------------------------------------------- real file


def _shared_file():
    root = W.shared_data_dir()
    path = root / "keras-weights" / "mobilenet_7_5_224_tf.h5" if root else None
    if path is None or not path.is_file():
        pytest.skip(
            "real data absent: set PAPER_REPRO_SHARED_DATA to the folder holding "
            "keras-weights/mobilenet_7_5_224_tf.h5"
        )
    return path


@pytest.mark.shared_data
def test_real_mobilenet_file_loads_and_md5_is_reported():
    path = _shared_file()
    rep = W.info(path)
    assert rep["md5"] == MOBILENET_075_MD5
    assert rep["keras_version"] == "2.1.4"
    assert rep["n_params"] == 2_601_976
    spec = models.get("mobilenet", alpha=0.75)
    params = W.load(spec, path)
    assert sum(a.size for d in params.values() for a in d.values()) == 2_601_976
    assert params["conv_dw_1"]["depthwise_kernel"].shape == (3, 3, 24, 1)
    assert params["conv_preds"]["kernel"].shape == (1, 1, 768, 1000)
    # fetch (and load_pretrained) find the shared copy when the cache is empty
    assert W.fetch(spec, cache_dir=path.parent / "no-such-cache-dir") == path
    spec2, params2 = W.load_pretrained("mobilenet", 0.75, cache_dir=path.parent / "no-such-dir")
    assert spec2 == spec
    assert_same(params2, params)


# ----------------------------------------------------------------------------- untrusted files


def _bomb(path, params, n=100_000_000):
    """``params`` saved with conv1's kernel replaced by a gzip dataset of ``n`` zeros declared
    (400 MB as float32) in a file of a few hundred KB."""
    W.save_h5(params, path)
    with h5py.File(path, "r+") as f:
        del f["conv1"]["conv1/kernel:0"]
        cn = 4_000_000
        ds = f["conv1"].create_dataset("conv1/kernel:0", shape=(n,), dtype="float32",
                                       chunks=(cn,), compression="gzip")
        z = zlib.compress(bytes(4 * cn), 9)
        for j in range(0, n, cn):
            ds.id.write_direct_chunk((j,), z)
    return path


def _peak_mb(fn):
    tracemalloc.start()
    try:
        fn()
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return peak / 2**20


def test_gzip_bomb_is_refused_before_reading(tmp_path, small):
    spec, params = small
    path = _bomb(tmp_path / "bomb.h5", params)
    assert path.stat().st_size < 2_000_000

    def load():
        with pytest.raises(ValueError, match=r"shape mismatch at layer 'conv1'.*\(100000000,\)"):
            W.load(spec, path)

    assert _peak_mb(load) < 50  # the 400 MB array is never allocated
    rep = W.info(path)  # shapes only
    assert rep["layers"][0]["vars"]["kernel"] == [100_000_000]
    with pytest.raises(ValueError, match="declare .* bytes, more than max_bytes"):
        W.read_h5(path, max_bytes=100 << 20)


def test_forged_gzip_chunk_is_refused_with_bounded_memory(tmp_path, small):
    """A chunk of the right declared size whose gzip stream inflates to 256 MB (HDF5's own
    filter would grow its buffer to that)."""
    spec, params = small
    path = W.save_h5(params, tmp_path / "forged.h5")
    with h5py.File(path, "r+") as f:
        del f["conv1"]["conv1/kernel:0"]
        ds = f["conv1"].create_dataset("conv1/kernel:0", shape=(3, 3, 3, 8), dtype="float32",
                                       chunks=(3, 3, 3, 8), compression="gzip")
        ds.id.write_direct_chunk((0, 0, 0, 0), zlib.compress(bytes(256 << 20), 9))

    def load():
        with pytest.raises(ValueError, match="does not decompress to its 864 bytes"):
            W.load(spec, path)

    assert _peak_mb(load) < 50


def test_gzip_and_shuffle_files_load_exactly(tmp_path, small):
    spec, params = small
    path = tmp_path / "gz.h5"
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = np.array([n.encode() for n in params])
        for layer, d in params.items():
            g = f.create_group(layer)
            names = [f"{layer}/{v}:0" for v in d]
            g.attrs["weight_names"] = np.array([n.encode() for n in names])
            for n, a in zip(names, d.values(), strict=True):
                chunks = tuple(max(1, s // 2) for s in a.shape)  # edge chunks too
                g.create_dataset(n, data=a, compression="gzip", shuffle=True, chunks=chunks)
    assert_same(W.load(spec, path), params)
    assert_same(W.read_h5(path), params)


def test_links_and_external_data_are_refused(tmp_path, small):
    spec, params = small
    other = W.save_h5({"conv1": params["conv1"]}, tmp_path / "other.h5")
    ext = W.save_h5(params, tmp_path / "ext.h5")
    with h5py.File(ext, "r+") as f:
        del f["conv1"]
        f["conv1"] = h5py.ExternalLink(str(other), "/conv1")
    with pytest.raises(ValueError, match="'conv1' is an external link to another file"):
        W.load(spec, ext)
    with pytest.raises(ValueError, match="external link"):
        W.info(ext)
    soft = W.save_h5(params, tmp_path / "soft.h5")
    with h5py.File(soft, "r+") as f:
        f["conv1"].move("conv1", "hidden")
        f["conv1"]["conv1"] = h5py.SoftLink("/conv1/hidden")
    with pytest.raises(ValueError, match="is a soft link"):
        W.load(spec, soft)
    raw = tmp_path / "raw.bin"
    raw.write_bytes(np.zeros(216, np.float32).tobytes())
    exts = W.save_h5(params, tmp_path / "extstore.h5")
    with h5py.File(exts, "r+") as f:
        del f["conv1"]["conv1/kernel:0"]
        f["conv1"].create_dataset("conv1/kernel:0", shape=(3, 3, 3, 8), dtype="float32",
                                  external=[(str(raw), 0, h5py.h5f.UNLIMITED)])
    with pytest.raises(ValueError, match="external files"):
        W.load(spec, exts)


def test_weight_file_that_is_not_a_regular_file(tmp_path, small):
    spec, _ = small
    os.mkfifo(tmp_path / "w.h5")
    with pytest.raises(ValueError, match="not a regular file"):
        W.load(spec, tmp_path / "w.h5")
    (tmp_path / "junk.h5").write_bytes(b"not hdf5 at all")
    with pytest.raises(ValueError, match="not a readable HDF5 file"):
        W.read_h5(tmp_path / "junk.h5")
    with h5py.File(tmp_path / "str.h5", "w") as f:
        f.attrs["layer_names"] = np.array([b"conv1"])
        g = f.create_group("conv1")
        g.attrs["weight_names"] = np.array([b"conv1/kernel:0"])
        g.create_dataset("conv1/kernel:0", data=np.array([b"abc"]))
    with pytest.raises(ValueError, match="not numbers"):
        W.read_h5(tmp_path / "str.h5")
