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

Searches: a first grid, then zooming grids, over ``u = log(c / max|w|)`` and, for a free
exponential base, the log dynamic range; the number of levels is data in the compiled search,
so one compilation serves every bit width and both granularities (``paper_repro.NUMERICS_VERSION`` names
the numerics of the fitted levels).

Inputs and degenerate weights:

- Weights must be floating point: integer (and boolean) arrays are refused with a
  ``ValueError`` (quantizing them would truncate on the way back); convert them explicitly.
  float16 and bfloat16 are fitted and coded in float32 and :func:`quantize` /
  :func:`quantize_tree` return the input's dtype. Non-finite or empty weights are refused.
- Per-channel fitting needs an array with a channel axis and at least one more axis; a 1-D
  array is refused (it would get one codebook per element).
- Tables are computed on ``w / s`` with ``s`` a power of two near ``max|w|`` (exact), so
  weights up to the float32 maximum (``1e37``, ``3e38``) fit without overflow; fits are
  exactly equivariant to power-of-two scalings of the weights.
- All-zero tensor or channel: its codebook scale is ``c = 0``, so every level (and threshold)
  is 0 and the weights decode to zeros in every scheme, also those without a zero level.
  Elsewhere a scheme without a zero level maps an exact zero weight to the smallest level of
  one sign (the level set has no zero).
- Constant channels (all ``|w|`` equal), single elements and other weights with few distinct
  magnitudes make ``r`` flat in the scale: such ties go to the least-squares scale of the
  same level shape, so a constant channel is reproduced to float rounding (not shrunk).
