"""The real data and weight files the project knows: a registry, a resolver and a downloader.

Every entry names its source (a pinned URL), its license or terms, its size and checksums.
Entries, and what :func:`fetch` writes below the data root:

- ``imagenet-val-1300``: 1300 ILSVRC-2012 validation images prescaled to 227x227 (725
  classes) -> ``imagenet-val-1300/images/<file>.JPEG`` and ``imagenet-val-1300/labels.txt``
  (lines ``<file> <class index>``, standard 1000-class order). Each image is checked against
  the manifest shipped with the package (``data_manifests/imagenet-val-1300.tsv``: file,
  size, sha256, label); the labels come from the manifest and are cross-checked against the
  source's own ``dataset.txt``.
- ``mobilenet-0.75-keras``: the Keras-applications MobileNet v1 (alpha 0.75, 224) ImageNet
  weights -> ``keras-weights/mobilenet_7_5_224_tf.h5``. Accepted when the file's sha256
  matches the recorded copy, or, failing that, when the digest of its tensors
  (:func:`tensor_digest`) does: the recorded copy holds the same values in possibly
  different container bytes.
- ``shufflenet-v2-x0.5-onnx``: torchvision ``shufflenet_v2_x0_5`` (IMAGENET1K_V1) exported
  to ONNX in float16 with batch-norm folded -> ``onnx/shufflenet_v2_x0_5_fp16.onnx``.

The data root (:func:`data_root`) is ``$PAPER_REPRO_DATA`` when set, else
``$XDG_CACHE_HOME/paper-repro/data`` (default ``~/.cache/paper-repro/data``).

Downloads use ``urllib`` only: each file streams into a temporary file in its destination
folder, hashed on the way, with a timeout per request and a read limit (the expected size);
it is renamed into place only after the checksum matches. Files already present with the
right checksum are skipped, so an interrupted fetch resumes. ``base_url`` replaces an entry's
URL prefix (a mirror, a local clone of the source repository, or a test server).
"""

from __future__ import annotations

import concurrent.futures
import csv
import hashlib
import http.client
import io
import os
import sys
import tempfile
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

__all__ = [
    "DATA_ENV",
    "REGISTRY",
    "ChecksumError",
    "DataUnavailableError",
    "Entry",
    "FetchResult",
    "RemoteFile",
    "VerifyResult",
    "build_manifest",
    "data_root",
    "default_root",
    "fetch",
    "file_sha256",
    "get",
    "names",
    "present",
    "read_manifest",
    "tensor_digest",
    "verify",
    "write_manifest",
]

DATA_ENV = "PAPER_REPRO_DATA"
DEFAULT_TIMEOUT_S = 30.0
DEFAULT_JOBS = 8
_CHUNK = 1 << 16
_LABELS_LIMIT = 1 << 20  # bytes read at most from a source label list


class DataUnavailableError(FileNotFoundError):
    """A file could not be downloaded (offline, refused, not found at the URL)."""


class ChecksumError(ValueError):
    """A file is not the recorded one (checksum, size or content mismatch)."""


# --------------------------------------------------------------------------- locations


def default_root() -> Path:
    """The default fetch folder: ``$XDG_CACHE_HOME/paper-repro/data`` when that variable is
    an absolute path, else ``~/.cache/paper-repro/data``."""
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
    return base / "paper-repro" / "data"


