"""Bit-packed storage of quantized models: the "6x smaller" claim made concrete.

A quantized weight is an integer code (an index into a small codebook of levels), so a
``b``-bit quantizer needs ``b`` bits per weight plus the codebook, against 32 bits for a
float32 weight: ``32 / 5 = 6.4x`` at 5 bits, before the codebooks and the parameters that
stay in float (biases, batch norm). This module writes such files, checks them on every
load, and accounts for every byte of them.

Bit packing (:func:`pack_codes`, :func:`unpack_codes`)
    ``n`` codes of ``b`` bits (``1 <= b <= 8``) become ``ceil(n b / 8)`` bytes. Code ``i``
    occupies stream bits ``i b .. i b + b - 1``, least significant bit first, and stream bit
    ``k`` is bit ``k % 8`` (LSB = 0) of byte ``k // 8``; the unused high bits of the last byte
    are zero. A scheme with ``2^b - 1`` levels (a zero level) still stores ``b`` bits a code.
    With entropy coding (``coding="ans"``) a layer's codes are instead an ANS stream under a
    stored categorical model of their histogram (:mod:`paper_repro.core.entropy`), wherever
    model plus stream are smaller than the bit-packed codes (small layers, whose model costs
    more than it saves, stay bit-packed; each leaf records its coding).

Container (``.prq`` files, :func:`save_packed` / :func:`load_packed`), format 3, little-endian::

    offset 0          8 bytes  magic b"PRQPACK3"
    offset 8          4 bytes  uint32 H, the header length (2 <= H <= 64 MiB)
    offset 12         H bytes  header, UTF-8 JSON (compact; format 4: zlib-compressed)
    offset 12 + H     D bytes  data: the blobs back to back, in header order (no padding)
    offset 12 + H + D 32 bytes SHA-256 of every byte before it (magic, length, header, data)

Every load (:meth:`PackedModel.from_bytes`) checks, before using anything: the magic, the
header length, the checksum, the header's inflation (format 4), then every header field (all keys present with the right types,
known dtypes and schemes, ``bits`` within the scheme's range, ``n_levels`` equal to the
scheme's level count, channel axes within the rank, codebook and code sizes equal to what the
shapes imply, blobs tiling the data section exactly: offsets inside the file and never
overlapping); decoding then checks the codes against the codebook and that an entropy-coded
stream is consumed exactly. Any failure is a one-line ``ValueError`` naming the file and the
problem. Files of formats 1 and 2 (magic ``b"PRQPACK1"``, no checksum) are refused unless the
caller passes ``allow_unverified=True``, which loads them after the same structural checks
(their payload cannot be verified). :func:`weights_kind` tells a packed model from an HDF5
weight file by content and refuses anything else.

The header is ``{"format": "paper-repro-packed", "format_version": 3, "package_version",
"meta": {...}, "leaves": [...]}``. ``meta`` is free-form JSON from the caller (the ``pack``
command records model, alpha, weight file and md5, scheme, fit, bits, granularity and the
:func:`~paper_repro.core.quantize.quantize_tree` options). ``leaves`` lists every array of the
parameter tree (a nested dict, e.g. ``{layer: {var: array}}``) in the tree's order:

- quantized: ``{"keys": [...], "kind": "quantized", "shape", "dtype", "scheme", "bits",
  "n_levels", "granularity", "channel_axis", "r", "codebook": {"form": "params"|"half"|"full",
  "shape", "offset", "nbytes"}, "codes": {"bits", "coding": "fixed"|"ans", "offset", "nbytes"
  [, "count", "model": {"offset", "nbytes"}]}}``. The codebook is float32 ``levels: (L,)``
  per tensor or ``(C, L)`` per channel, stored in the smallest form that rebuilds it bit for bit:
  ``"params"`` keeps each codebook's top level (and base ``a`` for exponential levels),
  ``(n_books, 1 or 2)``, the levels being :func:`paper_repro.core.quantize.canonical_levels`
  (exact float32 arithmetic); ``"half"`` keeps the positive levels ``p: (..., L // 2)``, the
  full set being ``-p[::-1], (0 if L is odd), p`` (Lloyd-Max); ``"full"`` keeps every level.
  Codes follow the array's own (C-order) layout; ``channel_axis`` says which axis indexes
  the codebook rows. ``"fixed"`` codes are bit-packed at ``bits = ceil(log2 L)``; ``"ans"``
  codes (with ``"count"``, the number of codes, repeated as a check on ``shape``) are a
  stream of little-endian uint32 words after a ``model`` blob of ``L`` uint16 weights
  (:mod:`paper_repro.core.entropy`). Blob order: codebook, model, codes.
- constant (format 4 only, written with ``fill=True``): ``{"keys", "kind": "fill", "shape",
  "dtype", "value"}``, every element equal to ``value`` (a JSON bool, int, or finite number
  exactly representable in ``dtype``); no data blob. A format-4 file has the magic
  ``b"PRQPACK4"``, its header is the same JSON zlib-compressed (inflated to at most 64 MiB,
  one stream, nothing after it), and it is otherwise laid out and checked like format 3.
- kept in float: ``{"keys", "kind": "array", "shape", "dtype", "offset", "nbytes"}``, the raw
  C-order little-endian bytes of the array as it was (biases, batch-norm statistics,
  unselected leaves). ``dtype`` is a name: bool, (u)int8..64, float16, bfloat16, float32,
  float64, complex64, complex128.

Decoding is ``levels[codes]`` (per channel: row ``c`` of the codebook for channel ``c``) cast
to the stored dtype, which is bit for bit what :func:`~paper_repro.core.quantize.quantize_tree`
returned (float16 and bfloat16 leaves included). :func:`load_packed` is the loader the
evaluation code uses::

    params, meta = storage.load_packed("mobilenet_exp5.prq")   # {layer: {var: array}}

Size accounting, one source of truth: :func:`codebook_nbytes`, :func:`codes_nbytes` and
:func:`layer_nbytes` give exactly the bytes the packer writes for a layer (from a fitted
quantizer, or from scheme, bits, granularity and channel count alone);
:func:`packed_nbytes` predicts a whole file, header included, without writing it.
:func:`sizes` reads the accounting of a packed model: ``float_bytes`` = 4 bytes x every
parameter (the float32 model), ``packed_bytes`` = the file size, split into ``codes_bytes``,
``codebook_bytes``, ``float_kept_bytes`` and ``header_bytes`` (magic + length + JSON +
checksum), which add up to it exactly; ``ratio = float_bytes / packed_bytes``. A
general-purpose compressor applied afterwards (:func:`zlib_bytes`) is reported separately and
never mixed into ``ratio``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import struct
import sys
import tempfile
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from paper_repro import __version__
from paper_repro.core import entropy

MAGIC = b"PRQPACK3"  # format 3: checksummed
MAGIC_4 = b"PRQPACK4"  # format 4: format 3 plus constant ("fill") leaves
LEGACY_MAGIC = b"PRQPACK1"  # formats 1 and 2: no checksum
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
FORMAT = "paper-repro-packed"
FORMAT_VERSION = 4  # the newest this package reads and writes
PLAIN_FORMAT_VERSION = 3  # what pack_tree writes without fill=True (byte for byte as before)
_MAGICS = {3: MAGIC, 4: MAGIC_4}
FILL_MIN_NBYTES = 16  # a constant array of more bytes than this is stored as one number
SUFFIX = ".prq"
_PREFIX = len(MAGIC) + 4
CHECKSUM_BYTES = 32  # SHA-256
MAX_HEADER_BYTES = 64 << 20
MAX_NDIM = 32
CODINGS = ("fixed", "ans")
FLOAT_BYTES_PER_PARAM = 4  # the float32 reference model
_EXPONENTIAL_BOOK = ("exponential", "exponential_nozero")  # codebooks stored as (top, base)


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


# --- Dtypes -------------------------------------------------------------------------------------

_DTYPE_NAMES = ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
                "float16", "bfloat16", "float32", "float64", "complex64", "complex128")
_FLOAT_NAMES = ("float16", "bfloat16", "float32", "float64")
_LEGACY_DTYPES = ("|b1", "|i1", "<i2", "<i4", "<i8", "|u1", "<u2", "<u4", "<u8", "<f2", "<f4",
                  "<f8", "<c8", "<c16")  # formats 1-2 stored numpy's dtype.str


def _dtype_of(name: str) -> np.dtype:
    """The little-endian dtype stored under ``name`` (a name of :data:`_DTYPE_NAMES`)."""
    if name == "bfloat16":
        import ml_dtypes

        if sys.byteorder != "little":
            raise NotImplementedError("bfloat16 leaves are stored little-endian; this machine "
                                      "is big-endian")
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name).newbyteorder("<")


def _dtype_name(dtype) -> str:
    """The stored name of a numpy dtype; ``ValueError`` for dtypes the format does not hold."""
    dt = np.dtype(dtype)
    name = "bfloat16" if dt.name == "bfloat16" else dt.name
    if name not in _DTYPE_NAMES or (name != "bfloat16" and dt.kind not in "biufc"):
        raise ValueError(f"dtype {dt} cannot be stored; the format holds "
                         f"{', '.join(_DTYPE_NAMES)}")
    return name


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
        two = q.scheme in _EXPONENTIAL_BOOK
        book = np.stack([top, a], -1) if two else top[:, None]
        rebuilt = _from_params(book, q.scheme, q.bits, L).reshape(levels.shape)
        if np.array_equal(rebuilt.view(np.uint32), levels.view(np.uint32)):
            return "params", np.ascontiguousarray(book)
    if symmetric and L >= 2:
        p = np.ascontiguousarray(levels[..., L - L // 2:])
        if np.array_equal(_full_from_half(p, L).view(np.uint32), levels.view(np.uint32)):
            return "half", p
    return "full", levels


def _levels_of(q) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(q.levels, np.float32))


# --- Sizes: what the packer writes, one place -----------------------------------------------------


def codebook_nbytes(q=None, *, scheme: str | None = None, bits: int | None = None,
                    granularity: str = "tensor", n_channels: int = 1,
                    symmetric: bool = True) -> int:
    """Bytes the packed format spends on a layer's codebook(s).

    With a fitted quantizer ``q`` (``scheme`` etc. must then be omitted): exactly what
    :func:`pack_tree` writes for it (the stored form depends on whether its parameters rebuild
    its levels bit for bit). Without one: what the packer writes for the quantizers
    :func:`~paper_repro.core.quantize.quantize_tree` fits with ``scheme`` at ``bits``, one
    codebook per tensor or ``n_channels`` per channel: 4 bytes x (1 per codebook for linear,
    mid-rise, sign and pow2 levels; 2 for exponential ones; ``L // 2`` positive levels for
    Lloyd-Max), or every level (``4 L``) with ``symmetric=False`` (``pack --full-codebook``).
    """
    if q is not None:
        if scheme is not None or bits is not None:
            raise ValueError("give a fitted quantizer or scheme/bits, not both")
        return int(_codebook(_levels_of(q), symmetric=symmetric,
                             q=q if symmetric else None)[1].nbytes)
    from paper_repro.core import quantize as Q

    if scheme is None or bits is None:
        raise ValueError("codebook_nbytes needs a fitted quantizer, or scheme= and bits=")
    Q.check_args(scheme, bits, granularity=granularity)
    if isinstance(n_channels, bool) or not isinstance(n_channels, (int, np.integer)) \
            or n_channels < 1 or (granularity == "tensor" and n_channels != 1):
        raise ValueError(f"n_channels must be 1 per tensor or the channel count per channel, "
                         f"got {n_channels!r} with granularity {granularity!r}")
    L = Q.n_levels(scheme, bits)
    if not symmetric:
        per = L
    elif scheme == "lloyd_max":
        per = L // 2
    else:
        per = 2 if scheme in _EXPONENTIAL_BOOK else 1
    return 4 * per * int(n_channels)


def codes_nbytes(n: int, n_levels: int, *, codes=None, coding: str = "fixed") -> int:
    """Bytes the packed format spends on ``n`` codes of an ``n_levels`` codebook.

    ``coding="fixed"``: ``ceil(n * ceil(log2 L) / 8)``. ``coding="ans"``: the entropy-coded
    model and stream of ``codes`` (needed; ``n`` must equal their count), computed by running
    the encoder (:func:`paper_repro.core.entropy.coded_nbytes`), or the fixed size where that
    is smaller (the packer then keeps the layer bit-packed); no file is written.
    """
    if coding == "fixed":
        return packed_size(n, code_bits(n_levels))
    if coding != "ans":
        raise ValueError(f"unknown coding {coding!r}; choose one of {', '.join(CODINGS)}")
    if codes is None:
        raise ValueError("the entropy-coded size depends on the codes: pass codes=")
    if np.size(codes) != n:
        raise ValueError(f"{np.size(codes)} codes given for n={n}")
    return min(entropy.coded_nbytes(codes, n_levels), packed_size(n, code_bits(n_levels)))


def layer_nbytes(q, *, n: int | None = None, codes=None, coding: str = "fixed",
                 symmetric: bool = True) -> int:
    """Bytes of one quantized layer in the packed format: codebook(s) plus codes.

    ``q``: the fitted quantizer; ``n``: the layer's weight count (default: ``codes.size``);
    ``codes``: needed for ``coding="ans"``.
    """
    if n is None:
        if codes is None:
            raise ValueError("layer_nbytes needs n= or codes=")
        n = int(np.size(codes))
    return (codebook_nbytes(q, symmetric=symmetric)
            + codes_nbytes(n, _levels_of(q).shape[-1], codes=codes, coding=coding))


# --- Packing ------------------------------------------------------------------------------------


class _Corrupt(Exception):
    """A failed check of a packed file (turned into a one-line ``ValueError`` with the name)."""


def _one_line(s: str) -> str:
    return " ".join(str(s).split())


@dataclasses.dataclass(frozen=True)
class PackedModel:
    """A packed model in memory: the JSON ``header`` and the ``data`` section (bytes).

    ``to_bytes()`` is exactly the file :func:`save_packed` writes (checksum appended);
    ``source`` names the file in error messages.
    """

    header: dict
    data: bytes
    source: str = dataclasses.field(default="packed model", compare=False)

    def header_bytes(self) -> bytes:
        """The header as compact UTF-8 JSON."""
        return json.dumps(self.header, separators=(",", ":")).encode("utf8")

    def stored_header(self) -> bytes:
        """The header as the file stores it: the JSON (format 3), zlib-compressed (format 4)."""
        return _stored_header(self.header)

    def to_bytes(self) -> bytes:
        h = self.stored_header()
        magic = _MAGICS.get(self.header.get("format_version"), MAGIC)
        body = magic + struct.pack("<I", len(h)) + h + self.data
        return body + hashlib.sha256(body).digest()

    def file_nbytes(self) -> int:
        """Length of :meth:`to_bytes` without building it."""
        return _PREFIX + len(self.stored_header()) + len(self.data) + CHECKSUM_BYTES

    @classmethod
    def from_bytes(cls, blob: bytes, *, source: str = "packed model",
                   allow_unverified: bool = False) -> PackedModel:
        """Check and parse a packed file (see the module docstring for the checks).

        ``ValueError`` (one line, starting with ``source``) for anything but an intact file of
        format 3; formats 1-2 are refused unless ``allow_unverified``.
        """
        blob = bytes(blob)
        magic = blob[: len(MAGIC)]
        if magic == LEGACY_MAGIC:
            return cls._legacy(blob, source, allow_unverified)
        if magic not in (MAGIC, MAGIC_4):
            raise ValueError(f"{source}: not a packed paper-repro model (bad magic bytes "
                             f"{magic!r}; expected {MAGIC!r}); write one with `paper-repro pack`")
        try:
            return cls._checked(blob, source, 4 if magic == MAGIC_4 else 3)
        except _Corrupt as e:
            raise ValueError(f"{source}: corrupt packed model: {_one_line(e)}; re-create it with "
                             "`paper-repro pack`") from None

    @classmethod
    def _checked(cls, blob: bytes, source: str, version: int) -> PackedModel:
        if len(blob) < _PREFIX + 2 + CHECKSUM_BYTES:
            raise _Corrupt(f"{len(blob)} bytes is too short for a packed model (truncated)")
        (n,) = struct.unpack("<I", blob[len(MAGIC):_PREFIX])
        room = len(blob) - _PREFIX - CHECKSUM_BYTES
        if not 2 <= n <= min(room, MAX_HEADER_BYTES):
            raise _Corrupt(f"header length {n} does not fit the file ({len(blob)} bytes; "
                           "truncated or damaged)")
        body, digest = blob[:-CHECKSUM_BYTES], blob[-CHECKSUM_BYTES:]
        if hashlib.sha256(body).digest() != digest:
            raise _Corrupt("SHA-256 checksum mismatch (the file was changed or truncated after "
                           "it was written)")
        raw = blob[_PREFIX:_PREFIX + n]
        header = _parse_header(_inflate(raw) if version >= 4 else raw)
        data = blob[_PREFIX + n:-CHECKSUM_BYTES]
        _validate(header, len(data), versions=(version,))
        return cls(header=header, data=data, source=source)

    @classmethod
    def _legacy(cls, blob: bytes, source: str, allow_unverified: bool) -> PackedModel:
        if not allow_unverified:
            raise ValueError(f"{source}: packed model of format 1-2 (no checksum, cannot be "
                             "verified); re-create it with `paper-repro pack`, or load it with "
                             "storage.load_packed(..., allow_unverified=True)")
        try:
            if len(blob) < _PREFIX + 2:
                raise _Corrupt(f"{len(blob)} bytes is too short for a packed model (truncated)")
            (n,) = struct.unpack("<I", blob[len(LEGACY_MAGIC):_PREFIX])
            if not 2 <= n <= min(len(blob) - _PREFIX, MAX_HEADER_BYTES):
                raise _Corrupt(f"header length {n} does not fit the file ({len(blob)} bytes; "
                               "truncated or damaged)")
            header = _parse_header(blob[_PREFIX:_PREFIX + n])
            data = blob[_PREFIX + n:]
            _validate(header, len(data), versions=(1, 2))
        except _Corrupt as e:
            raise ValueError(f"{source}: corrupt packed model (format 1-2): {_one_line(e)}") \
                from None
        return cls(header=header, data=data, source=source)


def _stored_header(header: Mapping) -> bytes:
    raw = json.dumps(header, separators=(",", ":")).encode("utf8")
    return zlib.compress(raw, 9) if header.get("format_version") == 4 else raw


def _inflate(raw: bytes) -> bytes:
    """A format-4 header: zlib data of at most :data:`MAX_HEADER_BYTES` once inflated."""
    d = zlib.decompressobj()
    try:
        out = d.decompress(raw, MAX_HEADER_BYTES)
    except zlib.error as e:
        raise _Corrupt(f"header does not inflate ({e})") from None
    if d.unconsumed_tail or not d.eof or d.unused_data:
        raise _Corrupt("header is not one zlib stream of at most "
                       f"{MAX_HEADER_BYTES >> 20} MiB inflated")
    return out


def _parse_header(raw: bytes) -> dict:
    try:
        header = json.loads(raw.decode("utf8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise _Corrupt(f"header is not valid JSON ({type(e).__name__}: {e})") from None
    if not isinstance(header, dict):
        raise _Corrupt("header is not a JSON object")
    return header


# --- Header validation --------------------------------------------------------------------------


def _get(d, key: str, where: str, types, *, none: bool = False):
    if not isinstance(d, dict):
        raise _Corrupt(f"{where} is not a JSON object")
    if key not in d:
        raise _Corrupt(f"{where} lacks {key!r}")
    v = d[key]
    if v is None and none:
        return v
    if isinstance(v, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise _Corrupt(f"{where}: {key!r} is {v!r}, not a {_type_names(types)}")
    if not isinstance(v, types):
        raise _Corrupt(f"{where}: {key!r} is {_short(v)}, not a {_type_names(types)}")
    return v


def _type_names(types) -> str:
    ts = types if isinstance(types, tuple) else (types,)
    return "/".join(t.__name__ for t in ts)


def _short(v) -> str:
    s = repr(v)
    return s if len(s) <= 40 else s[:37] + "..."


def _int(d, key: str, where: str, lo: int, hi: int | None = None) -> int:
    v = _get(d, key, where, int)
    if v < lo or (hi is not None and v > hi):
        raise _Corrupt(f"{where}: {key}={v} outside {lo}..{hi if hi is not None else ''}")
    return v


def _loc(d, where: str, expect_offset: int, expect_nbytes: int | None) -> int:
    """Check a blob location against the running offset; returns its end."""
    o = _int(d, "offset", where, 0)
    n = _int(d, "nbytes", where, 0)
    if o != expect_offset:
        raise _Corrupt(f"{where}: offset {o}, expected {expect_offset} (blobs are back to back)")
    if expect_nbytes is not None and n != expect_nbytes:
        raise _Corrupt(f"{where}: {n} bytes, the header's shape and width imply {expect_nbytes}")
    return o + n


def _resolve_dtype(s: str, where: str, versions: Sequence[int]) -> np.dtype:
    if min(versions) >= 3:
        if s not in _DTYPE_NAMES:
            raise _Corrupt(f"{where}: unknown dtype {_short(s)}")
        return _dtype_of(s)
    if s not in _LEGACY_DTYPES:
        why = " (format 2 stored bfloat16 as raw bytes)" if s == "<V2" else ""
        raise _Corrupt(f"{where}: unknown dtype {_short(s)}{why}")
    return np.dtype(s)


def _fill_value(e, where: str, dtype: np.dtype):
    """The checked ``value`` of a fill leaf as a scalar of ``dtype``: a JSON bool for bool, an
    int within range for integers, a finite number for floats (exactly representable)."""
    v = _get(e, "value", where, (bool, int, float))
    if dtype == np.bool_:
        if not isinstance(v, bool):
            raise _Corrupt(f"{where}: fill value {_short(v)} of a bool leaf is not a bool")
        return np.bool_(v)
    if isinstance(v, bool):
        raise _Corrupt(f"{where}: fill value {v!r} is a bool, the leaf is {dtype}")
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        if not isinstance(v, int) or not info.min <= v <= info.max:
            raise _Corrupt(f"{where}: fill value {_short(v)} is not a {dtype}")
        return dtype.type(v)
    if dtype.kind == "c":
        raise _Corrupt(f"{where}: a complex leaf cannot be a fill leaf")
    if not math.isfinite(float(v)) or float(dtype.type(v)) != float(v):
        raise _Corrupt(f"{where}: fill value {_short(v)} is not a finite {dtype} number")
    return dtype.type(v)


def _validate(header: dict, data_len: int, *, versions: Sequence[int]) -> None:
    """Check every field :func:`decode_leaf` will use; raise :class:`_Corrupt` on the first
    problem. Afterwards every blob lies inside ``data`` and decoding allocates at most what
    the file's sizes imply."""
    from paper_repro.core import quantize as Q

    fmt = _get(header, "format", "header", str)
    if fmt != FORMAT:
        raise _Corrupt(f"header format {_short(fmt)}, expected {FORMAT!r}")
    version = _get(header, "format_version", "header", int)
    if version not in versions:
        if version > FORMAT_VERSION:
            raise _Corrupt(f"format version {version} is newer than this package reads "
                           f"({FORMAT_VERSION}); upgrade paper-repro")
        raise _Corrupt(f"format version {version} under the magic of format(s) "
                       f"{'/'.join(map(str, versions))}")
    _get(header, "package_version", "header", str)
    _get(header, "meta", "header", dict)
    leaves = _get(header, "leaves", "header", list)
    end = 0
    paths: set[tuple[str, ...]] = set()
    for i, e in enumerate(leaves):
        where = f"leaf {i}"
        keys = _get(e, "keys", where, list)
        if not keys or not all(isinstance(k, str) for k in keys):
            raise _Corrupt(f"{where}: keys must be a non-empty list of strings")
        where = f"leaf {'/'.join(keys)!r}"
        if tuple(keys) in paths:
            raise _Corrupt(f"{where} appears twice")
        paths.add(tuple(keys))
        kind = _get(e, "kind", where, str)
        shape = _get(e, "shape", where, list)
        if len(shape) > MAX_NDIM or not all(isinstance(s, int) and not isinstance(s, bool)
                                            and s >= 0 for s in shape):
            raise _Corrupt(f"{where}: shape {_short(shape)} is not a list of at most "
                           f"{MAX_NDIM} non-negative ints")
        n = math.prod(shape)
        dtype = _resolve_dtype(_get(e, "dtype", where, str), where, versions)
        if kind == "array":
            end = _loc(e, where, end, n * dtype.itemsize)
            continue
        if kind == "fill" and min(versions) >= 4:
            _fill_value(e, where, dtype)
            continue
        if kind != "quantized":
            raise _Corrupt(f"{where}: unknown kind {_short(kind)}")
        if dtype.kind != "f" and dtype.name != "bfloat16":
            raise _Corrupt(f"{where}: quantized leaf of dtype {dtype}, not a float type")
        scheme = _get(e, "scheme", where, str)
        if scheme not in Q.SCHEMES:
            raise _Corrupt(f"{where}: unknown scheme {_short(scheme)}")
        bits = _get(e, "bits", where, int)
        try:
            Q.check_args(scheme, bits)
        except ValueError as err:
            raise _Corrupt(f"{where}: {err}") from None
        L = _int(e, "n_levels", where, 2, 256)
        if L != Q.n_levels(scheme, bits):
            raise _Corrupt(f"{where}: {L} levels, but {scheme} at {bits} bits has "
                           f"{Q.n_levels(scheme, bits)}")
        gran = _get(e, "granularity", where, str)
        if gran == "channel":
            ax = _int(e, "channel_axis", where, 0, len(shape) - 1)
            n_books = shape[ax]
        elif gran == "tensor":
            if _get(e, "channel_axis", where, int, none=True) is not None:
                raise _Corrupt(f"{where}: a per-tensor codebook with a channel axis")
            n_books = 1
        else:
            raise _Corrupt(f"{where}: unknown granularity {_short(gran)}")
        _get(e, "r", where, (int, float), none=True)
        cb = _get(e, "codebook", where, dict)
        form = _get(cb, "form", f"{where} codebook", str)
        if form == "params":
            if scheme == "lloyd_max":
                raise _Corrupt(f"{where}: Lloyd-Max levels have no parameter form")
            want = [n_books, 2 if scheme in _EXPONENTIAL_BOOK else 1]
        elif form in ("half", "full"):
            width = L // 2 if form == "half" else L
            want = [width] if gran == "tensor" else [n_books, width]
        else:
            raise _Corrupt(f"{where}: unknown codebook form {_short(form)}")
        if _get(cb, "shape", f"{where} codebook", list) != want:
            raise _Corrupt(f"{where}: codebook shape {_short(cb['shape'])}, expected {want}")
        end = _loc(cb, f"{where} codebook", end, 4 * math.prod(want))
        codes = _get(e, "codes", where, dict)
        cw = f"{where} codes"
        if _get(codes, "bits", cw, int) != code_bits(L):
            raise _Corrupt(f"{cw}: {codes['bits']} bits a code for {L} levels "
                           f"(expected {code_bits(L)})")
        coding = "fixed" if min(versions) < 3 else _get(codes, "coding", cw, str)
        if coding == "fixed":
            end = _loc(codes, cw, end, packed_size(n, code_bits(L)))
        elif coding == "ans":
            if _int(codes, "count", cw, 0) != n:  # a stream's length does not bound its count
                raise _Corrupt(f"{cw}: {codes['count']} entropy-coded codes for shape {shape}")
            end = _loc(_get(codes, "model", cw, dict), f"{cw} model", end,
                       L * entropy.MODEL_DTYPE.itemsize)
            end = _loc(codes, cw, end, None)
            if codes["nbytes"] % entropy.WORD_DTYPE.itemsize:
                raise _Corrupt(f"{cw}: entropy-coded stream of {codes['nbytes']} bytes is not "
                               "whole 32-bit words")
        else:
            raise _Corrupt(f"{cw}: unknown coding {_short(coding)}")
    if end != data_len:
        raise _Corrupt(f"data section has {data_len} bytes, the header accounts for {end}")
    for p in paths:  # a leaf cannot also be a folder of other leaves
        for k in range(1, len(p)):
            if p[:k] in paths:
                raise _Corrupt(f"leaf {'/'.join(p[:k])!r} is also a prefix of "
                               f"{'/'.join(p)!r}")


