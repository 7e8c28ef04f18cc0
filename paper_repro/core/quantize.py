"""Post-training weight quantization: level sets, fitting, nearest-level coding (docs/theory.md §1-2).

A quantizer maps every weight to the nearest of a few *levels*. The families (``scheme=``)
follow the papers' unknowns (docs/theory.md, section 1, items 1-4), for ``b`` bits including sign:

=====================  ===========================================  ===========
scheme                 levels                                        count
=====================  ===========================================  ===========
``sign``               ``{-c, +c}``                                  2
``linear``             ``{k D : k = -K..K}``, ``K = 2^(b-1) - 1``    ``2^b - 1``
``linear_midrise``     ``{(k + 1/2) D}``, no zero                    ``2^b``
``exponential``        ``{0} U {+-c a^k : k = 0..K-1}``              ``2^b - 1``
``exponential_nozero`` ``{+-c a^k : k = 0..2^(b-1) - 1}``            ``2^b``
``pow2``               ``exponential`` with ``a = 1/2`` fixed        ``2^b - 1``
``lloyd_max``          optimal (max-correlation) levels, no zero     ``2^b``
=====================  ===========================================  ===========

Fitting rules (``fit=``):

- ``"max"`` (the P1 reading): the top level is ``max|w|``; an exponential base not given is
  chosen to maximize the correlation with the top pinned.
- ``"corr"`` (the P2 reading): every free parameter (top level ``c``, base ``a``) maximizes
  ``r = corr(w, Q(w))``, computed exactly from the partial moments of ``|w|``
  (:mod:`paper_repro.core.correlation`), so each candidate costs ``O(levels)`` after one pass.

Options: least-squares gain after fitting (``gain=True``: levels times
``sum(w q) / sum(q q)``), per-tensor or per-output-channel granularity, nearest level in the
linear or the log domain (``rounding=``). Results are a :class:`Quantizer` pytree (codebook
+ thresholds + fitted parameters) with integer codes, so storage can be bit-packed later.
:func:`quantize_tree` applies this to every selected leaf of a model's parameter tree.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from paper_repro.core import correlation as corr_mod

SCHEMES = (
    "sign",
    "linear",
    "linear_midrise",
    "exponential",
    "exponential_nozero",
    "pow2",
    "lloyd_max",
)
FITS = ("max", "corr")
GRANULARITIES = ("tensor", "channel")
ROUNDINGS = ("linear", "log")
METHODS = ("sample", "histogram")
MAX_BITS = 8

_EXPONENTIAL = ("exponential", "exponential_nozero", "pow2")


# --- Level sets ---------------------------------------------------------------------------------


def has_zero(scheme: str) -> bool:
    """Whether the scheme's level set contains zero."""
    return scheme in ("linear", "exponential", "pow2")


def n_positive(scheme: str, bits: int) -> int:
    """Number ``K`` of positive levels (the set is ``-p[::-1], (0), p``)."""
    if scheme == "sign":
        return 1
    return 2 ** (bits - 1) - 1 if has_zero(scheme) else 2 ** (bits - 1)


def n_levels(scheme: str, bits: int) -> int:
    """Total number of levels ``L`` of a scheme at ``bits`` bits."""
    return 2 * n_positive(scheme, bits) + int(has_zero(scheme))


def check_args(scheme: str, bits: int, fit: str = "corr", granularity: str = "tensor",
               rounding: str = "linear", method: str = "histogram") -> None:
    """Raise ``ValueError`` with what to do when a knob is out of range."""
    if scheme not in SCHEMES:
        raise ValueError(f"unknown scheme {scheme!r}; choose one of {', '.join(SCHEMES)}")
    if fit not in FITS:
        raise ValueError(f"unknown fit {fit!r}; choose one of {', '.join(FITS)}")
    if granularity not in GRANULARITIES:
        raise ValueError(f"unknown granularity {granularity!r}; choose one of {GRANULARITIES}")
    if rounding not in ROUNDINGS:
        raise ValueError(f"unknown rounding {rounding!r}; choose one of {ROUNDINGS}")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    if not isinstance(bits, (int, np.integer)) or isinstance(bits, bool):
        raise ValueError(f"bits must be an integer, got {bits!r}")
    lo = 1 if scheme in ("sign", "linear_midrise", "exponential_nozero", "lloyd_max") else 2
    hi = 1 if scheme == "sign" else MAX_BITS
    if not lo <= bits <= hi:
        why = " (a zero level plus a sign needs 2 bits)" if lo == 2 else ""
        raise ValueError(f"bits={bits} out of range for scheme {scheme!r}: use {lo}..{hi}{why}")
    if scheme == "lloyd_max" and fit == "max":
        raise ValueError("lloyd_max levels are fitted by definition; use fit='corr'")