def data_root() -> Path:
    """Where fetched data lives: ``$PAPER_REPRO_DATA`` when set, else :func:`default_root`.

    The layout below it (``imagenet-val-1300/``, ``keras-weights/``, ``onnx/``) is the one
    the project's real-data resolver reads, so one variable can point at either a fetched
    folder or any folder laid out the same way."""
    env = os.environ.get(DATA_ENV)
    return Path(env).expanduser() if env else default_root()


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class RemoteFile:
    """One file of an entry.

    ``remote``: path below the entry's URL prefix; ``local``: path below the data root;
    ``size``: bytes of the recorded copy; ``sha256``: its hex digest; ``tensor_sha256``: the
    :func:`tensor_digest` of an HDF5 file, accepted when the file digest differs;
    ``max_bytes``: read limit (default ``size``); ``label``: class index of an image."""

    remote: str
    local: str
    size: int
    sha256: str
    tensor_sha256: str | None = None
    max_bytes: int | None = None
    label: int | None = None

    @property
    def limit(self) -> int:
        """The most bytes a download of this file may read."""
        return self.max_bytes if self.max_bytes is not None else self.size

    @property
    def exact_size(self) -> bool:
        """True when only a file of exactly ``size`` bytes can be the right one."""
        return self.tensor_sha256 is None


@dataclass(frozen=True)
class Entry:
    """A data set or weight file: what it is, where it comes from, its terms and checksums.

    ``path``: the entry's top-level path below the data root (a folder or a file);
    ``url_prefix``: the source address that each file's ``remote`` path is appended to
    (what ``base_url`` replaces); ``checksums``: the digests shown to users
    (``{"sha256": ..., ...}``); ``files``: a callable returning the :class:`RemoteFile`
    tuple (read lazily, from the manifest for an image set); ``labels_remote`` /
    ``labels_local``: for an image set, the source's label list (``./data/<file>, <index>``
    lines) and the ``<file> <index>`` file written from the manifest; ``manual``: how to
    place the files by hand, with ``{root}`` for the data root."""

    name: str
    description: str
    path: str
    url_prefix: str
    source: str
    license: str
    checksums: dict[str, str]
    files: Callable[[], tuple[RemoteFile, ...]]
    manual: str
    labels_remote: str | None = None
    labels_local: str | None = None
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def size(self) -> int:
        """Total bytes of the entry's files (the recorded copies), labels file included."""
        files = self.files()
        total = sum(f.size for f in files)
        if self.labels_local:
            total += len(_labels_bytes(files))
        return total

    def url(self, f: RemoteFile, base_url: str | None = None) -> str:
        """The address of ``f``: ``base_url`` (or the entry's prefix) + its remote path."""
        return _join(base_url if base_url is not None else self.url_prefix, f.remote)

    def source_urls(self, base_url: str | None = None) -> list[str]:
        """The addresses to show: the single file's URL, else the folder prefix."""
        files = self.files()
        if len(files) == 1 and not self.labels_remote:
            return [self.url(files[0], base_url)]
        return [_join(base_url if base_url is not None else self.url_prefix, "")]

    def describe(self, root: Path | None = None) -> dict[str, Any]:
        """A JSON-ready summary: name, description, size, URLs, license, checksums, where it
        goes and whether it is present under ``root`` (default :func:`data_root`)."""
        root = Path(root) if root is not None else data_root()
        files = self.files()
        return {
            "name": self.name,
            "description": self.description,
            "size_bytes": self.size,
            "n_files": len(files) + (1 if self.labels_local else 0),
            "source": self.source,
            "urls": self.source_urls(),
            "url_prefix": self.url_prefix,
            "license": self.license,
            "checksums": dict(self.checksums),
            "path": str(root / self.path),
            "present": present(self, root),
            "notes": self.notes,
        }


def _join(prefix: str, remote: str) -> str:
    """``prefix`` + ``/`` + ``remote`` (quoted); a prefix without a scheme is a local folder."""
    if "://" not in prefix:
        prefix = Path(prefix).expanduser().resolve().as_uri()
    return prefix.rstrip("/") + "/" + urllib.parse.quote(remote)


# ImageNet validation subset --------------------------------------------------------------

