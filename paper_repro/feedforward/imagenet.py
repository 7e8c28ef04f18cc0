"""ImageNet validation data: sources, preprocessing, a decode-once cache, batched evaluation.

The papers measure top-1 / top-5 accuracy of Keras-applications networks on the ILSVRC-2012
validation set (docs/theory.md, section 1, unknown 9: evaluation protocol; section 4: anchors).
This module turns any copy of those images into numbers, in four steps:

1. **Source** (:class:`Source`): which images, in which order, with which labels. One class
   index convention everywhere: the standard 1000-class order of sorted WordNet ids (index 0
   = ``n01440764`` tench), the order of Keras ``imagenet_class_index.json`` and torchvision;
   the list ships with the package (``imagenet_classes.txt``, :func:`wnids`). Three layouts:

   - :func:`from_class_folders`: ``root/n01440764/*.JPEG`` (one subfolder per WordNet id);
   - :func:`from_ground_truth`: a flat folder plus a ``<file> <class index>`` file (Caffe
     ``val.txt`` format);
   - :func:`from_hf`: a Hugging Face ``datasets`` dataset (``imagenet-1k`` validation for
     those with access, or any local ``imagefolder`` / parquet dataset).

   Images are ordered by file name (the official validation order for ``ILSVRC2012_val_*``
   files), so ``limit=K`` takes a class-balanced-in-expectation subset, not the first classes.
   Input is not trusted: a labels file may only name regular files inside the image folder
   (no absolute paths, no ``..``; a FIFO or device is refused, never opened in a blocking
   way), files are read with a size limit, a UTF-8 byte-order mark is accepted. The source's
   fingerprint covers each file's name, size, modification and change times (ns) and label,
   so an image replaced in place, even by one of the same size, is noticed.

2. **Crop policy** (:func:`decode`): ``"resize"`` resizes the shorter side to
   ``round(size * 256 / 224)`` (224 -> 256, 299 -> 342) with PIL bilinear, then centre-crops
   ``size x size``; ``"resize<N>"`` resizes the shorter side to N; ``"crop"`` centre-crops
   without resizing. The result is uint8 RGB.

3. **Cache** (:func:`load`): the crops of one (source layout, size, policy) are decoded
   once, in parallel, into a memory-mapped ``(N, S, S, 3)`` uint8 array under
   ``$PAPER_REPRO_CACHE`` (default ``~/.cache/paper_repro``), built in a temporary folder and
   renamed into place (atomic), and reused by every later run: a sweep over dozens of
   quantization configurations decodes each image once. Unreadable images are recorded
   (file + reason) and stay in the denominator: they are predicted ``-1`` and count as wrong.
   The cache is not trusted either: every load checks the entry's SHA-256 checksums, its
   labels and ids against the source and the source's fingerprint; a damaged, incomplete or
   outdated entry is decoded again (one line on stderr says why). A cache that cannot be
   written, or that belongs to another user, is replaced by a private temporary one for the
   process (again with a line on stderr). Folders and files follow the umask; temporary
   build folders are removed on failure, and those of killed builds by the next build.

4. **Evaluation** (:func:`evaluate`): the model-specific float step (Keras ``'caffe'`` or
   ``'tf'`` mode, :func:`preprocess_input`) runs inside a jitted batch step; the last batch is
   padded to a fixed shape (no recompiles); batches are sharded over all local devices. The
   result (:class:`EvalResult`) holds top-1 / top-5 with Wilson 95 % intervals and per-image
   correctness, for paired tests (:func:`paper_repro.core.stats.paired_comparison`).

Example::

    src = imagenet.from_ground_truth("val/images", "val/labels.txt")
    data = imagenet.load(src, size=224, policy="resize")          # decoded once, cached
    res = imagenet.evaluate(apply_fn, params, data, batch_size=100, preprocess_mode="tf")
    print(res)   # top-1 77.00% [74.6, 79.2], top-5 ... on 1300 images (0 unreadable)
"""

from __future__ import annotations

import atexit
import errno
import functools
import hashlib
import io
import json
import math
import os
import re
import shutil
import socket
import stat
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "NUM_CLASSES",
    "wnids",
    "class_index",
    "Source",
    "from_class_folders",
    "from_ground_truth",
    "from_hf",
    "open_source",
    "resize_for",
    "decode",
    "crop_image",
    "PREPROCESS_MODES",
    "preprocess_input",
    "default_cache_dir",
    "cache_path",
    "Images",
    "UnreadableImagesWarning",
    "load",
    "select",
    "EvalResult",
    "evaluate",
]

NUM_CLASSES = 1000
IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp", ".webp", ".ppm", ".tif", ".tiff")
_WNID_RE = re.compile(r"^n\d{8}$")
_CACHE_FORMAT = 2
MAX_IMAGE_BYTES = 128 << 20  # larger image files are unreadable (ImageNet files are < 20 MB)
MAX_LABELS_BYTES = 64 << 20  # a ground-truth file of 50 000 lines is about 1.5 MB


# ----------------------------------------------------------------------------- classes


@functools.cache
def wnids() -> tuple[str, ...]:
    """The 1000 WordNet ids in the standard class order (index 0 = ``n01440764``)."""
    text = Path(__file__).with_name("imagenet_classes.txt").read_text()
    ids = tuple(line.split()[0] for line in text.splitlines() if line.strip())
    if len(ids) != NUM_CLASSES or list(ids) != sorted(ids):
        raise RuntimeError("imagenet_classes.txt is damaged: expected 1000 sorted WordNet ids")
    return ids


@functools.cache
def _wnid_to_index() -> dict[str, int]:
    return {w: i for i, w in enumerate(wnids())}


def class_index(wnid: str) -> int:
    """Standard class index (0..999) of a WordNet id such as ``"n01440764"``."""
    try:
        return _wnid_to_index()[wnid]
    except KeyError:
        raise ValueError(
            f"{wnid!r} is not one of the 1000 ILSVRC-2012 WordNet ids "
            f"(see paper_repro/imagenet_classes.txt)"
        ) from None