# --- Writing ------------------------------------------------------------------------------------


def _constant(a: np.ndarray):
    """The JSON number (or bool) every element of ``a`` equals bit for bit, when ``a`` is a
    constant array of more than :data:`FILL_MIN_NBYTES` bytes; else ``None``."""
    if a.nbytes <= FILL_MIN_NBYTES or a.dtype.kind not in "biuf" or a.size < 2:
        return None
    flat = a.reshape(-1)
    raw = flat.view(np.uint8).reshape(flat.size, -1)
    if not (raw == raw[:1]).all():
        return None
    if a.dtype == np.bool_:
        return bool(flat[0])
    if a.dtype.kind in "iu":
        return int(flat[0])
    v = float(flat[0])
    back = np.asarray(v, a.dtype).reshape(1)
    if not math.isfinite(v) or back.view(np.uint8).tobytes() != raw[0].tobytes():
        return None  # -0.0, NaN payloads: stored as an array
    return v


def _layout(params, report: Sequence[Mapping], *, meta, symmetric_codebook: bool, coding: str,
            write: bool, fill: bool = False) -> tuple[dict, list[bytes], int]:
    """The header of the packed file and its data blobs (``write``) or only their sizes.

    Returns ``(header, chunks, data_nbytes)``; ``chunks`` is empty unless ``write``. The sizes
    come from :func:`codebook_nbytes` / :func:`codes_nbytes` when not writing, from the bytes
    themselves when writing (:func:`packed_nbytes` vs :func:`pack_tree`).
    """
    from paper_repro.core import quantize as Q

    if coding not in CODINGS:
        raise ValueError(f"unknown coding {coding!r}; choose one of {', '.join(CODINGS)}")
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

    def put(payload, nbytes: int) -> dict:
        nonlocal offset
        if write:
            b = payload() if callable(payload) else payload
            if len(b) != nbytes:  # the size functions must describe the bytes written
                raise AssertionError(f"wrote {len(b)} bytes where the accounting says {nbytes}")
            chunks.append(b)
        loc = {"offset": offset, "nbytes": nbytes}
        offset += nbytes
        return loc

    leaves = []
    for (keys, leaf), path in zip(items, paths, strict=True):
        arr = np.asarray(leaf)
        if arr.ndim > MAX_NDIM:
            raise ValueError(f"leaf {path!r} has {arr.ndim} dimensions; at most {MAX_NDIM}")
        if path not in rows:
            name = _dtype_name(arr.dtype)
            stored = np.ascontiguousarray(arr, dtype=_dtype_of(name))
            value = _constant(stored) if fill else None
            if value is not None:
                leaves.append({"keys": list(keys), "kind": "fill", "shape": list(arr.shape),
                               "dtype": name, "value": value})
                continue
            leaves.append({"keys": list(keys), "kind": "array", "shape": list(arr.shape),
                           "dtype": name, **put(stored.tobytes, stored.nbytes)})
            continue
        row = rows[path]
        q = row["quantizer"]
        codes = np.asarray(row["codes"])
        if codes.shape != arr.shape:
            raise ValueError(f"codes of {path!r} have shape {codes.shape}, the leaf {arr.shape}")
        levels = _levels_of(q)
        L = levels.shape[-1]
        if q.scheme not in Q.SCHEMES or L != Q.n_levels(q.scheme, q.bits):
            raise ValueError(f"{path!r}: a {q.scheme!r} quantizer at {q.bits} bits with {L} "
                             "levels cannot be stored (the format holds the schemes of "
                             "quantize.SCHEMES with their level counts)")
        if q.granularity == "channel":
            ax = q.channel_axis % arr.ndim
            if levels.shape != (arr.shape[ax], L):
                raise ValueError(f"codebook of {path!r} is {levels.shape}, expected "
                                 f"({arr.shape[ax]}, {L}) for channel axis {ax}")
        else:
            ax = None
        if codes.size and (codes.min() < 0 or codes.max() >= L):
            raise ValueError(f"codes of {path!r} lie in {codes.min()}..{codes.max()}, outside "
                             f"its {L} levels")
        dtype = np.dtype(jax.dtypes.canonicalize_dtype(arr.dtype))  # quantize_tree's dtype
        dname = _dtype_name(dtype)
        if dname not in _FLOAT_NAMES:
            raise ValueError(f"quantized leaf {path!r} has dtype {dtype}; a float type is needed")
        form, book = _codebook(levels, symmetric=symmetric_codebook,
                               q=q if symmetric_codebook else None)
        b = code_bits(L)
        codebook = {"form": form, "shape": list(book.shape),
                    **put(book.tobytes, codebook_nbytes(q, symmetric=symmetric_codebook))}
        fixed_nbytes = codes_nbytes(codes.size, L)
        w = stream = None
        if coding == "ans":
            w = entropy.model_weights(codes, L)
            stream = entropy.encode(codes, w)
            if w.nbytes + len(stream) >= fixed_nbytes:  # a small layer: the model costs more
                w = stream = None
        if stream is None:
            code = {"bits": b, "coding": "fixed",
                    **put(lambda c=codes, b=b: pack_codes(c, b).tobytes(), fixed_nbytes)}
        else:
            model = put(w.tobytes(), w.nbytes)
            code = {"bits": b, "coding": "ans", "count": int(codes.size),
                    **put(stream, len(stream)), "model": model}
            if not write and w.nbytes + len(stream) != codes_nbytes(codes.size, L, codes=codes,
                                                                    coding="ans"):
                raise AssertionError("entropy-coded size disagrees with codes_nbytes")
        leaves.append({
            "keys": list(keys), "kind": "quantized", "shape": list(arr.shape),
            "dtype": dname, "scheme": q.scheme, "bits": int(q.bits), "n_levels": int(L),
            "granularity": q.granularity, "channel_axis": ax,
            "r": float(row["r"]) if "r" in row else None,
            "codebook": codebook, "codes": code,
        })
    version = FORMAT_VERSION if fill else PLAIN_FORMAT_VERSION
    header = {"format": FORMAT, "format_version": version,
              "package_version": __version__, "meta": dict(meta or {}), "leaves": leaves}
    return header, chunks, offset