_ACUITY_COMMIT = "aded2e9f22cd8fe0745aa57356c68cb95457aad9"
_ACUITY_PREFIX = f"https://raw.githubusercontent.com/VeriSilicon/acuity-dataset/{_ACUITY_COMMIT}/"
IMAGENET_MANIFEST = "imagenet-val-1300.tsv"
# sha256 of the manifest file: the registry pins the per-image checksums through it.
IMAGENET_MANIFEST_SHA256 = "82be8a7e679ca7686d30cfd3a34fbb64162c41dd5022a18fa1a08723e76d59f3"
IMAGENET_LABELS_SHA256 = "005d282a6b060f048852cfaaa11264a57951246a9c35288bf2929304fd682f97"


def _manifest_bytes(name: str) -> bytes:
    return (resources.files("paper_repro") / "data_manifests" / name).read_bytes()


def read_manifest(data: bytes | str) -> list[dict[str, Any]]:
    """Rows of an image manifest (tab-separated ``file size sha256 label``, ``#`` comments,
    one header row): ``[{"file", "size", "sha256", "label"}]`` in file order."""
    text = data.decode("utf8") if isinstance(data, bytes) else data
    lines = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
    rows = list(csv.DictReader(lines, delimiter="\t"))
    if not rows or set(rows[0]) != {"file", "size", "sha256", "label"}:
        raise ValueError("an image manifest needs the columns file, size, sha256, label")
    return [
        {"file": r["file"], "size": int(r["size"]), "sha256": r["sha256"].lower(),
         "label": int(r["label"])}
        for r in rows
    ]


def build_manifest(images_dir: str | os.PathLike, labels_file: str | os.PathLike) -> list[dict]:
    """The manifest rows of a local image folder: one per line of ``labels_file``
    (``<file> <class index>``), with the size and sha256 of ``images_dir/<file>``."""
    images_dir = Path(images_dir)
    rows = []
    for line in Path(labels_file).read_text().splitlines():
        if not line.strip():
            continue
        name, label = line.split()
        p = images_dir / name
        rows.append({"file": name, "size": p.stat().st_size, "sha256": file_sha256(p),
                     "label": int(label)})
    return rows


def write_manifest(rows: Iterable[dict], path: str | os.PathLike, comment: str = "") -> None:
    """Write manifest rows (see :func:`read_manifest`) to ``path``."""
    out = io.StringIO()
    for line in comment.splitlines():
        out.write(f"# {line}\n")
    out.write("file\tsize\tsha256\tlabel\n")
    for r in rows:
        out.write(f"{r['file']}\t{r['size']}\t{r['sha256']}\t{r['label']}\n")
    Path(path).write_text(out.getvalue())


@cache
def _imagenet_files() -> tuple[RemoteFile, ...]:
    data = _manifest_bytes(IMAGENET_MANIFEST)
    got = hashlib.sha256(data).hexdigest()
    if got != IMAGENET_MANIFEST_SHA256:
        raise ChecksumError(
            f"the package's manifest {IMAGENET_MANIFEST} has sha256 {got}, expected "
            f"{IMAGENET_MANIFEST_SHA256}: the installed package is damaged; reinstall it"
        )
    return tuple(
        RemoteFile(remote=f"ILSVRC2012_VAL_SET/data/{r['file']}",
                   local=f"imagenet-val-1300/images/{r['file']}",
                   size=r["size"], sha256=r["sha256"], label=r["label"])
        for r in read_manifest(data)
    )


# Keras-applications MobileNet 0.75 --------------------------------------------------------

_KERAS_PREFIX = "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet/"
_MOBILENET_FILE = RemoteFile(
    remote="mobilenet_7_5_224_tf.h5",
    local="keras-weights/mobilenet_7_5_224_tf.h5",
    size=10_621_736,
    sha256="f06084306e7c0977a30aee2ce9fe22fd7d7561395a80b541789d61502edda45a",
    tensor_sha256="0d3d587d1af7f9ef7ca55d9772cec348b3ffd2823f0ad215d97c6a4e8593eb04",
    # The official file holds the same tensors; its container bytes may differ a little.
    max_bytes=16 << 20,
)