def positive_levels(scheme: str, bits: int, c, a=0.5) -> jax.Array:
    """Ascending positive levels ``p: (K,)`` of a scheme with top level ``c`` and base ``a``.

    ``lloyd_max`` starts from the mid-rise linear set (its fitted levels come from
    :func:`fit`).
    """
    K = n_positive(scheme, bits)
    k = jnp.arange(1, K + 1, dtype=jnp.float32)
    c = jnp.asarray(c, jnp.float32)
    if scheme == "sign":
        return c[None]
    if scheme == "linear":
        return c * k / K
    if scheme in ("linear_midrise", "lloyd_max"):
        return c * (k - 0.5) / (K - 0.5)
    a = 0.5 if scheme == "pow2" else jnp.asarray(a, jnp.float32)
    return c * a ** (K - k)


def lower_bounds(p: jax.Array, *, zero: bool, rounding: str = "linear") -> jax.Array:
    """Lower decision boundaries on ``|w|`` for ascending positive levels ``p: (K,)``.

    Nearest level: midpoints (linear domain) or geometric means (log domain). The boundary
    between zero and ``p[0]`` is ``p[0] / 2`` in both domains; with no zero level it is 0.
    """
    if rounding == "log":
        mids = jnp.sqrt(p[:-1] * p[1:])
    else:
        mids = 0.5 * (p[:-1] + p[1:])
    first = 0.5 * p[:1] if zero else jnp.zeros((1,), p.dtype)
    return jnp.concatenate([first, mids])


def full_codebook(p: jax.Array, lower: jax.Array, *, zero: bool) -> tuple[jax.Array, jax.Array]:
    """Symmetric codebook ``levels: (L,)`` and ``thresholds: (L-1,)`` from the positive half."""
    if zero:
        levels = jnp.concatenate([-p[::-1], jnp.zeros((1,), p.dtype), p])
        thresholds = jnp.concatenate([-lower[::-1], lower])
    else:
        levels = jnp.concatenate([-p[::-1], p])
        thresholds = jnp.concatenate([-lower[:0:-1], jnp.zeros((1,), p.dtype), lower[1:]])
    return levels, thresholds


def canonical_levels(scheme: str, bits: int, top, a=0.5, xp=jnp):
    """Positive levels ``(..., K)`` rebuilt from two numbers by exact float32 arithmetic.

    Linear: ``step * k`` with ``step = top * float32(1/K)`` (mid-rise: ``1/(K - 1/2)``,
    times ``k - 1/2``); exponential and pow2: ``top, top a, top a^2, ...`` by repeated
    multiplication; sign: ``top``. Each level is one correctly rounded float32 operation
    (or a chain of them), so the same ``(top, a)`` give the same bits in JAX and NumPy on any
    IEEE machine: a stored codebook needs only these numbers (:mod:`paper_repro.core.storage`).
    ``top``, ``a``: scalars or ``(C,)``; ``xp``: ``jax.numpy`` or ``numpy``.
    """
    f32 = xp.float32
    top = xp.asarray(top, f32)[..., None]
    K = n_positive(scheme, bits)
    k = xp.arange(1, K + 1, dtype=f32)
    if scheme == "sign":
        return top
    # multiplications only (compilers may turn a division by a constant into one anyway)
    if scheme == "linear":
        return (top * f32(1.0 / K)) * k
    if scheme == "linear_midrise":
        return (top * f32(1.0 / (K - 0.5))) * (k - f32(0.5))
    if scheme not in _EXPONENTIAL:
        raise ValueError(f"{scheme!r} levels have no two-number form")
    a = xp.asarray(0.5 if scheme == "pow2" else a, f32)[..., None]
    levels = [top]
    for _ in range(K - 1):
        levels.append(levels[-1] * a)
    return xp.concatenate(levels[::-1], axis=-1)