- ``r`` (``params["r_fit"]``) is the uncentred correlation ``E[w Q(w)] / sqrt(E[w^2]
  E[Q(w)^2])`` on the table (Pearson's ``r`` of the symmetric model): 1 for a channel
  reproduced exactly, constant channels included; an all-zero channel has ``r = 1`` by
  definition (reproduced exactly). :func:`paper_repro.core.correlation.sample_r`, used in
  :func:`quantize_tree`'s report, gives 1 for a constant tensor reproduced exactly.
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

# The package-wide numerics version (paper_repro.NUMERICS_VERSION) is bumped whenever a change
# here alters fitted levels or results beyond 1e-6 relative; results computed under another
# version are recomputed. Version 2: the exponential corr search samples (top level, base)
# differently, all-zero and constant channels are reproduced, tables are scale-normalised.

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

# Search settings (changing any of them changes fitted levels: bump paper_repro.NUMERICS_VERSION).
_GRID_1D = 48  # first grid of a one-parameter search
_ZOOM_U = 17  # points per zoom round of the top-level search (2 rounds, each 8x finer)
_TIE = 1e-6  # r within this of the best counts as a tie (broken toward least squares)
_CONST = 4e-7  # 1 - E|w|^2 / E[w^2] below this: a constant channel (float32 rounding)
_BIG = 1e30  # a threshold above every weight (closed-form densities included)
# search box: u = log(c / top), rho = log(c / smallest level), v = log(rho), w = u - rho
_U = (-math.log(100.0), 0.0)
_V = (math.log(0.01), math.log(20.0))


def _plan_2d(K: int) -> tuple:
    """Exponential (top level, base) search at ``K`` positive levels.

    ``((n_u, n_rho) first grid, (n_u, n_w) zoom grid, first zoom half-width along w,
    (first grid, zoom) of the max-anchored base search, (zoom rounds, shrink per round))``:
    dense where a candidate is cheap (few levels; rough ``r`` landscapes), lighter from 7 bits
    on, where each candidate costs 63-128 lookups and ``r`` is smoother.
    """
    if K <= 7:
        return (24, 24), (9, 9), 1.0, (48, 9), (4, 4.0)
    if K <= 16:
        return (16, 16), (7, 7), 1.0, (48, 9), (4, 4.0)
    if K <= 32:
        return (9, 9), (5, 9), 1.5, (48, 9), (4, 4.0)
    return (7, 7), (5, 5), 1.5, (24, 5), (3, 6.0)


def _lookup(mom) -> Callable:
    """``t: (B, M) -> (P(|v| <= t), E[|v| 1{|v| <= t}])`` on the ``B`` rows of a batched table.

    A histogram table takes ``(c0, dc0, c1, dc1)`` at each threshold's bin from flat arrays
    (one plain gather per field, row offsets added to the bin index; the linear interpolation
    of :meth:`paper_repro.core.correlation.Moments.cdf`); sample tables use their ``cdf`` per
    row, closed-form densities elementwise.
    """
    if not isinstance(mom, corr_mod.Moments):
        return mom.cdf
    if mom.kind != "uniform":
        return lambda t: jax.vmap(lambda m, tt: m.cdf(tt))(mom, t)
    B, n1 = mom.c0.shape
    n = n1 - 1
    per = (n / jnp.where(mom.x[:, -1] > 0, mom.x[:, -1], 1.0))[:, None]
    base = (jnp.arange(B, dtype=jnp.int32) * n)[:, None]
    c0, c1 = mom.c0[:, :-1], mom.c1[:, :-1]
    flat = [x.reshape(-1) for x in (c0, mom.c0[:, 1:] - c0, c1, mom.c1[:, 1:] - c1)]

    def look(t):
        pos = jnp.clip(t * per, 0.0, float(n))
        i = jnp.minimum(pos.astype(jnp.int32), n - 1)
        f = pos - i
        take = functools.partial(jnp.take, indices=i + base, mode="clip")
        return take(flat[0]) + f * take(flat[1]), take(flat[2]) + f * take(flat[3])

    return look


def _corr(e_wq, e_qq, m2):
    den = jnp.sqrt(m2 * e_qq)
    return jnp.where(den > 0, e_wq / jnp.where(den > 0, den, 1.0), 0.0)


def _candidates(look, c1_tot, m2, c, lam, K, *, scheme: str, rounding: str):
    """``(r, least-squares gain)``, each ``(B, M)``, of ``M`` candidate level sets per table row.

    Candidate ``(b, i)`` has top level ``c[b, i]`` (``c, lam: (B, M)``) and, for exponential
    levels, ``p_k = c e^{-lam (K-1-k)}`` (``lam = -log a``); ``look``, ``c1_tot``, ``m2`` come
    from the batched table (:func:`_lookup`). ``K`` may be traced: the levels are a loop, not an axis, so one
    compilation serves every bit width. Each level is weighed by the mass between its
    thresholds, exact on the table: ``E[v q] = sum_k p_k (C1(t_{k+1}) - C1(t_k))`` and
    ``E[q q] = sum_k p_k^2 (C0(t_{k+1}) - C0(t_k))``, ``t_K`` above every weight.
    """
    Kf = jnp.asarray(K, jnp.float32)
    zero = has_zero(scheme)

    def level(k):
        if scheme == "sign":
            return c
        if scheme == "linear":
            return c * ((k + 1.0) / Kf)
        if scheme == "linear_midrise":
            return c * ((k + 0.5) / (Kf - 0.5))
        if scheme == "pow2":
            return c * jnp.exp2(k + 1.0 - Kf)
        return c * jnp.exp(-lam * (Kf - 1.0 - k))

    def body(k, s):
        p_prev, c0_prev, c1_prev, e_wq, e_qq = s
        p = level(jnp.asarray(k, jnp.float32))
        if rounding == "log":
            mid = jnp.sqrt(p_prev * p)
        else:
            mid = 0.5 * (p_prev + p)
        first = 0.5 * p if zero else jnp.zeros_like(p)
        c0, c1 = look(jnp.where(k == 0, first, mid))
        return (p, c0, c1, e_wq + p_prev * (c1 - c1_prev), e_qq + p_prev * p_prev * (c0 - c0_prev))

    z = jnp.zeros_like(c)
    p, c0, c1, e_wq, e_qq = jax.lax.fori_loop(0, K, body, (z, z, z, z, z))
    e_wq = e_wq + p * (c1_tot - c1)
    e_qq = e_qq + p * p * (1.0 - c0)
    g = jnp.where(e_qq > 0, e_wq / jnp.where(e_qq > 0, e_qq, 1.0), 1.0)
    return _corr(e_wq, e_qq, m2), g


@dataclasses.dataclass(frozen=True)
class _Track:
    """One zoom search in two coordinates ``z``, mapped to ``(u, rho)`` by ``to_urho``.

    ``start: (M0, 2)`` first candidates; each round evaluates ``offsets: (Z, 2)`` (in units of
    the round's half-width ``h0 / 4^round``) around the track's best point, clipped to
    ``lo..hi``. The best point seen wins; ties keep the earlier point. With ``gain_dir``, each
    round also tries the best point's levels rescaled by their least-squares gain ``g``
    (``z + log(g) gain_dir``) and takes it when its ``r`` is within ``_TIE`` of the best: ties
    on a plateau of ``r`` (a constant channel: ``r`` is scale-free there, least squares is
    not) go to the least-squares scale.
    """

    start: np.ndarray
    offsets: np.ndarray
    h0: tuple[float, float]
    lo: tuple[float, float]
    hi: tuple[float, float]
    to_urho: Callable
    gain_dir: tuple[float, float] | None = None  # how rescaling the levels moves z


def _axis_offsets(n: int, axis: int) -> np.ndarray:
    out = np.zeros((n, 2), np.float32)
    out[:, axis] = np.linspace(-1.0, 1.0, n, dtype=np.float32)
    return out


def _u_track() -> _Track:
    """The top level alone: ``u`` on a grid from ``u = 0`` (max-anchored) down, then zooms.

    The grid runs downward, so ties of ``r`` keep the max-anchored top level. Two zoom rounds
    of 17 points (8x finer each) reach the resolution of four 9-point rounds in half the passes
    over the levels.
    """
    u = np.linspace(_U[1], _U[0], _GRID_1D, dtype=np.float32)
    return _Track(np.stack([u, np.zeros_like(u)], -1), _axis_offsets(_ZOOM_U, 0),
                  ((_U[1] - _U[0]) / (_GRID_1D - 1), 0.0), (_U[0], 0.0), (_U[1], 0.0),
                  lambda z: (z[..., 0], jnp.ones_like(z[..., 0])), gain_dir=(1.0, 0.0))


def _v_track(plan) -> _Track:
    """The base alone, top level pinned at ``max|w|``: ``v = log(rho)`` grid, then zooms.

    The grid runs from the widest level range down, so ties of ``r`` (a plateau, e.g. a
    constant channel) do not pick nearly equal levels.
    """
    n, zoom = plan[3]
    v = np.linspace(_V[1], _V[0], n, dtype=np.float32)
    return _Track(np.stack([np.zeros_like(v), v], -1), _axis_offsets(zoom, 1),
                  (0.0, (_V[1] - _V[0]) / (n - 1)), (0.0, _V[0]), (0.0, _V[1]),
                  lambda z: (z[..., 0], jnp.exp(z[..., 1])))


def _uw_track(plan) -> _Track:
    """Top level and base: a ``(u, log rho)`` grid, zooms in ``(u, w)``.

    ``w = log(smallest level / top)``: the ridge of ``r`` is nearly aligned with ``(u, w)``.
    """
    (nu, nv), (zu, zw), h_w, _, _ = plan
    gu, gv = np.meshgrid(np.linspace(_U[1], _U[0], nu), np.linspace(_V[1], _V[0], nv),
                         indexing="ij")  # downward: ties keep the max-anchored, wide levels
    start = np.stack([gu.ravel(), gu.ravel() - np.exp(gv.ravel())], -1).astype(np.float32)
    tu, tw = np.linspace(-1.0, 1.0, zu), np.linspace(-1.0, 1.0, zw)
    offsets = np.stack(np.meshgrid(tu, tw, indexing="ij"), -1).reshape(-1, 2).astype(np.float32)
    rho_lo, rho_hi = math.exp(_V[0]), math.exp(_V[1])
    return _Track(start, offsets, ((_U[1] - _U[0]) / (nu - 1), h_w),
                  (_U[0], _U[0] - rho_hi), (_U[1], _U[1] - rho_lo),
                  lambda z: (z[..., 0], jnp.clip(z[..., 0] - z[..., 1], rho_lo, rho_hi)),
                  gain_dir=(1.0, 1.0))


def _search(f, tracks: list[_Track], B: int, *, rounds: int = 4, shrink: float = 4.0):
    """Run every track's first grid and zoom rounds on ``B`` rows, candidates in one call of ``f``.

    ``f(u: (B, M), rho: (B, M)) -> (r, g)``, each ``(B, M)``. One call for all first grids and
    one (in a loop) per round for all tracks: few compiled evaluation sites. ``rounds`` zoom
    rounds, the half-width divided by ``shrink`` each round. Returns per track
    ``(z (B, 2), r (B,), g (B,))`` at each row's best point.
    """

    def evaluate(points):
        urho = [t.to_urho(z) for t, z in zip(tracks, points, strict=True)]
        r, g = f(jnp.concatenate([u for u, _ in urho], axis=1),
                 jnp.concatenate([v for _, v in urho], axis=1))
        cuts = list(np.cumsum([z.shape[1] for z in points])[:-1])
        return jnp.split(r, cuts, axis=1), jnp.split(g, cuts, axis=1)

    def pick(z, r, g, k):
        return (jnp.take_along_axis(z, k[:, None, None], axis=1)[:, 0],
                jnp.take_along_axis(r, k[:, None], axis=1)[:, 0],
                jnp.take_along_axis(g, k[:, None], axis=1)[:, 0])

    starts = [jnp.broadcast_to(jnp.asarray(t.start), (B,) + t.start.shape) for t in tracks]
    rs, gs = evaluate(starts)
    best = [pick(z, r, g, jnp.argmax(r, axis=1)) for z, r, g in zip(starts, rs, gs, strict=True)]

    def body(j, best):
        pts = []
        for t, (z0, _, g0) in zip(tracks, best, strict=True):
            lo, hi = jnp.asarray(t.lo, jnp.float32), jnp.asarray(t.hi, jnp.float32)
            h = jnp.asarray(t.h0, jnp.float32) / jnp.float32(shrink)**j
            z = z0[:, None, :] + jnp.asarray(t.offsets)[None] * h
            if t.gain_dir is not None:
                step = jnp.where(g0 > 0, jnp.log(jnp.where(g0 > 0, g0, 1.0)), 0.0)
                zg = z0 + step[:, None] * jnp.asarray(t.gain_dir, jnp.float32)
                z = jnp.concatenate([z, zg[:, None, :]], axis=1)
            pts.append(jnp.clip(z, lo, hi))
        rs, gs = evaluate(pts)
        out = []
        for t, (z0, r0, g0), z, r, g in zip(tracks, best, pts, rs, gs, strict=True):
            n = t.offsets.shape[0]
            zk, rk, gk = pick(z, r, g, jnp.argmax(r[:, :n], axis=1))
            up = rk > r0
            zb, rb, gb = jnp.where(up[:, None], zk, z0), jnp.where(up, rk, r0), jnp.where(up, gk, g0)
            if t.gain_dir is not None:
                tie = r[:, n] >= rb - _TIE
                zb = jnp.where(tie[:, None], z[:, n], zb)
                rb, gb = jnp.where(tie, r[:, n], rb), jnp.where(tie, g[:, n], gb)
            out.append((zb, rb, gb))
        return out

    return jax.lax.fori_loop(0, rounds, body, best)


@functools.partial(jax.jit, static_argnames=("scheme", "fit", "rounding", "base", "plan"))
def _fit_rows(mom, K, *, scheme: str, fit: str, rounding: str, base, plan) -> dict:
    """Fit every row of a batched table in its own units: ``c, a, r, g: (B,)``.

    ``c`` top level, ``a`` exponential base (0 for other schemes), ``r`` on the table, ``g`` the
    least-squares gain of the fitted levels. ``K`` is data: one compilation per search plan
    serves every bit width. Searches run over ``u = log(c / top)`` in ``[log(1/100), 0]``
    and, for free exponential bases, ``rho = log(c / smallest level)`` in ``[0.01, 20]``
    (``a = exp(-rho / (K - 1))``): a first grid, then zooming grids (:func:`_search`, ties of
    ``r`` going to the least-squares scale). The free-base corr fit keeps the max-anchored
    solution when it is better. An all-zero row gets ``c = 0`` and ``r = 1``; a constant row
    (all ``|w|`` equal) gets ``c = max|w|`` and gain 1, so it is reproduced exactly.
    """
    B = mom.m2.shape[0]
    empty = ~(mom.top > 0)
    top = jnp.where(empty, 1.0, mom.top)
    look = _lookup(mom)
    c1_tot = look(jnp.full((B, 1), _BIG, jnp.float32))[1]
    m2 = jnp.asarray(mom.m2)[:, None]
    free_base = plan is not None
    Km1 = jnp.maximum(jnp.asarray(K, jnp.float32) - 1.0, 1.0)
    a_fixed = jnp.float32(0.5 if scheme == "pow2" else (base if base is not None else 0.5))

    def f(u, rho):
        lam = rho / Km1 if free_base else jnp.broadcast_to(-jnp.log(a_fixed), u.shape)
        return _candidates(look, c1_tot, m2, top[:, None] * jnp.exp(u), lam, K, scheme=scheme,
                           rounding=rounding)

    # all |w| equal (E|w|^2 = E[w^2] to float rounding): the top level reproduces them
    const = ~empty & (c1_tot[:, 0] ** 2 >= mom.m2 * (1.0 - _CONST))

    def done(c, rho, r, g):
        a = jnp.exp(-rho / Km1) if free_base else jnp.broadcast_to(a_fixed, c.shape)
        c, g = jnp.where(const, top if scheme != "sign" else c, c), jnp.where(const, 1.0, g)
        return {"c": jnp.where(empty, 0.0, c),
                "a": jnp.asarray(a if scheme in _EXPONENTIAL else jnp.zeros_like(c), jnp.float32),
                "r": jnp.where(empty, 1.0, r), "g": jnp.where(empty, 1.0, g)}

    if scheme == "sign" or (fit == "max" and not free_base):
        # sign: r does not depend on c; the least-squares scale E|v| keeps magnitudes right
        c = c1_tot[:, 0] if (scheme == "sign" and fit == "corr") else top
        r, g = f(jnp.log(c / top)[:, None], jnp.ones((B, 1), jnp.float32))
        return done(c, jnp.ones_like(c), r[:, 0], g[:, 0])
    if fit == "max":
        rounds, shrink = plan[4]
        ((z, r, g),) = _search(f, [_v_track(plan)], B, rounds=rounds, shrink=shrink)
        return done(top, jnp.exp(z[:, 1]), r, g)
    if free_base:
        rounds, shrink = plan[4]
        (z, r, g), (z1, r1, g1) = _search(f, [_uw_track(plan), _v_track(plan)], B,
                                          rounds=rounds, shrink=shrink)
        rho = jnp.clip(z[:, 0] - z[:, 1], math.exp(_V[0]), math.exp(_V[1]))
        # the corr fit never loses to the max-anchored one: compare and keep the better
        better = r1 > r
        u = jnp.where(better, 0.0, z[:, 0])
        rho = jnp.where(better, jnp.exp(z1[:, 1]), rho)
        r, g = jnp.where(better, r1, r), jnp.where(better, g1, g)
    else:
        ((z, r, g),) = _search(f, [_u_track()], B, rounds=2, shrink=8.0)
        u, rho = z[:, 0], jnp.ones_like(r)
    return done(top * jnp.exp(u), rho, r, g)


def _lloyd_max(bits, moments, iters=300):
    """Symmetric Lloyd-Max levels (centroid / midpoint iteration) on a moments table."""
    spread = jnp.sqrt(moments.m2) * 3.0
    p0 = positive_levels("lloyd_max", bits, jnp.minimum(spread, moments.top))

    def step(p, _):
        lower = lower_bounds(p, zero=False)
        c0, c1 = moments.cdf(lower)
        big = jnp.asarray(_BIG, jnp.float32)
        c0_hi, c1_hi = moments.cdf(big)
        n0 = jnp.diff(jnp.append(c0, c0_hi))
        n1 = jnp.diff(jnp.append(c1, c1_hi))
        new = jnp.where(n0 > 1e-12, n1 / jnp.where(n0 > 1e-12, n0, 1.0), p)
        return jnp.sort(new), None

    p, _ = jax.lax.scan(step, p0, None, length=iters)
    return p


@functools.partial(jax.jit, static_argnames=("bits",))
def _lloyd_rows(mom, *, bits):
    """Lloyd-Max levels of every row: ``{"p": (C, K), "c", "a", "r", "g": (C,)}``."""

    def one(m):
        empty = ~(m.top > 0)
        p = _lloyd_max(bits, m)
        c0, c1 = m.cdf(lower_bounds(p, zero=False))
        c0 = jnp.append(c0, 1.0)
        c1 = jnp.append(c1, m.cdf(jnp.asarray(_BIG, jnp.float32))[1])
        e_wq = jnp.sum(p * jnp.diff(c1))
        e_qq = jnp.sum(p * p * jnp.diff(c0))
        g = jnp.where(e_qq > 0, e_wq / jnp.where(e_qq > 0, e_qq, 1.0), 1.0)
        const = ~empty & (c1[-1] ** 2 >= m.m2 * (1.0 - _CONST))
        g = jnp.where(const, 1.0, g)
        return {"p": jnp.where(empty, 0.0, p), "c": jnp.where(empty, 0.0, p[-1]),
                "a": jnp.float32(0.0), "r": jnp.where(empty, 1.0, _corr(e_wq, e_qq, m.m2)),
                "g": jnp.where(empty, 1.0, g)}

    return jax.vmap(one)(mom)


def _fit_batch(mom, *, scheme: str, bits: int, fit: str, rounding: str, base) -> dict:
    """Fit every row of a batched table (table units): ``c, a, r, g: (C,)`` (+ ``p`` Lloyd-Max)."""
    if scheme == "lloyd_max":
        return _lloyd_rows(mom, bits=bits)
    K = n_positive(scheme, bits)
    free_base = scheme in ("exponential", "exponential_nozero") and base is None and K > 1
    plan = _plan_2d(K) if free_base else None
    rounding = "linear" if scheme == "sign" else rounding
    return _fit_rows(mom, jnp.int32(K), scheme=scheme, fit=fit, rounding=rounding,
                     base=None if base is None else float(base), plan=plan)


@functools.partial(jax.jit, static_argnames=("scheme", "bits", "fit", "rounding", "base"))
def fit_moments(moments, *, scheme: str, bits: int, fit: str = "corr",
                rounding: str = "linear", base: float | None = None) -> dict:
    """Fit one quantizer's positive levels on a moments table (one tensor or one channel).

    ``moments``: a :class:`paper_repro.core.correlation.Moments` (levels come back in the
    weights' units, times its ``scale``) or a closed-form density
    (:func:`paper_repro.core.correlation.density_moments`). Returns
    ``{"p": (K,), "c": (), "a": (), "r": ()}`` where ``r`` is exact on the table. Searches run
    over ``log(c / top)`` in ``[log(1/100), 0]`` and, for free exponential bases, the log
    dynamic range ``log(c / smallest level)`` in ``[0.01, 20]``: a first grid, then zooms.
    """
    batch = jax.tree_util.tree_map(lambda x: jnp.asarray(x)[None], moments)
    out = jax.tree_util.tree_map(lambda x: x[0], _fit_batch(
        batch, scheme=scheme, bits=bits, fit=fit, rounding=rounding, base=base))
    s = jnp.asarray(getattr(moments, "scale", 1.0), jnp.float32)
    if scheme == "lloyd_max":
        p = out["p"]
    else:
        p = canonical_levels(scheme, bits, out["c"], out["a"])
    return {"p": p * s, "c": out["c"] * s, "a": out["a"], "r": out["r"]}


def _codebooks(out: dict, scale, *, scheme: str, bits: int, gain: bool, rounding: str, xp):
    """``(levels (C, L), thresholds (C, L-1), params)`` in the weights' units.

    Levels are the stored two-number form (:func:`canonical_levels`, times the gain), or the
    Lloyd-Max levels; thresholds are computed in table units and scaled back by each row's
    power of two (exact), so nothing overflows near the float32 maximum. ``xp``: ``numpy`` for
    concrete tables (the same bits as the storage code's rebuild), ``jax.numpy`` under a trace.
    """
    f32 = xp.float32
    s = xp.asarray(scale, f32)[:, None]
    c = xp.asarray(out["c"], f32) * s[:, 0]
    g = xp.asarray(out["g"], f32) if gain else xp.ones_like(c)
    if scheme == "lloyd_max":
        p = xp.asarray(out["p"], f32) * g[:, None] * s
    else:
        p = canonical_levels(scheme, bits, c * g, xp.asarray(out["a"], f32), xp=xp)
    zero = has_zero(scheme)
    pn = p / s
    if rounding == "log" and scheme != "lloyd_max":
        mids = xp.sqrt(pn[:, :-1] * pn[:, 1:])
    else:
        mids = f32(0.5) * (pn[:, :-1] + pn[:, 1:])
    first = f32(0.5) * pn[:, :1] if zero else xp.zeros_like(pn[:, :1])
    lower = xp.concatenate([first, mids], axis=1) * s
    neg_p, neg_lo = -p[:, ::-1], -lower[:, ::-1]
    if zero:
        levels = xp.concatenate([neg_p, xp.zeros_like(p[:, :1]), p], axis=1)
        thresholds = xp.concatenate([neg_lo, lower], axis=1)
    else:
        levels = xp.concatenate([neg_p, p], axis=1)
        thresholds = xp.concatenate([neg_lo[:, :-1], xp.zeros_like(p[:, :1]), lower[:, 1:]],
                                    axis=1)
    params = {"c": c, "a": xp.asarray(out["a"], f32), "gain": g,
              "r_fit": xp.asarray(out["r"], f32)}
    return levels, thresholds, params


# --- Public API ---------------------------------------------------------------------------------


_ROWS = 16  # rows (channels, or one padded tensor) per compiled call: one compilation serves
# every layer and both granularities; 16 histogram tables (128 KiB each) stay in cache


def _is_tracer(x) -> bool:
    return isinstance(x, jax.core.Tracer)


def _dtype_of(w):
    dtype = getattr(w, "dtype", None)
    return np.asarray(w).dtype if dtype is None else np.dtype(dtype)


def _check_dtype(w, what="weights") -> None:
    """Refuse anything but floating-point weights (integers would be truncated on the way back)."""
    dtype = _dtype_of(w)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"{what} have dtype {dtype}: quantization needs floating-point weights "
                         "(float16, bfloat16, float32 or float64); convert them explicitly, "
                         "e.g. w.astype(np.float32)")


