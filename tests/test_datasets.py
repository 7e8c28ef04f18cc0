"""The data registry and its downloader (paper_repro.datasets, `paper-repro data`).

Downloads are exercised against local mirrors only: a folder read through file:// URLs or a
plain path, and an http.server on 127.0.0.1 started here. Synthetic entries need no real
data; the checks against the real files read PAPER_REPRO_SHARED_DATA and skip without it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from paper_repro import cli
from paper_repro import datasets as D


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _real_data() -> Path:
    env = os.environ.get("PAPER_REPRO_SHARED_DATA")
    if not env or not Path(env).is_dir():
        pytest.skip("real data not found: set PAPER_REPRO_SHARED_DATA to the folder holding "
                    "imagenet-val-1300/, keras-weights/ and onnx/ to run this check")
    return Path(env)


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


@pytest.fixture(autouse=True)
def _data_root_in_tmp(tmp_path, monkeypatch):
    """Nothing is ever written to the user's data root."""
    monkeypatch.setenv("PAPER_REPRO_DATA", str(tmp_path / "default-root"))


@pytest.fixture
def http_mirror(tmp_path):
    """(folder, base URL, list of request paths): an HTTP server on 127.0.0.1 over a folder."""
    root = tmp_path / "http-mirror"
    root.mkdir()
    seen: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **k):
            super().__init__(*a, directory=str(root), **k)

        def log_message(self, *a):
            seen.append(self.path)

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    try:
        yield root, f"http://127.0.0.1:{srv.server_address[1]}/", seen
    finally:
        srv.shutdown()
        srv.server_close()
        t.join(timeout=5)


# --------------------------------------------------------------------------- synthetic entries


def _image_set(mirror: Path, n: int = 5, name: str = "synth-set") -> D.Entry:
    """An image-set entry of ``n`` random files under ``mirror/SET/data/`` with a
    ``SET/dataset.txt`` in the source's format; registered nowhere."""
    rng = np.random.default_rng(0)
    (mirror / "SET" / "data").mkdir(parents=True, exist_ok=True)
    files, lines = [], []
    for i in range(n):
        data = rng.integers(0, 256, 200 + 13 * i, dtype=np.uint8).tobytes()
        fname = f"img_{i:03d}.JPEG"
        (mirror / "SET" / "data" / fname).write_bytes(data)
        files.append(D.RemoteFile(remote=f"SET/data/{fname}", local=f"{name}/images/{fname}",
                                  size=len(data), sha256=_sha(data), label=7 * i))
        lines.append(f"./data/{fname}, {7 * i}")
    (mirror / "SET" / "dataset.txt").write_text("\n".join(lines) + "\n")
    files = tuple(files)
    return D.Entry(
        name=name, description="synthetic images", path=name,
        url_prefix=f"http://127.0.0.1:{_closed_port()}/", source="test", license="test",
        checksums={}, files=lambda: files, manual="copy the files into {root}/" + name,
        labels_remote="SET/dataset.txt", labels_local=f"{name}/labels.txt",
    )


def _h5_file(path: Path, *, chunked: bool, seed: int = 1) -> None:
    """A small Keras-like .h5 file; ``chunked`` changes the container bytes, not the values."""
    import h5py

    rng = np.random.default_rng(seed)
    tensors = {"conv1/conv1/kernel:0": rng.standard_normal((3, 3, 3, 4)).astype(np.float32),
               "bn/bn/gamma:0": rng.standard_normal(4).astype(np.float32)}
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [b"conv1", b"bn"]
        for k, v in (sorted(tensors.items(), reverse=chunked)):
            f.create_dataset(k, data=v, chunks=v.shape if chunked else None)


def _weight_entry(mirror: Path, recorded: Path) -> D.Entry:
    """A single-file HDF5 entry whose recorded copy is ``recorded``."""
    data = recorded.read_bytes()
    rf = D.RemoteFile(remote="w/model.h5", local="keras-weights/model.h5", size=len(data),
                      sha256=_sha(data), tensor_sha256=D.tensor_digest(recorded),
                      max_bytes=4 * len(data) + 65536)
    return D.Entry(name="synth-weights", description="synthetic weights", path=rf.local,
                   url_prefix=f"http://127.0.0.1:{_closed_port()}/", source="test",
                   license="test", checksums={"sha256": rf.sha256}, files=lambda: (rf,),
                   manual="save it as {root}/" + rf.local)