# torchvision ShuffleNet v2 x0.5 in ONNX ---------------------------------------------------

_DLINFER_COMMIT = "f9fa23e099dd79331461722318151d408a1d6e29"
_DLINFER_PREFIX = (
    f"https://raw.githubusercontent.com/NagatoYuki0943/dl-infer-learn/{_DLINFER_COMMIT}/"
)
_SHUFFLENET_FILE = RemoteFile(
    remote="models/shufflenet_v2_x0_5-dynamic_batch-half.onnx",
    local="onnx/shufflenet_v2_x0_5_fp16.onnx",
    size=2_785_570,
    sha256="bc680ffb5d518aa9d3ff44a4cd5a21cc634af77f3dd3f5d8b747c605405e48bb",
)

_MANUAL_TAIL = " then run `paper-repro data verify {name}`"

REGISTRY: dict[str, Entry] = {
    "imagenet-val-1300": Entry(
        name="imagenet-val-1300",
        description=(
            "1300 ILSVRC-2012 validation images prescaled to 227x227 (725 classes), labels "
            "in the standard 1000-class order (index 0 = n01440764 tench); easier than the "
            "full validation set, for float-vs-quantized comparisons on real images"
        ),
        path="imagenet-val-1300",
        url_prefix=_ACUITY_PREFIX,
        source=f"github.com/VeriSilicon/acuity-dataset@{_ACUITY_COMMIT} ILSVRC2012_VAL_SET/",
        license="ImageNet terms of access: non-commercial research and teaching only",
        checksums={
            "manifest-sha256": IMAGENET_MANIFEST_SHA256,
            "labels.txt-sha256": IMAGENET_LABELS_SHA256,
        },
        files=_imagenet_files,
        labels_remote="ILSVRC2012_VAL_SET/dataset.txt",
        labels_local="imagenet-val-1300/labels.txt",
        manual=(
            "clone github.com/VeriSilicon/acuity-dataset, check out commit "
            f"{_ACUITY_COMMIT} and rerun with --base-url /path/to/acuity-dataset; or copy "
            "ILSVRC2012_VAL_SET/data/*.JPEG into {root}/imagenet-val-1300/images/ and "
            "ILSVRC2012_VAL_SET/dataset.txt to {root}/imagenet-val-1300/dataset.txt and "
            "rerun `paper-repro data fetch {name}` (present files are only checked)"
        ),
        notes=(
            f"per-image sha256, sizes and labels: paper_repro/data_manifests/{IMAGENET_MANIFEST}"
        ),
    ),
    "mobilenet-0.75-keras": Entry(
        name="mobilenet-0.75-keras",
        description=(
            "Keras-applications MobileNet v1, alpha 0.75, 224x224, ImageNet weights (legacy "
            "Keras 2 .h5 weight layout, 2,601,976 parameters)"
        ),
        path=_MOBILENET_FILE.local,
        url_prefix=_KERAS_PREFIX,
        source="Keras applications (official weight file)",
        license="Apache-2.0",
        checksums={
            "sha256": _MOBILENET_FILE.sha256,
            "tensor-sha256": str(_MOBILENET_FILE.tensor_sha256),
            "md5": "7544728a764377ce5d6838a5b221cacb",
        },
        files=lambda: (_MOBILENET_FILE,),
        manual=(
            f"download {_KERAS_PREFIX}{_MOBILENET_FILE.remote} and save it as "
            "{root}/" + _MOBILENET_FILE.local + ";" + _MANUAL_TAIL
        ),
        notes=(
            "accepted by file sha256, or by tensor-sha256 (sha256 over the sorted dataset "
            "paths, dtypes, shapes and bytes) when the container bytes differ"
        ),
    ),
    "shufflenet-v2-x0.5-onnx": Entry(
        name="shufflenet-v2-x0.5-onnx",
        description=(
            "torchvision shufflenet_v2_x0_5 (IMAGENET1K_V1) exported to ONNX (opset 17, "
            "dynamic batch) in float16 with batch-norm folded into the convolutions"
        ),
        path=_SHUFFLENET_FILE.local,
        url_prefix=_DLINFER_PREFIX,
        source=f"github.com/NagatoYuki0943/dl-infer-learn@{_DLINFER_COMMIT}",
        license="BSD-3-Clause (torchvision code); weights derived from ImageNet",
        checksums={"sha256": _SHUFFLENET_FILE.sha256},
        files=lambda: (_SHUFFLENET_FILE,),
        manual=(
            f"download {_DLINFER_PREFIX}{_SHUFFLENET_FILE.remote} and save it as "
            "{root}/" + _SHUFFLENET_FILE.local + ";" + _MANUAL_TAIL
        ),
    ),
}