def _check_finite(w, what="weights") -> None:
    _check_dtype(w, what)
    if _is_tracer(w):
        return
    a = np.asarray(w)
    if a.size == 0:
        raise ValueError(f"{what} are empty: nothing to quantize")
    if a.dtype not in (np.float32, np.float64):
        a = a.astype(np.float32)
    if not np.all(np.isfinite(a)):
        bad = int(np.size(a) - np.count_nonzero(np.isfinite(a)))
        raise ValueError(f"{what} contain {bad} non-finite values (nan/inf); fix them first")


def _channel_axis(w, channel_axis: int) -> int:
    """The channel axis of ``w`` as a non-negative int; per-channel needs a 2-D+ array."""
    shape = np.shape(w)
    if len(shape) < 2:
        raise ValueError(f"per-channel quantization needs an array with a channel axis and at "
                         f"least one more axis, got shape {shape}: use granularity='tensor'")
    if not isinstance(channel_axis, (int, np.integer)) or not -len(shape) <= channel_axis < len(
            shape):
        raise ValueError(f"channel_axis={channel_axis!r} out of range for shape {shape}")
    return int(channel_axis) % len(shape)


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
    pass over the weights (each fit then costs O(levels) per candidate). Per tensor ``C = 1``;
    per channel ``C = w.shape[channel_axis]``.
    """
    if granularity not in GRANULARITIES:
        raise ValueError(f"unknown granularity {granularity!r}; choose one of {GRANULARITIES}")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    if not isinstance(bins, (int, np.integer)) or isinstance(bins, bool) or bins < 2:
        raise ValueError(f"bins must be an integer >= 2, got {bins!r}")
    _check_finite(w)
    xp = jnp if _is_tracer(w) else np
    w = xp.asarray(w, xp.float32)
    if granularity == "channel":
        ax = _channel_axis(w, channel_axis)
        rows = xp.moveaxis(w, ax, 0).reshape(w.shape[ax], -1)
    else:
        rows = w.reshape(1, -1)
    return _moments(rows, method, bins)


def fit(w: jax.Array | None, *, scheme: str, bits: int, fit: str = "corr",
        granularity: str = "tensor", channel_axis: int = -1, gain: bool = False,
        rounding: str = "linear", base: float | None = None, method: str = "histogram",
        bins: int = 2048, table=None) -> Quantizer:
    """Fit a quantizer to weights ``w`` (any shape; 2-D or more per channel).

    Args:
      w: floating-point weights (float16/bfloat16 are fitted in float32), any shape;
        per-channel fits use ``channel_axis`` as the output channels. ``None`` with ``table``.
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
    if w is None and table is None:
        raise ValueError("nothing to fit: pass the weights w or a table from moments(w)")
    if w is not None:
        _check_dtype(w)
        if granularity == "channel":
            channel_axis = _channel_axis(w, channel_axis)
    mom = table if table is not None else moments(
        w, granularity=granularity, channel_axis=channel_axis, method=method, bins=bins)
    C = int(np.shape(mom.m2)[0]) if np.ndim(mom.m2) else 0
    if granularity == "tensor" and C != 1:
        raise ValueError(f"the table has {C or 'no'} rows but a per-tensor fit needs one: pass "
                         "moments(w, granularity='tensor')")
    if granularity == "channel" and w is not None and C != np.shape(w)[channel_axis]:
        raise ValueError(f"the table has {C} rows for {np.shape(w)[channel_axis]} channels: "
                         "pass moments(w, granularity='channel') with the same channel_axis")
    if np.ndim(mom.scale) == 0:  # a hand-made table without per-row scales
        mom = dataclasses.replace(mom, scale=jnp.broadcast_to(jnp.float32(mom.scale), (C,)))
    traced = any(_is_tracer(x) for x in jax.tree_util.tree_leaves(mom))
    xp = jnp if traced else np
    kw = dict(scheme=scheme, bits=bits, fit=fit, rounding=rounding, base=base)
    B = _ROWS
    parts = []
    for s in range(0, C, B):  # dispatched asynchronously: Python slices while XLA fits
        if s + B <= C:
            chunk = jax.tree_util.tree_map(lambda x, s=s: x[s:s + B], mom)
        else:
            idx = np.minimum(np.arange(s, s + B), C - 1)  # pad by repeating the last row
            chunk = jax.tree_util.tree_map(lambda x, i=idx: x[i], mom)
        parts.append(_fit_batch(chunk, **kw))
    out = {k: (jnp.concatenate([o[k] for o in parts]) if len(parts) > 1 else parts[0][k])[:C]
           for k in parts[0]}
    if not traced:
        out = {k: np.asarray(v) for k, v in out.items()}
    levels, thresholds, params = _codebooks(out, mom.scale, scheme=scheme, bits=bits,
                                            gain=gain, rounding=rounding, xp=xp)
    if granularity == "tensor":
        levels, thresholds = levels[0], thresholds[0]
        params = {k: v[0] for k, v in params.items()}
    return Quantizer(levels=jnp.asarray(levels), thresholds=jnp.asarray(thresholds),
                     params={k: jnp.asarray(v) for k, v in params.items()}, scheme=scheme,
                     bits=bits, granularity=granularity, channel_axis=channel_axis)


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
    _check_dtype(w)
    rows, unpad = _as_rows(jnp.asarray(w, jnp.float32), q)
    codes = _encode_rows(rows, _table_rows(q.thresholds, q))
    return unpad(codes).astype(code_dtype(q.n_levels))