def test_fetch_from_file_url_writes_images_and_labels(tmp_path):
    mirror = tmp_path / "mirror"
    entry = _image_set(mirror)
    dest = tmp_path / "dest"
    res = D.fetch(entry, dest, base_url=mirror.as_uri(), progress=False)
    assert res.downloaded == 6 and res.skipped == 0
    assert res.matched == {"sha256": 5, "manifest": 1}
    for f in entry.files():
        assert (dest / f.local).read_bytes() == (mirror / f.remote).read_bytes()
    labels = (dest / "synth-set" / "labels.txt").read_text().splitlines()
    assert labels == [f"img_{i:03d}.JPEG {7 * i}" for i in range(5)]
    assert D.verify(entry, dest).passed
    assert D.present(entry, dest)
    # Only the entry's files: no temporary files left.
    assert len(_leftovers(dest)) == 6


def test_fetch_over_http_and_resume_skips_verified_files(tmp_path, http_mirror):
    root, url, seen = http_mirror
    entry = _image_set(root)
    dest = tmp_path / "dest"
    res = D.fetch(entry, dest, base_url=url, progress=True, jobs=3)
    assert res.downloaded == 6 and res.bytes_downloaded == sum(f.size for f in entry.files())
    assert len(seen) == 6  # five images and dataset.txt

    seen.clear()
    again = D.fetch(entry, dest, base_url=url, progress=False)
    assert (again.downloaded, again.skipped) == (0, 6)
    assert seen == []  # nothing requested

    # One file lost and one damaged: only those two are requested again.
    files = entry.files()
    (dest / files[1].local).unlink()
    (dest / files[3].local).write_bytes(b"damaged")
    third = D.fetch(entry, dest, base_url=url, progress=False)
    assert (third.downloaded, third.skipped) == (2, 4)
    assert sorted(seen) == sorted(f"/{files[i].remote}" for i in (1, 3))
    assert D.verify(entry, dest).passed


def test_resume_needs_no_network(tmp_path):
    mirror = tmp_path / "mirror"
    entry = _image_set(mirror)
    dest = tmp_path / "dest"
    D.fetch(entry, dest, base_url=str(mirror), progress=False)  # a plain folder path works
    dead = f"http://127.0.0.1:{_closed_port()}/"
    res = D.fetch(entry, dest, base_url=dead, progress=False)
    assert (res.downloaded, res.skipped) == (0, 6)


def test_corrupted_mirror_file_is_refused_and_nothing_is_left(tmp_path, http_mirror):
    root, url, _ = http_mirror
    entry = _image_set(root, n=3)
    bad = root / entry.files()[1].remote
    data = bytearray(bad.read_bytes())
    data[10] ^= 0xFF
    bad.write_bytes(bytes(data))
    dest = tmp_path / "dest"
    with pytest.raises(D.ChecksumError, match=r"img_001\.JPEG: sha256 .* expected .*refused"):
        D.fetch(entry, dest, base_url=url, progress=False, jobs=1)
    assert not (dest / entry.files()[1].local).exists()
    assert not (dest / "synth-set" / "labels.txt").exists()
    assert not [p for p in _leftovers(dest) if p.name.endswith(".part")]


def test_oversized_file_is_refused_without_reading_past_the_limit(tmp_path):
    mirror = tmp_path / "mirror"
    entry = _image_set(mirror, n=1)
    f = entry.files()[0]
    (mirror / f.remote).write_bytes((mirror / f.remote).read_bytes() + b"x" * 10_000)
    dest = tmp_path / "dest"
    with pytest.raises(D.ChecksumError, match="more than the expected"):
        D.fetch(entry, dest, base_url=mirror.as_uri(), progress=False)
    assert _leftovers(dest) == []


def test_labels_that_disagree_with_the_manifest_are_refused(tmp_path):
    mirror = tmp_path / "mirror"
    entry = _image_set(mirror)
    src = mirror / "SET" / "dataset.txt"
    src.write_text(src.read_text().replace("./data/img_002.JPEG, 14", "./data/img_002.JPEG, 15"))
    dest = tmp_path / "dest"
    with pytest.raises(D.ChecksumError, match="1 labels differ"):
        D.fetch(entry, dest, base_url=mirror.as_uri(), progress=False)
    assert not (dest / "synth-set" / "labels.txt").exists()


def test_files_placed_by_hand_are_checked_without_network(tmp_path):
    mirror = tmp_path / "mirror"
    entry = _image_set(mirror)
    dest = tmp_path / "dest"
    shutil.copytree(mirror / "SET" / "data", dest / "synth-set" / "images")
    shutil.copy(mirror / "SET" / "dataset.txt", dest / "synth-set" / "dataset.txt")
    res = D.fetch(entry, dest, progress=False)  # the default URL is a closed port
    assert res.skipped == 5 and res.downloaded == 1  # labels.txt written from the manifest
    assert D.verify(entry, dest).passed