def names() -> list[str]:
    """The registry's entry names, in registry order."""
    return list(REGISTRY)


def get(name: str | Entry) -> Entry:
    """The registry entry called ``name`` (``ValueError`` naming the choices otherwise)."""
    if isinstance(name, Entry):
        return name
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown data entry {name!r}; choose from {', '.join(REGISTRY)}") from None


# --------------------------------------------------------------------------- checksums


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def tensor_digest(path: str | os.PathLike, max_bytes: int | None = None) -> str:
    """Hex sha256 over the tensors of an HDF5 file, independent of its container layout.

    Datasets are taken in sorted order of their paths (no leading ``/``); for each, the
    digest reads ``path``, NUL, the little-endian dtype string (e.g. ``<f4``), NUL, the
    shape as comma-separated integers, NUL, the byte count as 8 little-endian bytes, then
    the C-order little-endian bytes. Attributes are not included. Soft and external links,
    external-storage and virtual datasets, and non-numeric datasets are refused
    (``ValueError``), as is a file whose tensors total more than ``max_bytes`` (default: 8x
    the file size), so a crafted file cannot pull in other files or expand without bound.
    """
    import h5py
    import numpy as np

    path = Path(path)
    limit = max_bytes if max_bytes is not None else 8 * path.stat().st_size + (1 << 20)
    with h5py.File(path, "r") as f:
        bad: list[str] = []

        def check_link(name, link):
            if isinstance(link, (h5py.SoftLink, h5py.ExternalLink)):
                bad.append(f"{name} ({type(link).__name__})")

        f.visititems_links(check_link)
        if bad:
            raise ValueError(f"{path}: links are not allowed in a weight file: {bad[0]}")
        datasets: dict[str, Any] = {}

        def collect(name, obj):
            if isinstance(obj, h5py.Dataset):
                datasets[name] = obj

        f.visititems(collect)
        total = 0
        for name, ds in datasets.items():
            if ds.external or ds.is_virtual:
                raise ValueError(f"{path}: dataset {name} stores its data outside the file")
            if ds.dtype.kind not in "biuf":
                raise ValueError(f"{path}: dataset {name} is not numeric ({ds.dtype})")
            total += ds.size * ds.dtype.itemsize
        if total > limit:
            raise ValueError(f"{path}: tensors total {total} bytes, more than {limit}")
        h = hashlib.sha256()
        for name in sorted(datasets):
            arr = np.asarray(datasets[name][()])
            arr = np.ascontiguousarray(arr.astype(arr.dtype.newbyteorder("<"), copy=False))
            data = arr.tobytes()
            h.update(name.encode("utf8") + b"\0" + arr.dtype.str.encode() + b"\0")
            h.update(",".join(str(int(s)) for s in arr.shape).encode() + b"\0")
            h.update(len(data).to_bytes(8, "little"))
            h.update(data)
        return h.hexdigest()