def decode(codes: jax.Array, q: Quantizer) -> jax.Array:
    """Dequantized weights ``levels[codes]``; same shape as ``codes``, float32."""
    rows, unpad = _as_rows(jnp.asarray(codes).astype(jnp.int32), q)
    return unpad(_decode_rows(rows, _table_rows(q.levels, q)))


def quantize(w: jax.Array, **kwargs) -> tuple[jax.Array, Quantizer]:
    """Fit and apply: returns ``(w_hat, q)`` with ``w_hat`` the dequantized weights.

    Takes the keyword arguments of :func:`fit`. ``w_hat`` has the input's floating dtype as
    JAX holds it (float16 and bfloat16 stay; fitting and coding run in float32; float64 is
    float32 unless JAX runs with x64).
    """
    q = fit(w, **kwargs)
    return decode(encode(w, q), q).astype(_out_dtype(w)), q


def _out_dtype(w):
    return jax.dtypes.canonicalize_dtype(_dtype_of(w))


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
                  scheme: str | Mapping[str, str], bits: int | Mapping[str, int],
                  **fit_kwargs):
    """Quantize every leaf of a pytree whose ``/``-joined path matches ``select``.

    Args:
      params: any pytree of arrays (Flax params, a dict of numpy arrays, ...). Not mutated.
      select: regular expression, matched in full against each leaf's path (``a/b/kernel``).
      channel_axis: for ``granularity="channel"``: an int, or ``f(path, leaf) -> int``;
        ``None`` uses :func:`default_channel_axis` (Keras layouts).
      scheme: the level family, or a mapping path -> family (a family per layer);
      bits: an int, or a mapping path -> bits (mixed widths).
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
        s = scheme[path] if isinstance(scheme, Mapping) else scheme
        _check_finite(leaf, what=f"weights at {path!r}")
        if fit_kwargs.get("granularity") == "channel" and np.ndim(leaf) < 2:
            raise ValueError(f"weights at {path!r} have shape {np.shape(leaf)}: per-channel "
                             "quantization needs a channel axis and one more; select only "
                             "kernels (select=...) or use granularity='tensor'")
        w = jnp.asarray(leaf, jnp.float32)
        q = fit(w, scheme=s, bits=int(b), channel_axis=axis_fn(path, leaf), **fit_kwargs)
        codes = encode(w, q)
        w_hat = decode(codes, q)
        new[path] = w_hat.astype(_out_dtype(leaf))
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
