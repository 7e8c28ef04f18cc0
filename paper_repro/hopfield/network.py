"""Hopfield networks with Hebbian and quantized couplings: simulation (docs/theory.md §3).

Patterns ``xi`` in {±1}^(M x N), load ``alpha = M / N``, Hebbian couplings
``T = xi^T xi`` with zero diagonal. The quantized network uses ``Q(T)``: the off-diagonal
elements scaled by ``sqrt(M)`` (or their measured standard deviation), quantized elementwise
by :mod:`paper_repro.core.quantize`, diagonal kept at zero. Dynamics are zero-temperature:
``s_i <- sign(h_i)``, ``h = T s``, a neuron with ``h_i = 0`` keeps its state.

- :func:`sync_dynamics`: all neurons at once (batched matmul), until every state is a fixed
  point or a 2-cycle, or ``max_steps``.
- :func:`async_dynamics`: one neuron at a time in a random order per sweep (keys explicit);
  the energy ``E = -1/2 s.T s`` never increases (zero diagonal, symmetric ``T``).
- :func:`overlap` ``m = xi.s / N``; :func:`stability` (one-step: fraction of bits and of
  whole patterns that are fixed points); :func:`retrieve` from stored patterns or corrupted
  probes (basins of attraction); :func:`field_agreement` of the local-field signs of ``T`` and
  ``Q(T)`` at random states (Sheppard: ``1 - arccos(r)/pi``); :func:`capacity_from_curve`
  and :func:`extrapolate_capacity` (finite-size extrapolation ``alpha_c(N) = a + b/sqrt(N)``).

All batched functions take states ``s: (B, N) float32`` of ±1 and are jit-compiled; every
random choice comes from an explicit ``jax.random`` key.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from paper_repro.core import quantize

#: Default criterion of :func:`capacity_from_curve`: the load where the mean final overlap
#: from the stored patterns first falls below this value.
CAPACITY_THRESHOLD = 0.8
SCALES = ("sqrt_m", "std")


# --- patterns and couplings ---------------------------------------------------------------


def patterns(key: jax.Array, M: int, N: int) -> jax.Array:
    """``M`` random unbiased patterns. Returns ``xi: (M, N) int8`` of ±1."""
    if M < 0 or N < 1:
        raise ValueError(f"need M >= 0 and N >= 1 patterns/neurons, got M={M}, N={N}")
    return jnp.where(jax.random.bernoulli(key, 0.5, (M, N)), 1, -1).astype(jnp.int8)


@jax.jit
def hebbian(xi: jax.Array) -> jax.Array:
    """Hebbian couplings ``T = xi^T xi`` with zero diagonal. ``xi: (M, N)`` -> ``(N, N) float32``.

    Entries are integers (exact in float32 while ``M < 2^24``); off-diagonal ones have mean 0
    and variance ``M``.
    """
    x = xi.astype(jnp.float32)
    T = x.T @ x
    return T * (1.0 - jnp.eye(T.shape[0], dtype=T.dtype))


@jax.jit
def hebbian_update(T: jax.Array, xi_new: jax.Array) -> jax.Array:
    """Add patterns ``xi_new: (k, N)`` to Hebbian couplings ``T: (N, N)`` (diagonal kept 0)."""
    return T + hebbian(xi_new)


def _offdiag_sample(key, N: int, n: int):
    """``n`` random off-diagonal index pairs ``(i, j)``, ``i != j``, of an ``N x N`` matrix."""
    ki, kj = jax.random.split(key)
    i = jax.random.randint(ki, (n,), 0, N)
    j = (i + 1 + jax.random.randint(kj, (n,), 0, N - 1)) % N
    return i, j


@jax.jit
def offdiag_r(T: jax.Array, Q: jax.Array) -> jax.Array:
    """Pearson correlation of the off-diagonal elements of ``T`` and ``Q`` (both ``(N, N)``)."""
    N = T.shape[0]
    mask = 1.0 - jnp.eye(N, dtype=jnp.float32)
    n = N * (N - 1)
    mt, mq = jnp.sum(T * mask) / n, jnp.sum(Q * mask) / n
    a, b = (T - mt) * mask, (Q - mq) * mask
    return jnp.sum(a * b) / jnp.sqrt(jnp.sum(a * a) * jnp.sum(b * b))


def coupling_scale(T: jax.Array, *, M: int | None = None, scale: str = "sqrt_m") -> jax.Array:
    """The unit the couplings are divided by before quantizing: ``sqrt(M)`` or their std."""
    if scale == "sqrt_m":
        if M is None:
            raise ValueError("scale='sqrt_m' needs the number of patterns M (or use scale='std')")
        return jnp.float32(math.sqrt(max(M, 1)))
    if scale == "std":
        N = T.shape[0]
        mask = 1.0 - jnp.eye(N, dtype=jnp.float32)
        return jnp.sqrt(jnp.sum(jnp.square(T) * mask) / (N * (N - 1)))
    raise ValueError(f"unknown scale {scale!r}; choose one of {SCALES}")


def quantize_couplings(
    T: jax.Array,
    *,
    scheme: str,
    bits: int | None = None,
    M: int | None = None,
    fit: str = "corr",
    scale: str = "sqrt_m",
    key: jax.Array | None = None,
    fit_sample: int | None = 1 << 17,
    fit_dither: bool | str = "auto",
    **fit_kwargs: Any,
) -> tuple[jax.Array, dict]:
    """Quantize Hebbian couplings elementwise: ``Q(T)`` with zero diagonal, and a report.

    ``T: (N, N)``. The off-diagonal elements are divided by ``sqrt(M)`` (``scale="sqrt_m"``)
    or their measured std (``scale="std"``), the quantizer is fitted with
    ``quantize.fit(..., scheme=, bits=, fit=, **fit_kwargs)`` on ``fit_sample`` random
    off-diagonal elements drawn with ``key`` (``None``: on all of them), and every element
    is coded to its level. ``scheme="float"`` returns ``T`` unchanged. Positive rescaling
    does not change the ``T = 0`` dynamics, so ``Q`` is returned in the quantizer's units,
    except for ``sign`` and ``linear`` levels, returned as integers (level / step) so that
    local fields are exact sums (ties ``h = 0`` resolved exactly, energies exact).

    Hebbian couplings are integers of one parity (a lattice of step 2). Lloyd's iteration,
    a local method, gets trapped on such lattice data (3-bit ``r`` 0.979 instead of 0.982),
    so ``fit_dither="auto"`` adds uniform noise of one lattice cell, ``U(-1, 1)``, to the
    *fitting sample* of ``lloyd_max`` only (the grid-searched schemes find their optimum on
    the lattice itself); ``True``/``False`` force it on or off. The coded matrix is never
    dithered.

    Returns ``(Q: (N, N) float32, {"r", "scale", "levels", "thresholds", "params",
    "zero_fraction"})`` with ``r`` the off-diagonal correlation of ``T`` and ``Q``.
    """
    if scheme == "float":
        return T, {"r": 1.0, "scale": 1.0, "levels": None, "thresholds": None, "params": {},
                   "zero_fraction": 0.0}
    if bits is None:
        if scheme != "sign":
            raise ValueError(f"scheme {scheme!r} needs bits=")
        bits = 1
    if fit_dither not in (True, False, "auto"):
        raise ValueError(f"fit_dither must be True, False or 'auto', got {fit_dither!r}")
    dither = scheme == "lloyd_max" if fit_dither == "auto" else bool(fit_dither)
    N = T.shape[0]
    unit = coupling_scale(T, M=M, scale=scale)
    key = jax.random.PRNGKey(0) if key is None else key
    k_pos, k_dither = jax.random.split(key)
    if fit_sample is None:
        sample = T[~np.eye(N, dtype=bool)]
    else:
        i, j = _offdiag_sample(k_pos, N, int(fit_sample))
        sample = T[i, j]
    if dither:
        sample = sample + jax.random.uniform(k_dither, sample.shape, minval=-1.0, maxval=1.0)
    q = quantize.fit(sample / unit, scheme=scheme, bits=bits, fit=fit, **fit_kwargs)
    # equidistant levels: count in units of the step, so fields are exact integer sums
    steps = (quantize.n_positive(scheme, bits)
             if scheme in ("sign", "linear") and not fit_kwargs.get("gain") else None)
    Q = _code(T, unit, q, steps=steps)
    params = {k: float(np.asarray(v)) for k, v in dict(q.params).items()
              if np.asarray(v).size == 1}
    r, zero_fraction = _report(T, Q)
    return Q, {
        "r": float(r),
        "scale": float(unit),
        "levels": np.asarray(q.levels),
        "thresholds": np.asarray(q.thresholds),
        "params": params,
        "zero_fraction": float(zero_fraction),
    }


@functools.partial(jax.jit, static_argnames=("steps",))
def _code(T, unit, q, *, steps: int | None = None):
    """``Q``: each element of ``T / unit`` coded to its level (zero diagonal); with ``steps``
    (equidistant levels) in units of the step, ``round(level / top * steps)``. One pass."""
    # Same codes as quantize.encode (searchsorted, side="left"); "compare_all" is ~8x faster
    # than the default search for the few thresholds of a low-bit codebook on CPU.
    codes = jnp.searchsorted(q.thresholds, T / unit, side="left", method="compare_all")
    Q = q.levels[codes].astype(jnp.float32)
    Q = Q * (1.0 - jnp.eye(T.shape[0], dtype=jnp.float32))
    if steps is not None:
        Q = jnp.round(Q / q.levels[-1] * steps)
    return Q


@jax.jit
def _report(T, Q):
    N = T.shape[0]
    return offdiag_r(T, Q), (jnp.sum(Q == 0) - N) / (N * (N - 1))


# --- dynamics ------------------------------------------------------------------------------


def _sign_keep(h, s):
    return jnp.where(h > 0, 1.0, jnp.where(h < 0, -1.0, s))


#: Batches of states are padded to a multiple of this many rows (padding rows are frozen from
#: the start), so that the loads of a sweep, each with its own number of probes, share a few
#: compiled programs instead of compiling one each.
ROW_BUCKET = 16


def sync_dynamics(T: jax.Array, s0: jax.Array, *, max_steps: int = 100,
                  sparse_fraction: float = 0.125, row_fraction: float = 1 / 32):
    """Synchronous ``T = 0`` dynamics ``s <- sign(s T)`` of a batch of states.

    ``T: (N, N)`` symmetric, ``s0: (B, N)`` of ±1. A state stops (is frozen) once it is a
    fixed point or on a 2-cycle (the only attractors of synchronous symmetric dynamics); the
    run ends when all have stopped or after ``max_steps`` updates.

    Local fields are carried along and updated with the flipped neurons only:
    ``h += (s_new - s)[:, U] @ T[U]`` where ``U`` is the union of the neurons flipped in the
    batch, when ``|U| <= sparse_fraction * N`` (a matmul ``1/sparse_fraction`` times
    smaller); otherwise in full. With integer couplings (float Hebbian, sign and linear
    codes: every field is an exact integer sum, whatever the order of the sums) the full
    update only touches the states that flipped, in chunks of :data:`ROW_BUCKET` rows
    (settled states cost nothing), and row by row when no state flips more than
    ``row_fraction * N`` neurons (``h_b += sum_k d_bk T[i_bk]`` over the flipped neurons
    ``i_bk`` of state ``b``: long transients near capacity flip a few neurons per state,
    but different ones); the batch is padded to a multiple of :data:`ROW_BUCKET` rows (frozen
    from the start), so that sweeps over loads compile a few programs. None of this changes
    a result. Other couplings keep the full product ``h = s_new @ T`` on the batch as given,
    so that their float32 rounding, which depends on the order of the sums and the shapes of
    the products, stays as it was. ``sparse_fraction=0`` and ``row_fraction=0`` turn the
    sparse and the row-by-row update off.

    Returns ``(s: (B, N) float32, steps: int32, fixed: (B,) bool)``.
    """
    B, N = s0.shape
    exact = bool(_exact_fields(T))
    Bp = max(ROW_BUCKET, -(-B // ROW_BUCKET) * ROW_BUCKET) if exact else B
    if Bp != B:
        s0 = np.concatenate([np.asarray(s0, np.float32), np.zeros((Bp - B, N), np.float32)])
    s, t, fixed = _sync_core(T, s0, jnp.int32(B), max_steps=int(max_steps),
                             sparse_fraction=float(sparse_fraction),
                             row_fraction=float(row_fraction), exact=exact)
    if Bp != B:
        s, fixed = s[:B], fixed[:B]
    return s, t, fixed


@jax.jit
def _exact_fields(T):
    """Whether every local field ``s T`` of ±1 states is an exact float32 sum: integer
    couplings whose row sums of magnitudes stay below ``2^24``."""
    return jnp.all(T == jnp.round(T)) & (jnp.max(jnp.sum(jnp.abs(T), axis=0)) < 2.0**24)


@functools.partial(jax.jit, static_argnames=("max_steps", "sparse_fraction", "row_fraction",
                                             "exact"))
def _sync_core(T, s0, n_valid, *, max_steps: int, sparse_fraction: float,
               row_fraction: float, exact: bool):
    """:func:`sync_dynamics` on a batch ``s0: (B, N)`` whose first ``n_valid`` rows are
    states (the rest frozen from the start); ``exact``: the couplings give exact fields."""
    s0 = jnp.asarray(s0, jnp.float32)
    B, N = s0.shape
    K = int(sparse_fraction * N)
    R = int(row_fraction * N) if exact else 0
    R4 = -(-R // 4) * 4
    C = ROW_BUCKET if exact and B % ROW_BUCKET == 0 else B  # rows per chunk
    rank = N - jnp.arange(N, dtype=jnp.int32)  # top_k of rank over a mask: its indices, ascending

    def sparse(s_new, s, h):
        d = s_new - s
        flipped = jnp.any(d != 0, axis=0)
        U = jax.lax.top_k(jnp.where(flipped, rank, 0), K)[1]  # the flipped neurons first
        n = jnp.sum(flipped)
        dU = jnp.where(jnp.arange(K) < n, jnp.take(d, U, axis=1), 0.0)  # zero the padding
        return h + dU @ jnp.take(T, U, axis=0)

    def full(s_new, s, h):
        return s_new @ T

    def chunks(s_new, s, h, update):
        """``update(rows, h_rows) -> h_rows`` on the states that flipped, ``C`` at a time
        (the last chunk may hold states that did not flip: their update changes nothing)."""
        moving = jnp.any(s_new != s, axis=1)
        order = jax.lax.top_k(jnp.where(moving, B - jnp.arange(B), 0), B)[1]  # flipped first

        def chunk(c, h):
            rows = jax.lax.dynamic_slice(order, (c * C,), (C,))
            return h.at[rows].set(update(rows, jnp.take(h, rows, axis=0)))

        return jax.lax.fori_loop(0, (jnp.sum(moving) + C - 1) // C, chunk, h)

    def full_rows(s_new, s, h):
        # one product of all rows is faster than products of chunks of half of them or more
        return jax.lax.cond(
            2 * jnp.sum(jnp.any(s_new != s, axis=1)) > B, full,
            lambda s_new, s, h: chunks(
                s_new, s, h, lambda rows, h_rows: jnp.take(s_new, rows, axis=0) @ T),
            s_new, s, h)

    def by_row(s_new, s, h):
        d = s_new - s
        count = jnp.cumsum(d != 0, axis=1, dtype=jnp.int32)  # (B, N), ascending per row
        # i[b, k]: the (k+1)-th flipped neuron of state b (N where it flips fewer); w[b, k]
        # its change (0 where none). Four rows of T per loop step (R4 a multiple of 4).
        i = jax.vmap(lambda c: jnp.searchsorted(c, jnp.arange(1, R4 + 1), side="left"))(count)
        w = jnp.where(i < N, jnp.take_along_axis(d, jnp.minimum(i, N - 1), axis=1), 0.0)
        i = jnp.where(i < N, i, 0)

        def add(k, h):
            for u in range(4):
                h = h + w[:, 4 * k + u, None] * jnp.take(T, i[:, 4 * k + u], axis=0)
            return h

        return jax.lax.fori_loop(0, (jnp.max(count[:, -1]) + 3) // 4, add, h)

    def update(s_new, s, h):
        flipped = s_new != s
        n_union = jnp.sum(jnp.any(flipped, axis=0))
        if not exact:
            if K == 0:
                return full(s_new, s, h)
            return jax.lax.cond(n_union <= K, sparse, full, s_new, s, h)
        ways, pick = [full_rows], jnp.int32(0)
        if R > 0:
            ways.append(by_row)
            pick = jnp.where(jnp.max(jnp.sum(flipped, axis=1)) <= R, len(ways) - 1, pick)
        if K > 0:
            ways.append(sparse)
            pick = jnp.where(n_union <= K, len(ways) - 1, pick)
        if len(ways) == 1:
            return full_rows(s_new, s, h)
        return jax.lax.switch(pick, ways, s_new, s, h)

    def cond(c):
        _, _, _, t, active = c
        return (t < max_steps) & jnp.any(active)

    def body(c):
        s_prev, s, h, t, active = c
        s_new = jnp.where(active[:, None], _sign_keep(h, s), s)
        settled = jnp.all(s_new == s, axis=-1) | jnp.all(s_new == s_prev, axis=-1)
        return s, s_new, update(s_new, s, h), t + 1, active & ~settled

    init = (s0, s0, s0 @ T, jnp.int32(0), jnp.arange(B) < n_valid)
    _, s, h, t, _ = jax.lax.while_loop(cond, body, init)
    if not exact:  # the fields carried along differ from a fresh product by rounding
        h = s @ T
    fixed = jnp.all(_sign_keep(h, s) == s, axis=-1)
    return s, t, fixed


def _async_sweep(T, s, h, order):
    """One asynchronous sweep of one state ``s: (N,)`` with fields ``h: (N,)`` in ``order``."""

    def body(k, c):
        s, h = c
        i = order[k]
        new = _sign_keep(h[i], s[i])
        h = h + (new - s[i]) * T[i]
        return s.at[i].set(new), h

    return jax.lax.fori_loop(0, s.shape[0], body, (s, h))


@functools.partial(jax.jit, static_argnames=("max_sweeps",))
def async_dynamics(T: jax.Array, s0: jax.Array, key: jax.Array, *, max_sweeps: int = 50):
    """Asynchronous ``T = 0`` dynamics: neurons updated one at a time, random order per sweep.

    ``T: (N, N)`` symmetric with zero diagonal, ``s0: (B, N)`` of ±1, ``key``: the orders
    (one permutation per state and sweep). Local fields are kept up to date incrementally, so
    a sweep costs ``O(N^2)`` per state. Stops when a whole sweep changes no state or after
    ``max_sweeps``. Returns ``(s: (B, N) float32, sweeps: int32, fixed: (B,) bool)``.
    """
    s0 = s0.astype(jnp.float32)
    B, N = s0.shape
    sweep = jax.vmap(_async_sweep, in_axes=(None, 0, 0, 0))

    def cond(c):
        _, _, t, changed, _ = c
        return (t < max_sweeps) & changed

    def body(c):
        s, h, t, _, key = c
        key, sub = jax.random.split(key)
        order = jax.vmap(lambda k: jax.random.permutation(k, N))(jax.random.split(sub, B))
        s_new, h_new = sweep(T, s, h, order)
        return s_new, h_new, t + 1, jnp.any(s_new != s), key

    init = (s0, s0 @ T, jnp.int32(0), jnp.bool_(True), key)
    s, _, t, _, _ = jax.lax.while_loop(cond, body, init)
    fixed = jnp.all(_sign_keep(s @ T, s) == s, axis=-1)
    return s, t, fixed


@jax.jit
def energy(T: jax.Array, s: jax.Array) -> jax.Array:
    """Energy ``E = -1/2 s.T s`` of states ``s: (B, N)``. Returns ``(B,)``."""
    s = s.astype(jnp.float32)
    return -0.5 * jnp.sum(s * (s @ T), axis=-1)


# --- measurements --------------------------------------------------------------------------


@jax.jit
def overlap(xi: jax.Array, s: jax.Array) -> jax.Array:
    """Overlap ``m = xi.s / N`` of matched rows: ``xi, s: (B, N)`` -> ``(B,)``."""
    return jnp.mean(xi.astype(jnp.float32) * s.astype(jnp.float32), axis=-1)


@jax.jit
def stability(T: jax.Array, xi: jax.Array) -> dict:
    """One-step stability of the stored patterns ``xi: (M, N)`` under couplings ``T``.

    A bit is stable when its local field does not flip it (``xi_i h_i > 0``, or ``h_i = 0``
    which keeps the bit). Returns ``{"bits": fraction of stable bits, "patterns": fraction of
    patterns that are fixed points}`` (scalars).
    """
    x = xi.astype(jnp.float32)
    ok = (x * (x @ T)) >= 0
    return {"bits": jnp.mean(ok), "patterns": jnp.mean(jnp.all(ok, axis=-1))}


def corrupt(key: jax.Array, xi: jax.Array, m0: float) -> jax.Array:
    """Probes at initial overlap ``m0``: flip exactly ``round(N (1 - m0) / 2)`` random bits.

    ``xi: (B, N)`` -> ``(B, N) float32``; each row gets its own random set of bits.
    """
    B, N = xi.shape
    k = int(round(N * (1.0 - float(m0)) / 2.0))
    return _corrupt(key, xi, k)


@functools.partial(jax.jit, static_argnames=("k",))
def _corrupt(key, xi, k):
    B, N = xi.shape
    u = jax.random.uniform(key, (B, N))
    rank = jnp.argsort(jnp.argsort(u, axis=-1), axis=-1)
    return jnp.where(rank < k, -1.0, 1.0) * xi.astype(jnp.float32)


def retrieve(
    T: jax.Array,
    xi: jax.Array,
    *,
    m0: float = 1.0,
    key: jax.Array | None = None,
    dynamics: str = "sync",
    max_steps: int = 100,
) -> dict:
    """Run the dynamics from each pattern in ``xi: (P, N)`` (or a corrupted copy).

    ``m0 < 1`` flips ``round(N (1 - m0)/2)`` bits per probe (needs ``key``). ``dynamics`` is
    ``"sync"`` or ``"async"`` (needs ``key``). Returns ``{"m": (P,) final overlaps with the
    own pattern, "m0": (P,) initial overlaps, "fixed": (P,) bool, "steps": int}``.
    """
    if (m0 < 1.0 or dynamics == "async") and key is None:
        raise ValueError("corrupted probes and asynchronous dynamics need key=")
    k_probe, k_dyn = jax.random.split(key) if key is not None else (None, None)
    s0 = corrupt(k_probe, xi, m0) if m0 < 1.0 else xi.astype(jnp.float32)
    if dynamics == "sync":
        s, steps, fixed = sync_dynamics(T, s0, max_steps=max_steps)
    elif dynamics == "async":
        s, steps, fixed = async_dynamics(T, s0, k_dyn, max_sweeps=max_steps)
    else:
        raise ValueError(f"unknown dynamics {dynamics!r}; choose 'sync' or 'async'")
    return {"m": overlap(xi, s), "m0": overlap(xi, s0), "fixed": fixed, "steps": steps}


@functools.partial(jax.jit, static_argnames=("n_states",))
def field_agreement(T: jax.Array, Q: jax.Array, key: jax.Array, *, n_states: int = 64):
    """Fraction of local fields of ``T`` and ``Q`` with the same sign at random states.

    ``T, Q: (N, N)``; ``n_states`` random ±1 states from ``key``. Sheppard's formula predicts
    ``1 - arccos(r)/pi`` for ``r = corr(T, Q)`` (continuous Gaussian fields). Integer-valued
    fields (Hebbian, sign, linear codes) are exactly zero now and then; a zero field counts
    one half (a random tie-break), i.e. the mean of ``(1 + sign(h_T) sign(h_Q)) / 2``.
    Returns a scalar.
    """
    N = T.shape[0]
    s = jnp.where(jax.random.bernoulli(key, 0.5, (n_states, N)), 1.0, -1.0)
    return jnp.mean(0.5 * (1.0 + jnp.sign(s @ T) * jnp.sign(s @ Q)))


# --- capacity -------------------------------------------------------------------------------


def capacity_from_curve(alpha, m, *, threshold: float = CAPACITY_THRESHOLD) -> float:
    """Capacity from a retrieval curve: the load where the mean final overlap first drops below
    ``threshold`` (linear interpolation between the bracketing loads).

    ``alpha: (A,)`` ascending, ``m: (A,)`` mean final overlaps from the stored patterns.
    Returns NaN if the curve never drops below the threshold or starts below it.
    """
    alpha = np.asarray(alpha, float)
    m = np.asarray(m, float)
    below = np.nonzero(m < threshold)[0]
    if below.size == 0 or below[0] == 0:
        return float("nan")
    k = below[0]
    a0, a1, m0, m1 = alpha[k - 1], alpha[k], m[k - 1], m[k]
    return float(a0 + (m0 - threshold) * (a1 - a0) / (m0 - m1))


def extrapolate_capacity(N, alpha_c, *, weights=None) -> dict:
    """Fit ``alpha_c(N) = a + b N^(-1/2)`` by (weighted) least squares; ``a`` is the large-N value.

    ``N, alpha_c: (k,)`` (NaNs dropped). Returns ``{"alpha_inf": a, "slope": b,
    "alpha_inf_err": standard error of a (NaN with fewer than 3 points)}``.
    """
    N = np.asarray(N, float)
    y = np.asarray(alpha_c, float)
    w = np.ones_like(y) if weights is None else np.asarray(weights, float)
    ok = np.isfinite(y) & np.isfinite(w)
    if ok.sum() < 2:
        return {"alpha_inf": float("nan"), "slope": float("nan"), "alpha_inf_err": float("nan")}
    X = np.stack([np.ones(ok.sum()), N[ok] ** -0.5], axis=1)
    sw = np.sqrt(w[ok])
    coef, *_ = np.linalg.lstsq(X * sw[:, None], y[ok] * sw, rcond=None)
    err = float("nan")
    if ok.sum() > 2:
        resid = (y[ok] - X @ coef) * sw
        cov = np.linalg.inv((X * sw[:, None]).T @ (X * sw[:, None])) * (resid @ resid) / (
            ok.sum() - 2)
        err = float(np.sqrt(cov[0, 0]))
    return {"alpha_inf": float(coef[0]), "slope": float(coef[1]), "alpha_inf_err": err}