# --- The quantizer pytree -----------------------------------------------------------------------


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Quantizer:
    """A fitted quantizer: codebook, decision thresholds and the fitted parameters.

    ``levels: (L,)`` or ``(C, L)`` ascending; ``thresholds: (L-1,)`` or ``(C, L-1)``;
    ``params``: ``c`` (top level before gain), ``a`` (exponential base, 0 where unused),
    ``gain`` (1 without least-squares gain), ``r_fit`` (correlation on the fitting table),
    each a scalar or ``(C,)``. Static: scheme, bits, granularity, channel axis.
    """

    levels: jax.Array
    thresholds: jax.Array
    params: dict
    scheme: str = dataclasses.field(metadata=dict(static=True))
    bits: int = dataclasses.field(metadata=dict(static=True))
    granularity: str = dataclasses.field(default="tensor", metadata=dict(static=True))
    channel_axis: int = dataclasses.field(default=-1, metadata=dict(static=True))

    @property
    def n_levels(self) -> int:
        return self.levels.shape[-1]


# --- Fitting on a moments table -----------------------------------------------------------------

_GRID = 48  # first-pass grid per parameter
_ZOOM = 9  # points per parameter in each refinement round
_ROUNDS = 4


def _r_of(scheme, bits, rounding, moments, c, a):
    p = positive_levels(scheme, bits, c, a)
    lower = lower_bounds(p, zero=has_zero(scheme), rounding=rounding)
    return corr_mod.half_r(p, lower, moments)


def _search_1d(f, lo, hi, n0=_GRID, n=_ZOOM, rounds=_ROUNDS):
    """Maximize ``f(u)`` on ``[lo, hi]`` by a grid and zooming grids (vectorized, jit-able)."""
    u = jnp.linspace(lo, hi, n0)
    best = u[jnp.argmax(jax.vmap(f)(u))]
    step0 = (hi - lo) / (n0 - 1)

    def zoom(i, best):
        step = step0 * (2.0 / (n - 1)) ** i
        u = jnp.clip(best + jnp.linspace(-step, step, n), lo, hi)
        return u[jnp.argmax(jax.vmap(f)(u))]

    best = jax.lax.fori_loop(0, rounds, zoom, best)
    return best, f(best)


def _search_2d(f, lo, hi, n0=24, n=_ZOOM, rounds=_ROUNDS):
    """Maximize ``f(u, v)`` over the box ``lo..hi`` (each a pair) by grid and zoom."""
    lo = jnp.asarray(lo, jnp.float32)
    hi = jnp.asarray(hi, jnp.float32)

    def grid(center, step, m):
        t = jnp.linspace(-1.0, 1.0, m)
        uu, vv = jnp.meshgrid(center[0] + t * step[0], center[1] + t * step[1], indexing="ij")
        return jnp.clip(jnp.stack([uu.ravel(), vv.ravel()], -1), lo, hi)

    def argbest(pts):
        return pts[jnp.argmax(jax.vmap(lambda z: f(z[0], z[1]))(pts))]

    best = argbest(grid((lo + hi) / 2, (hi - lo) / 2, n0))
    step0 = (hi - lo) / (n0 - 1)

    def zoom(i, best):
        return argbest(grid(best, step0 * (2.0 / (n - 1)) ** i, n))

    best = jax.lax.fori_loop(0, rounds, zoom, best)
    return best, f(best[0], best[1])


def _lloyd_max(bits, moments, iters=300):
    """Symmetric Lloyd-Max levels (centroid / midpoint iteration) on a moments table."""
    spread = jnp.sqrt(moments.m2) * 3.0
    p0 = positive_levels("lloyd_max", bits, jnp.minimum(spread, moments.top))

    def step(p, _):
        lower = lower_bounds(p, zero=False)
        c0, c1 = moments.cdf(lower)
        big = jnp.asarray(1e30, jnp.float32)
        c0_hi, c1_hi = moments.cdf(big)
        n0 = jnp.diff(jnp.append(c0, c0_hi))
        n1 = jnp.diff(jnp.append(c1, c1_hi))
        new = jnp.where(n0 > 1e-12, n1 / jnp.where(n0 > 1e-12, n0, 1.0), p)
        return jnp.sort(new), None

    p, _ = jax.lax.scan(step, p0, None, length=iters)
    return p


def _ratio_to_base(scheme, bits, rho):
    """Base ``a`` from the log dynamic range ``rho = log(top / smallest level)``."""
    K = n_positive(scheme, bits)
    return jnp.exp(-rho / max(K - 1, 1))


