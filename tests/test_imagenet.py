"""Tests of paper_repro.feedforward.imagenet: sources, crop policies, the decode-once cache, evaluate.

Synthetic tests build tiny JPEG folders in tmp_path. Tests marked ``shared_data`` read the
real 1300-image validation subset from ``$PAPER_REPRO_SHARED_DATA`` (default
``<repo>/../shared/data``) and skip with a message when it is absent.
"""

from __future__ import annotations

import io
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from paper_repro.core import stats
from paper_repro.feedforward import imagenet, models
from paper_repro.feedforward import weights as W

REPO = Path(__file__).resolve().parent.parent


def shared_data_dir() -> Path:
    from paper_repro.feedforward.weights import shared_data_dir as package_dir

    return package_dir() or REPO.parent / "shared" / "data"


def need_shared(*parts: str) -> Path:
    p = shared_data_dir().joinpath(*parts)
    if not p.exists():
        pytest.skip(f"real data not found at {p}; set PAPER_REPRO_SHARED_DATA to the shared data folder")
    return p


# ----------------------------------------------------------------------------- fixtures

WNIDS = ["n01440764", "n01443537", "n15075141"]  # class 0, 1 and 999


def _jpeg(rng, w, h) -> bytes:
    arr = (rng.random((h, w, 3)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Same 7 images as class folders and as a flat folder + labels (one corrupt file)."""
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("imnet")
    folders, flat = root / "classes", root / "flat"
    flat.mkdir()
    sizes = [(40, 30), (30, 40), (36, 36), (50, 33), (33, 33), (64, 40), (40, 40)]
    labels_lines, expect = [], []
    for k, (w, h) in enumerate(sizes):
        wn = WNIDS[k % 3]
        name = f"ILSVRC2012_val_{70 - k:08d}.JPEG"  # reverse order: sorting must reorder
        data = _jpeg(rng, w, h) if k != 4 else b"not a jpeg at all"
        (folders / wn).mkdir(parents=True, exist_ok=True)
        (folders / wn / name).write_bytes(data)
        (flat / name).write_bytes(data)
        labels_lines.append(f"{name} {imagenet.class_index(wn)}")
        expect.append((name, imagenet.class_index(wn)))
    (root / "labels.txt").write_text("\n".join(labels_lines) + "\n")
    expect.sort()
    return {"root": root, "folders": folders, "flat": flat, "labels": root / "labels.txt",
            "expect": expect, "corrupt": "ILSVRC2012_val_00000066.JPEG"}


# ----------------------------------------------------------------------------- classes


def test_embedded_wnids():
    w = imagenet.wnids()
    assert len(w) == 1000 == len(set(w)) and list(w) == sorted(w)
    assert w[0] == "n01440764" and w[999] == "n15075141"
    assert imagenet.class_index("n01443537") == 1
    with pytest.raises(ValueError, match="not one of the 1000"):
        imagenet.class_index("n00000000")


@pytest.mark.shared_data
def test_embedded_wnids_match_synset_words():
    p = need_shared("imagenet-val-1300", "synset_words.txt")
    ref = [line.split()[0] for line in p.read_text().splitlines() if line.strip()]
    assert list(imagenet.wnids()) == ref


# ----------------------------------------------------------------------------- sources


def test_class_folders_and_ground_truth_agree(tiny):
    a = imagenet.from_class_folders(tiny["folders"])
    b = imagenet.from_ground_truth(tiny["flat"], tiny["labels"])
    names = [n for n, _ in tiny["expect"]]
    assert [i.split("/")[-1] for i in a.ids] == names == list(b.ids)
    np.testing.assert_array_equal(a.labels, [c for _, c in tiny["expect"]])
    np.testing.assert_array_equal(a.labels, b.labels)
    assert set(a.labels.tolist()) == {0, 1, 999}
    assert a.read(0) == b.read(0)
    assert a.fingerprint != b.fingerprint  # different layouts, different cache entries
    assert imagenet.open_source(tiny["folders"]).fingerprint == a.fingerprint


def test_source_errors(tmp_path, tiny):
    (tmp_path / "cats").mkdir()
    with pytest.raises(ValueError, match="WordNet ids"):
        imagenet.from_class_folders(tmp_path)
    with pytest.raises(FileNotFoundError):
        imagenet.from_class_folders(tmp_path / "nope")
    bad = tmp_path / "bad.txt"
    bad.write_text("a.JPEG 3\nb.JPEG\n")
    with pytest.raises(ValueError, match=r"bad.txt:2"):
        imagenet.from_ground_truth(tiny["flat"], bad)
    bad.write_text("a.JPEG 1000\n")
    with pytest.raises(ValueError, match="outside 0..999"):
        imagenet.from_ground_truth(tiny["flat"], bad)


def test_hf_imagefolder_matches_class_folders(tiny, tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    h = imagenet.from_hf("imagefolder", data_dir=str(tiny["folders"]), split="validation",
                         cache_dir=str(tmp_path / "hf"))
    a = imagenet.from_class_folders(tiny["folders"])
    # (imagefolder names the split "validation" from the ILSVRC2012_val_ file names.)
    # imagefolder orders rows its own way: compare as multisets of (bytes, label).
    got = sorted((h.read(i), int(h.labels[i])) for i in range(len(h)))
    want = sorted((a.read(i), int(a.labels[i])) for i in range(len(a)))
    assert got == want  # labels mapped from folder names to standard indices (0, 1, 999)
    with pytest.warns(imagenet.UnreadableImagesWarning, match="1 of 7 images"):
        d = imagenet.load(h, size=24, policy="crop", cache_dir=tmp_path / "c", progress=False)
    assert d.images.shape == (7, 24, 24, 3) and int((~d.valid).sum()) == 1


def test_hf_in_memory_dataset_with_int_labels(tiny):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict(
        {"image": [str(tiny["flat"] / n) for n, _ in tiny["expect"]],
         "label": [c for _, c in tiny["expect"]]}
    ).cast_column("image", datasets.Image())
    h = imagenet.from_hf(ds, name="mem")
    np.testing.assert_array_equal(h.labels, [c for _, c in tiny["expect"]])
    ds_test = ds.map(lambda r: {"label": -1})
    with pytest.raises(ValueError, match="no label"):
        imagenet.from_hf(ds_test)


# ----------------------------------------------------------------------------- preprocessing


def test_resize_for_policies():
    assert imagenet.resize_for(224, "resize") == 256
    assert imagenet.resize_for(299, "resize") == 342
    assert imagenet.resize_for(224, "resize300") == 300
    assert imagenet.resize_for(224, "crop") is None
    with pytest.raises(ValueError, match="unknown crop policy"):
        imagenet.resize_for(224, "stretch")
    with pytest.raises(ValueError, match="< crop size"):
        imagenet.resize_for(224, "resize200")


def test_crop_image_matches_pil_reference():
    rng = np.random.default_rng(2)
    img = Image.fromarray((rng.random((60, 90, 3)) * 255).astype(np.uint8))  # w=90, h=60
    out = imagenet.crop_image(img, size=32, policy="resize40")
    ref = img.resize((60, 40), Image.BILINEAR)  # shorter side 60 -> 40, 90 -> 60
    ref = np.asarray(ref)[4:36, 14:46]
    np.testing.assert_array_equal(out, ref)
    crop = imagenet.crop_image(img, size=32, policy="crop")
    np.testing.assert_array_equal(crop, np.asarray(img)[14:46, 29:61])
    grey = imagenet.crop_image(img.convert("L"), size=8, policy="crop")
    assert grey.shape == (8, 8, 3) and grey.dtype == np.uint8
    with pytest.raises(ValueError, match="smaller than"):
        imagenet.crop_image(img, size=64, policy="crop")


def test_preprocess_modes():
    x = np.arange(2 * 2 * 2 * 3, dtype=np.uint8).reshape(2, 2, 2, 3) * 10
    xf = x.astype(np.float32)
    # Keras imagenet_utils.preprocess_input formulas, float32 arithmetic (exact up to 1 ulp).
    np.testing.assert_allclose(imagenet.preprocess_input(x, "tf"), xf / 127.5 - 1, atol=1e-6)
    caffe = xf[..., ::-1] - np.array([103.939, 116.779, 123.68], np.float32)
    np.testing.assert_allclose(imagenet.preprocess_input(x, "caffe"), caffe, atol=1e-5)
    np.testing.assert_array_equal(imagenet.preprocess_input(x, None), xf)
    np.testing.assert_array_equal(imagenet.preprocess_input(x, lambda v: v * 2), xf * 2)
    with pytest.raises(ValueError, match="unknown preprocess mode"):
        imagenet.preprocess_input(x, "keras")


def test_preprocess_agrees_with_model_registry():
    x = np.random.default_rng(0).integers(0, 256, (2, 5, 5, 3)).astype(np.uint8)
    for mode in ("caffe", "tf", "torch"):
        np.testing.assert_array_equal(
            imagenet.preprocess_input(x, mode), models.preprocess(x, mode)
        )


# ----------------------------------------------------------------------------- cache


def test_cache_decodes_once_and_reports_errors(tiny, tmp_path, monkeypatch):
    src = imagenet.from_ground_truth(tiny["flat"], tiny["labels"])
    monkeypatch.setenv("PAPER_REPRO_CACHE", str(tmp_path))
    with pytest.warns(imagenet.UnreadableImagesWarning, match="UnidentifiedImageError"):
        d = imagenet.load(src, size=28, policy="resize32", progress=False)
    assert Path(d.meta["path"]).is_relative_to(tmp_path)
    assert isinstance(d.images, np.memmap) and d.images.shape == (7, 28, 28, 3)
    assert d.images.dtype == np.uint8
    bad = src.ids.index(tiny["corrupt"])
    assert not d.valid[bad] and d.valid.sum() == 6
    assert d.errors == ((tiny["corrupt"], d.errors[0][1]),)
    assert "UnidentifiedImageError" in d.errors[0][1]
    assert not d.images[bad].any()
    want = imagenet.decode(src.read(0), size=28, policy="resize32")
    np.testing.assert_array_equal(d.images[0], want)
    # Second load: no decoding at all, same array.
    monkeypatch.setattr(imagenet, "decode", lambda *a, **k: 1 / 0)
    d2 = imagenet.load(src, size=28, policy="resize32", progress=False)
    np.testing.assert_array_equal(d2.images, d.images)
    assert d2.errors == d.errors
    leftovers = [p.name for p in Path(d.meta["path"]).parent.iterdir()]
    assert leftovers == ["resize32-28"]


def test_cache_build_is_atomic(tiny, tmp_path, monkeypatch):
    src = imagenet.from_class_folders(tiny["folders"])

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(imagenet, "_decode_one", boom)
    with pytest.raises(KeyboardInterrupt):
        imagenet.load(src, size=16, policy="crop", cache_dir=tmp_path, progress=False)
    path = imagenet.cache_path(src, size=16, policy="crop", cache_dir=tmp_path)
    assert not path.exists() and list(path.parent.iterdir()) == []


def test_missing_listed_file_counts_as_error(tiny, tmp_path):
    lines = tiny["labels"].read_text() + "ILSVRC2012_val_00099999.JPEG 5\n"
    (tmp_path / "labels.txt").write_text(lines)
    src = imagenet.from_ground_truth(tiny["flat"], tmp_path / "labels.txt")
    assert src.info["missing"] == 1 and len(src) == 8
    with pytest.warns(imagenet.UnreadableImagesWarning, match="2 of 8 images"):
        d = imagenet.load(src, size=16, policy="crop", cache_dir=tmp_path, progress=False)
    reasons = dict(d.errors)
    assert "FileNotFoundError" in reasons["ILSVRC2012_val_00099999.JPEG"]
    assert len(d.errors) == 2


# ----------------------------------------------------------------------------- untrusted input


@pytest.fixture
def bright(tmp_path):
    """12 lossless PNGs: class 1 bright, class 0 dark; ``bright_apply`` gets them all right."""
    rng = np.random.default_rng(3)
    flat = tmp_path / "bright"
    flat.mkdir()
    lines = []
    for k in range(12):
        lab = k % 2
        arr = np.clip((200 if lab else 50) + rng.normal(0, 20, (20, 20, 3)), 0, 255)
        Image.fromarray(arr.astype(np.uint8)).save(flat / f"img_{k:03d}.png")
        lines.append(f"img_{k:03d}.png {lab}")
    (tmp_path / "bright.txt").write_text("\n".join(lines) + "\n")
    return flat, tmp_path / "bright.txt"


def bright_apply(params, x):
    import jax.numpy as jnp

    m = x.mean(axis=(1, 2, 3))
    return jnp.zeros((x.shape[0], 1000)).at[:, 1].set(m - 127.0 + params)


def _top1(d):
    return imagenet.evaluate(bright_apply, np.float32(0), d, batch_size=8, preprocess_mode=None,
                             progress=False).top1


def _within(seconds, fn):
    """``fn()``'s result or exception, failing the test if it takes more than ``seconds``."""
    box = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the test
            box["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"still running after {seconds} s (hangs)"
    if "error" in box:
        raise box["error"]
    return box["value"]


def test_labels_naming_a_fifo_fail_fast(bright, tmp_path):
    flat, labels = bright
    os.mkfifo(flat / "pipe.png")
    (tmp_path / "l.txt").write_text(labels.read_text() + "pipe.png 3\n")
    with pytest.raises(ValueError, match="pipe.png is not a regular file"):
        _within(10, lambda: imagenet.from_ground_truth(flat, tmp_path / "l.txt"))
    # a labels file that is itself a FIFO
    os.mkfifo(tmp_path / "fifo.txt")
    with pytest.raises(ValueError, match="not a regular file"):
        _within(10, lambda: imagenet.from_ground_truth(flat, tmp_path / "fifo.txt"))


def test_image_swapped_for_a_fifo_after_listing_is_unreadable_not_a_hang(bright, tmp_path):
    flat, labels = bright
    src = imagenet.from_ground_truth(flat, labels)
    (flat / "img_003.png").unlink()
    os.mkfifo(flat / "img_003.png")
    with pytest.warns(imagenet.UnreadableImagesWarning, match="1 of 12"):
        d = _within(30, lambda: imagenet.load(src, size=16, policy="crop",
                                             cache_dir=tmp_path / "c", progress=False))
    assert not d.valid[3] and "not a regular file" in dict(d.errors)["img_003.png"]


@pytest.mark.parametrize("name", ["../secret.png", "sub/../../secret.png", "/etc/passwd",
                                  "{abs}"])
def test_names_outside_the_folder_are_refused(bright, tmp_path, name):
    flat, labels = bright
    secret = tmp_path / "secret.png"
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(secret)
    (tmp_path / "l.txt").write_text(f"img_000.png 0\n{name.format(abs=secret)} 1\n")
    with pytest.raises(ValueError, match=r"l.txt:2: .* is not a file inside the image folder"):
        imagenet.from_ground_truth(flat, tmp_path / "l.txt")


def test_labels_with_byte_order_mark(bright, tmp_path):
    flat, labels = bright
    (tmp_path / "bom.txt").write_bytes(b"\xef\xbb\xbf" + labels.read_bytes())
    src = imagenet.from_ground_truth(flat, tmp_path / "bom.txt")
    ref = imagenet.from_ground_truth(flat, labels)
    assert src.ids == ref.ids and src.ids[0] == "img_000.png" and src.info["missing"] == 0
    np.testing.assert_array_equal(src.labels, ref.labels)
    (tmp_path / "latin1.txt").write_bytes("caf\xe9.png 1\n".encode("latin-1"))
    with pytest.raises(ValueError, match="not UTF-8"):
        imagenet.from_ground_truth(flat, tmp_path / "latin1.txt")


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_oversized_files_and_images_are_unreadable(bright, tmp_path, monkeypatch):
    flat, labels = bright
    src = imagenet.from_ground_truth(flat, labels)
    size0 = (flat / "img_000.png").stat().st_size
    monkeypatch.setattr(imagenet, "MAX_IMAGE_BYTES", size0 - 1)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 20 * 20)  # every image is exactly at it
    big = max(range(12), key=lambda k: (flat / f"img_{k:03d}.png").stat().st_size)
    with pytest.warns(imagenet.UnreadableImagesWarning):
        d = imagenet.load(src, size=16, policy="crop", cache_dir=tmp_path / "c", progress=False)
    assert not d.valid[big] and "more than the limit" in dict(d.errors)[src.ids[big]]
    monkeypatch.setattr(imagenet, "MAX_IMAGE_BYTES", 1 << 20)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 20 * 20 - 1)
    with pytest.raises(ValueError, match="larger than the limit"):
        imagenet.decode(src.read(0), size=16, policy="crop")


# ----------------------------------------------------------------------------- cache integrity


@pytest.mark.parametrize("name", ["images.npy", "labels.npy", "valid.npy", "meta.json"])
def test_damaged_cache_entry_is_rebuilt(bright, tmp_path, name, capsys):
    flat, labels = bright
    src = imagenet.from_ground_truth(flat, labels)
    d = imagenet.load(src, size=16, policy="crop", cache_dir=tmp_path / "c", progress=False)
    clean, top1 = np.array(d.images), _top1(d)
    assert top1 == 1.0
    p = Path(d.meta["path"]) / name
    raw = bytearray(p.read_bytes())
    rng = np.random.default_rng(0)
    start = 128 if name.endswith(".npy") else 0  # keep the .npy header: same shape, bad data
    noise = rng.integers(0, 2 if name == "valid.npy" else 256, len(raw) - start)
    raw[start:] = noise.astype(np.uint8).tobytes()
    p.write_bytes(bytes(raw))
    capsys.readouterr()
    d2 = imagenet.load(src, size=16, policy="crop", cache_dir=tmp_path / "c", progress=False)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "decoding the images again" in err
    assert (name if name != "meta.json" else "meta.json is unreadable") in err
    np.testing.assert_array_equal(d2.images, clean)
    np.testing.assert_array_equal(d2.labels, src.labels)
    assert d2.valid.all() and _top1(d2) == top1


def test_deleted_meta_json_recovers(bright, tmp_path, capsys):
    flat, labels = bright
    src = imagenet.from_ground_truth(flat, labels)
    d = imagenet.load(src, size=16, policy="crop", cache_dir=tmp_path / "c", progress=False)
    (Path(d.meta["path"]) / "meta.json").unlink()
    for _ in range(2):  # every later run works, not just the next one
        d2 = imagenet.load(src, size=16, policy="crop", cache_dir=tmp_path / "c",
                           progress=False)
        np.testing.assert_array_equal(d2.images, d.images)
    assert "meta.json is missing" in capsys.readouterr().err
    assert [p.name for p in Path(d.meta["path"]).parent.iterdir()] == ["crop-16"]


def test_image_replaced_by_one_of_the_same_size_is_noticed(bright, tmp_path, capsys):
    flat, labels = bright
    src = imagenet.from_ground_truth(flat, labels)
    d = imagenet.load(src, size=16, policy="crop", cache_dir=tmp_path / "c", progress=False)
    p = flat / "img_000.png"  # class 0, dark
    old = p.read_bytes()
    st = p.stat()
    buf = io.BytesIO()  # a bright image, smaller as PNG; padded to the old size below
    Image.fromarray(np.full((20, 20, 3), 230, np.uint8)).save(buf, format="PNG")
    new = buf.getvalue()
    assert len(new) <= len(old)
    p.write_bytes(new + b"\0" * (len(old) - len(new)))  # PIL ignores bytes after IEND
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))  # even with the old modification time
    assert p.stat().st_size == st.st_size and p.stat().st_mtime_ns == st.st_mtime_ns
    src2 = imagenet.from_ground_truth(flat, labels)
    assert src2.fingerprint != src.fingerprint
    d2 = imagenet.load(src2, size=16, policy="crop", cache_dir=tmp_path / "c", progress=False)
    assert "images or labels changed" in capsys.readouterr().err
    assert d2.meta["path"] == d.meta["path"]  # rebuilt in place, no stale copy left
    np.testing.assert_array_equal(d2.images[0], imagenet.decode(p.read_bytes(), size=16,
                                                                policy="crop"))
    assert _top1(d2) == 11 / 12