def pack_tree(params, report: Sequence[Mapping], *, meta: Mapping | None = None,
              symmetric_codebook: bool = True, coding: str = "fixed",
              fill: bool = False) -> PackedModel:
    """Pack a quantized parameter tree.

    Args:
      params: the nested dict of arrays that was quantized (the original or the quantized
        tree: only its non-quantized leaves are read, and the shapes and dtypes of the others).
      report: the report of :func:`paper_repro.core.quantize.quantize_tree`; each row's ``codes``
        and ``quantizer`` are stored for the leaf at its ``path``.
      meta: JSON-able description stored in the header (model, scheme, options, ...).
      symmetric_codebook: store codebooks as parameters / positive halves where that is exact
        (``False``: every level).
      coding: ``"fixed"`` (bit-packed codes) or ``"ans"`` (entropy-coded codes).
      fill: write format 4: each constant array of more than :data:`FILL_MIN_NBYTES` bytes
        (every element the same bits) stored as one number, a ``"fill"`` leaf (e.g. the
        identity batch norms :func:`paper_repro.feedforward.repairs.fold_into_codebooks`
        leaves), and the header zlib-compressed. ``False``: format 3.
    Returns:
      A :class:`PackedModel`; :func:`unpack_tree` gives back the quantized tree bit for bit.
    """
    header, chunks, n = _layout(params, report, meta=meta, symmetric_codebook=symmetric_codebook,
                                coding=coding, write=True, fill=fill)
    data = b"".join(chunks)
    assert len(data) == n
    return PackedModel(header=header, data=data)