# ----------------------------------------------------------------------------- sources


@dataclass(frozen=True, eq=False)
class Source:
    """Images to evaluate, in a fixed order, with their standard class indices.

    Attributes:
      name: short tag used in cache folder names and reports.
      ids: ``(N,)`` image identifiers (relative file paths or dataset keys), in order.
      labels: ``(N,)`` int32 class indices in 0..999.
      fingerprint: hex digest identifying the images and labels (the cache key).
      read: ``read(i) -> bytes``, the encoded image ``i``; raises on a missing file.
      thread_safe: whether ``read`` may be called from worker threads.
      info: free-form details (root folder, ignored files, ...).
    """

    name: str
    ids: tuple[str, ...]
    labels: np.ndarray
    fingerprint: str
    read: Callable[[int], bytes] = field(repr=False)
    thread_safe: bool = True
    info: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)


def _fingerprint(kind: str, items: Sequence[tuple[str, Any, int]]) -> str:
    h = hashlib.sha256(kind.encode())
    for ident, extra, label in items:
        h.update(f"\0{ident}\0{extra}\0{label}".encode())
    return h.hexdigest()


def read_regular_file(path: str | os.PathLike, *, limit: int, what: str = "file") -> bytes:
    """The bytes of ``path`` if it is a regular file of at most ``limit`` bytes.

    Opened without blocking (a FIFO or device is refused at once, never waited on) and
    checked on the open descriptor (no race with a file swapped in between). Raises
    ``FileNotFoundError``, ``OSError`` (not a regular file) or ``ValueError`` (too large).
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    with open(fd, "rb", closefd=True) as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, f"{what} is not a regular file", str(path))
        if st.st_size > limit:
            raise ValueError(f"{what} {path} has {st.st_size} bytes, more than the limit of "
                             f"{limit}")
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"{what} {path} grew beyond the limit of {limit} bytes while read")
    return data


def _file_reader(root: Path, rel: Sequence[str]) -> Callable[[int], bytes]:
    def read(i: int) -> bytes:
        return read_regular_file(root / rel[i], limit=MAX_IMAGE_BYTES, what="image")

    return read


def _file_stat(path: Path, where: str) -> tuple[int, int, int] | None:
    """``(size, mtime_ns, ctime_ns)`` of a regular file (symbolic links followed), ``None``
    when absent; ``ValueError`` for a folder, FIFO, device or socket."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ValueError(f"{where}: cannot read {path} ({e.strerror or e})") from None
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"{where}: {path} is not a regular file (a folder, FIFO or device); "
                         "list image files only")
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _check_name(name: str, where: str) -> str:
    """``name`` if it is a relative path that stays inside its folder."""
    parts = name.replace("\\", "/").split("/")
    if os.path.isabs(name) or name.startswith("/") or ".." in parts or "\0" in name:
        raise ValueError(f"{where}: {name!r} is not a file inside the image folder (absolute "
                         "paths and '..' are refused); list names relative to the folder")
    return name


def _sort_key(rel: str) -> tuple[str, str]:
    return (rel.rsplit("/", 1)[-1], rel)


def _check_labels(labels: np.ndarray, what: str) -> np.ndarray:
    labels = np.asarray(labels, dtype=np.int64)
    bad = (labels < 0) | (labels >= NUM_CLASSES)
    if bad.any():
        raise ValueError(
            f"{what}: {int(bad.sum())} labels outside 0..{NUM_CLASSES - 1} "
            f"(first: {labels[bad][:5].tolist()}); labels must be standard class indices"
        )
    return labels.astype(np.int32)