def _deny_writes_under(monkeypatch, root: Path):
    """Make ``root`` read-only: for real when not root, else by refusing mkdtemp / rmtree."""
    if os.geteuid() != 0:
        for p in sorted(root.rglob("*"), reverse=True) + [root]:
            p.chmod(p.stat().st_mode & ~0o222)
        return
    mkdtemp, rmtree = imagenet.tempfile.mkdtemp, imagenet.shutil.rmtree

    def guarded_mkdtemp(*a, dir=None, **k):
        if dir is not None and Path(dir).is_relative_to(root):
            raise PermissionError(13, "Permission denied", str(dir))
        return mkdtemp(*a, dir=dir, **k)

    def guarded_rmtree(path, *a, **k):
        if Path(path).is_relative_to(root):
            raise PermissionError(13, "Permission denied", str(path))
        return rmtree(path, *a, **k)

    monkeypatch.setattr(imagenet.tempfile, "mkdtemp", guarded_mkdtemp)
    monkeypatch.setattr(imagenet.shutil, "rmtree", guarded_rmtree)


def test_read_only_cache_falls_back_to_a_private_one(bright, tmp_path, monkeypatch, capsys):
    flat, labels = bright
    src = imagenet.from_ground_truth(flat, labels)
    ro = tmp_path / "ro"
    d = imagenet.load(src, size=16, policy="crop", cache_dir=ro, progress=False)
    (Path(d.meta["path"]) / "valid.npy").write_bytes(b"damaged")
    _deny_writes_under(monkeypatch, ro)
    try:
        # a good entry is read as is; a damaged or missing one is decoded privately
        d16 = imagenet.load(src, size=12, policy="crop", cache_dir=ro, progress=False)
        err = capsys.readouterr().err
        d2 = imagenet.load(src, size=16, policy="crop", cache_dir=ro, progress=False)
        err2 = capsys.readouterr().err
    finally:
        if os.geteuid() != 0:
            for p in [ro, *ro.rglob("*")]:
                p.chmod(p.stat().st_mode | 0o200)
    assert "private temporary cache" in err and err.count("\n") == 1
    assert not Path(d16.meta["path"]).is_relative_to(ro) and d16.valid.all()
    assert "private temporary cache" in err2
    np.testing.assert_array_equal(d2.images, d.images)
    assert _top1(d2) == 1.0