@functools.partial(jax.jit, static_argnames=("scheme", "bits", "fit", "rounding", "base"))
def fit_moments(moments, *, scheme: str, bits: int, fit: str = "corr",
                rounding: str = "linear", base: float | None = None) -> dict:
    """Fit one quantizer's positive levels on a moments table (one tensor or one channel).

    Returns ``{"p": (K,), "c": (), "a": (), "r": ()}`` where ``r`` is exact on the table.
    Searches run over ``log(c / top)`` in ``[log(1/100), 0]`` and, for free exponential
    bases, the log dynamic range ``log(c / smallest level)`` in ``[0.01, 20]``.
    """
    top = jnp.where(moments.top > 0, moments.top, 1.0)
    K = n_positive(scheme, bits)
    free_base = scheme in ("exponential", "exponential_nozero") and base is None and K > 1
    a_fixed = jnp.float32(0.5 if scheme == "pow2" else (base if base is not None else 0.5))

    def r_ca(c, a):
        return _r_of(scheme, bits, rounding, moments, c, a)

    if scheme == "lloyd_max":
        p = _lloyd_max(bits, moments)
        r = corr_mod.half_r(p, lower_bounds(p, zero=False), moments)
        return {"p": p, "c": p[-1], "a": jnp.float32(0.0), "r": r}
    if scheme == "sign":
        # r does not depend on c; the least-squares scale E|w| keeps magnitudes right.
        c = top if fit == "max" else moments.cdf(jnp.asarray(1e30, jnp.float32))[1]
        p = positive_levels("sign", 1, c)
        return {"p": p, "c": c, "a": jnp.float32(0.0), "r": r_ca(c, 0.0)}

    # Searches run on c / top, so fits are equivariant to the weights' scale.
    log_lo, log_hi = -math.log(100.0), 0.0
    rho_lo, rho_hi = math.log(0.01), math.log(20.0)
    if fit == "max" or not free_base:
        if fit == "max":
            c = top
            if free_base:
                lr, _ = _search_1d(lambda u: r_ca(c, _ratio_to_base(scheme, bits, jnp.exp(u))),
                                   rho_lo, rho_hi)
                a = _ratio_to_base(scheme, bits, jnp.exp(lr))
            else:
                a = a_fixed
        else:
            lc, _ = _search_1d(lambda u: r_ca(top * jnp.exp(u), a_fixed), log_lo, log_hi)
            c, a = top * jnp.exp(lc), a_fixed
            # Keep the max-anchored solution when it is at least as good (grid endpoints).
            better = r_ca(top, a_fixed) >= r_ca(c, a)
            c = jnp.where(better, top, c)
    else:
        best, _ = _search_2d(
            lambda u, v: r_ca(top * jnp.exp(u), _ratio_to_base(scheme, bits, jnp.exp(v))),
            (log_lo, rho_lo), (log_hi, rho_hi),
        )
        c, a = top * jnp.exp(best[0]), _ratio_to_base(scheme, bits, jnp.exp(best[1]))
        # The corr fit must never lose to the max-anchored one: compare and keep the better.
        lr, _ = _search_1d(lambda u: r_ca(top, _ratio_to_base(scheme, bits, jnp.exp(u))),
                           rho_lo, rho_hi)
        a_max = _ratio_to_base(scheme, bits, jnp.exp(lr))
        better = r_ca(top, a_max) > r_ca(c, a)
        c, a = jnp.where(better, top, c), jnp.where(better, a_max, a)
    p = positive_levels(scheme, bits, c, a)
    a_out = a if scheme in _EXPONENTIAL else jnp.float32(0.0)
    return {"p": p, "c": c, "a": jnp.asarray(a_out, jnp.float32), "r": r_ca(c, a)}


# --- Public API ---------------------------------------------------------------------------------

_CHUNK = 256  # channels fitted per compiled call (fixed, so one compile serves every layer)


def _is_tracer(x) -> bool:
    return isinstance(x, jax.core.Tracer)


def _check_finite(w, what="weights") -> None:
    if _is_tracer(w):
        return
    a = np.asarray(w)
    if a.size == 0:
        raise ValueError(f"{what} are empty: nothing to quantize")
    if not np.all(np.isfinite(a)):
        bad = int(np.size(a) - np.count_nonzero(np.isfinite(a)))
        raise ValueError(f"{what} contain {bad} non-finite values (nan/inf); fix them first")


def _bucket(n: int) -> int:
    """Next power of two >= n: padded shapes keep the number of compilations small."""
    return 1 << max(0, int(n - 1).bit_length())