def test_http_404_names_the_url_and_the_manual_route(tmp_path, http_mirror):
    _, url, _ = http_mirror
    entry = _image_set(tmp_path / "elsewhere", n=2)
    with pytest.raises(D.DataUnavailableError) as e:
        D.fetch(entry, tmp_path / "dest", base_url=url, progress=False, jobs=1)
    msg = str(e.value)
    assert f"{url}SET/data/img_000.JPEG" in msg and "404" in msg
    assert "by hand" in msg and str(tmp_path / "dest") in msg
    assert "\n" not in msg


def test_weights_accepted_by_tensor_digest_when_bytes_differ(tmp_path, http_mirror):
    root, url, _ = http_mirror
    recorded = tmp_path / "recorded.h5"
    _h5_file(recorded, chunked=False)
    served = root / "w" / "model.h5"
    served.parent.mkdir()
    _h5_file(served, chunked=True)
    assert _sha(served.read_bytes()) != _sha(recorded.read_bytes())
    entry = _weight_entry(root, recorded)
    dest = tmp_path / "dest"
    res = D.fetch(entry, dest, base_url=url, progress=False)
    assert res.matched == {"tensor-sha256": 1}
    assert "1 by tensor-sha256" in res.summary()
    assert D.verify(entry, dest).matched == {"tensor-sha256": 1}

    # Different values: refused.
    _h5_file(served, chunked=True, seed=2)
    (dest / entry.path).unlink()
    with pytest.raises(D.ChecksumError):
        D.fetch(entry, dest, base_url=url, progress=False)
    assert _leftovers(dest) == []


def test_tensor_digest_refuses_links_to_other_files(tmp_path):
    import h5py

    other = tmp_path / "other.h5"
    _h5_file(other, chunked=False)
    for kind in ("external", "soft"):
        p = tmp_path / f"{kind}.h5"
        with h5py.File(p, "w") as f:
            f["a"] = np.zeros(3, np.float32)
            f["b"] = (h5py.ExternalLink(str(other), "/bn/bn/gamma:0") if kind == "external"
                      else h5py.SoftLink("/a"))
        with pytest.raises(ValueError, match="links are not allowed"):
            D.tensor_digest(p)


def test_tensor_digest_depends_on_values_paths_and_dtypes(tmp_path):
    import h5py

    def digest(**tensors):
        p = tmp_path / "t.h5"
        with h5py.File(p, "w") as f:
            for k, v in tensors.items():
                f[k] = v
        return D.tensor_digest(p)

    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    base = digest(x=a)
    assert digest(x=a.astype(">f4")) == base  # byte order of storage does not matter
    assert digest(x=a.reshape(3, 2)) != base
    assert digest(y=a) != base
    assert digest(x=a.astype(np.float64)) != base
    assert digest(x=a + 1) != base


# --------------------------------------------------------------------------- registry


def test_registry_entries_are_complete():
    assert {"imagenet-val-1300", "mobilenet-0.75-keras", "shufflenet-v2-x0.5-onnx"} <= set(D.names())
    for name in D.names():
        e = D.get(name)
        assert e.description and e.license and e.source and e.checksums
        assert all(u.startswith("https://") for u in e.source_urls())
        assert e.size > 0
        for f in e.files():
            assert len(f.sha256) == 64 and f.size > 0
    with pytest.raises(ValueError, match="choose from"):
        D.get("imagenet")


def test_imagenet_manifest_is_the_pinned_one():
    files = D.get("imagenet-val-1300").files()
    assert len(files) == 1300
    assert len({f.label for f in files}) == 725
    assert all(0 <= f.label < 1000 for f in files)
    assert len({f.sha256 for f in files}) == 1300
    assert all(f.remote.startswith("ILSVRC2012_VAL_SET/data/ILSVRC2012_val_") for f in files)
    assert D.get("mobilenet-0.75-keras").url(D.get("mobilenet-0.75-keras").files()[0]) == (
        "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet/"
        "mobilenet_7_5_224_tf.h5")


