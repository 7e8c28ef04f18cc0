"""Entropy coding of quantization codes: a categorical model per layer and an ANS stream.

The packed format (:mod:`paper_repro.core.storage`) stores a layer's codes either bit-packed
(``b`` bits a code) or, with ``pack --entropy-coding``, as an asymmetric-numeral-systems
stream (``constriction``'s ``AnsCoder``) under a categorical model of that layer's code
histogram. A decoder must rebuild exactly the model the encoder used, so the model is stored
in the file as integers:

Model (:func:`model_weights`)
    ``w: (L,) uint16`` with ``w.sum() == 2**16`` and every ``w[i] >= 1`` (a code absent from
    the layer still costs at most ``L`` in 65536 of probability mass): ``w = 1 + floor(n_i
    (2^16 - L) / n)`` for the histogram ``n_i``, the remainder handed to the largest
    fractional parts (ties: lowest code). Probabilities ``w / 2^16`` are dyadic, so encoder
    and decoder pass bit-identical floats to ``constriction.stream.model.Categorical(...,
    perfect=False)`` and get the same fixed-point model.

Stream (:func:`encode`, :func:`decode`)
    ``AnsCoder.encode_reverse`` of the flattened codes (C order); the compressed words are
    stored as little-endian ``uint32``. Decoding reads exactly ``n`` codes and the coder must
    then be empty (every word consumed), a consistency check on top of the file checksum.

Because every code has probability at most ``1 - (L - 1) / 2^16``, a stream of ``n`` codes
needs at least ``n log2(2^16 / max w)`` bits (:func:`min_stream_bits`): the loader uses it to
refuse a header that claims more codes than a stream could hold before allocating them.

Sizes: :func:`coded_nbytes` is the exact number of bytes the packer writes for a layer's
codes (model + stream) without writing a file; :func:`entropy_bits` is the empirical entropy
of the codes (bits per code), the bound the stream approaches.
"""

from __future__ import annotations

import math

import numpy as np

TOTAL = 1 << 16  # the model's weights sum to this
MODEL_DTYPE = np.dtype("<u2")
WORD_DTYPE = np.dtype("<u4")
_SLACK_BITS = 128  # coder state flushed at the end, and rounding of the fixed-point model


def _constriction():
    import constriction

    return constriction.stream


def _check_levels(n_levels) -> int:
    if isinstance(n_levels, bool) or not isinstance(n_levels, (int, np.integer)) \
            or not 2 <= n_levels <= 256:
        raise ValueError(f"entropy coding needs 2..256 levels, got {n_levels!r}")
    return int(n_levels)


def histogram(codes, n_levels: int) -> np.ndarray:
    """``(L,) int64`` counts of each code in ``codes`` (any shape)."""
    L = _check_levels(n_levels)
    c = np.asarray(codes).reshape(-1)
    if c.size and (c.min() < 0 or c.max() >= L):
        raise ValueError(f"codes must lie in 0..{L - 1}; got {c.min()}..{c.max()}")
    return np.bincount(c.astype(np.intp), minlength=L).astype(np.int64)