def _moments(rows, method: str, bins: int):
    """Moments tables of each row of ``rows: (C, n)``, fields with leading axis C."""
    if method == "histogram" and not _is_tracer(rows):
        return corr_mod.histogram_moments_rows(np.asarray(rows), bins=bins)
    f = (corr_mod.moments_from_sample if method == "sample"
         else functools.partial(corr_mod.moments_from_histogram, bins=bins))
    return jax.jit(jax.vmap(f))(rows)


def moments(w: jax.Array, *, granularity: str = "tensor", channel_axis: int = -1,
            method: str = "histogram", bins: int = 2048):
    """Partial-moment tables of ``|w|`` (one pass), batched ``(C, ...)`` over channels.

    Pass the result as ``fit(w, ..., table=m)`` to fit many schemes and bit widths from one
    pass over the weights (each fit then costs O(levels) per candidate).
    """
    if granularity not in GRANULARITIES:
        raise ValueError(f"unknown granularity {granularity!r}; choose one of {GRANULARITIES}")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    _check_finite(w)
    xp = jnp if _is_tracer(w) else np
    w = xp.asarray(w, xp.float32)
    if granularity == "channel":
        if w.ndim == 0:
            raise ValueError("per-channel quantization needs an array with a channel axis")
        ax = channel_axis % w.ndim
        rows = xp.moveaxis(w, ax, 0).reshape(w.shape[ax], -1)
    else:
        rows = w.reshape(1, -1)
    return _moments(rows, method, bins)


def fit(w: jax.Array | None, *, scheme: str, bits: int, fit: str = "corr",
        granularity: str = "tensor", channel_axis: int = -1, gain: bool = False,
        rounding: str = "linear", base: float | None = None, method: str = "histogram",
        bins: int = 2048, table=None) -> Quantizer:
    """Fit a quantizer to weights ``w`` (any shape).

    Args:
      w: weights, any shape; per-channel fits use ``channel_axis`` as the output channels.
      scheme, bits: the level family and bit width (sign bit included), see module docs.
      fit: ``"max"`` (top level = max|w|) or ``"corr"`` (maximize corr(w, Q(w))).
      granularity: ``"tensor"`` (one codebook) or ``"channel"`` (one per channel).
      channel_axis: the channel axis for ``granularity="channel"``.
      gain: multiply the levels by the least-squares gain ``sum(w q) / sum(q q)``.
      rounding: nearest level in the ``"linear"`` or ``"log"`` domain.
      base: fixed exponential base ``a`` in (0, 1); ``None`` fits it.
      method: partial moments from the exact sorted ``"sample"`` or from a ``"histogram"``
        of ``bins`` bins per tensor/channel (one pass; each candidate then costs O(levels)).
      table: moments from :func:`moments` (same granularity) to skip the pass over ``w``.
    Returns:
      A :class:`Quantizer`; ``levels: (L,)`` per tensor or ``(C, L)`` per channel.
    """
    check_args(scheme, bits, fit, granularity, rounding, method)
    if base is not None and not 0.0 < float(base) < 1.0:
        raise ValueError(f"base must lie in (0, 1), got {base}")
    mom = table if table is not None else moments(
        w, granularity=granularity, channel_axis=channel_axis, method=method, bins=bins)
    if granularity == "channel" and w is not None:
        channel_axis = channel_axis % np.ndim(w)
    kw = dict(scheme=scheme, bits=bits, fit=fit, gain=gain, rounding=rounding, base=base)
    C = mom.m2.shape[0]
    if granularity == "tensor":
        levels, thresholds, params = _fit_table(mom, **kw)
        return Quantizer(levels=levels[0], thresholds=thresholds[0],
                         params={k: v[0] for k, v in params.items()}, scheme=scheme,
                         bits=bits, granularity=granularity, channel_axis=channel_axis)
    parts = []
    for s in range(0, C, _CHUNK):
        idx = np.minimum(np.arange(s, s + _CHUNK), C - 1)  # pad by repeating the last row
        chunk = jax.tree_util.tree_map(lambda x, i=idx: x[i], mom)
        n_real = min(_CHUNK, C - s)
        parts.append(jax.tree_util.tree_map(lambda x, n=n_real: x[:n], _fit_table(chunk, **kw)))
    levels, thresholds, params = jax.tree_util.tree_map(
        lambda *xs: jnp.concatenate(xs, axis=0), *parts)
    return Quantizer(levels=levels, thresholds=thresholds, params=params, scheme=scheme,
                     bits=bits, granularity=granularity, channel_axis=channel_axis)