def test_data_root_resolution(tmp_path, monkeypatch):
    monkeypatch.setenv("PAPER_REPRO_DATA", str(tmp_path / "x"))
    assert D.data_root() == tmp_path / "x"
    monkeypatch.delenv("PAPER_REPRO_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert D.data_root() == tmp_path / "cache" / "paper-repro" / "data"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert D.data_root() == tmp_path / "home" / ".cache" / "paper-repro" / "data"


def test_package_resolver_finds_fetched_data(tmp_path, monkeypatch):
    from paper_repro.feedforward.weights import shared_data_dir

    mirror = tmp_path / "mirror"
    entry = _image_set(mirror)
    monkeypatch.setattr(D, "REGISTRY", {entry.name: entry})
    root = tmp_path / "fetched"
    monkeypatch.delenv("PAPER_REPRO_SHARED_DATA", raising=False)
    monkeypatch.setenv("PAPER_REPRO_DATA", str(root))
    assert shared_data_dir() is None  # nothing fetched yet
    D.fetch(entry.name, base_url=mirror.as_uri(), progress=False)  # into the data root
    assert shared_data_dir() == root
    monkeypatch.setenv("PAPER_REPRO_SHARED_DATA", str(tmp_path / "explicit"))
    assert shared_data_dir() == tmp_path / "explicit"  # the explicit variable wins


# --------------------------------------------------------------------------- command line


def _paper_repro(*args: str) -> subprocess.CompletedProcess:
    """Run the command line; stdout/stderr decoded with carriage returns kept as they are."""
    r = subprocess.run([sys.executable, "-m", "paper_repro.cli", *args], capture_output=True,
                       timeout=120)
    return subprocess.CompletedProcess(r.args, r.returncode, r.stdout.decode(), r.stderr.decode())


def test_cli_list_names_every_entry(capsys, tmp_path):
    assert cli.main(["data", "list", "--dest", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "imagenet-val-1300  [not present]" in out
    assert "raw.githubusercontent.com/VeriSilicon/acuity-dataset/" in out
    assert "Apache-2.0" in out
    assert cli.main(["data", "list", "--json", "--dest", str(tmp_path)]) == 0
    rep = json.loads(capsys.readouterr().out)
    by_name = {e["name"]: e for e in rep["entries"]}
    assert by_name["shufflenet-v2-x0.5-onnx"]["checksums"]["sha256"].startswith("bc680ffb")
    assert by_name["shufflenet-v2-x0.5-onnx"]["size_bytes"] == 2_785_570
    assert not any(e["present"] for e in rep["entries"])


def test_cli_errors_are_one_line(capsys):
    assert cli.main(["data", "fetch", "nope", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "choose from" in err[0]


def test_cli_fetch_offline_fails_in_one_line(tmp_path):
    dest = tmp_path / "dest"
    r = _paper_repro("data", "fetch", "imagenet-val-1300", "--dest", str(dest),
                     "--base-url", f"http://127.0.0.1:{_closed_port()}/")
    assert r.returncode != 0
    # The progress bar is cleared (carriage returns) before the message: one line on screen.
    lines = [ln.rsplit("\r", 1)[-1] for ln in r.stderr.split("\n") if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr
    assert "could not download http://127.0.0.1:" in lines[0]
    assert "imagenet-val-1300/images/" in lines[0]  # where to place the files by hand
    assert not [p for p in _leftovers(dest) if p.name.endswith(".part")]


def test_cli_list_piped_into_head_is_quiet():
    r = subprocess.run(f"'{sys.executable}' -m paper_repro.cli data list | head -n 1",
                       shell=True, capture_output=True, text=True, timeout=120)
    assert r.stdout.startswith("data root:")
    assert r.stderr == ""


def test_cli_fetch_and_verify(tmp_path, capsys, monkeypatch):
    mirror = tmp_path / "mirror"
    entry = _image_set(mirror)
    monkeypatch.setitem(D.REGISTRY, entry.name, entry)
    dest = tmp_path / "dest"
    argv = ["data", "fetch", entry.name, "--dest", str(dest), "--no-progress"]
    assert cli.main([*argv, "--base-url", mirror.as_uri()]) == 0
    assert "6 downloaded" in capsys.readouterr().out
    assert cli.main(["data", "verify", entry.name, "--dest", str(dest)]) == 0
    assert "OK" in capsys.readouterr().out
    (dest / entry.files()[0].local).write_bytes(b"x")
    assert cli.main(["data", "verify", entry.name, "--dest", str(dest)]) == 2
    cap = capsys.readouterr()
    assert "checksum differs" in cap.out and len(cap.err.strip().splitlines()) == 1


# --------------------------------------------------------------------------- real files


@pytest.mark.shared_data
def test_manifest_matches_the_real_images():
    real = _real_data()
    rows = D.build_manifest(real / "imagenet-val-1300" / "images",
                            real / "imagenet-val-1300" / "labels.txt")
    files = D.get("imagenet-val-1300").files()
    assert [(r["file"], r["size"], r["sha256"], r["label"]) for r in rows] == [
        (Path(f.local).name, f.size, f.sha256, f.label) for f in files]
    for name in D.names():
        res = D.verify(name, real)
        assert res.passed, res.summary()
        assert res.matched.get("sha256", 0) >= 1


@pytest.mark.shared_data
def test_real_subset_through_a_mirror_of_the_source_layout(tmp_path, monkeypatch, http_mirror):
    """Five real images, the weights and the ONNX file, laid out as their source repositories
    and servers publish them, fetched over HTTP: the result is byte-identical to the real data."""
    real = _real_data()
    root, url, _ = http_mirror
    entry = D.get("imagenet-val-1300")
    subset = entry.files()[:5]
    monkeypatch.setitem(D.REGISTRY, entry.name, dataclasses.replace(entry, files=lambda: subset))
    src = root / "ILSVRC2012_VAL_SET"
    (src / "data").mkdir(parents=True)
    for f in subset:
        os.symlink(real / f.local, root / f.remote)
    lines = (real / "imagenet-val-1300" / "labels.txt").read_text().splitlines()
    (src / "dataset.txt").write_text(
        "".join(f"./data/{n}, {c}\n" for n, c in (ln.split() for ln in lines)))
    for name in ("mobilenet-0.75-keras", "shufflenet-v2-x0.5-onnx"):
        f = D.get(name).files()[0]
        (root / f.remote).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(real / f.local, root / f.remote)

    dest = tmp_path / "dest"
    for name in ("imagenet-val-1300", "mobilenet-0.75-keras", "shufflenet-v2-x0.5-onnx"):
        res = D.fetch(name, dest, base_url=url, progress=False)
        assert res.matched.get("sha256") == len(D.get(name).files())
        assert D.verify(name, dest).passed
    for f in subset:
        assert (dest / f.local).read_bytes() == (real / f.local).read_bytes()
    assert (dest / "imagenet-val-1300" / "labels.txt").read_text().splitlines() == lines[:5]
    for rel in ("keras-weights/mobilenet_7_5_224_tf.h5", "onnx/shufflenet_v2_x0_5_fp16.onnx"):
        assert _sha((dest / rel).read_bytes()) == _sha((real / rel).read_bytes())


@pytest.mark.shared_data
def test_real_weights_resaved_are_accepted_by_tensor_digest(tmp_path):
    import h5py

    real = _real_data() / "keras-weights" / "mobilenet_7_5_224_tf.h5"
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    out = mirror / "mobilenet_7_5_224_tf.h5"
    with h5py.File(real, "r") as a, h5py.File(out, "w") as b:
        for k, v in a.attrs.items():
            b.attrs[k] = v

        def copy(name, obj):  # returns None, so the visit goes on
            if isinstance(obj, h5py.Dataset):
                b.create_dataset(name, data=obj[()], chunks=True)

        a.visititems(copy)
    assert _sha(out.read_bytes()) != _sha(real.read_bytes())
    res = D.fetch("mobilenet-0.75-keras", tmp_path / "dest", base_url=mirror.as_uri(),
                  progress=False)
    assert res.matched == {"tensor-sha256": 1}


def test_reads_stop_at_the_expected_size_without_content_length(tmp_path):
    """A server streaming without end is cut off just past the expected size."""
    sent = []

    class Endless(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()  # no Content-Length: the body runs until the connection closes
            try:
                for _ in range(800):  # 50 MiB at most
                    self.wfile.write(b"\0" * 65536)
                    sent.append(65536)
            except OSError:
                pass

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Endless)
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    try:
        entry = _image_set(tmp_path / "mirror", n=1)
        with pytest.raises(D.ChecksumError, match="more than the expected"):
            D.fetch(entry, tmp_path / "dest", base_url=f"http://127.0.0.1:{srv.server_address[1]}/",
                    progress=False)
    finally:
        srv.shutdown()
        srv.server_close()
        t.join(timeout=5)
    assert _leftovers(tmp_path / "dest") == []


def test_a_silent_server_times_out(tmp_path):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)  # accepts connections in the kernel, never answers
    try:
        entry = _image_set(tmp_path / "mirror", n=1)
        with pytest.raises(D.DataUnavailableError, match="timed out"):
            D.fetch(entry, tmp_path / "dest", base_url=f"http://127.0.0.1:{s.getsockname()[1]}/",
                    progress=False, timeout=0.5)
    finally:
        s.close()