def packed_nbytes(params, report: Sequence[Mapping], *, meta: Mapping | None = None,
                  symmetric_codebook: bool = True, coding: str = "fixed",
                  fill: bool = False) -> dict:
    """The :func:`sizes` accounting of the file :func:`pack_tree` would write, from the size
    functions (:func:`codebook_nbytes`, :func:`codes_nbytes`) and the header it would carry;
    no codes are bit-packed and no file is written (entropy coding still runs the encoder)."""
    header, _, n = _layout(params, report, meta=meta, symmetric_codebook=symmetric_codebook,
                           coding=coding, write=False, fill=fill)
    return _accounting(header, n)


# --- Reading ------------------------------------------------------------------------------------


def _blob(data: bytes, loc: Mapping) -> bytes:
    o, n = int(loc["offset"]), int(loc["nbytes"])
    if o < 0 or n < 0 or o + n > len(data):  # validated on load; kept for hand-made headers
        raise ValueError("a blob lies outside the data section (truncated or damaged file)")
    return data[o:o + n]


def _codes_of(packed: PackedModel, entry: Mapping) -> np.ndarray:
    """``(n,) uint8`` codes of a quantized header entry, checked against its codebook size."""
    n = math.prod(entry["shape"])
    L = int(entry["n_levels"])
    c = entry["codes"]
    if c.get("coding", "fixed") == "ans":
        w = np.frombuffer(_blob(packed.data, c["model"]), entropy.MODEL_DTYPE).astype(np.uint16)
        entropy.check_model(w, L)
        codes = entropy.decode(_blob(packed.data, c), w, n)
    else:
        buf = _blob(packed.data, c)
        codes = unpack_codes(buf, c["bits"], n)
        spare = (8 - n * c["bits"] % 8) % 8
        if spare and buf[-1] >> (8 - spare):
            raise ValueError("the padding bits after the last code are not zero")
    if n and int(codes.max()) >= L:
        raise ValueError(f"code {int(codes.max())} outside the {L}-level codebook")
    return codes