def from_class_folders(root: str | os.PathLike, *, name: str | None = None) -> Source:
    """Images in one subfolder per WordNet id: ``root/n01440764/ILSVRC2012_val_00000293.JPEG``.

    Every subfolder must be an ILSVRC-2012 WordNet id (a ``ValueError`` names any other);
    classes may be missing (a subset). Files with an image extension are taken, ordered by
    file name.

    Args:
      root: the folder holding the class subfolders.
      name: tag for cache and reports (default: the folder name).
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"ImageNet folder {root} does not exist")
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not subdirs:
        raise ValueError(
            f"{root} has no class subfolders; for a flat folder of images with a labels file "
            f"use from_ground_truth(images_dir, labels_file)"
        )
    bad = [p.name for p in subdirs if p.name not in _wnid_to_index()]
    if bad:
        raise ValueError(
            f"{root}: subfolders must be ILSVRC-2012 WordNet ids like n01440764; "
            f"not recognized: {bad[:5]}{' ...' if len(bad) > 5 else ''}"
        )
    rel, labels, sizes = [], [], []
    for d in subdirs:
        for f in d.iterdir():
            if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS:
                rel.append(f"{d.name}/{f.name}")
    if not rel:
        raise ValueError(f"{root}: no image files ({', '.join(IMAGE_EXTENSIONS)}) in the class folders")
    rel.sort(key=_sort_key)
    for r in rel:
        labels.append(class_index(r.split("/", 1)[0]))
        sizes.append(_file_stat(root / r, str(root)))
    labels_arr = _check_labels(np.array(labels), str(root))
    fp = _fingerprint("class_folders", list(zip(rel, sizes, labels_arr.tolist(), strict=True)))
    return Source(
        name=name or root.name,
        ids=tuple(rel),
        labels=labels_arr,
        fingerprint=fp,
        read=_file_reader(root, rel),
        info={"kind": "class_folders", "root": str(root), "n_classes": len(subdirs)},
    )


def from_ground_truth(
    images_dir: str | os.PathLike,
    labels_file: str | os.PathLike,
    *,
    name: str | None = None,
) -> Source:
    """A flat folder of images plus a ground-truth file of ``<file name> <class index>`` lines.

    This is the ILSVRC / Caffe ``val.txt`` format (UTF-8, a byte-order mark allowed); class
    indices are the standard order. Names are relative to ``images_dir``: absolute paths,
    ``..`` and entries that are not regular files (folders, FIFOs, devices) raise
    ``ValueError``. Files listed but absent from the folder are *kept* and reported as
    unreadable at cache time (they count as wrong); files in the folder but not listed are
    ignored (counted in ``info["unlisted"]``).

    Args:
      images_dir: folder with the images.
      labels_file: text file, one ``<file> <index>`` per line (blank lines and ``#`` ignored).
      name: tag for cache and reports (default: the folder's parent and name).
    """
    images_dir = Path(images_dir).expanduser()
    labels_file = Path(labels_file).expanduser()
    if not images_dir.is_dir():
        raise FileNotFoundError(f"image folder {images_dir} does not exist")
    if not labels_file.exists():
        raise FileNotFoundError(f"ground-truth file {labels_file} does not exist")
    try:
        raw = read_regular_file(labels_file, limit=MAX_LABELS_BYTES, what="ground-truth file")
    except OSError as e:
        raise ValueError(f"ground-truth file {labels_file}: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ValueError(f"{labels_file} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    entries: dict[str, int] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise ValueError(
                f"{labels_file}:{lineno}: expected '<file name> <class index>', got {line!r}"
            )
        _check_name(parts[0], f"{labels_file}:{lineno}")
        if parts[0] in entries:
            raise ValueError(f"{labels_file}:{lineno}: {parts[0]} is listed twice")
        entries[parts[0]] = int(parts[1])
    if not entries:
        raise ValueError(f"{labels_file} lists no images")
    rel = sorted(entries, key=_sort_key)
    labels_arr = _check_labels(np.array([entries[r] for r in rel]), str(labels_file))
    sizes = [_file_stat(images_dir / r, str(labels_file)) for r in rel]
    present = {p.name for p in images_dir.iterdir() if p.is_file()}
    unlisted = len(present - set(rel))
    fp = _fingerprint("ground_truth", list(zip(rel, sizes, labels_arr.tolist(), strict=True)))
    return Source(
        name=name or f"{images_dir.parent.name}-{images_dir.name}",
        ids=tuple(rel),
        labels=labels_arr,
        fingerprint=fp,
        read=_file_reader(images_dir, rel),
        info={
            "kind": "ground_truth",
            "root": str(images_dir),
            "labels_file": str(labels_file),
            "missing": sum(s is None for s in sizes),
            "unlisted": unlisted,
        },
    )


def _hf_label_map(feature: Any) -> np.ndarray | None:
    """Map a dataset's label ids to standard indices, or None when they already are."""
    names = getattr(feature, "names", None)
    if names is None:
        return None
    if all(isinstance(n, str) and _WNID_RE.match(n) for n in names):
        return np.array([class_index(n) for n in names], dtype=np.int64)
    if len(names) == NUM_CLASSES:
        return None  # imagenet-1k style: 1000 human-readable names in the standard order
    raise ValueError(
        f"the dataset's labels have {len(names)} class names that are not WordNet ids "
        f"(e.g. {names[:3]}); name the class folders by WordNet id (n01440764, ...) or give "
        f"integer labels in the standard 0..999 order"
    )


def from_hf(
    dataset: Any = "ILSVRC/imagenet-1k",
    *,
    split: str = "validation",
    image_column: str = "image",
    label_column: str = "label",
    name: str | None = None,
    **load_kwargs: Any,
) -> Source:
    """Images from a Hugging Face ``datasets`` dataset.

    Args:
      dataset: a ``datasets.Dataset`` (already loaded), or the first argument of
        ``datasets.load_dataset`` (a hub name such as ``"ILSVRC/imagenet-1k"``, which needs
        accepted terms and a token, or a builder such as ``"imagefolder"`` / ``"parquet"``
        with ``data_dir=`` / ``data_files=`` in ``load_kwargs``).
      split: the split to evaluate (``load_dataset`` argument; ignored for a Dataset).
      image_column: column holding the images (an ``Image`` feature).
      label_column: column holding the labels. A ``ClassLabel`` whose names are WordNet ids
        (what ``imagefolder`` makes of ``n01440764/`` folders) is mapped to the standard
        indices; 1000 other names or plain integers are taken as standard indices.
      name: tag for cache and reports.
      **load_kwargs: passed to ``datasets.load_dataset``.

    The cache key includes the dataset's ``_fingerprint``: stable for ``load_dataset`` results,
    random for datasets built in memory (their crops are then decoded again in a new process).
    """
    import datasets as hfds

    if isinstance(dataset, str):
        tag = name or re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{dataset}-{split}")
        ds = hfds.load_dataset(dataset, split=split, **load_kwargs)
    else:
        ds = dataset
        tag = name or "hf-dataset"
    if not isinstance(ds, hfds.Dataset):
        raise TypeError(
            f"expected a datasets.Dataset (one split), got {type(ds).__name__}; pass split=..."
        )
    for col in (image_column, label_column):
        if col not in ds.column_names:
            raise ValueError(f"dataset has no column {col!r}; columns: {ds.column_names}")
    raw_labels = np.asarray(ds[label_column], dtype=np.int64)
    if (raw_labels < 0).any():
        raise ValueError(
            f"{int((raw_labels < 0).sum())} images have no label (label -1, as in the "
            f"imagenet-1k test split); evaluate the 'validation' split"
        )
    mapping = _hf_label_map(ds.features[label_column])
    labels = _check_labels(mapping[raw_labels] if mapping is not None else raw_labels, tag)
    ds_raw = ds.cast_column(image_column, hfds.Image(decode=False))

    def read(i: int) -> bytes:
        item = ds_raw[int(i)][image_column]
        if item.get("bytes") is not None:
            return item["bytes"]
        if item.get("path"):
            return Path(item["path"]).read_bytes()
        raise OSError("dataset row has neither image bytes nor a path")

    n = len(ds)
    h = hashlib.sha256(f"hf\0{ds._fingerprint}\0{image_column}\0{label_column}\0".encode())
    h.update(labels.tobytes())
    fp = h.hexdigest()
    return Source(
        name=tag,
        ids=tuple(f"{tag}[{i}]" for i in range(n)),
        labels=labels,
        fingerprint=fp,
        read=read,
        thread_safe=False,
        info={"kind": "hf", "dataset_fingerprint": ds._fingerprint, "n": n},
    )


def open_source(path: str | os.PathLike, labels_file: str | os.PathLike | None = None) -> Source:
    """A folder as a source: flat images plus ``labels_file``; else, when ``path`` holds a
    ``labels.txt`` or ``val.txt``, that file with the images in ``path/images/`` (or ``path``);
    else class subfolders (:func:`from_class_folders`)."""
    path = Path(path).expanduser()
    if labels_file is not None:
        return from_ground_truth(path, labels_file)
    for cand in ("labels.txt", "val.txt"):
        if (path / cand).is_file():
            images = path / "images" if (path / "images").is_dir() else path
            return from_ground_truth(images, path / cand, name=path.name)
    return from_class_folders(path)


# ----------------------------------------------------------------------------- preprocessing


def resize_for(size: int, policy: str) -> int | None:
    """Shorter-side length that ``policy`` resizes to before a centre crop of ``size``.

    ``"resize"`` -> ``round(size * 256 / 224)`` (224 -> 256, 299 -> 342); ``"resize<N>"``
    -> N; ``"crop"`` -> None (no resize).
    """
    if policy == "crop":
        return None
    if policy == "resize":
        return int(round(size * 256 / 224))
    m = re.fullmatch(r"resize(\d+)", policy)
    if m is None:
        raise ValueError(
            f"unknown crop policy {policy!r}: use 'crop' (centre crop, no resize), 'resize' "
            f"(shorter side to size*256/224, then centre crop) or 'resize<N>' (e.g. 'resize256')"
        )
    n = int(m.group(1))
    if n < size:
        raise ValueError(f"policy {policy!r} resizes to {n} < crop size {size}")
    return n


def crop_image(img: Any, *, size: int, policy: str) -> np.ndarray:
    """Resize (per ``policy``, PIL bilinear) and centre-crop a PIL image.

    Returns:
      ``(size, size, 3)`` uint8 RGB.
    """
    from PIL import Image

    img = img.convert("RGB")
    short = resize_for(size, policy)
    w, h = img.size
    if short is not None and min(w, h) != short:
        if w <= h:
            nw, nh = short, int(short * h / w)
        else:
            nw, nh = int(short * w / h), short
        img = img.resize((nw, nh), Image.BILINEAR)
        w, h = nw, nh
    if w < size or h < size:
        raise ValueError(f"image {w}x{h} is smaller than the {size}x{size} crop; use a resize policy")
    left, top = (w - size) // 2, (h - size) // 2
    out = np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.uint8)
    return out


def decode(raw: bytes, *, size: int, policy: str) -> np.ndarray:
    """Decode encoded image bytes and crop them (:func:`crop_image`): ``(size, size, 3)`` uint8.

    Images of more than ``PIL.Image.MAX_IMAGE_PIXELS`` pixels raise ``ValueError`` before
    their pixels are decoded (PIL itself only warns up to twice that)."""
    from PIL import Image

    with Image.open(io.BytesIO(raw)) as img:
        w, h = img.size
        limit = Image.MAX_IMAGE_PIXELS
        if limit is not None and w * h > limit:
            raise ValueError(f"image of {w}x{h} pixels is larger than the limit of {limit} "
                             "pixels (PIL.Image.MAX_IMAGE_PIXELS)")
        img.load()
        return crop_image(img, size=size, policy=policy)


# The preprocessing conventions :func:`preprocess_input` knows by name (CLI choices).
PREPROCESS_MODES = ("torch", "tf", "caffe")
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
_TORCH_MEAN = (0.485, 0.456, 0.406)
_TORCH_STD = (0.229, 0.224, 0.225)


def preprocess_input(x: Any, mode: str | Callable[[Any], Any] | None) -> Any:
    """The model-specific float step, Keras ``preprocess_input`` semantics (jit-able).

    Args:
      x: ``(..., 3)`` RGB, uint8 or float, values 0..255.
      mode: ``"caffe"`` (RGB -> BGR, subtract the ImageNet BGR mean; VGG16, ResNet50),
        ``"tf"`` (``x / 127.5 - 1``; MobileNet, Xception, InceptionV3), ``"torch"``
        (``/255``, ImageNet mean / std), ``None`` or ``"none"`` (float32 as is), or a
        callable ``x_float32 -> x``.

    Returns:
      float32 array of the same shape.
    """
    import jax.numpy as jnp

    x = jnp.asarray(x).astype(jnp.float32)
    if callable(mode):
        return mode(x)
    if mode is None or mode == "none":
        return x
    if mode == "tf":
        return x / 127.5 - 1.0
    if mode == "caffe":
        return x[..., ::-1] - jnp.asarray(_CAFFE_MEAN_BGR, jnp.float32)
    if mode == "torch":
        return (x / 255.0 - jnp.asarray(_TORCH_MEAN, jnp.float32)) / jnp.asarray(
            _TORCH_STD, jnp.float32
        )
    raise ValueError(f"unknown preprocess mode {mode!r}: use 'caffe', 'tf', 'torch', 'none' or a callable")


# ----------------------------------------------------------------------------- cache


def default_cache_dir() -> Path:
    """``$PAPER_REPRO_CACHE``, default ``~/.cache/paper_repro``."""
    return Path(os.environ.get("PAPER_REPRO_CACHE", "~/.cache/paper_repro")).expanduser()


def _layout_key(source: Source) -> str:
    """Hex digest of what a cache folder is for: the kind of source, its ids and labels (not
    the file contents: a changed image rebuilds the same folder, see :func:`load`)."""
    h = hashlib.sha256(f"{source.info.get('kind')}\0".encode())
    if source.info.get("dataset_fingerprint") is not None:
        h.update(f"{source.info['dataset_fingerprint']}\0".encode())
    for ident in source.ids:
        h.update(f"{ident}\0".encode())
    h.update(np.asarray(source.labels, np.int32).tobytes())
    return h.hexdigest()


def cache_path(
    source: Source, *, size: int, policy: str, cache_dir: str | os.PathLike | None = None
) -> Path:
    """Folder of the cached crops of ``source`` at ``size`` with ``policy``."""
    resize_for(size, policy)  # validates
    base = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    tag = re.sub(r"[^A-Za-z0-9_.-]+", "_", source.name)[:60]
    return base / "imagenet" / f"{tag}-{_layout_key(source)[:16]}" / f"{policy}-{size}"


@dataclass(frozen=True, eq=False)
class Images:
    """Decoded images ready for :func:`evaluate`.

    Attributes:
      images: ``(N, H, W, C)`` array (uint8 memmap for cached ImageNet crops).
      labels: ``(N,)`` int32 class indices.
      valid: ``(N,)`` bool; False for images that could not be read (predicted -1).
      ids: ``(N,)`` identifiers.
      errors: ``((id, reason), ...)`` for the unreadable images.
      meta: how the array was made (source, size, policy, build time, ...).
    """

    images: np.ndarray
    labels: np.ndarray
    valid: np.ndarray
    ids: tuple[str, ...]
    errors: tuple[tuple[str, str], ...] = ()
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @classmethod
    def from_arrays(
        cls, images: Any, labels: Any, *, ids: Sequence[str] | None = None, **meta: Any
    ) -> Images:
        """Wrap in-memory arrays (all images valid). ``images: (N, H, W, C)``, ``labels: (N,)``."""
        images = np.asarray(images)
        labels = np.asarray(labels).astype(np.int32)
        if images.shape[0] != labels.shape[0] or labels.ndim != 1:
            raise ValueError(f"images {images.shape} and labels {labels.shape} disagree in N")
        n = labels.shape[0]
        return cls(
            images=images,
            labels=labels,
            valid=np.ones(n, bool),
            ids=tuple(ids) if ids is not None else tuple(str(i) for i in range(n)),
            meta=dict(meta),
        )


class UnreadableImagesWarning(UserWarning):
    """Some images could not be read; they stay in the denominator and count as wrong."""


def _decode_one(source: Source, i: int, size: int, policy: str, raw: bytes | None):
    try:
        if raw is None:
            raw = source.read(i)
        return decode(raw, size=size, policy=policy)
    except Exception as e:  # any failure of one image is reported, never fatal
        return f"{type(e).__name__}: {e}"


def _note(message: str) -> None:
    """One line on stderr about the cache (rebuilt entries, fallbacks)."""
    print(f"paper_repro imagenet cache: {message}", file=sys.stderr, flush=True)


def _umask() -> int:
    """The process umask, read without changing it (Linux ``/proc``), else by setting it back."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_FILES = ("images.npy", "labels.npy", "valid.npy")
_TMP_PREFIX = ".tmp-"
_STALE_TMP_S = 24 * 3600  # temporary folders of another host are removed after a day
_PRIVATE: list[Path] = []  # this process's fallback cache (see _private_cache_dir)


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            h.update(chunk)
    return h.hexdigest()


def _host_tag() -> str:
    return re.sub(r"[^A-Za-z0-9]+", "", socket.gethostname())[:32] or "host"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    return True


def _remove_stale_tmp(folder: Path, name: str) -> None:
    """Remove ``.tmp-<name>-<host>-<pid>-*`` build folders left by killed builds: those of this
    host whose process is gone, and any older than a day."""
    if not folder.is_dir():
        return
    pattern = re.compile(rf"^{re.escape(_TMP_PREFIX + name)}-([A-Za-z0-9]+)-(\d+)-")
    now = time.time()
    for p in folder.iterdir():
        m = pattern.match(p.name)
        if not m:
            continue
        try:
            age = now - p.lstat().st_mtime
        except OSError:
            continue
        same_host = m.group(1) == _host_tag()
        if (same_host and not _pid_alive(int(m.group(2)))) or age > _STALE_TMP_S:
            shutil.rmtree(p, ignore_errors=True)


def _foreign(path: Path) -> bool:
    """Whether ``path`` exists and belongs to another user (its contents are not trusted)."""
    try:
        return path.lstat().st_uid != os.geteuid()
    except OSError:
        return False


def _private_cache_dir() -> Path:
    """A cache root of this process only (mode 0700), removed when the process exits."""
    if not _PRIVATE:
        d = Path(tempfile.mkdtemp(prefix="paper_repro-cache-"))
        atexit.register(shutil.rmtree, d, ignore_errors=True)
        _PRIVATE.append(d)
    return _PRIVATE[0]


def _read_meta(path: Path) -> dict:
    meta = json.loads((path / "meta.json").read_text())
    if not isinstance(meta, dict):
        raise ValueError("meta.json is not an object")
    return meta


def _open_entry(path: Path, source: Source, *, size: int, policy: str) -> tuple[Images | None, str]:
    """``(Images, "")`` if the cache entry at ``path`` is complete and verifies against
    ``source``, else ``(None, why)`` (``why == ""``: there is no entry).

    Checks: format, fingerprint (file names, sizes, times and labels), size and policy, the
    SHA-256 of every array file as recorded at build time, array shapes and dtypes, and the
    labels and ids against the source."""
    if not path.exists():
        return None, ""
    try:
        meta = _read_meta(path)
    except FileNotFoundError:
        return None, "meta.json is missing (interrupted or damaged entry)"
    except (OSError, ValueError) as e:
        return None, f"meta.json is unreadable ({type(e).__name__}: {e})"
    if meta.get("format") != _CACHE_FORMAT:
        return None, f"it has cache format {meta.get('format')}, this version writes {_CACHE_FORMAT}"
    if meta.get("fingerprint") != source.fingerprint:
        return None, "the images or labels changed since it was built (fingerprint differs)"
    if meta.get("size") != size or meta.get("policy") != policy:
        return None, f"it holds {meta.get('policy')}-{meta.get('size')} crops"
    sums = meta.get("sha256")
    if not isinstance(sums, dict):
        return None, "it records no checksums"
    for name in _FILES:
        try:
            got = _file_sha256(path / name)
        except OSError as e:
            return None, f"{name} is unreadable ({e.strerror or e})"
        if got != sums.get(name):
            return None, f"{name} does not match its checksum (damaged)"
    n = len(source)
    try:
        images = np.load(path / "images.npy", mmap_mode="r")
        labels = np.load(path / "labels.npy")
        valid = np.load(path / "valid.npy")
    except (OSError, ValueError) as e:
        return None, f"an array does not load ({type(e).__name__}: {e})"
    if images.shape != (n, size, size, 3) or images.dtype != np.uint8:
        return None, f"images have shape {images.shape} {images.dtype}, not ({n}, {size}, {size}, 3) uint8"
    if valid.shape != (n,) or valid.dtype != np.bool_:
        return None, f"validity flags have shape {valid.shape} {valid.dtype}"
    if labels.shape != (n,) or not np.array_equal(labels, source.labels):
        return None, "its labels differ from the source's"
    ids, errors = meta.get("ids"), meta.get("errors")
    if ids != list(source.ids):
        return None, "its image ids differ from the source's"
    if not isinstance(errors, list) or len(errors) != int((~valid).sum()):
        return None, "its list of unreadable images does not match the validity flags"
    meta = {k: v for k, v in meta.items() if k not in ("ids", "errors")}
    meta["path"] = str(path)
    return Images(images=images, labels=labels.astype(np.int32), valid=valid,
                  ids=tuple(source.ids), errors=tuple((str(a), str(b)) for a, b in errors),
                  meta=meta), ""


def _build(source: Source, path: Path, *, size: int, policy: str, workers: int, progress: bool):
    """Decode every image into a temporary folder next to ``path``, record checksums, and
    rename it into place (replacing a damaged entry). Folders and files follow the umask; the
    temporary folder is removed on any failure (and by later builds if the process was
    killed)."""
    from tqdm.auto import tqdm

    n = len(source)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp(path.parent, path.name)
    tmp = Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{path.name}-{_host_tag()}-{os.getpid()}-",
                                dir=path.parent))
    t0 = time.perf_counter()
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; entries follow the umask
        arr = np.lib.format.open_memmap(
            tmp / "images.npy", mode="w+", dtype=np.uint8, shape=(n, size, size, 3)
        )
        valid = np.zeros(n, bool)
        errors: list[tuple[str, str]] = []
        chunk = 256
        with (
            ThreadPoolExecutor(max_workers=workers) as pool,
            tqdm(total=n, unit="img", desc=f"decode {source.name} {policy}-{size}",
                 disable=not progress) as bar,
        ):
            for start in range(0, n, chunk):
                idx = range(start, min(n, start + chunk))
                if source.thread_safe:
                    raws = [None] * len(idx)
                else:
                    raws = []
                    for i in idx:
                        try:
                            raws.append(source.read(i))
                        except Exception as e:
                            raws.append(e)
                outs = pool.map(
                    lambda ir: (
                        f"{type(ir[1]).__name__}: {ir[1]}"
                        if isinstance(ir[1], Exception)
                        else _decode_one(source, ir[0], size, policy, ir[1])
                    ),
                    zip(idx, raws, strict=True),
                )
                for i, out in zip(idx, outs, strict=True):
                    if isinstance(out, str):
                        errors.append((source.ids[i], out))
                    else:
                        arr[i] = out
                        valid[i] = True
                bar.update(len(idx))
        arr.flush()
        del arr
        np.save(tmp / "labels.npy", np.asarray(source.labels, np.int32))
        np.save(tmp / "valid.npy", valid)
        meta = {
            "format": _CACHE_FORMAT,
            "source": source.name,
            "fingerprint": source.fingerprint,
            "source_info": source.info,
            "size": size,
            "policy": policy,
            "resize": resize_for(size, policy),
            "n": n,
            "n_errors": len(errors),
            "build_seconds": round(time.perf_counter() - t0, 3),
            "sha256": {name: _file_sha256(tmp / name) for name in _FILES},
            "ids": list(source.ids),
            "errors": errors,
        }
        (tmp / "meta.json").write_text(json.dumps(meta))
        for _ in range(3):
            try:
                os.rename(tmp, path)
                break
            except OSError as e:
                if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
            if _open_entry(path, source, size=size, policy=policy)[0] is not None:
                break  # another process finished a good entry first: keep it
            shutil.rmtree(path)  # a damaged or stale entry: replace it
        else:
            raise OSError(errno.EEXIST, "cache entry keeps being replaced by another process",
                          str(path))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already when renamed into place
    if errors:
        first = "; ".join(f"{i}: {r}" for i, r in errors[:3])
        warnings.warn(
            f"{len(errors)} of {n} images of {source.name!r} could not be read; they count as "
            f"wrong in every evaluation (first: {first}). Full list: {path / 'meta.json'}",
            UnreadableImagesWarning,
            stacklevel=3,
        )


def _unwritable(e: OSError) -> bool:
    return isinstance(e, PermissionError) or e.errno in (errno.EACCES, errno.EPERM, errno.EROFS)


def load(
    source: Source,
    *,
    size: int,
    policy: str = "resize",
    cache_dir: str | os.PathLike | None = None,
    workers: int | None = None,
    progress: bool = True,
    rebuild: bool = False,
) -> Images:
    """Centre crops of all images of ``source``, decoded once and memory-mapped from the cache.

    The entry is verified on every load (:func:`_open_entry`: fingerprint, SHA-256 of each
    array file, labels and ids against the source). A missing, damaged or outdated entry is
    decoded again in place, with one line on stderr saying why. A cache that cannot be
    written (read-only, another user's) or whose entry belongs to another user is not used:
    the crops are decoded into a private temporary cache of this process instead (one line
    on stderr), removed at exit.

    Args:
      source: the images (:func:`from_class_folders`, :func:`from_ground_truth`, :func:`from_hf`).
      size: crop side S (224, or 299 for Xception / InceptionV3).
      policy: ``"resize"``, ``"resize<N>"`` or ``"crop"`` (see :func:`resize_for`).
      cache_dir: cache root (default :func:`default_cache_dir`).
      workers: decoding threads (default: CPU count).
      progress: show a tqdm bar while decoding.
      rebuild: discard an existing cache entry and decode again.

    Returns:
      :class:`Images` with ``images: (N, S, S, 3)`` uint8 (read-only memmap). Unreadable
      images are zeros with ``valid = False`` and a reason in ``errors``.
    """
    path = cache_path(source, size=size, policy=policy, cache_dir=cache_dir)
    if len(source) == 0:
        raise ValueError(f"source {source.name!r} has no images")
    build = dict(size=size, policy=policy, workers=workers or os.cpu_count() or 1,
                 progress=progress)
    owned = (path.parent.parent, path.parent, path)
    if any(_foreign(p) for p in owned):
        private = cache_path(source, size=size, policy=policy, cache_dir=_private_cache_dir())
        _note(f"{path} belongs to another user; decoding into a private temporary cache "
              f"{private} instead (removed at exit)")
        path, rebuild = private, False
    if not rebuild:
        images, why = _open_entry(path, source, size=size, policy=policy)
        if images is not None:
            return images
        if why:
            _note(f"entry {path} is not used: {why}; decoding the images again")
    try:
        if rebuild and path.exists():
            shutil.rmtree(path)
        _build(source, path, **build)
    except OSError as e:
        if not _unwritable(e) or (_PRIVATE and path.is_relative_to(_PRIVATE[0])):
            raise
        private = cache_path(source, size=size, policy=policy, cache_dir=_private_cache_dir())
        _note(f"cannot write the cache at {path} ({e.strerror or e}); decoding into a private "
              f"temporary cache {private} instead (removed at exit)")
        path = private
        images, _ = _open_entry(path, source, size=size, policy=policy)
        if images is not None:
            return images
        _build(source, path, **build)
    images, why = _open_entry(path, source, size=size, policy=policy)
    if images is None:
        raise RuntimeError(f"cache entry {path} does not verify right after it was built: {why}")
    return images


# ----------------------------------------------------------------------------- evaluation


def select(labels: Any, *, limit: int | None = None, per_class: int | None = None) -> np.ndarray:
    """Indices of a deterministic subset, in data order.

    ``per_class=K`` keeps the first K images of each class; ``limit=K`` then keeps the first K
    of what remains. Both None: all images.

    Returns:
      ``(M,)`` int64 indices, increasing.
    """
    labels = np.asarray(labels)
    n = labels.shape[0]
    idx = np.arange(n)
    if per_class is not None:
        if per_class < 0:
            raise ValueError(f"per_class must be >= 0, got {per_class}")
        order = np.argsort(labels, kind="stable")
        sl = labels[order]
        rank_sorted = np.arange(n) - np.searchsorted(sl, sl, side="left")
        rank = np.empty(n, np.int64)
        rank[order] = rank_sorted
        idx = idx[rank < per_class]
    if limit is not None:
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        idx = idx[:limit]
    return idx


@dataclass(frozen=True, eq=False)
class EvalResult:
    """Accuracy of one classifier on a set of images (fractions, not percent).

    Attributes:
      n_images: images evaluated, unreadable ones included (the denominator).
      n_errors: unreadable images among them (predicted -1, counted wrong).
      top1, top5: accuracies in [0, 1].
      top1_ci, top5_ci: Wilson 95 % intervals.
      correct1, correct5: ``(n_images,)`` bool per-image correctness.
      pred: ``(n_images, k)`` int32 top-k class indices, best first (``k = min(5, classes)``);
        rows of unreadable images are -1.
      labels: ``(n_images,)`` int32 true classes.
      indices: ``(n_images,)`` positions in the evaluated data (to pair two results).
      errors: ``((id, reason), ...)`` of the unreadable images evaluated.
      wall_s: evaluation wall time in seconds (compilation included).
    """

    n_images: int
    n_errors: int
    top1: float
    top5: float
    top1_ci: tuple[float, float]
    top5_ci: tuple[float, float]
    correct1: np.ndarray = field(repr=False)
    correct5: np.ndarray = field(repr=False)
    pred: np.ndarray = field(repr=False)
    labels: np.ndarray = field(repr=False)
    indices: np.ndarray = field(repr=False)
    errors: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    wall_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """Scalars for a results table (percent, 2 decimals, and interval bounds)."""
        return {
            "n_images": self.n_images,
            "n_errors": self.n_errors,
            "top1": round(100 * self.top1, 4),
            "top1_low": round(100 * self.top1_ci[0], 4),
            "top1_high": round(100 * self.top1_ci[1], 4),
            "top5": round(100 * self.top5, 4),
            "top5_low": round(100 * self.top5_ci[0], 4),
            "top5_high": round(100 * self.top5_ci[1], 4),
            "wall_s": round(self.wall_s, 3),
        }

    def __str__(self) -> str:
        lo1, hi1 = self.top1_ci
        lo5, hi5 = self.top5_ci
        return (
            f"top-1 {100 * self.top1:.2f}% [{100 * lo1:.1f}, {100 * hi1:.1f}], "
            f"top-5 {100 * self.top5:.2f}% [{100 * lo5:.1f}, {100 * hi5:.1f}] "
            f"on {self.n_images} images ({self.n_errors} unreadable, counted wrong)"
        )


@functools.lru_cache(maxsize=32)
def _step(apply_fn: Callable, preprocess_mode: Any) -> Callable:
    """One jitted batch step per (apply_fn, mode): reused across calls (no recompiles)."""
    import jax

    def step(params, x):
        logits = apply_fn(params, preprocess_input(x, preprocess_mode))
        k = min(5, logits.shape[-1])
        _, top = jax.lax.top_k(logits, k)
        return top.astype("int32")

    return jax.jit(step)


def evaluate(
    apply_fn: Callable[[Any, Any], Any],
    params: Any,
    data: Images | tuple[Any, Any],
    *,
    batch_size: int = 100,
    preprocess_mode: str | Callable[[Any], Any] | None,
    limit: int | None = None,
    per_class: int | None = None,
    progress: bool = True,
    devices: Sequence[Any] | None = None,
) -> EvalResult:
    """Top-1 / top-5 accuracy of ``apply_fn(params, x) -> logits`` on ``data``.

    Batches of ``batch_size`` (rounded up to a multiple of the device count) are read from
    ``data.images``, cast to float32 and put through :func:`preprocess_input` and
    ``apply_fn`` inside one jitted step; the last batch is zero-padded to the same shape, so
    the step compiles once per (apply_fn, mode, shapes), also across calls (quantized copies
    of the same parameters reuse it). With several devices the batch is sharded along its
    first axis and ``params`` replicated. Host reading of batch i+1 overlaps the device
    computation of batch i.

    Args:
      apply_fn: ``(params, x: (B, H, W, C) float32) -> (B, classes)`` logits or probabilities.
      params: the parameter pytree.
      data: :class:`Images` (e.g. from :func:`load`) or an ``(images, labels)`` pair.
      batch_size: images per step.
      preprocess_mode: ``"caffe"``, ``"tf"``, ``"torch"``, ``None`` or a callable
        (see :func:`preprocess_input`).
      limit, per_class: evaluate a deterministic subset (see :func:`select`).
      progress: show a tqdm bar.
      devices: devices to shard over (default: all local devices).

    Returns:
      :class:`EvalResult`. Unreadable images (``data.valid == False``) count as wrong.
    """
    import jax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec
    from tqdm.auto import tqdm

    from paper_repro.core import stats

    if not isinstance(data, Images):
        data = Images.from_arrays(*data)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if isinstance(preprocess_mode, str):
        preprocess_input(np.zeros((1, 1, 1, 3), np.uint8), preprocess_mode)  # validate early
    t0 = time.perf_counter()
    idx = select(data.labels, limit=limit, per_class=per_class)
    m = idx.shape[0]
    devs = list(devices) if devices is not None else jax.local_devices()
    nd = len(devs)
    bs = int(math.ceil(batch_size / nd) * nd)
    if nd > 1:
        mesh = Mesh(np.array(devs), ("batch",))
        x_sharding = NamedSharding(mesh, PartitionSpec("batch"))
        params = jax.device_put(params, NamedSharding(mesh, PartitionSpec()))

        def put(x):
            return jax.device_put(x, x_sharding)
    else:
        params = jax.device_put(params, devs[0])

        def put(x):
            return jax.device_put(x, devs[0])

    step = _step(apply_fn, preprocess_mode)
    labels = np.asarray(data.labels)[idx].astype(np.int32)
    valid = np.asarray(data.valid)[idx]
    pred = None
    contiguous = m > 0 and idx[-1] - idx[0] == m - 1

    def host_batch(start: int) -> np.ndarray:
        sl = idx[start : start + bs]
        x = (
            np.asarray(data.images[sl[0] : sl[-1] + 1])
            if contiguous
            else np.asarray(data.images[sl])
        )
        if x.shape[0] < bs:
            pad = np.zeros((bs - x.shape[0],) + x.shape[1:], x.dtype)
            x = np.concatenate([x, pad])
        return x

    with tqdm(total=m, unit="img", desc="evaluate", disable=not progress) as bar:
        pending: tuple[int, Any] | None = None
        for start in range(0, m, bs):
            out = step(params, put(host_batch(start)))  # dispatched asynchronously
            if pending is not None:
                pred = _collect(pending, pred, m, bar)
            pending = (start, out)
        if pending is not None:
            pred = _collect(pending, pred, m, bar)
    if pred is None:
        pred = np.zeros((0, 5), np.int32)
    pred[~valid] = -1
    correct1 = (pred[:, 0] == labels) & valid
    correct5 = (pred == labels[:, None]).any(axis=1) & valid
    n1, n5 = int(correct1.sum()), int(correct5.sum())
    sel_ids = {data.ids[i] for i in idx[~valid]}
    errors = tuple(e for e in data.errors if e[0] in sel_ids)
    if len(errors) < int((~valid).sum()):  # invalid rows without a recorded reason
        known = {e[0] for e in errors}
        errors += tuple((data.ids[i], "marked invalid") for i in idx[~valid] if data.ids[i] not in known)
    return EvalResult(
        n_images=m,
        n_errors=int((~valid).sum()),
        top1=n1 / m if m else float("nan"),
        top5=n5 / m if m else float("nan"),
        top1_ci=stats.wilson_interval(n1, m),
        top5_ci=stats.wilson_interval(n5, m),
        correct1=correct1,
        correct5=correct5,
        pred=pred,
        labels=labels,
        indices=idx,
        errors=errors,
        wall_s=time.perf_counter() - t0,
    )


def _collect(pending: tuple[int, Any], pred: np.ndarray | None, m: int, bar: Any) -> np.ndarray:
    start, out = pending
    top = np.asarray(out)
    if pred is None:
        pred = np.full((m, top.shape[1]), -1, np.int32)
    n = min(top.shape[0], m - start)
    pred[start : start + n] = top[:n]
    bar.update(n)
    return pred
