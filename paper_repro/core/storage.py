"""Bit-packed storage of quantized models: the "6x smaller" claim made concrete (SCIENCE.md 1).

A quantized weight is an integer code (an index into a small codebook of levels), so a
``b``-bit quantizer needs ``b`` bits per weight plus the codebook, against 32 bits for a
float32 weight: ``32 / 5 = 6.4x`` at 5 bits, before the codebooks and the parameters that
stay in float (biases, batch norm). This module writes such files and accounts for every
byte of them.

Bit packing (:func:`pack_codes`, :func:`unpack_codes`)
    ``n`` codes of ``b`` bits (``1 <= b <= 8``) become ``ceil(n b / 8)`` bytes. Code ``i``
    occupies stream bits ``i b .. i b + b - 1``, least significant bit first, and stream bit
    ``k`` is bit ``k % 8`` (LSB = 0) of byte ``k // 8``; the unused high bits of the last byte
    are zero. A scheme with ``2^b - 1`` levels (a zero level) still stores ``b`` bits a code.

Container (``.prq`` files, :func:`save_packed` / :func:`load_packed`), little-endian::

    offset 0       8 bytes  magic b"PRQPACK1"
    offset 8       4 bytes  uint32 H, the header length
    offset 12      H bytes  header, UTF-8 JSON (compact)
    offset 12 + H           data: the blobs back to back (no padding, no compression);
                            every blob's offset (from the data start) and length is in the header

The header is ``{"format": "paper-repro-packed", "format_version": 1, "package_version",
"meta": {...}, "leaves": [...]}``. ``meta`` is free-form JSON from the caller (the ``pack``
command records model, alpha, weight file and md5, scheme, fit, bits, granularity and the
:func:`~paper_repro.core.quantize.quantize_tree` options). ``leaves`` lists every array of the
parameter tree (a nested dict, e.g. ``{layer: {var: array}}``) in the tree's order:

- quantized: ``{"keys": [...], "kind": "quantized", "shape", "dtype", "scheme", "bits",
  "n_levels", "granularity", "channel_axis", "r", "codebook": {"form": "params"|"half"|"full",
  "shape", "offset", "nbytes"}, "codes": {"bits", "offset", "nbytes"}}``. The codebook is
  float32 ``levels: (L,)`` per tensor or ``(C, L)`` per channel, stored in the smallest form
  that rebuilds it bit for bit: ``"params"`` keeps each codebook's top level (and base ``a``
  for exponential levels), ``(n_books, 1 or 2)``, the levels being
  :func:`paper_repro.core.quantize.canonical_levels` (exact float32 arithmetic); ``"half"`` keeps
  the positive levels ``p: (..., L // 2)``, the full set being ``-p[::-1], (0 if L is odd),
  p`` (Lloyd-Max); ``"full"`` keeps every level. Per-channel codes follow the array's
  own (C-order) layout; ``channel_axis`` says which axis indexes the codebook rows.
- kept in float: ``{"keys", "kind": "array", "shape", "dtype", "offset", "nbytes"}``, the raw
  C-order bytes of the array as it was (biases, batch-norm statistics, unselected leaves).

Decoding is ``levels[codes]`` (per channel: row ``c`` of the codebook for channel ``c``) cast
to the stored dtype, which is bit for bit what :func:`~paper_repro.core.quantize.quantize_tree`
returned. :func:`load_packed` is the loader the evaluation code uses::

    params, meta = storage.load_packed("mobilenet_exp5.prq")   # {layer: {var: float32 array}}

Size accounting (:func:`sizes`): ``float_bytes`` = 4 bytes x every parameter (the float32
model), ``packed_bytes`` = the file size, split into ``codes_bytes``, ``codebook_bytes``,
``float_kept_bytes`` and ``header_bytes`` (magic + length + JSON), which add up to it exactly;
``ratio = float_bytes / packed_bytes``. A general-purpose compressor applied afterwards
(:func:`zlib_bytes`) is reported separately and never mixed into ``ratio``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import struct
import tempfile
import time
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from paper_repro import __version__

MAGIC = b"PRQPACK1"
FORMAT = "paper-repro-packed"
FORMAT_VERSION = 2
SUFFIX = ".prq"
_PREFIX = len(MAGIC) + 4
FLOAT_BYTES_PER_PARAM = 4  # the float32 reference model


# --- Bit packing --------------------------------------------------------------------------------


def _check_bits(bits) -> int:
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 1 <= bits <= 8:
        raise ValueError(f"bits must be an integer in 1..8, got {bits!r}")
    return int(bits)


def packed_size(n: int, bits: int) -> int:
    """Bytes holding ``n`` codes of ``bits`` bits: ``ceil(n * bits / 8)``."""
    return (int(n) * _check_bits(bits) + 7) // 8


def pack_codes(codes, bits: int) -> np.ndarray:
    """Pack integer codes into a byte stream, ``bits`` bits each (layout: module docstring).

    Args:
      codes: integers in ``0 .. 2^bits - 1``, any shape (flattened in C order).
      bits: bits per code, 1..8.
    Returns:
      ``(ceil(n * bits / 8),) uint8``.
    """
    bits = _check_bits(bits)
    c = np.asarray(codes)
    if c.dtype.kind not in "ui" and c.size:
        raise ValueError(f"codes must be integers, got dtype {c.dtype}")
    c = c.reshape(-1)
    if c.size and (c.min() < 0 or c.max() >= 1 << bits):
        raise ValueError(f"codes must lie in 0..{(1 << bits) - 1} to fit {bits} bits; "
                         f"got {c.min()}..{c.max()}")
    c = c.astype(np.uint8)
    if bits == 8:
        return c.copy()
    # Eight codes make exactly `bits` bytes: OR them into one little-endian uint64 per group
    # (8 vectorized shifts), keep its low `bits` bytes, drop the padding of the last group.
    n = c.size
    g = np.zeros(((n + 7) // 8) * 8, np.uint8)
    g[:n] = c
    g = g.reshape(-1, 8)
    v = np.zeros(g.shape[0], np.uint64)
    for j in range(8):
        v |= g[:, j].astype(np.uint64) << np.uint64(j * bits)
    out = v.astype("<u8").view(np.uint8).reshape(-1, 8)[:, :bits].reshape(-1)
    return out[: packed_size(n, bits)].copy()


def unpack_codes(buf, bits: int, n: int) -> np.ndarray:
    """Inverse of :func:`pack_codes`: ``buf: (ceil(n * bits / 8),) uint8`` -> ``(n,) uint8``."""
    bits = _check_bits(bits)
    b = np.frombuffer(buf, np.uint8) if isinstance(buf, (bytes, bytearray, memoryview)) \
        else np.asarray(buf, np.uint8).reshape(-1)
    if b.size != packed_size(n, bits):
        raise ValueError(f"{n} codes of {bits} bits need {packed_size(n, bits)} bytes, "
                         f"got {b.size}: wrong n or bits, or a truncated file")
    if bits == 8:
        return b.copy()
    n = int(n)
    groups = (n + 7) // 8
    raw = np.zeros(groups * bits, np.uint8)
    raw[: b.size] = b
    g = np.zeros((groups, 8), np.uint8)
    g[:, :bits] = raw.reshape(groups, bits)
    v = g.view("<u8").reshape(groups)
    mask = np.uint64((1 << bits) - 1)
    out = np.empty((groups, 8), np.uint8)
    for j in range(8):
        out[:, j] = (v >> np.uint64(j * bits)) & mask
    return out.reshape(-1)[:n].copy()


def code_bits(n_levels: int) -> int:
    """Bits a code of an ``n_levels`` codebook needs: ``ceil(log2 L)``, at least 1."""
    return max(1, (int(n_levels) - 1).bit_length())


# --- Trees --------------------------------------------------------------------------------------


def _walk(tree, prefix=()) -> list[tuple[tuple[str, ...], Any]]:
    """``[(keys, leaf)]`` of a nested dict in insertion order."""
    if not isinstance(tree, Mapping):
        raise TypeError(
            f"packed storage holds nested dicts of arrays (e.g. {{layer: {{var: array}}}}); "
            f"found a {type(tree).__name__} at {'/'.join(prefix) or 'the root'}"
        )
    out = []
    for k, v in tree.items():
        keys = (*prefix, str(k))
        out.extend(_walk(v, keys) if isinstance(v, Mapping) else [(keys, v)])
    return out


def flatten(tree) -> dict[str, np.ndarray]:
    """``{"a/b/kernel": array}`` of a nested dict, in insertion order."""
    return {"/".join(k): np.asarray(v) for k, v in _walk(tree)}


def _build(items: Sequence[tuple[Sequence[str], Any]]) -> dict:
    root: dict = {}
    for keys, leaf in items:
        d = root
        for k in keys[:-1]:
            d = d.setdefault(k, {})
        d[keys[-1]] = leaf
    return root


# --- Codebooks ----------------------------------------------------------------------------------


def _full_from_half(p: np.ndarray, n_levels: int) -> np.ndarray:
    parts = [-p[..., ::-1]]
    if n_levels % 2:
        parts.append(np.zeros(p.shape[:-1] + (1,), p.dtype))
    return np.concatenate([*parts, p], axis=-1)


def _params_of(q) -> tuple[np.ndarray, np.ndarray]:
    """``(top, a)`` per codebook, ``(n_books,)`` float32, as the quantizer built its levels."""
    f32 = np.float32
    top = (np.asarray(q.params["c"], f32) * np.asarray(q.params["gain"], f32)).reshape(-1)
    return top, np.asarray(q.params["a"], f32).reshape(-1)


def _from_params(book: np.ndarray, scheme: str, bits: int, n_levels: int) -> np.ndarray:
    from paper_repro.core import quantize as Q

    a = book[:, 1] if book.shape[1] > 1 else np.float32(0.5)
    p = Q.canonical_levels(scheme, bits, book[:, 0], a, xp=np)
    return _full_from_half(p, n_levels)


def _codebook(levels: np.ndarray, *, symmetric: bool, q=None) -> tuple[str, np.ndarray]:
    """The smallest exact stored form of a codebook ``levels: (L,)`` or ``(C, L)``.

    ``"params"``: ``(n_books, 1)`` top level, or ``(n_books, 2)`` top level and base for
    exponential levels, when :func:`paper_repro.core.quantize.canonical_levels` rebuilds the levels
    bit for bit (every scheme but Lloyd-Max); ``"half"``: the positive levels of a symmetric
    codebook; ``"full"``: every level.
    """
    L = levels.shape[-1]
    if (q is not None and q.scheme != "lloyd_max"
            and {"c", "a", "gain"} <= set(getattr(q, "params", None) or {})):
        top, a = _params_of(q)
        two = q.scheme in ("exponential", "exponential_nozero")
        book = np.stack([top, a], -1) if two else top[:, None]
        rebuilt = _from_params(book, q.scheme, q.bits, L).reshape(levels.shape)
        if np.array_equal(rebuilt.view(np.uint32), levels.view(np.uint32)):
            return "params", np.ascontiguousarray(book)
    if symmetric and L >= 2:
        p = np.ascontiguousarray(levels[..., L - L // 2:])
        if np.array_equal(_full_from_half(p, L).view(np.uint32), levels.view(np.uint32)):
            return "half", p
    return "full", levels


def codebook_nbytes(q) -> int:
    """Bytes the packed format spends on the codebook(s) of a fitted quantizer ``q``."""
    levels = np.ascontiguousarray(np.asarray(q.levels, np.float32))
    return int(_codebook(levels, symmetric=True, q=q)[1].nbytes)


# --- Packing ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PackedModel:
    """A packed model in memory: the JSON ``header`` and the ``data`` section (bytes).

    ``to_bytes()`` is exactly the file :func:`save_packed` writes.
    """

    header: dict
    data: bytes

    def header_bytes(self) -> bytes:
        return json.dumps(self.header, separators=(",", ":")).encode("utf8")

    def to_bytes(self) -> bytes:
        h = self.header_bytes()
        return MAGIC + struct.pack("<I", len(h)) + h + self.data

    @classmethod
    def from_bytes(cls, blob: bytes) -> PackedModel:
        blob = bytes(blob)
        if len(blob) < _PREFIX or blob[: len(MAGIC)] != MAGIC:
            raise ValueError("not a packed paper-repro model (bad magic); write one with "
                             "`paper-repro pack` or storage.save_packed")
        (n,) = struct.unpack("<I", blob[len(MAGIC):_PREFIX])
        if len(blob) < _PREFIX + n:
            raise ValueError("truncated packed model: the header runs past the end of the file")
        header = json.loads(blob[_PREFIX:_PREFIX + n].decode("utf8"))
        if header.get("format") != FORMAT:
            raise ValueError(f"unknown container format {header.get('format')!r}")
        if header.get("format_version", 0) > FORMAT_VERSION:
            raise ValueError(f"format version {header['format_version']} is newer than this "
                             f"package reads ({FORMAT_VERSION}); upgrade paper-repro")
        return cls(header=header, data=blob[_PREFIX + n:])


def pack_tree(params, report: Sequence[Mapping], *, meta: Mapping | None = None,
              symmetric_codebook: bool = True) -> PackedModel:
    """Pack a quantized parameter tree.

    Args:
      params: the nested dict of arrays that was quantized (the original or the quantized
        tree: only its non-quantized leaves are read, and the shapes of the others).
      report: the report of :func:`paper_repro.core.quantize.quantize_tree`; each row's ``codes``
        and ``quantizer`` are stored for the leaf at its ``path``.
      meta: JSON-able description stored in the header (model, scheme, options, ...).
      symmetric_codebook: store only the positive half of a codebook where that is exact.
    Returns:
      A :class:`PackedModel`; :func:`unpack_tree` gives back the quantized tree bit for bit.
    """
    items = _walk(params)
    paths = ["/".join(k) for k, _ in items]
    if len(set(paths)) != len(paths):
        raise ValueError("two leaves share a '/'-joined path (a key contains '/'); rename them")
    rows = {}
    for row in report:
        if "codes" not in row or "quantizer" not in row:
            raise ValueError("report rows need 'codes' and 'quantizer': pass quantize_tree's "
                             "report as returned, not its summary()")
        rows[row["path"]] = row
    missing = sorted(set(rows) - set(paths))
    if missing:
        raise ValueError(f"report paths not in params: {missing[:3]}; pack the tree that "
                         "was quantized")
    chunks: list[bytes] = []
    offset = 0

    def put(b: bytes) -> dict:
        nonlocal offset
        chunks.append(b)
        loc = {"offset": offset, "nbytes": len(b)}
        offset += len(b)
        return loc

    leaves = []
    for (keys, leaf), path in zip(items, paths, strict=True):
        arr = np.asarray(leaf)
        if path not in rows:
            arr = np.ascontiguousarray(arr)
            if arr.dtype.kind not in "biufc":
                raise ValueError(f"leaf {path!r} has dtype {arr.dtype}; only numeric arrays "
                                 "can be stored")
            leaves.append({"keys": list(keys), "kind": "array", "shape": list(arr.shape),
                           "dtype": arr.dtype.str, **put(arr.tobytes())})
            continue
        row = rows[path]
        q = row["quantizer"]
        codes = np.asarray(row["codes"])
        if codes.shape != arr.shape:
            raise ValueError(f"codes of {path!r} have shape {codes.shape}, the leaf {arr.shape}")
        levels = np.ascontiguousarray(np.asarray(q.levels, np.float32))
        L = levels.shape[-1]
        if q.granularity == "channel":
            ax = q.channel_axis % arr.ndim
            if levels.shape != (arr.shape[ax], L):
                raise ValueError(f"codebook of {path!r} is {levels.shape}, expected "
                                 f"({arr.shape[ax]}, {L}) for channel axis {ax}")
        else:
            ax = None
        b = code_bits(L)
        if b > 8:
            raise ValueError(f"{path!r} has {L} levels; packed storage holds at most 256")
        form, book = _codebook(levels, symmetric=symmetric_codebook,
                               q=q if symmetric_codebook else None)
        dtype = np.dtype(jax.dtypes.canonicalize_dtype(arr.dtype))  # quantize_tree's dtype
        leaves.append({
            "keys": list(keys), "kind": "quantized", "shape": list(arr.shape),
            "dtype": dtype.str, "scheme": q.scheme, "bits": int(q.bits), "n_levels": int(L),
            "granularity": q.granularity, "channel_axis": ax,
            "r": float(row["r"]) if "r" in row else None,
            "codebook": {"form": form, "shape": list(book.shape), **put(book.tobytes())},
            "codes": {"bits": b, **put(pack_codes(codes, b).tobytes())},
        })
    header = {"format": FORMAT, "format_version": FORMAT_VERSION,
              "package_version": __version__, "meta": dict(meta or {}), "leaves": leaves}
    return PackedModel(header=header, data=b"".join(chunks))


def _blob(data: bytes, loc: Mapping) -> bytes:
    o, n = int(loc["offset"]), int(loc["nbytes"])
    if o + n > len(data):
        raise ValueError("truncated packed model: a blob runs past the end of the file")
    return data[o:o + n]


def decode_leaf(packed: PackedModel, entry: Mapping) -> np.ndarray:
    """The array of one header ``entry`` (dequantized for quantized leaves)."""
    shape = tuple(entry["shape"])
    dtype = np.dtype(entry["dtype"])
    if entry["kind"] == "array":
        return np.frombuffer(_blob(packed.data, entry), dtype).reshape(shape).copy()
    cb = entry["codebook"]
    book = np.frombuffer(_blob(packed.data, cb), np.float32).reshape(cb["shape"])
    L = int(entry["n_levels"])
    if cb["form"] == "params":
        levels = _from_params(book, entry["scheme"], int(entry["bits"]), L)
        levels = levels[0] if entry["granularity"] != "channel" else levels
    else:
        levels = _full_from_half(book, L) if cb["form"] == "half" else book
    n = math.prod(shape)
    codes = unpack_codes(_blob(packed.data, entry["codes"]), entry["codes"]["bits"], n)
    if n and codes.max() >= L:
        raise ValueError(f"corrupt codes at {'/'.join(entry['keys'])}: {codes.max()} >= {L}")
    codes = codes.reshape(shape).astype(np.intp)
    if entry["granularity"] == "channel":
        ax = int(entry["channel_axis"])
        moved = np.moveaxis(codes, ax, 0)
        rows = moved.reshape(moved.shape[0], -1)
        w = np.take_along_axis(levels, rows, axis=1).reshape(moved.shape)
        w = np.moveaxis(w, 0, ax)
    else:
        w = levels[codes]
    return np.ascontiguousarray(w.astype(dtype))


def unpack_tree(packed: PackedModel) -> dict:
    """The parameter tree (nested dict of numpy arrays) with quantized leaves dequantized."""
    return _build([(e["keys"], decode_leaf(packed, e)) for e in packed.header["leaves"]])


def _meta(packed: PackedModel) -> dict:
    h = packed.header
    return {**h["meta"], "format_version": h["format_version"],
            "package_version": h["package_version"]}


# --- Files --------------------------------------------------------------------------------------


def save_packed(path: str | os.PathLike, params, report: Sequence[Mapping] | None = None, *,
                meta: Mapping | None = None, symmetric_codebook: bool = True) -> dict:
    """Write a packed model file and return its :func:`sizes` (``packed_bytes`` = file size).

    ``params`` is a :class:`PackedModel`, or a tree packed with ``report`` (see
    :func:`pack_tree`). The file is written atomically.
    """
    packed = params if isinstance(params, PackedModel) else pack_tree(
        params, report if report is not None else [], meta=meta,
        symmetric_codebook=symmetric_codebook)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(packed.to_bytes())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    out = sizes(packed)
    on_disk = path.stat().st_size
    if on_disk != out["packed_bytes"]:  # the accounting must describe the real file
        raise RuntimeError(f"{path} has {on_disk} bytes, the accounting says "
                           f"{out['packed_bytes']}")
    return out


def is_packed(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a packed model (starts with the magic bytes)."""
    try:
        with open(path, "rb") as f:
            return f.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