def model_weights(codes, n_levels: int) -> np.ndarray:
    """The stored model of ``codes``: ``(L,) uint16``, each >= 1, summing to 2^16."""
    counts = histogram(codes, n_levels)
    L = counts.size
    n = int(counts.sum())
    if n == 0:
        base = np.full(L, TOTAL // L, np.int64)
        base[: TOTAL - int(base.sum())] += 1
        return base.astype(MODEL_DTYPE)
    scaled = counts * (TOTAL - L)  # int64: n <= 2^47 keeps this exact
    w = 1 + scaled // n
    frac = scaled % n
    rest = TOTAL - int(w.sum())
    if rest:
        order = np.lexsort((np.arange(L), -frac))  # largest remainder first, then lowest code
        w[order[:rest]] += 1
    if w.sum() != TOTAL or w.min() < 1 or w.max() > 0xFFFF:  # cannot happen; keep it loud
        raise AssertionError(f"model weights {w} do not sum to {TOTAL}")
    return w.astype(MODEL_DTYPE)


def check_model(w: np.ndarray, n_levels: int) -> None:
    """Raise ``ValueError`` unless ``w`` is a valid stored model for ``n_levels`` codes."""
    L = _check_levels(n_levels)
    if w.shape != (L,):
        raise ValueError(f"entropy model has {w.size} weights for {L} levels")
    if int(w.min()) < 1 or int(w.astype(np.int64).sum()) != TOTAL:
        raise ValueError(f"entropy model weights must be >= 1 and sum to {TOTAL}")


def _model(w: np.ndarray):
    return _constriction().model.Categorical(w.astype(np.float64) / TOTAL, perfect=False)


def min_stream_bits(n: int, w: np.ndarray) -> float:
    """A lower bound on the stream bits of ``n`` codes under the model ``w`` (with slack)."""
    p_max = int(w.max()) / TOTAL
    return 0.9 * int(n) * -math.log2(p_max) - _SLACK_BITS


def encode(codes, w: np.ndarray) -> bytes:
    """ANS stream of ``codes`` (any shape, C order) under the model ``w``; little-endian words."""
    c = np.ascontiguousarray(np.asarray(codes).reshape(-1), np.int32)
    if c.size and (c.min() < 0 or c.max() >= w.size):
        raise ValueError(f"codes must lie in 0..{w.size - 1}; got {c.min()}..{c.max()}")
    coder = _constriction().stack.AnsCoder()
    if c.size:
        coder.encode_reverse(c, _model(w))
    return np.asarray(coder.get_compressed(), np.uint32).astype(WORD_DTYPE).tobytes()


def decode(stream: bytes, w: np.ndarray, n: int) -> np.ndarray:
    """Inverse of :func:`encode`: ``(n,) uint8`` codes. ``ValueError`` if the stream does not
    hold exactly ``n`` codes under ``w`` (a corrupt or mismatched stream)."""
    if len(stream) % WORD_DTYPE.itemsize:
        raise ValueError(f"entropy-coded stream of {len(stream)} bytes is not whole 32-bit words")
    if 8 * len(stream) < min_stream_bits(n, w):
        raise ValueError(f"{n} codes cannot fit in an entropy-coded stream of {len(stream)} "
                         "bytes")
    words = np.frombuffer(stream, WORD_DTYPE).astype(np.uint32)
    coder = _constriction().stack.AnsCoder(words)
    if n == 0:
        out = np.zeros(0, np.int32)
    else:
        try:
            out = np.asarray(coder.decode(_model(w), int(n)))
        except Exception as e:  # constriction reports a bad stream in its own exception types
            raise ValueError(f"entropy-coded stream does not decode ({type(e).__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else ''})") from None
    if not coder.is_empty():
        raise ValueError(f"entropy-coded stream has {coder.num_words()} unread words after "
                         f"{n} codes")
    if out.size != n or (n and (out.min() < 0 or out.max() >= w.size)):
        raise ValueError("entropy-coded stream decodes to codes outside the codebook")
    return out.astype(np.uint8)


def coded_nbytes(codes, n_levels: int) -> int:
    """Exact bytes the packed format spends on ``codes`` when entropy coded: the model
    (``2 L``) plus the stream (whole 32-bit words). Runs the encoder; writes no file."""
    w = model_weights(codes, n_levels)
    return w.nbytes + len(encode(codes, w))


def entropy_bits(codes, n_levels: int) -> float:
    """Empirical entropy of ``codes`` in bits per code (0 for no codes)."""
    counts = histogram(codes, n_levels)
    n = counts.sum()
    if n == 0:
        return 0.0
    p = counts[counts > 0] / n
    return float(-(p * np.log2(p)).sum())