@functools.partial(jax.jit, static_argnames=("scheme", "bits", "fit", "gain", "rounding",
                                              "base"))
def _fit_table(mom, *, scheme, bits, fit, gain, rounding, base):
    """Fit every row of a batched moments table: ``(levels (C, L), thresholds, params)``."""
    out = jax.vmap(lambda m: fit_moments(m, scheme=scheme, bits=bits, fit=fit,
                                         rounding=rounding, base=base))(mom)
    p = out["p"]
    zero = has_zero(scheme)
    rounding = "linear" if scheme == "lloyd_max" else rounding
    lower = jax.vmap(lambda pk: lower_bounds(pk, zero=zero, rounding=rounding))(p)
    if gain:
        big = jnp.asarray(1e30, jnp.float32)

        def ls_gain(pk, lo, m):
            c0, c1 = m.cdf(lo)
            c0_hi, c1_hi = m.cdf(big)
            e_wq = jnp.sum(pk * jnp.diff(jnp.append(c1, c1_hi)))
            e_qq = jnp.sum(pk * pk * jnp.diff(jnp.append(c0, c0_hi)))
            return jnp.where(e_qq > 0, e_wq / jnp.where(e_qq > 0, e_qq, 1.0), 1.0)

        g = jax.vmap(ls_gain)(p, lower, mom)
    else:
        g = jnp.ones(p.shape[:1], jnp.float32)
    if scheme == "lloyd_max":
        p_final = p * g[:, None]
    else:
        # the stored form of the codebook: two numbers per codebook, exact in float32
        p_final = canonical_levels(scheme, bits, out["c"] * g, out["a"])
    lower_final = jax.vmap(lambda pk: lower_bounds(pk, zero=zero, rounding=rounding))(p_final)
    levels, thresholds = jax.vmap(lambda pk, lo: full_codebook(pk, lo, zero=zero))(
        p_final, lower_final)
    params = {"c": out["c"], "a": out["a"], "gain": g, "r_fit": out["r"]}
    return levels, thresholds, params


def code_dtype(n_levels: int):
    return jnp.uint8 if n_levels <= 256 else jnp.uint16


@jax.jit
def _encode_rows(rows, thresholds):
    return jax.vmap(lambda t, r: jnp.searchsorted(t, r, side="left"))(thresholds, rows)


@jax.jit
def _decode_rows(rows, levels):
    return jax.vmap(lambda lv, r: lv[r])(levels, rows)


def _as_rows(x, q: Quantizer):
    """``(rows (Cb, nb) padded to powers of two, unpad function)`` for per-row coding."""
    x = jnp.asarray(x)
    if q.granularity == "tensor":
        moved, ax = x.reshape(1, -1), None
    else:
        ax = q.channel_axis % x.ndim
        moved = jnp.moveaxis(x, ax, 0)
    rows = moved.reshape(moved.shape[0], -1)
    C, n = rows.shape
    rows = jnp.pad(rows, ((0, _bucket(C) - C), (0, _bucket(n) - n)))

    def unpad(y):
        y = y[:C, :n].reshape(moved.shape)
        return y.reshape(x.shape) if ax is None else jnp.moveaxis(y, 0, ax)

    return rows, unpad


def _table_rows(table, q: Quantizer):
    table = table[None] if q.granularity == "tensor" else table
    C = table.shape[0]
    return jnp.pad(table, ((0, _bucket(C) - C), (0, 0)), mode="edge")


def encode(w: jax.Array, q: Quantizer) -> jax.Array:
    """Integer codes (indices into ``q.levels``) of the nearest level; same shape as ``w``."""
    rows, unpad = _as_rows(jnp.asarray(w, jnp.float32), q)
    codes = _encode_rows(rows, _table_rows(q.thresholds, q))
    return unpad(codes).astype(code_dtype(q.n_levels))


def decode(codes: jax.Array, q: Quantizer) -> jax.Array:
    """Dequantized weights ``levels[codes]``; same shape as ``codes``, float32."""
    rows, unpad = _as_rows(jnp.asarray(codes).astype(jnp.int32), q)
    return unpad(_decode_rows(rows, _table_rows(q.levels, q)))