def _decode(packed: PackedModel, entry: Mapping) -> np.ndarray:
    shape = tuple(entry["shape"])
    name = entry["dtype"]
    dtype = _dtype_of(name) if name in _DTYPE_NAMES else np.dtype(name)
    if entry["kind"] == "array":
        return np.frombuffer(_blob(packed.data, entry), dtype).reshape(shape).copy()
    if entry["kind"] == "fill":
        return np.full(shape, dtype.type(entry["value"]), dtype)
    cb = entry["codebook"]
    book = np.frombuffer(_blob(packed.data, cb), "<f4").astype(np.float32).reshape(cb["shape"])
    L = int(entry["n_levels"])
    if cb["form"] == "params":
        levels = _from_params(book, entry["scheme"], int(entry["bits"]), L)
        levels = levels[0] if entry["granularity"] != "channel" else levels
    else:
        levels = _full_from_half(book, L) if cb["form"] == "half" else book
    if not np.isfinite(levels).all():
        raise ValueError("the codebook holds non-finite levels")
    codes = _codes_of(packed, entry).reshape(shape).astype(np.intp)
    if entry["granularity"] == "channel":
        ax = int(entry["channel_axis"])
        moved = np.moveaxis(codes, ax, 0)
        rows = moved.reshape(moved.shape[0], -1)
        w = np.take_along_axis(levels, rows, axis=1).reshape(moved.shape)
        w = np.moveaxis(w, 0, ax)
    else:
        w = levels[codes]
    return np.ascontiguousarray(w.astype(dtype))