def read_packed(path: str | os.PathLike) -> PackedModel:
    """Read a packed model file without decoding it (for inspection)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no packed model at {path}")
    return PackedModel.from_bytes(path.read_bytes())


def load_packed(path: str | os.PathLike) -> tuple[dict, dict]:
    """Load a packed model: ``(params, meta)``.

    ``params``: ``{layer: {var: array}}`` (the tree that was packed), quantized leaves
    dequantized bit for bit as :func:`~paper_repro.core.quantize.quantize_tree` returned them, the
    others exactly as stored; ready for ``models.apply(spec, params, x)``. ``meta``: the header's
    ``meta`` (model, alpha, scheme, ...) plus ``format_version`` and ``package_version``.
    """
    packed = read_packed(path)
    return unpack_tree(packed), _meta(packed)


# --- Accounting ---------------------------------------------------------------------------------


def sizes(packed: PackedModel) -> dict:
    """Byte accounting of a packed model (all ints except the ratios).

    ``n_params``, ``n_quantized``, ``float_bytes`` (4 x n_params), ``codes_bytes``,
    ``codebook_bytes``, ``codebooks`` (count: 1 per tensor, C per channel-wise leaf),
    ``float_kept_bytes``, ``header_bytes`` (magic + length + JSON),
    ``packed_bytes`` (their sum = the file size), ``ratio`` (float / packed),
    ``bits_per_param`` (8 packed_bytes / n_params), ``ideal_ratio`` (32 / mean code bits of the
    quantized weights: what the codes alone would give if everything were quantized).
    """
    codes = book = kept = n = nq = code_bits_total = rows = 0
    for e in packed.header["leaves"]:
        size = math.prod(e["shape"])
        n += size
        if e["kind"] == "array":
            kept += e["nbytes"]
        else:
            nq += size
            codes += e["codes"]["nbytes"]
            book += e["codebook"]["nbytes"]
            rows += math.prod(e["codebook"]["shape"][:-1])
            code_bits_total += size * e["codes"]["bits"]
    head = _PREFIX + len(packed.header_bytes())
    total = codes + book + kept + head
    assert total == len(packed.to_bytes())
    fb = FLOAT_BYTES_PER_PARAM * n
    return {
        "n_params": n, "n_quantized": nq, "float_bytes": fb, "packed_bytes": total,
        "codes_bytes": codes, "codebook_bytes": book, "codebooks": rows, "float_kept_bytes": kept,
        "header_bytes": head, "ratio": fb / total if total else float("nan"),
        "bits_per_param": 8 * total / n if n else float("nan"),
        "ideal_ratio": 32 * nq / code_bits_total if code_bits_total else float("nan"),
    }


def zlib_bytes(packed: PackedModel, *, level: int = 9) -> int:
    """Size after zlib on the whole file (reported separately; not part of the format)."""
    return len(zlib.compress(packed.to_bytes(), level))


def code_entropy_bits(packed: PackedModel) -> float:
    """Mean empirical entropy of the codes, bits per quantized weight (an entropy coder's
    bound, per leaf histogram), against the fixed ``b`` bits the container spends."""
    total = nbits = 0.0
    for e in packed.header["leaves"]:
        if e["kind"] != "quantized":
            continue
        n = math.prod(e["shape"])
        c = unpack_codes(_blob(packed.data, e["codes"]), e["codes"]["bits"], n)
        p = np.bincount(c, minlength=e["n_levels"]) / max(n, 1)
        p = p[p > 0]
        nbits += n * float(-(p * np.log2(p)).sum())
        total += n
    return nbits / total if total else float("nan")


def describe(packed: PackedModel) -> dict:
    """Header meta, sizes and a per-leaf summary (no arrays): what ``paper-repro unpack`` prints."""
    rows = []
    for e in packed.header["leaves"]:
        row = {"path": "/".join(e["keys"]), "kind": e["kind"], "shape": e["shape"],
               "dtype": np.dtype(e["dtype"]).name}
        if e["kind"] == "quantized":
            row.update(scheme=e["scheme"], bits=e["bits"], n_levels=e["n_levels"],
                       granularity=e["granularity"], channel_axis=e["channel_axis"], r=e["r"],
                       codebook=e["codebook"]["form"], codes_bytes=e["codes"]["nbytes"],
                       codebook_bytes=e["codebook"]["nbytes"])
        else:
            row["bytes"] = e["nbytes"]
        rows.append(row)
    return {"meta": _meta(packed), "sizes": sizes(packed), "leaves": rows}


def trees_equal(a, b) -> bool:
    """Whether two nested dicts have the same paths and bitwise-equal arrays (dtype too)."""
    ia, ib = flatten(a), flatten(b)
    return ia.keys() == ib.keys() and all(
        ia[p].dtype == ib[p].dtype and ia[p].shape == ib[p].shape
        and ia[p].tobytes() == ib[p].tobytes() for p in ia)


# --- Measured: compression of a real model ------------------------------------------------------


def weights_source(model: str = "mobilenet", alpha: float | None = 0.75) -> dict:
    """Where :func:`model_params` takes the weights from: the official file in the shared data
    folder (name and md5), else a synthetic Laplace tree of the model's shapes (seed 0)."""
    from paper_repro.feedforward import models
    from paper_repro.feedforward import weights as W

    spec = models.get(model, alpha)
    shared = W.shared_data_dir()
    f = shared / "keras-weights" / spec.weights.file_name if shared is not None else None
    if f is not None and f.is_file():
        return {"kind": "keras", "file": f.name, "md5": W.file_hash(f, "md5")}
    return {"kind": "synthetic-laplace", "seed": 0,
            "note": f"{spec.weights.file_name} not found (set PAPER_REPRO_SHARED_DATA to the "
                    "folder holding keras-weights/); using Laplace weights of the same shapes"}