def test_entry_of_another_user_is_not_trusted(bright, tmp_path, monkeypatch, capsys):
    flat, labels = bright
    src = imagenet.from_ground_truth(flat, labels)
    d = imagenet.load(src, size=16, policy="crop", cache_dir=tmp_path / "c", progress=False)
    monkeypatch.setattr(imagenet.os, "geteuid", lambda: os.getuid() + 4242)
    d2 = imagenet.load(src, size=16, policy="crop", cache_dir=tmp_path / "c", progress=False)
    assert "belongs to another user" in capsys.readouterr().err
    assert not Path(d2.meta["path"]).is_relative_to(tmp_path / "c")
    np.testing.assert_array_equal(d2.images, d.images)


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_cache_follows_the_umask(bright, tmp_path, umask):
    flat, labels = bright
    src = imagenet.from_ground_truth(flat, labels)
    old = os.umask(umask)
    try:
        d = imagenet.load(src, size=16, policy="crop", cache_dir=tmp_path / "c",
                          progress=False)
    finally:
        os.umask(old)
    entry = Path(d.meta["path"])
    for folder in (entry, entry.parent, entry.parent.parent):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o777 & ~umask, folder
    for f in entry.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~umask, f


def test_stale_build_folders_are_removed(bright, tmp_path):
    flat, labels = bright
    src = imagenet.from_ground_truth(flat, labels)
    path = imagenet.cache_path(src, size=16, policy="crop", cache_dir=tmp_path / "c")
    path.parent.mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    host = imagenet._host_tag()
    stale = path.parent / f".tmp-crop-16-{host}-{int(dead.stdout)}-abc"
    alive = path.parent / f".tmp-crop-16-{host}-{os.getpid()}-def"
    old_other_host = path.parent / ".tmp-crop-16-elsewhere-1-ghi"
    for p in (stale, alive, old_other_host):
        (p / "x").mkdir(parents=True)
    os.utime(old_other_host, (0, 0))
    imagenet.load(src, size=16, policy="crop", cache_dir=tmp_path / "c", progress=False)
    assert sorted(p.name for p in path.parent.iterdir()) == sorted(["crop-16", alive.name])