def decode_leaf(packed: PackedModel, entry: Mapping) -> np.ndarray:
    """The array of one header ``entry`` (dequantized for quantized leaves); a one-line
    ``ValueError`` naming the file and leaf if its payload does not decode."""
    try:
        return _decode(packed, entry)
    except ValueError as e:
        raise ValueError(f"{packed.source}: corrupt packed model at "
                         f"{'/'.join(entry['keys'])}: {_one_line(e)}") from None


def unpack_tree(packed: PackedModel) -> dict:
    """The parameter tree (nested dict of numpy arrays) with quantized leaves dequantized."""
    return _build([(e["keys"], decode_leaf(packed, e)) for e in packed.header["leaves"]])


def _meta(packed: PackedModel) -> dict:
    h = packed.header
    return {**h["meta"], "format_version": h["format_version"],
            "package_version": h["package_version"]}


# --- Files --------------------------------------------------------------------------------------


def save_packed(path: str | os.PathLike, params, report: Sequence[Mapping] | None = None, *,
                meta: Mapping | None = None, symmetric_codebook: bool = True,
                coding: str = "fixed", fill: bool = False) -> dict:
    """Write a packed model file and return its :func:`sizes` (``packed_bytes`` = file size).

    ``params`` is a :class:`PackedModel`, or a tree packed with ``report`` (see
    :func:`pack_tree`). The file is written atomically.
    """
    packed = params if isinstance(params, PackedModel) else pack_tree(
        params, report if report is not None else [], meta=meta,
        symmetric_codebook=symmetric_codebook, coding=coding, fill=fill)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(packed.to_bytes())
        os.chmod(tmp, file_mode())  # mkstemp's 0600 would make the file private
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