def synthetic_params(model: str = "mobilenet", alpha: float | None = 0.75, *,
                     seed: int = 0) -> dict:
    """A ``{layer: {var: float32 array}}`` tree with the model's shapes: Laplace kernels
    (std ``1 / sqrt(fan_in)``), identity batch norm, zero biases. Deterministic in ``seed``."""
    from paper_repro.feedforward import models

    shapes = models.get(model, alpha).param_shapes()
    rng = np.random.default_rng(seed)
    out: dict = {}
    for layer, d in shapes.items():
        out[layer] = {}
        for var, shape in d.items():
            if "kernel" in var:
                fan_in = max(1, math.prod(shape[:-1]) if "depthwise" not in var
                             else math.prod(shape[:2]))
                w = rng.laplace(scale=1.0 / math.sqrt(2 * fan_in), size=shape)
                out[layer][var] = w.astype(np.float32)
            elif var in ("gamma", "moving_variance"):
                out[layer][var] = np.ones(shape, np.float32)
            else:
                out[layer][var] = np.zeros(shape, np.float32)
    return out


def model_params(model: str = "mobilenet", alpha: float | None = 0.75,
                 source: Mapping | None = None) -> dict:
    """The params :func:`weights_source` points to (real weights or the synthetic tree)."""
    from paper_repro.feedforward import models
    from paper_repro.feedforward import weights as W

    source = source or weights_source(model, alpha)
    if source["kind"] == "keras":
        spec = models.get(model, alpha)
        return W.load(spec, W.shared_data_dir() / "keras-weights" / source["file"])
    return synthetic_params(model, alpha, seed=int(source.get("seed", 0)))


