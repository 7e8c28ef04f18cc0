"""Keras-applications ``.h5`` weight files: read, match to a model, write, download.

docs/theory.md, section 1: the papers quantize the official Keras-applications ImageNet weights.
These are legacy Keras ``.h5`` files:

- Keras 2 layout: root attribute ``layer_names``; one group per layer with attribute
  ``weight_names``; datasets at ``<layer>/<var>:0`` inside the layer group.
- Keras 3 legacy layout (``legacy_h5_format.save_weights_to_hdf5_group``): the same, with
  weight names ``<layer>/<var>`` (no ``:0``) and an extra ``top_level_model_weights`` group.
- Files saved from a whole model (``model.save("x.h5")``) hold this under ``model_weights``.
- Long attributes may be split by Keras into ``layer_names0``, ``layer_names1``, ...

:func:`load` returns ``{keras_layer_name: {keras_var_name: np.ndarray float32}}`` for a
registry model. Layers are matched by name; where names differ (Keras auto-names such as
``conv2d_17`` depend on how many layers a session had built), auto-named layers are matched
by creation order within their kind, and any remaining layers by order. Every match is
checked for shape, and a mismatch names the layer.

:func:`fetch` downloads an official file to a cache folder (``$PAPER_REPRO_CACHE/weights``,
default ``~/.cache/paper_repro/weights``), verifying the checksum Keras publishes; offline it fails fast and
says which file to download from where and where to put it.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from paper_repro.feedforward import models
from paper_repro.feedforward.models import ModelSpec

__all__ = [
    "WeightsUnavailableError",
    "cache_folder",
    "fetch",
    "file_hash",
    "info",
    "load",
    "load_pretrained",
    "match_layers",
    "read_h5",
    "save_h5",
    "shared_data_dir",
]

DEFAULT_TIMEOUT_S = 10.0

# Keras's automatic layer names: a class-derived base with an optional numeric suffix.
_AUTO_NAME = re.compile(
    r"^(conv2d|batch_normalization|dense|depthwise_conv2d|separable_conv2d|conv2d_transpose)"
    r"(?:_(\d+))?$"
)


class WeightsUnavailableError(FileNotFoundError):
    """An official weight file is not on disk and could not be downloaded."""


# --------------------------------------------------------------------------- locations


def cache_folder(path: str | os.PathLike | None = None) -> Path:
    """The weight cache folder: ``path``, else ``$PAPER_REPRO_CACHE/weights``, else
    ``~/.cache/paper_repro/weights`` (the package's cache root, shared with the ImageNet
    image cache)."""
    if path is not None:
        return Path(path).expanduser()
    env = os.environ.get("PAPER_REPRO_CACHE")
    root = Path(env).expanduser() if env else Path.home() / ".cache" / "paper_repro"
    return root / "weights"


def shared_data_dir() -> Path | None:
    """The real-data folder: ``$PAPER_REPRO_SHARED_DATA`` if set, else the fetched-data folder
    (``paper_repro.datasets.data_root()``: ``$PAPER_REPRO_DATA``, else
    ``~/.cache/paper-repro/data``) when it holds at least one complete entry (``paper-repro
    data fetch``), else ``None``."""
    env = os.environ.get("PAPER_REPRO_SHARED_DATA")
    if env:
        return Path(env).expanduser()
    from paper_repro import datasets

    root = datasets.data_root()
    return root if any(datasets.present(n, root) for n in datasets.names()) else None


# --------------------------------------------------------------------------- reading


def _h5py():
    import h5py

    return h5py


def _attr_list(group, name: str) -> list[str] | None:
    """Keras ``load_attributes_from_hdf5_group``: plain or chunked (``name0``, ``name1``...)."""
    if name in group.attrs:
        values = list(group.attrs[name])
    elif f"{name}0" in group.attrs:
        values, i = [], 0
        while f"{name}{i}" in group.attrs:
            values.extend(group.attrs[f"{name}{i}"])
            i += 1
    else:
        return None
    return [v.decode("utf8") if isinstance(v, bytes) else str(v) for v in values]


def _var_name(weight_name: str) -> str:
    """``"conv1/kernel:0"`` or ``"model/conv1/kernel"`` -> ``"kernel"``."""
    name = weight_name.rsplit("/", 1)[-1]
    return re.sub(r":\d+$", "", name)


def _child(group, name: str, where: str):
    """``group[name]`` (``name`` may have ``/`` components), following hard links only:
    external links (another file) and soft links are refused, so reading a weight file
    never opens another file. ``None`` when absent."""
    h5py = _h5py()
    node = group
    for part in [p for p in name.split("/") if p]:
        link = node.get(part, getlink=True)
        if link is None:
            return None
        if not isinstance(link, h5py.HardLink):
            kind = "an external link to another file" if isinstance(link, h5py.ExternalLink) \
                else "a soft link"
            raise ValueError(f"{where}: {name!r} is {kind}; weight files with links are "
                             "refused (re-save the weights into one plain .h5 file)")
        node = node[part]
    return node


def _weights_root(f):
    if "layer_names" in f.attrs or "layer_names0" in f.attrs:
        return f
    mw = _child(f, "model_weights", f.filename)
    if mw is not None:
        return mw
    if "layers" in f and "vars" not in f.attrs:
        raise ValueError(
            f"{f.filename} looks like a Keras 3 '.weights.h5' file, not a legacy Keras .h5 "
            "weight file; re-save it with keras.src.legacy.saving.legacy_h5_format."
            "save_weights_to_hdf5_group, or load it in Keras and call "
            "paper_repro.feedforward.weights.save_h5 on the extracted weights"
        )
    raise ValueError(
        f"{f.filename} is not a Keras weight file: no 'layer_names' attribute at the root "
        "or in a 'model_weights' group"
    )


_DEFLATE, _SHUFFLE = 1, 2  # HDF5 filter ids this reader decodes itself (bounded)
DEFAULT_MAX_BYTES = 2 << 30  # read_h5: largest total of declared array sizes read at once


def _check_dataset(ds, where: str) -> None:
    """Refuse a dataset whose reading could touch other files, take unbounded memory or give
    non-numbers: external raw storage, virtual datasets, non-numeric types, chunks larger
    than the array, filters other than gzip and shuffle."""
    h5py = _h5py()
    if not isinstance(ds, h5py.Dataset):
        raise ValueError(f"{where} is not a dataset")
    if ds.external:
        raise ValueError(f"{where} keeps its data in external files; refused")
    if ds.is_virtual:
        raise ValueError(f"{where} is a virtual dataset (data in other files); refused")
    if ds.dtype.kind not in "fiub" or ds.dtype.fields is not None or ds.dtype.subdtype:
        raise ValueError(f"{where} has type {ds.dtype}, not numbers")
    if ds.chunks is not None and any(c > max(s, 1) for c, s in zip(ds.chunks, ds.shape,
                                                                     strict=True)):
        if int(np.prod(ds.chunks)) * ds.dtype.itemsize > 1 << 20:
            raise ValueError(f"{where}: chunks {ds.chunks} are larger than the array "
                             f"{ds.shape}; refused")
    plist = ds.id.get_create_plist()
    for i in range(plist.get_nfilters()):
        code, _, _, name = plist.get_filter(i)
        if code not in (_DEFLATE, _SHUFFLE):
            name = name.decode(errors="replace") if isinstance(name, bytes) else name
            raise ValueError(f"{where} uses HDF5 filter {code} ({name}); re-save the file "
                             "without it (uncompressed or gzip)")


def _nbytes(ds) -> int:
    return int(np.prod(ds.shape, dtype=np.int64)) * ds.dtype.itemsize


def _read_dataset(ds, where: str) -> np.ndarray:
    """The array of a dataset checked by :func:`_check_dataset`, never allocating more than its
    declared size: gzip / shuffle chunks are decoded here with the output bounded by the chunk
    size (HDF5's own deflate filter grows its buffer without limit on a forged chunk)."""
    plist = ds.id.get_create_plist()
    filters = [plist.get_filter(i)[0] for i in range(plist.get_nfilters())]
    if not filters:
        return np.asarray(ds[()])
    import zlib

    out = np.full(ds.shape, ds.fillvalue, dtype=ds.dtype)
    chunks = tuple(ds.chunks)
    itemsize = ds.dtype.itemsize
    chunk_bytes = int(np.prod(chunks, dtype=np.int64)) * itemsize
    for index in range(ds.id.get_num_chunks()):
        offset = ds.id.get_chunk_info(index).chunk_offset
        mask, raw = ds.id.read_direct_chunk(offset)
        data = bytes(raw)
        for k in reversed(range(len(filters))):  # filters run in reverse order on reading
            if mask & (1 << k):
                continue  # filter k was skipped for this chunk
            if filters[k] == _DEFLATE:
                d = zlib.decompressobj()
                try:
                    data = d.decompress(data, chunk_bytes)
                    extra = d.decompress(d.unconsumed_tail, 1) if d.unconsumed_tail else b""
                except zlib.error as e:
                    raise ValueError(f"{where}: damaged gzip chunk at {offset} ({e})") from None
                if extra or not d.eof:
                    raise ValueError(f"{where}: gzip chunk at {offset} does not decompress to "
                                     f"its {chunk_bytes} bytes; refused")
            elif len(data) == chunk_bytes and itemsize > 1:  # shuffle: bytes grouped by rank
                data = np.frombuffer(data, np.uint8).reshape(itemsize, -1).T.tobytes()
        if len(data) != chunk_bytes:
            raise ValueError(f"{where}: chunk at {offset} has {len(data)} bytes, expected "
                             f"{chunk_bytes}")
        block = np.frombuffer(data, dtype=ds.dtype).reshape(chunks)
        dst = tuple(slice(o, min(o + c, s)) for o, c, s in zip(offset, chunks, ds.shape,
                                                                strict=True))
        out[dst] = block[tuple(slice(0, d.stop - d.start) for d in dst)]
    return out


def _open_h5(path: str | os.PathLike):
    """``h5py.File`` of a regular file (a FIFO or device would block HDF5's open)."""
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise FileNotFoundError(f"no weight file at {p}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"{p} is not a regular file; give a .h5 weight file")
    h5py = _h5py()
    try:
        return h5py.File(p, "r")
    except OSError as e:
        raise ValueError(f"{p} is not a readable HDF5 file ({e})") from None


def _layers(f) -> dict[str, dict[str, Any]]:
    """``{layer: {var: h5py.Dataset}}`` of an open file, in the file's layer order: datasets
    checked (:func:`_check_dataset`), nothing read."""
    root = _weights_root(f)
    out: dict[str, dict[str, Any]] = {}
    for layer in _attr_list(root, "layer_names") or []:
        g = _child(root, layer, f"{f.filename}: layer {layer!r}")
        if g is None:
            continue
        names = _attr_list(g, "weight_names") or []
        if not names:
            continue
        d = {}
        for w in names:
            where = f"{Path(f.filename).name}: {layer}/{w}"
            ds = _child(g, w, where)
            if ds is None:
                raise ValueError(f"{where} is listed in weight_names but absent")
            _check_dataset(ds, where)
            d[_var_name(w)] = ds
        out[layer] = d
    return out


def read_h5(
    path: str | os.PathLike, *, max_bytes: int | None = DEFAULT_MAX_BYTES
) -> dict[str, dict[str, np.ndarray]]:
    """All layers with weights in a legacy Keras ``.h5`` file, in the file's layer order.

    Returns ``{layer_name: {var_name: array}}`` (var names without the layer prefix and
    ``:0``; arrays as stored, Keras layouts). Layers without weights are left out. Files
    with links, external or virtual data, or exotic filters are refused (``ValueError``),
    and so are files whose arrays declare more than ``max_bytes`` in total (checked before
    anything is read; ``None``: no limit). To load into a model use :func:`load`, which reads
    only the arrays whose shapes match the model.
    """
    with _open_h5(path) as f:
        layers = _layers(f)
        total = sum(_nbytes(ds) for d in layers.values() for ds in d.values())
        if max_bytes is not None and total > max_bytes:
            raise ValueError(f"{path}: its arrays declare {total} bytes, more than max_bytes="
                             f"{max_bytes}; pass a larger max_bytes if the file is trusted")
        return {layer: {v: _read_dataset(ds, f"{layer}/{v}") for v, ds in d.items()}
                for layer, d in layers.items()}


def file_hash(path: str | os.PathLike, algorithm: str = "md5") -> str:
    """Hex digest (``"md5"`` or ``"sha256"``) of a file."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def info(path: str | os.PathLike) -> dict[str, Any]:
    """Summary of a weight file: layers with their variable shapes, parameter count, md5.

    Reads shapes only (no array data), so any file is summarized in bounded memory.
    Returns ``{"path", "md5", "keras_version", "backend", "n_layers", "n_params",
    "layers": [{"name", "vars": {var: shape}, "n_params"}]}``.
    """
    path = Path(path)
    with _open_h5(path) as f:
        root = _weights_root(f)
        attrs = {
            k: (v.decode("utf8") if isinstance(v, bytes) else str(v))
            for k, v in root.attrs.items()
            if k in ("keras_version", "backend")
        }
        rows = [
            {
                "name": name,
                "vars": {v: list(ds.shape) for v, ds in d.items()},
                "n_params": int(sum(int(np.prod(ds.shape, dtype=np.int64)) for ds in d.values())),
            }
            for name, d in _layers(f).items()
        ]
    return {
        "path": str(path),
        "md5": file_hash(path, "md5"),
        "keras_version": attrs.get("keras_version"),
        "backend": attrs.get("backend"),
        "n_layers": len(rows),
        "n_params": int(sum(r["n_params"] for r in rows)),
        "layers": rows,
    }


# --------------------------------------------------------------------------- matching


def _auto(name: str) -> tuple[str, int] | None:
    m = _AUTO_NAME.match(name)
    if not m:
        return None
    return m.group(1), int(m.group(2) or 0)


def _aligned(want_vars, found: Mapping[str, Any]) -> list[Any]:
    """The file's arrays of one layer in the model's variable order: by variable name when
    the names agree, else in file order (old files name variables differently)."""
    if set(want_vars) == set(found):
        return [found[v] for v in want_vars]
    return list(found.values())


def _shapes(want_vars, found: Mapping[str, Any]) -> list[tuple]:
    return [tuple(np.shape(a)) for a in _aligned(want_vars, found)]


def match_layers(
    expected: Mapping[str, Mapping[str, tuple]],
    found: Mapping[str, Mapping[str, Any]],
) -> dict[str, str]:
    """Pair each expected (model) layer with a layer in the file.

    ``expected``: ``{layer: {var: shape}}`` in model creation order; ``found``: the file's
    layers in file order. Returns ``{model_layer: file_layer}``.

    1. If every model layer is in the file under its own name with the same shapes: by name
       (extra layers in the file, e.g. a top on a no-top model, are ignored).
    2. Otherwise: explicitly named layers by name; Keras auto-named layers (``conv2d_17``,
       ``batch_normalization``...) per kind by creation order (the numeric suffix); anything
       left by order. Raises ``ValueError`` naming the layer when counts or shapes disagree.
    """
    if all(
        n in found and _shapes(e, found[n]) == [tuple(s) for s in e.values()]
        for n, e in expected.items()
    ):
        return {n: n for n in expected}

    mapping: dict[str, str] = {}
    for n in expected:
        if _auto(n) is None and n in found:
            mapping[n] = n
    used = set(mapping.values())
    rest_model = [n for n in expected if n not in mapping]
    rest_file = [n for n in found if n not in used]

    if rest_model and all(_auto(n) for n in rest_model) and all(_auto(n) for n in rest_file):
        groups_m: dict[str, list[str]] = {}
        groups_f: dict[str, list[tuple[int, str]]] = {}
        for n in rest_model:
            groups_m.setdefault(_auto(n)[0], []).append(n)
        for n in rest_file:
            base, k = _auto(n)
            groups_f.setdefault(base, []).append((k, n))
        if {b: len(v) for b, v in groups_m.items()} == {b: len(v) for b, v in groups_f.items()}:
            for base, ms in groups_m.items():
                for m, (_, f) in zip(ms, sorted(groups_f[base]), strict=True):
                    mapping[m] = f
            rest_model, rest_file = [], []

    if rest_model:
        if len(rest_model) != len(rest_file):
            raise ValueError(
                f"cannot match {len(rest_model)} model layers (first: {rest_model[0]!r}) to "
                f"{len(rest_file)} unmatched layers with weights in the file"
                + (f" (first: {rest_file[0]!r})" if rest_file else "")
                + "; is this the weight file of this architecture and configuration "
                "(alpha, include_top, classes)?"
            )
        mapping.update(zip(rest_model, rest_file, strict=True))

    for m, f in mapping.items():
        want = [tuple(s) for s in expected[m].values()]
        got = _shapes(expected[m], found[f])
        if want != got:
            where = f"layer {m!r}" if m == f else f"model layer {m!r} (file layer {f!r})"
            file_shapes = {v: tuple(np.shape(a)) for v, a in found[f].items()}
            raise ValueError(
                f"shape mismatch at {where}: the model expects {dict(expected[m])}, "
                f"the file has {file_shapes}; wrong architecture, alpha, include_top or "
                "number of classes?"
            )
    return {m: mapping[m] for m in expected}


def load(
    spec: ModelSpec | str,
    path: str | os.PathLike,
    *,
    alpha: float | None = None,
    input_size: int | None = None,
) -> dict[str, dict[str, np.ndarray]]:
    """Load a legacy Keras ``.h5`` weight file into params for a registry model.

    ``spec``: a :class:`~paper_repro.feedforward.models.ModelSpec` or a registry name (then ``alpha``
    applies). ``input_size`` only matters for VGG16 with its top (224 for ImageNet).
    Returns ``{keras_layer_name: {keras_var_name: float32 array}}`` in model order, with the
    model's variable names and Keras layouts. The file is untrusted input: its layers are
    matched to the model by shape before any array is read, so only arrays of the model's
    sizes are ever read (a small file declaring huge compressed arrays is refused at the
    shape check), and links to other files, external or virtual data and exotic filters are
    refused (``ValueError``).
    """
    if isinstance(spec, str):
        spec = models.get(spec, alpha)
    expected = spec.param_shapes(input_size)
    with _open_h5(path) as h5:
        found = _layers(h5)  # datasets, not read: shapes are matched first
        try:
            mapping = match_layers(expected, found)
        except ValueError as e:
            raise ValueError(f"{Path(path).name} into {spec.name}: {e}") from None
        params = {}
        for m, f in mapping.items():
            datasets = _aligned(expected[m], found[f])
            params[m] = {
                v: np.asarray(_read_dataset(ds, f"{Path(path).name}: {f}/{v}"), dtype=np.float32)
                for v, ds in zip(expected[m], datasets, strict=True)
            }
    return params


# --------------------------------------------------------------------------- writing


def save_h5(
    params: Mapping[str, Mapping[str, Any]],
    path: str | os.PathLike,
    *,
    suffix: str = ":0",
    keras_version: str = "2.1.4",
    backend: str = "tensorflow",
) -> Path:
    """Write ``{layer: {var: array}}`` as a legacy Keras 2 ``.h5`` weight file.

    Weight names are ``<layer>/<var><suffix>`` (``suffix=""`` gives the Keras 3 spelling).
    Keras loads the result with ``model.load_weights(path)`` (a ``.h5`` name).
    """
    h5py = _h5py()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = np.array([n.encode("utf8") for n in params])
        f.attrs["keras_version"] = keras_version.encode("utf8")
        f.attrs["backend"] = backend.encode("utf8")
        for layer, d in params.items():
            g = f.create_group(layer)
            names = [f"{layer}/{v}{suffix}" for v in d]
            g.attrs["weight_names"] = np.array([n.encode("utf8") for n in names])
            for n, a in zip(names, d.values(), strict=True):
                g.create_dataset(n, data=np.asarray(a))
    return path


# --------------------------------------------------------------------------- download


def _check_hash(path: Path, expected: str | None) -> str | None:
    """Raise if ``path`` does not have the ``expected`` md5/sha256; return the md5."""
    md5 = file_hash(path, "md5")
    if expected is None:
        return md5
    algo = {32: "md5", 64: "sha256"}.get(len(expected))
    if algo is None:
        raise ValueError(f"checksum {expected!r} is neither an md5 nor a sha256 hex digest")
    got = md5 if algo == "md5" else file_hash(path, "sha256")
    if got != expected.lower():
        raise ValueError(
            f"{path} has {algo} {got}, expected {expected}: the file is corrupt or not the "
            "official one; delete it and fetch again"
        )
    return md5


def fetch(
    name: str | ModelSpec,
    cache_dir: str | os.PathLike | None = None,
    *,
    alpha: float | None = None,
    include_top: bool = True,
    url: str | None = None,
    expected_hash: str | None = "official",
    timeout: float = DEFAULT_TIMEOUT_S,
    opener: Callable[..., Any] | None = None,
    use_shared_data: bool = True,
) -> Path:
    """The path of the official weight file for a model, downloading it if needed.

    Looks in the cache folder (:func:`cache_folder`), then in ``<shared data>/keras-weights/``;
    otherwise downloads ``url`` (default: the official Keras-applications URL) with
    ``opener`` (default ``urllib.request.urlopen``, called as ``opener(url, timeout=...)``)
    to ``<cache>/<file name>`` and verifies ``expected_hash`` ("official": the checksum
    Keras publishes, ``None``: no check). Raises :class:`WeightsUnavailableError` (offline
    or not found) saying which file to download from where and where to put it, and
    ``ValueError`` on a checksum mismatch.
    """
    spec = name if isinstance(name, ModelSpec) else models.get(name, alpha, include_top=include_top)
    wf = spec.weights
    url = url or wf.url
    want = wf.hash if expected_hash == "official" else expected_hash
    folder = cache_folder(cache_dir)
    dest = folder / wf.file_name

    if dest.is_file():
        _check_hash(dest, want)
        return dest
    shared = shared_data_dir()
    if use_shared_data and shared is not None:
        candidate = shared / "keras-weights" / wf.file_name
        if candidate.is_file():
            _check_hash(candidate, want)
            return candidate

    folder.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    opener = opener or urllib.request.urlopen
    try:
        with opener(url, timeout=timeout) as response, open(part, "wb") as out:
            shutil.copyfileobj(response, out, length=1 << 20)
    except (urllib.error.URLError, OSError, TimeoutError, ValueError) as e:
        part.unlink(missing_ok=True)
        check = f" ({wf.hash_algorithm} {want})" if want else ""
        raise WeightsUnavailableError(
            f"could not download {wf.file_name} ({type(e).__name__}: {e}). "
            f"Download it yourself from {url}{check} and put it at {dest} "
            f"(e.g. curl -L -o {dest} {url}), or pass the folder that holds it as the cache "
            "folder"
        ) from None
    try:
        _check_hash(part, want)
    except ValueError:
        part.unlink(missing_ok=True)
        raise
    part.replace(dest)
    return dest


def load_pretrained(
    name: str,
    alpha: float | None = None,
    *,
    include_top: bool = True,
    cache_dir: str | os.PathLike | None = None,
) -> tuple[ModelSpec, dict[str, dict[str, np.ndarray]]]:
    """``(spec, params)`` with the official ImageNet weights (:func:`fetch` then :func:`load`)."""
    spec = models.get(name, alpha, include_top=include_top)
    return spec, load(spec, fetch(spec, cache_dir))