def _match(f: RemoteFile, path: Path, sha256: str | None = None) -> str | None:
    """Which check ``path`` passes as ``f``: ``"sha256"``, ``"tensor-sha256"`` or None."""
    try:
        size = path.stat().st_size
    except OSError:
        return None
    if size > f.limit or (f.exact_size and size != f.size):
        return None
    if (sha256 or file_sha256(path)) == f.sha256:
        return "sha256"
    if f.tensor_sha256:
        try:
            if tensor_digest(path) == f.tensor_sha256:
                return "tensor-sha256"
        except Exception:  # not HDF5, or refused: not the recorded file either way
            return None
    return None


# --------------------------------------------------------------------------- labels


def _labels_bytes(files: Iterable[RemoteFile]) -> bytes:
    """``<file> <class index>`` lines, in manifest order."""
    return "".join(f"{Path(f.local).name} {f.label}\n" for f in files).encode()


def _parse_source_labels(data: bytes, where: str) -> dict[str, int]:
    """``./data/<file>, <index>`` lines (also ``<file> <index>``) -> ``{file: index}``."""
    out: dict[str, int] = {}
    for i, line in enumerate(data.decode("utf8", "replace").splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        parts = line.replace(",", " ").split()
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise ChecksumError(f"{where} line {i} is not '<file>, <class index>': {line[:80]!r}")
        out[parts[0].rsplit("/", 1)[-1]] = int(parts[1])
    return out


def _check_source_labels(entry: Entry, files: tuple[RemoteFile, ...], data: bytes,
                         where: str) -> None:
    src = _parse_source_labels(data, where)
    want = {Path(f.local).name: f.label for f in files}
    missing = [n for n in want if n not in src]
    wrong = [n for n in want if n in src and src[n] != want[n]]
    if missing or wrong:
        ex = (f"{missing[0]} missing" if missing
              else f"{wrong[0]}: {src[wrong[0]]} there, {want[wrong[0]]} in the manifest")
        raise ChecksumError(
            f"{where} disagrees with the {entry.name} manifest ({len(missing)} files missing, "
            f"{len(wrong)} labels differ; e.g. {ex}): not the pinned source"
        )


# --------------------------------------------------------------------------- download


def _one_line(e: BaseException) -> str:
    text = str(getattr(e, "reason", None) or e) or type(e).__name__
    return " ".join(text.split())


def _unavailable(entry: Entry, url: str, e: BaseException, root: Path) -> DataUnavailableError:
    how = entry.manual.format(root=root, name=entry.name)
    return DataUnavailableError(
        f"could not download {url} ({type(e).__name__}: {_one_line(e)}). To place the files "
        f"by hand: {how}"
    )


def _read_url(url: str, limit: int, timeout: float, sink: Callable[[bytes], None]) -> int:
    """Stream ``url`` into ``sink`` in chunks; at most ``limit`` bytes (more is refused with
    :class:`ChecksumError`). Network failures propagate as ``OSError``/``URLError``."""
    n = 0
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        length = resp.headers.get("Content-Length")
        if length and length.isdigit() and int(length) > limit:
            raise ChecksumError(f"{url} is {int(length)} bytes, more than the expected {limit}: "
                                "not the recorded file")
        while True:
            chunk = resp.read(min(_CHUNK, limit + 1 - n))
            if not chunk:
                return n
            n += len(chunk)
            if n > limit:
                raise ChecksumError(f"{url} has more than the expected {limit} bytes: "
                                    "not the recorded file")
            sink(chunk)


_NET_ERRORS = (urllib.error.URLError, OSError, http.client.HTTPException, TimeoutError)


def _download(entry: Entry, f: RemoteFile, url: str, root: Path, timeout: float,
              on_bytes: Callable[[int], None]) -> str:
    """Download ``url`` to ``root/f.local`` through a temporary file; return which check
    matched. Nothing is left behind on failure."""
    target = root / f.local
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        h = hashlib.sha256()
        head = bytearray()
        with os.fdopen(fd, "wb") as out:
            def sink(chunk: bytes) -> None:
                if len(head) < 64:
                    head.extend(chunk[:64])
                h.update(chunk)
                out.write(chunk)
                on_bytes(len(chunk))

            try:
                _read_url(url, f.limit, timeout, sink)
            except ChecksumError:
                raise
            except _NET_ERRORS as e:
                raise _unavailable(entry, url, e, root) from None
        digest = h.hexdigest()
        matched = _match(f, tmp, digest)
        if matched is None:
            hint = (" (a Git LFS pointer, not the file: the server does not resolve LFS)"
                    if bytes(head).startswith(b"version https://git-lfs") else "")
            raise ChecksumError(
                f"{url}: sha256 {digest} ({tmp.stat().st_size} bytes), expected {f.sha256} "
                f"({f.size} bytes){hint}; refused, nothing written"
            )
        os.replace(tmp, target)
        return matched
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


@dataclass
class FetchResult:
    """What :func:`fetch` did. ``path``: the entry below the root; ``downloaded`` /
    ``skipped``: file counts (labels file included); ``bytes_downloaded``; ``matched``:
    ``{check: count}`` over all files (``"sha256"`` or ``"tensor-sha256"``)."""

    name: str
    path: Path
    downloaded: int = 0
    skipped: int = 0
    bytes_downloaded: int = 0
    matched: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        """One line for people."""
        checks = ", ".join(f"{n} by {k}" for k, n in sorted(self.matched.items()))
        return (f"{self.name}: {self.path} ({self.downloaded} downloaded, {self.skipped} "
                f"already present; verified: {checks or 'nothing'})")


def fetch(
    name: str | Entry,
    dest: str | os.PathLike | None = None,
    *,
    base_url: str | None = None,
    progress: bool = True,
    timeout: float = DEFAULT_TIMEOUT_S,
    jobs: int = DEFAULT_JOBS,
) -> FetchResult:
    """Download an entry below ``dest`` (default :func:`data_root`), verifying every file.

    Files already present with the right checksum are skipped; others are downloaded from
    ``base_url`` (replacing the entry's URL prefix; a folder path means a local mirror) or
    the source, ``jobs`` at a time, each with ``timeout`` seconds per request and at most
    its expected size read. Raises :class:`DataUnavailableError` (a ``FileNotFoundError``:
    offline, HTTP error) naming the URL and how to place the files by hand, and
    :class:`ChecksumError` (a ``ValueError``) when a file is not the recorded one; a refused
    file leaves nothing behind. ``progress`` shows a bar over bytes and files on stderr.
    """
    entry = get(name)
    root = Path(dest).expanduser() if dest is not None else data_root()
    files = entry.files()
    result = FetchResult(entry.name, root / entry.path)
    matched = result.matched

    todo: list[RemoteFile] = []
    for f in files:
        m = _match(f, root / f.local)
        if m is None:
            todo.append(f)
        else:
            matched[m] = matched.get(m, 0) + 1
            result.skipped += 1

    from tqdm.auto import tqdm

    lock = threading.Lock()
    bar = tqdm(total=sum(f.size for f in todo), unit="B", unit_scale=True, unit_divisor=1024,
               desc=entry.name, disable=not progress or not todo, file=sys.stderr, leave=True)

    def on_bytes(n: int) -> None:
        with lock:
            bar.update(n)
            result.bytes_downloaded += n

    def one(f: RemoteFile) -> str:
        m = _download(entry, f, entry.url(f, base_url), root, timeout, on_bytes)
        with lock:
            matched[m] = matched.get(m, 0) + 1
            result.downloaded += 1
            bar.set_postfix_str(f"{result.downloaded}/{len(todo)} files", refresh=False)
        return m

    try:
        if len(todo) <= 1 or jobs <= 1:
            for f in todo:
                one(f)
        else:
            pool = concurrent.futures.ThreadPoolExecutor(max_workers=jobs)
            try:
                for fut in concurrent.futures.as_completed([pool.submit(one, f) for f in todo]):
                    fut.result()
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise
            pool.shutdown(wait=True)
    except BaseException:
        bar.leave = False  # clear the bar, so an error message stands on its own line
        bar.close()
        raise
    bar.close()

    if entry.labels_local:
        labels = _labels_bytes(files)
        target = root / entry.labels_local
        if target.is_file() and target.read_bytes() == labels:
            result.skipped += 1
        else:
            local_src = target.parent / Path(entry.labels_remote or "").name
            if entry.labels_remote and local_src.is_file():
                if local_src.stat().st_size > _LABELS_LIMIT:
                    raise ChecksumError(f"{local_src} is larger than {_LABELS_LIMIT} bytes")
                _check_source_labels(entry, files, local_src.read_bytes(), str(local_src))
            elif entry.labels_remote:
                url = _join(base_url if base_url is not None else entry.url_prefix,
                            entry.labels_remote)
                buf = bytearray()
                try:
                    _read_url(url, _LABELS_LIMIT, timeout, buf.extend)
                except ChecksumError:
                    raise
                except _NET_ERRORS as e:
                    raise _unavailable(entry, url, e, root) from None
                _check_source_labels(entry, files, bytes(buf), url)
            _write_atomic(target, labels)
            result.downloaded += 1
        matched["manifest"] = matched.get("manifest", 0) + 1
    return result


# --------------------------------------------------------------------------- checking


@dataclass
class VerifyResult:
    """What :func:`verify` found. ``ok`` files, ``matched`` ``{check: count}``, and
    ``problems``: one ``"<path>: <what>"`` string per missing or wrong file."""

    name: str
    path: Path
    ok: int = 0
    matched: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        """One line for people."""
        checks = ", ".join(f"{n} by {k}" for k, n in sorted(self.matched.items()))
        if self.passed:
            return (f"{self.name}: {self.path} OK ({self.ok} file{'s' if self.ok != 1 else ''}; "
                    f"{checks})")
        return (f"{self.name}: {self.path}: {len(self.problems)} problem(s), e.g. "
                f"{self.problems[0]}; {self.ok} files OK")


def verify(name: str | Entry, dest: str | os.PathLike | None = None) -> VerifyResult:
    """Check every file of an entry below ``dest`` (default :func:`data_root`) against its
    checksums (and the labels file against the manifest); reports, never raises on a bad
    file."""
    entry = get(name)
    root = Path(dest).expanduser() if dest is not None else data_root()
    files = entry.files()
    res = VerifyResult(entry.name, root / entry.path)
    for f in files:
        p = root / f.local
        if not p.is_file():
            res.problems.append(f"{p}: missing")
            continue
        m = _match(f, p)
        if m is None:
            res.problems.append(f"{p}: checksum differs from the recorded {f.sha256[:12]}...")
        else:
            res.ok += 1
            res.matched[m] = res.matched.get(m, 0) + 1
    if entry.labels_local:
        p = root / entry.labels_local
        if not p.is_file():
            res.problems.append(f"{p}: missing")
        elif p.read_bytes() != _labels_bytes(files):
            res.problems.append(f"{p}: differs from the manifest's labels")
        else:
            res.ok += 1
            res.matched["manifest"] = res.matched.get("manifest", 0) + 1
    return res


def present(name: str | Entry, dest: str | os.PathLike | None = None) -> bool:
    """Quick check (no hashing): every file of the entry exists below ``dest`` (default
    :func:`data_root`) with a plausible size. :func:`verify` checks the contents."""
    entry = get(name)
    root = Path(dest).expanduser() if dest is not None else data_root()
    for f in entry.files():
        try:
            size = (root / f.local).stat().st_size
        except OSError:
            return False
        if size > f.limit or (f.exact_size and size != f.size):
            return False
    return not entry.labels_local or (root / entry.labels_local).is_file()