def test_build_killed_midway_leaves_nothing_behind(bright, tmp_path):
    """A build killed by SIGKILL (no cleanup possible) leaves its folder; the next run
    removes it and builds a good entry."""
    flat, labels = bright
    script = (
        "import os, signal, sys\n"
        "from paper_repro.feedforward import imagenet\n"
        f"src = imagenet.from_ground_truth({str(flat)!r}, {str(labels)!r})\n"
        "imagenet.decode = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)\n"
        f"imagenet.load(src, size=16, policy='crop', cache_dir={str(tmp_path / 'c')!r}, "
        "progress=False)\n")
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    src = imagenet.from_ground_truth(flat, labels)
    path = imagenet.cache_path(src, size=16, policy="crop", cache_dir=tmp_path / "c")
    assert [p.name.startswith(".tmp-crop-16-") for p in path.parent.iterdir()] == [True]
    d = imagenet.load(src, size=16, policy="crop", cache_dir=tmp_path / "c", progress=False)
    assert [p.name for p in path.parent.iterdir()] == ["crop-16"] and _top1(d) == 1.0


# ----------------------------------------------------------------------------- evaluation

N_CLS = 12


def _toy_data(n=23, seed=0):
    """Images whose pixel [0, 0, 0] is the label; the toy model reads it back."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, N_CLS, n)
    x = rng.integers(0, 255, (n, 4, 4, 3)).astype(np.uint8)
    x[:, 0, 0, 0] = labels
    return imagenet.Images.from_arrays(x, labels)


TRACES = []


def toy_apply(params, x):
    """logits[c] = table[pixel, c]: the label gets ``params['right']``, others fixed ranks."""
    TRACES.append(x.shape)
    import jax.numpy as jnp

    c = x[:, 0, 0, 0].astype(jnp.int32)
    base = jnp.arange(N_CLS, dtype=jnp.float32)[None, :] / N_CLS
    return base + params["right"][c, None] * (jnp.arange(N_CLS)[None, :] == c[:, None])


def _reference(params, data):
    logits = np.arange(N_CLS)[None, :] / N_CLS + np.asarray(params["right"])[data.labels, None] * (
        np.arange(N_CLS)[None, :] == data.labels[:, None]
    )
    top = np.argsort(-logits, axis=1, kind="stable")[:, :5]
    return top[:, 0] == data.labels, (top == data.labels[:, None]).any(1)


def test_evaluate_matches_numpy_and_pads(tiny):
    data = _toy_data()
    rng = np.random.default_rng(1)
    # right[c] = +2 (always top-1), -0.5 (rank falls to ~half), -2 (last).
    params = {"right": rng.choice([2.0, -0.05, -2.0], N_CLS).astype(np.float32)}
    want1, want5 = _reference(params, data)
    res = imagenet.evaluate(toy_apply, params, data, batch_size=5, preprocess_mode=None,
                            progress=False)
    np.testing.assert_array_equal(res.correct1, want1)
    np.testing.assert_array_equal(res.correct5, want5)
    assert res.n_images == 23 and res.n_errors == 0
    assert res.top1 == want1.mean() and res.top5 == want5.mean()
    assert res.top1_ci == stats.wilson_interval(int(want1.sum()), 23)
    assert res.pred.shape == (23, 5)
    np.testing.assert_array_equal(res.indices, np.arange(23))
    # Other batch sizes (incl. one larger than N) give the same per-image results.
    for bs in (1, 7, 64):
        r = imagenet.evaluate(toy_apply, params, data, batch_size=bs, preprocess_mode=None,
                              progress=False)
        np.testing.assert_array_equal(r.pred, res.pred)
    # Compiled once per batch shape, reused across calls with new parameter values.
    TRACES.clear()
    params2 = {"right": -params["right"]}
    imagenet.evaluate(toy_apply, params2, data, batch_size=5, preprocess_mode=None, progress=False)
    assert TRACES == []


_TWO_DEVICES = """
import os, sys
sys.path.insert(0, os.path.dirname(sys.argv[1]))
import numpy as np, jax
from paper_repro.feedforward import imagenet
import test_imagenet as t
assert jax.local_device_count() == 2, jax.devices()
data = t._toy_data(n=23)
params = {"right": np.linspace(-2, 2, t.N_CLS).astype(np.float32)}
a = imagenet.evaluate(t.toy_apply, params, data, batch_size=5, preprocess_mode=None, progress=False)
b = imagenet.evaluate(t.toy_apply, params, data, batch_size=5, preprocess_mode=None,
                      progress=False, devices=jax.local_devices()[:1])