def file_mode() -> int:
    """Permissions of a newly created file under the current umask (``0o666 & ~umask``)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def is_packed(path: str | os.PathLike) -> bool:
    """Whether ``path`` starts with a packed model's magic bytes (any format version)."""
    try:
        with open(path, "rb") as f:
            return f.read(len(MAGIC)) in (MAGIC, MAGIC_4, LEGACY_MAGIC)
    except OSError:
        return False


def weights_kind(path: str | os.PathLike) -> str:
    """What a weight file is, by content: ``"packed"`` (a ``.prq`` model) or ``"hdf5"`` (a
    Keras ``.h5``: the HDF5 signature at byte 0 or a user-block offset 512, 1024, ...).

    ``FileNotFoundError`` if absent; a one-line ``ValueError`` for anything else (empty,
    damaged magic, another format).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no weight file at {path}")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(len(MAGIC))
        if head in (MAGIC, MAGIC_4, LEGACY_MAGIC):
            return "packed"
        if head == HDF5_MAGIC:
            return "hdf5"
        off = 512
        while off + len(HDF5_MAGIC) <= size:
            f.seek(off)
            if f.read(len(HDF5_MAGIC)) == HDF5_MAGIC:
                return "hdf5"
            off *= 2
    if size == 0:
        raise ValueError(f"{path}: empty file; expected a packed model (.prq) or a Keras .h5 "
                         "weight file")
    close = max(sum(a == b for a, b in zip(head, m, strict=False))
                for m in (MAGIC, MAGIC_4, LEGACY_MAGIC))
    if close >= len(MAGIC) - 2:
        raise ValueError(f"{path}: damaged packed model (bad magic bytes {head!r}); re-create "
                         "it with `paper-repro pack`")
    raise ValueError(f"{path}: neither a packed model (.prq) nor an HDF5 (.h5) weight file "
                     f"(starts with {head!r})")


def read_packed(path: str | os.PathLike, *, allow_unverified: bool = False) -> PackedModel:
    """Read and check a packed model file without decoding it (see :meth:`PackedModel.from_bytes`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no packed model at {path}")
    return PackedModel.from_bytes(path.read_bytes(), source=str(path),
                                  allow_unverified=allow_unverified)


def load_packed(path: str | os.PathLike, *, allow_unverified: bool = False) -> tuple[dict, dict]:
    """Load a packed model: ``(params, meta)``.

    ``params``: ``{layer: {var: array}}`` (the tree that was packed), quantized leaves
    dequantized bit for bit as :func:`~paper_repro.core.quantize.quantize_tree` returned them, the
    others exactly as stored; ready for ``models.apply(spec, params, x)``. ``meta``: the header's
    ``meta`` (model, alpha, scheme, ...) plus ``format_version`` and ``package_version``.
    Every check of :meth:`PackedModel.from_bytes` runs first; a damaged file raises a one-line
    ``ValueError``. ``allow_unverified``: also load format 1-2 files (no checksum).
    """
    packed = read_packed(path, allow_unverified=allow_unverified)
    return unpack_tree(packed), _meta(packed)


def packed_record(path: str | os.PathLike, meta: Mapping[str, Any]) -> dict:
    """What an evaluation records of the packed file it read: how it was quantized (scheme,
    fit, bits, granularity; with a recipe, the recipe, average width and the level families
    its layers use, and whether the average counted entropy-coded bits), the file name, its
    real size and ratio against float32, and ``label``."""
    path = Path(path)
    sz = sizes(read_packed(path))
    out = {k: meta.get(k) for k in ("scheme", "fit", "bits", "granularity")}
    if meta.get("recipe"):
        layer_schemes = meta.get("layer_schemes") or {}
        out.update(recipe=meta["recipe"], avg_bits=meta.get("avg_bits"),
                   levels="+".join(dict.fromkeys(
                       [meta.get("scheme")] + [layer_schemes[k] for k in sorted(layer_schemes)])))
        coded = "-coded" if meta.get("coded_budget") else ""
        if coded:
            out["coded_budget"] = True
        label = (f"{out['recipe']}/{out['levels']}/avg{float(out['avg_bits'] or 0):g}b{coded} "
                 "(packed)")
    else:
        label = f"{out['scheme']}/{out['fit']}/{out['granularity']}/{out['bits']}b (packed)"
    out.update(packed_file=path.name, compression_ratio=sz["ratio"],
               packed_bytes=sz["packed_bytes"], float_bytes=sz["float_bytes"], label=label)
    return out


# --- Accounting ---------------------------------------------------------------------------------


def _accounting(header: Mapping, data_nbytes: int) -> dict:
    codes = book = kept = model = n = nq = code_bits_total = rows = n_ans = fills = 0
    for e in header["leaves"]:
        size = math.prod(e["shape"])
        n += size
        if e["kind"] == "array":
            kept += e["nbytes"]
        elif e["kind"] == "fill":
            fills += 1
        else:
            nq += size
            codes += e["codes"]["nbytes"]
            if "model" in e["codes"]:
                model += e["codes"]["model"]["nbytes"]
                n_ans += 1
            book += e["codebook"]["nbytes"]
            rows += 1 if e["granularity"] != "channel" else e["shape"][e["channel_axis"]]
            code_bits_total += size * e["codes"]["bits"]
    codes += model
    head = (_PREFIX + len(_stored_header(header))
            + (CHECKSUM_BYTES if header["format_version"] >= 3 else 0))
    total = codes + book + kept + head
    if total != head + data_nbytes:
        raise AssertionError(f"accounting {total} != file {head + data_nbytes}")
    fb = FLOAT_BYTES_PER_PARAM * n
    return {
        "n_params": n, "n_quantized": nq, "float_bytes": fb, "packed_bytes": total,
        "codes_bytes": codes, "code_model_bytes": model, "entropy_coded_leaves": n_ans,
        "codebook_bytes": book, "codebooks": rows, "float_kept_bytes": kept,
        "fill_leaves": fills,
        "header_bytes": head, "ratio": fb / total if total else float("nan"),
        "bits_per_param": 8 * total / n if n else float("nan"),
        "code_bits_per_weight": 8 * codes / nq if nq else float("nan"),
        "ideal_ratio": 32 * nq / code_bits_total if code_bits_total else float("nan"),
    }


def sizes(packed: PackedModel) -> dict:
    """Byte accounting of a packed model (all ints except the ratios).

    ``n_params``, ``n_quantized``, ``float_bytes`` (4 x n_params), ``codes_bytes`` (bit-packed
    codes, or entropy-coded streams plus their models), ``code_model_bytes`` (those models),
    ``entropy_coded_leaves``, ``codebook_bytes``, ``codebooks`` (count: 1 per tensor, C per
    channel-wise leaf), ``float_kept_bytes``, ``header_bytes`` (magic + length + JSON +
    checksum), ``packed_bytes`` (their sum = the file size), ``ratio`` (float / packed),
    ``bits_per_param`` (8 packed_bytes / n_params), ``code_bits_per_weight`` (8 codes_bytes /
    n_quantized), ``ideal_ratio`` (32 / mean fixed code bits of the quantized weights: what
    bit-packed codes alone would give if everything were quantized).
    """
    out = _accounting(packed.header, len(packed.data))
    if packed.header["format_version"] >= 3:
        assert out["packed_bytes"] == packed.file_nbytes()
    return out


def zlib_bytes(packed: PackedModel, *, level: int = 9) -> int:
    """Size after zlib on the whole file (reported separately; not part of the format)."""
    return len(zlib.compress(packed.to_bytes(), level))


def code_entropy_bits(packed: PackedModel) -> float:
    """Mean empirical entropy of the codes, bits per quantized weight (an entropy coder's
    bound, per leaf histogram), against the ``b`` bits bit-packed codes spend."""
    total = nbits = 0.0
    for e in packed.header["leaves"]:
        if e["kind"] != "quantized":
            continue
        n = math.prod(e["shape"])
        nbits += n * entropy.entropy_bits(_codes_of(packed, e), e["n_levels"])
        total += n
    return nbits / total if total else float("nan")


def describe(packed: PackedModel) -> dict:
    """Header meta, sizes and a per-leaf summary (no arrays): what ``paper-repro unpack`` prints."""
    rows = []
    for e in packed.header["leaves"]:
        name = e["dtype"]
        row = {"path": "/".join(e["keys"]), "kind": e["kind"], "shape": e["shape"],
               "dtype": name if name in _DTYPE_NAMES else np.dtype(name).name}
        if e["kind"] == "quantized":
            row.update(scheme=e["scheme"], bits=e["bits"], n_levels=e["n_levels"],
                       granularity=e["granularity"], channel_axis=e["channel_axis"], r=e["r"],
                       codebook=e["codebook"]["form"],
                       coding=e["codes"].get("coding", "fixed"),
                       codes_bytes=e["codes"]["nbytes"] + e["codes"].get(
                           "model", {"nbytes": 0})["nbytes"],
                       codebook_bytes=e["codebook"]["nbytes"])
        elif e["kind"] == "fill":
            row.update(value=e["value"], bytes=0)
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