def quantize(w: jax.Array, **kwargs) -> tuple[jax.Array, Quantizer]:
    """Fit and apply: returns ``(w_hat, q)`` with ``w_hat`` the dequantized weights.

    Takes the keyword arguments of :func:`fit`.
    """
    q = fit(w, **kwargs)
    return decode(encode(w, q), q), q


# --- Whole models -------------------------------------------------------------------------------


def tree_paths(tree) -> list[tuple[str, Any]]:
    """``[("a/b/kernel", leaf), ...]``: leaves with ``/``-joined key paths."""
    out = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        out.append(("/".join(_key_str(k) for k in path), leaf))
    return out


def _key_str(k) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def default_channel_axis(path: str, leaf) -> int:
    """Output-channel axis of a Keras-layout kernel: last, except depthwise ``(kh,kw,C,mult)``."""
    if "depthwise" in path.lower() and np.ndim(leaf) == 4:
        return -2
    return -1


def kurtosis(w) -> float:
    """Excess kurtosis (0 for a Gaussian, 3 for a Laplace)."""
    a = np.asarray(w, np.float64).ravel()
    a = a - a.mean()
    v = a.var()
    return float((a**4).mean() / v**2 - 3.0) if v > 0 else 0.0


def quantize_tree(params, *, select: str = r".*kernel",
                  channel_axis: int | Callable[[str, Any], int] | None = None,
                  scheme: str, bits: int | Mapping[str, int], **fit_kwargs):
    """Quantize every leaf of a pytree whose ``/``-joined path matches ``select``.

    Args:
      params: any pytree of arrays (Flax params, a dict of numpy arrays, ...). Not mutated.
      select: regular expression, matched in full against each leaf's path (``a/b/kernel``).
      channel_axis: for ``granularity="channel"``: an int, or ``f(path, leaf) -> int``;
        ``None`` uses :func:`default_channel_axis` (Keras layouts).
      scheme: the level family; bits: an int, or a mapping path -> bits (mixed widths).
      fit_kwargs: the other keyword arguments of :func:`fit`.
    Returns:
      ``(new_params, report)``: a new tree with the same structure (selected leaves replaced
      by dequantized float32 arrays) and a list of dicts, one per quantized leaf: path, shape,
      size, bits, n_levels, std, max_over_std, kurtosis, params, r, zero_fraction, codes,
      quantizer (the last two for storage; drop them before printing).
    """
    pattern = re.compile(select)
    leaves = tree_paths(params)
    chosen = [(p, x) for p, x in leaves if pattern.fullmatch(p) and np.ndim(x) > 0]
    if not chosen:
        examples = ", ".join(p for p, _ in leaves[:6])
        raise ValueError(f"select={select!r} matches no array leaf; paths look like: {examples}")
    axis_fn = (default_channel_axis if channel_axis is None else
               channel_axis if callable(channel_axis) else (lambda p, x: channel_axis))
    new = {}
    report = []
    for path, leaf in chosen:
        b = bits[path] if isinstance(bits, Mapping) else bits
        w = jnp.asarray(leaf, jnp.float32)
        _check_finite(leaf, what=f"weights at {path!r}")
        q = fit(w, scheme=scheme, bits=int(b), channel_axis=axis_fn(path, leaf), **fit_kwargs)
        codes = encode(w, q)
        w_hat = decode(codes, q)
        new[path] = w_hat.astype(jnp.asarray(leaf).dtype)
        a = np.asarray(leaf, np.float64)
        std = float(a.std())
        report.append({
            "path": path, "shape": tuple(np.shape(leaf)), "size": int(np.size(leaf)),
            "bits": int(b), "n_levels": q.n_levels, "std": std,
            "max_over_std": float(np.abs(a).max() / std) if std > 0 else 0.0,
            "kurtosis": kurtosis(a),
            "params": {k: np.asarray(v).tolist() for k, v in q.params.items()},
            "r": float(corr_mod.sample_r(w, w_hat)),
            "zero_fraction": float(jnp.mean(w_hat == 0)),
            "codes": codes, "quantizer": q,
        })
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    out_leaves = []
    for keypath, leaf in flat:
        p = "/".join(_key_str(k) for k in keypath)
        out_leaves.append(new.get(p, leaf))
    return jax.tree_util.tree_unflatten(treedef, out_leaves), report


def summary(report: list[dict]) -> list[dict]:
    """The report without the arrays (codes, quantizer): printable, JSON-able."""
    return [{k: v for k, v in row.items() if k not in ("codes", "quantizer")} for row in report]