np.testing.assert_array_equal(a.pred, b.pred)
want1, _ = t._reference(params, data)
np.testing.assert_array_equal(a.correct1, want1)
print("OK", t.TRACES)
"""


def test_evaluate_shards_over_several_devices(tmp_path):
    """Two fake CPU devices (a fresh process): same predictions as one device."""
    import subprocess
    import sys

    script = tmp_path / "two.py"
    script.write_text(_TWO_DEVICES)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
               JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, str(script), __file__], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    # Batch 5 rounds up to 6 on two devices (a multiple of 2); 5 on one.
    assert "OK [(6, 4, 4, 3), (5, 4, 4, 3)]" in out.stdout


def test_evaluate_counts_unreadable_as_wrong():
    data = _toy_data()
    valid = np.ones(23, bool)
    valid[[2, 5]] = False
    data = imagenet.Images(images=data.images, labels=data.labels, valid=valid, ids=data.ids,
                           errors=(("2", "OSError: truncated"),))
    params = {"right": np.full(N_CLS, 2.0, np.float32)}  # every readable image right
    res = imagenet.evaluate(toy_apply, params, data, batch_size=8, preprocess_mode=None,
                            progress=False)
    assert res.n_images == 23 and res.n_errors == 2
    assert res.top1 == res.top5 == 21 / 23
    assert (res.pred[[2, 5]] == -1).all()
    assert dict(res.errors) == {"2": "OSError: truncated", "5": "marked invalid"}
    assert "2 unreadable" in str(res)


def test_subsets_and_paired_comparison():
    data = _toy_data(n=40)
    idx = imagenet.select(data.labels, per_class=2)
    counts = np.bincount(data.labels[idx], minlength=N_CLS)
    assert (counts == np.minimum(np.bincount(data.labels, minlength=N_CLS), 2)).all()
    assert (np.diff(idx) > 0).all()
    np.testing.assert_array_equal(imagenet.select(data.labels, limit=5), np.arange(5))
    np.testing.assert_array_equal(imagenet.select(data.labels, per_class=2, limit=3), idx[:3])
    good = {"right": np.full(N_CLS, 2.0, np.float32)}
    worse = {"right": np.where(np.arange(N_CLS) < 6, 2.0, -2.0).astype(np.float32)}
    ra = imagenet.evaluate(toy_apply, good, data, per_class=2, preprocess_mode=None, progress=False)
    rb = imagenet.evaluate(toy_apply, worse, data, per_class=2, preprocess_mode=None, progress=False)
    np.testing.assert_array_equal(ra.indices, idx)
    cmp = stats.paired_comparison(ra, rb, n_resamples=2000)
    assert cmp.acc_a == 1.0 and cmp.only_b == 0 and cmp.only_a == int((~rb.correct1).sum())
    assert cmp.drop_low <= cmp.drop <= cmp.drop_high
    rc = imagenet.evaluate(toy_apply, good, data, limit=10, preprocess_mode=None, progress=False)
    with pytest.raises(ValueError, match="different images"):
        stats.paired_comparison(ra, rc)


def test_evaluate_on_cached_jpegs(tiny, tmp_path):
    """End to end on real JPEG files: load -> cache -> evaluate with a constant model."""
    src = imagenet.from_ground_truth(tiny["flat"], tiny["labels"])
    with pytest.warns(imagenet.UnreadableImagesWarning):
        d = imagenet.load(src, size=16, policy="resize20", cache_dir=tmp_path, progress=False)
    import jax.numpy as jnp

    def always_class_0(params, x):
        return jnp.zeros((x.shape[0], 1000)).at[:, 0].set(1.0) + params * 0

    res = imagenet.evaluate(always_class_0, jnp.float32(0), d, batch_size=4,
                            preprocess_mode="caffe", progress=False)
    readable0 = sum(1 for i, lab in enumerate(d.labels) if lab == 0 and d.valid[i])
    assert res.n_images == 7 and res.n_errors == 1
    assert res.top1 == readable0 / 7


# ----------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def val1300(tmp_path_factory):
    root = need_shared("imagenet-val-1300")
    return imagenet.open_source(root)


@pytest.mark.shared_data
def test_real_1300_loads_and_caches(val1300, tmp_path_factory):
    assert len(val1300) == 1300 and val1300.info["kind"] == "ground_truth"
    assert len(set(val1300.labels.tolist())) == 725
    cache = tmp_path_factory.mktemp("cache1300")
    d = imagenet.load(val1300, size=224, policy="crop", cache_dir=cache, progress=False)
    assert d.images.shape == (1300, 224, 224, 3) and d.valid.all() and d.errors == ()
    # Reused, not decoded again (and verified: same crops).
    decode = imagenet.decode
    imagenet.decode = lambda *a, **k: 1 / 0
    try:
        d2 = imagenet.load(val1300, size=224, policy="crop", cache_dir=cache, progress=False)
    finally:
        imagenet.decode = decode
    assert d2.meta["path"] == d.meta["path"] and d2.valid.all()
    np.testing.assert_array_equal(d2.images[::97], d.images[::97])
    # The 227x227 originals: 'crop' keeps the central 224x224 pixels untouched.
    with Image.open(io.BytesIO(val1300.read(0))) as im:
        np.testing.assert_array_equal(d.images[0], np.asarray(im.convert("RGB"))[1:225, 1:225])


def _mobilenet():
    h5 = need_shared("keras-weights", "mobilenet_7_5_224_tf.h5")
    spec = models.get("mobilenet", alpha=0.75)
    return spec, W.load(spec, h5)


@pytest.mark.shared_data
@pytest.mark.slow
@pytest.mark.parametrize(
    "policy,top1,top5",
    [("crop", 78.08, 94.62), ("resize256", 77.00, 94.54)],
)
def test_real_mobilenet_reproduces_keras(val1300, tmp_path_factory, policy, top1, top5):
    """MobileNet 0.75 port + real .h5 vs the Keras 3 reference numbers (data/README.md).

    Tolerance 0.2 points: float summation order can flip a few borderline images.
    """
    spec, params = _mobilenet()
    cache = tmp_path_factory.getbasetemp() / "cache_mobilenet"
    d = imagenet.load(val1300, size=spec.input_size, policy=policy, cache_dir=cache,
                      progress=False)
    res = imagenet.evaluate(models.make_apply(spec), params, d, batch_size=100,
                            preprocess_mode=spec.preprocess_mode, progress=False)
    print(f"\nMobileNet 0.75 {policy}: {res} in {res.wall_s:.1f}s")
    assert res.n_images == 1300 and res.n_errors == 0
    assert abs(100 * res.top1 - top1) <= 0.2
    assert abs(100 * res.top5 - top5) <= 0.2