def default_config(smoke: bool = False, *, model: str = "mobilenet",
                   alpha: float | None = 0.75) -> dict:
    """The compression sweep: bits x scheme x granularity on one model's kernels."""
    return {
        "model": model, "alpha": alpha, "source": weights_source(model, alpha),
        "schemes": ["exponential"] if smoke else ["linear", "exponential"],
        "bits": [5] if smoke else list(range(2, 9)),
        "granularities": ["tensor", "channel"],
        "fit": "corr", "select": r".*kernel", "method": "histogram",
        "symmetric_codebook": True,
    }


def storage_rows(config: Mapping, params=None) -> list[dict]:
    """Pack the model at every (scheme, granularity, bits) of ``config``; one row each.

    Every file is written to a temporary folder (``packed_bytes`` is its size on disk), read
    back and checked bit for bit against :func:`~paper_repro.core.quantize.quantize_tree`'s output
    (``exact``). Rows: the :func:`sizes` fields plus scheme, granularity, bits, ``mean_r``
    (size-weighted correlation of the quantized kernels), ``code_entropy_bits``,
    ``zlib_bytes`` / ``zlib_ratio`` (compression on top, reported apart),
    ``ratio_parametric_codebook`` (an estimate, not a file: each codebook stored as its three
    float32 parameters ``c, a, gain`` instead of its levels), seconds.
    """
    from paper_repro.core import quantize

    if params is None:
        params = model_params(config["model"], config["alpha"], config.get("source"))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for scheme in config["schemes"]:
            for gran in config["granularities"]:
                for bits in config["bits"]:
                    t0 = time.perf_counter()
                    new, report = quantize.quantize_tree(
                        params, select=config["select"], scheme=scheme, bits=int(bits),
                        fit=config["fit"], granularity=gran, method=config["method"])
                    meta = {k: config[k] for k in ("model", "alpha", "fit", "select", "method")}
                    meta.update(scheme=scheme, granularity=gran, bits=int(bits))
                    packed = pack_tree(params, report, meta=meta,
                                       symmetric_codebook=config["symmetric_codebook"])
                    f = Path(tmp) / f"{scheme}_{gran}_{bits}{SUFFIX}"
                    s = save_packed(f, packed)
                    loaded, _ = load_packed(f)
                    exact = trees_equal(loaded, {k: {v: np.asarray(a) for v, a in d.items()}
                                                 for k, d in new.items()})
                    n_q = sum(r["size"] for r in report)
                    z = zlib_bytes(packed)
                    rows.append({
                        "scheme": scheme, "granularity": gran, "bits": int(bits), **s,
                        "disk_bytes": f.stat().st_size, "exact": bool(exact),
                        "mean_r": sum(r["r"] * r["size"] for r in report) / n_q,
                        "code_entropy_bits": code_entropy_bits(packed),
                        "zlib_bytes": z, "zlib_ratio": s["float_bytes"] / z,
                        "ratio_parametric_codebook": s["float_bytes"] / (
                            s["packed_bytes"] - s["codebook_bytes"] + 12 * s["codebooks"]),
                        "seconds": round(time.perf_counter() - t0, 2),
                    })
                    f.unlink()
    return rows


def rows_to_columns(rows: Sequence[Mapping]) -> dict[str, np.ndarray]:
    """Rows (dicts with the same keys) -> ``{column: array}`` (for ``results.run_or_load``)."""
    return {k: np.asarray([r[k] for r in rows]) for k in rows[0]}


def columns_to_rows(data: Mapping[str, np.ndarray]) -> list[dict]:
    """Inverse of :func:`rows_to_columns` with plain Python scalars."""
    keys = list(data)
    n = len(data[keys[0]])
    return [{k: np.asarray(data[k])[i].item() for k in keys} for i in range(n)]


def ratio_table(rows: Sequence[Mapping]) -> list[dict]:
    """One row per bits: ``ratio`` per ``scheme/granularity`` and the ideal ``32 / bits``."""
    out: dict[int, dict] = {}
    for r in rows:
        d = out.setdefault(int(r["bits"]), {"bits": int(r["bits"]),
                                            "ideal 32/b": round(32 / int(r["bits"]), 3)})
        d[f"{r['scheme']}/{r['granularity']}"] = round(float(r["ratio"]), 3)
    return [out[b] for b in sorted(out)]
