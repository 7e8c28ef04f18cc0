"""Correlation between weights and their quantized copies (docs/theory.md §2).

Write a quantized weight as ``Q(w) = g w + e`` with ``e`` uncorrelated with ``w``. Then
``min_g E[(w - g Q(w))^2] = E[w^2] (1 - r^2)`` with ``r = corr(w, Q(w))``: maximizing ``r`` is
minimizing the error after the best gain. This module measures ``r``

- on samples (:func:`sample_r`, Pearson),
- for a symmetric level set on a symmetric density, exactly, from partial moments
  (:func:`density_r`; Gaussian and Laplace in closed form, any sample through a
  :class:`Moments` table), and
- turns it into the Hopfield/feedforward quantities: Sheppard's local-field sign agreement
  ``1 - arccos(r) / pi`` (:func:`sheppard`) and the static-noise strength ``1/r^2 - 1``.

All densities are of ``|w|`` on ``[0, inf)``: a symmetric quantizer acts as
``Q(w) = sign(w) q(|w|)``, so ``E[w Q] = E[|w| q(|w|)]`` and ``E[Q^2] = E[q(|w|)^2]``.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import erf

DENSITIES = ("gaussian", "laplace")

_SQRT2 = math.sqrt(2.0)


def _pow2_scale(top, xp):
    """Power of two ``s`` with ``top / s`` in ``[1, 2)`` (1 where ``top`` is 0), elementwise.

    Dividing by ``s`` is exact in binary floating point, so tables and fits computed on
    ``w / s`` are the same numbers as on ``w``, scaled, without overflow near the float32
    maximum (``E[w^2]`` of ``1e37`` overflows) or underflow. ``s`` and ``1 / s`` stay normal
    float32 numbers (``s <= 2^126``: compilers divide by multiplying with ``1 / s``, and a
    subnormal ``1 / s`` flushes to zero), so ``top / s < 4`` for the largest floats.
    """
    _, e = xp.frexp(xp.asarray(top, xp.float32))
    e = xp.clip(e - 1, -126, 126)
    s = xp.ldexp(xp.ones_like(xp.asarray(top, xp.float32)), e.astype(xp.int32))
    return xp.where(xp.asarray(top) > 0, s, xp.float32(1.0)).astype(xp.float32)


def sample_r(w: jax.Array, w_hat: jax.Array) -> jax.Array:
    """Pearson correlation of two arrays of the same shape (flattened). Scalar.

    Each array is divided by a power of two near its largest magnitude first (exact), so
    weights near the float32 maximum give a finite ``r``. Zero-variance cases, where
    Pearson's ``r`` is undefined: when both arrays are constant, ``r = 1`` if ``w_hat``
    reproduces ``w`` (the constants agree to ``2^-20`` relative, float32 rounding of a
    fitted level; two all-zero arrays agree) and 0 otherwise; when exactly one is constant,
    0 (no correlation can be measured).
    """
    w = jnp.ravel(jnp.asarray(w, jnp.float32))
    w_hat = jnp.ravel(jnp.asarray(w_hat, jnp.float32))
    if w.shape != w_hat.shape:
        raise ValueError(f"shapes differ: {w.shape} vs {w_hat.shape}")
    const_w = jnp.max(w) == jnp.min(w)
    const_hat = jnp.max(w_hat) == jnp.min(w_hat)
    same = jnp.abs(w_hat[0] - w[0]) <= 2.0**-20 * jnp.abs(w[0])
    a = w / _pow2_scale(jnp.max(jnp.abs(w)), jnp)
    b = w_hat / _pow2_scale(jnp.max(jnp.abs(w_hat)), jnp)
    a = a - jnp.mean(a)
    b = b - jnp.mean(b)
    den = jnp.sqrt(jnp.sum(a * a) * jnp.sum(b * b))
    pearson = jnp.where(den > 0, jnp.sum(a * b) / jnp.where(den > 0, den, 1.0), 0.0)
    return jnp.where(const_w | const_hat,
                     jnp.where(const_w & const_hat & same, 1.0, 0.0), pearson)


def sheppard(r):
    """Probability that two correlated Gaussian fields have the same sign: ``1 - arccos(r)/pi``."""
    return 1.0 - jnp.arccos(jnp.clip(r, -1.0, 1.0)) / jnp.pi


def noise_strength(r):
    """Relative static-noise variance ``delta^2 = 1/r^2 - 1`` of a quantized linear map."""
    return 1.0 / jnp.square(r) - 1.0


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Moments:
    """Cumulative partial moments of ``|w| / scale``, for exact ``r`` of any symmetric level set.

    ``x: (n+1,)`` ascending abscissae starting at 0; ``c0, c1: (n+1,)`` are the fractions
    ``P(|v| <= x)`` and the partial means ``E[|v| 1{|v| <= x}]`` of ``v = w / scale``; ``m2``
    is ``E[v^2]``; ``top`` is ``max|v|`` (the largest abscissa). ``scale`` is a power of two
    putting ``top`` in ``[1, 2)`` (1 for all-zero weights): the division is exact, so the table
    is the one of ``w`` in units of ``scale``, and weights near the float32 maximum do not
    overflow ``m2``. Levels fitted on the table are multiplied by ``scale``. ``kind="step"``:
    a sorted sample, exact step functions; ``kind="uniform"``: a histogram on uniform bins,
    linear inside each bin (its mass spread uniformly). Leading batch axes (per channel) are
    allowed on every field.
    """

    x: jax.Array
    c0: jax.Array
    c1: jax.Array
    m2: jax.Array
    top: jax.Array
    scale: jax.Array = dataclasses.field(default_factory=lambda: np.float32(1.0))
    kind: str = dataclasses.field(default="step", metadata=dict(static=True))

    def cdf(self, t: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``(P(|v| <= t), E[|v| 1{|v| <= t}])`` at thresholds ``t: (k,)`` (table units)."""
        if self.kind == "step":
            # A sorted sample: count the values <= t exactly (no interpolation).
            k = jnp.searchsorted(self.x, t, side="right") - 1
            k = jnp.clip(k, 0, self.x.shape[-1] - 1)
            return self.c0[k], self.c1[k]
        # Uniform abscissae (a histogram): index arithmetic instead of a search.
        n = self.x.shape[-1] - 1
        span = jnp.where(self.x[-1] > 0, self.x[-1], 1.0)
        pos = jnp.clip(t / span * n, 0.0, float(n))
        i = jnp.clip(jnp.floor(pos).astype(jnp.int32), 0, n - 1)
        f = pos - i
        c0 = self.c0[i] + f * (self.c0[i + 1] - self.c0[i])
        c1 = self.c1[i] + f * (self.c1[i + 1] - self.c1[i])
        return c0, c1


def moments_from_sample(w: jax.Array) -> Moments:
    """Exact moments table of one sample ``w`` (any shape, flattened): one sort, O(n log n)."""
    a = jnp.sort(jnp.abs(jnp.ravel(jnp.asarray(w, jnp.float32))))
    s = _pow2_scale(a[-1], jnp)
    a = a / s
    n = a.shape[0]
    x = jnp.concatenate([jnp.zeros((1,), a.dtype), a])
    c0 = jnp.arange(n + 1, dtype=jnp.float32) / n
    c1 = jnp.concatenate([jnp.zeros((1,), a.dtype), jnp.cumsum(a) / n])
    return Moments(x=x, c0=c0, c1=c1, m2=jnp.mean(a * a), top=a[-1], scale=s)


def moments_from_histogram(w: jax.Array, *, bins: int = 2048) -> Moments:
    """Moments table from a histogram of ``|w|`` on ``[0, max|w|]``: one pass, O(n + bins).

    Each bin keeps its exact count and exact sum of ``|w|``, so the first partial moment is
    exact at the bin edges; inside a bin mass is spread uniformly.
    """
    a = jnp.abs(jnp.ravel(jnp.asarray(w, jnp.float32)))
    s = _pow2_scale(jnp.max(a), jnp)
    a = a / s
    n = a.shape[0]
    top = jnp.max(a)
    scale = jnp.where(top > 0, top, 1.0)
    idx = jnp.clip((a / scale * bins).astype(jnp.int32), 0, bins - 1)
    cnt = jnp.zeros((bins,), jnp.float32).at[idx].add(1.0)
    s1 = jnp.zeros((bins,), jnp.float32).at[idx].add(a)
    x = jnp.linspace(0.0, 1.0, bins + 1) * scale
    c0 = jnp.concatenate([jnp.zeros((1,)), jnp.cumsum(cnt)]) / n
    c1 = jnp.concatenate([jnp.zeros((1,)), jnp.cumsum(s1)]) / n
    return Moments(x=x, c0=c0, c1=c1, m2=jnp.mean(a * a), top=top, scale=s, kind="uniform")


def histogram_moments_rows(rows: np.ndarray, *, bins: int = 2048) -> Moments:
    """Histogram moments of every row of ``rows: (C, n)`` at once, in NumPy (no compile).

    Same table as :func:`moments_from_histogram` per row, batched: fields ``(C, bins+1)``,
    ``m2, top, scale: (C,)``. One pass over the weights (``np.bincount``); used by the
    fitting code on concrete arrays.
    """
    a = np.abs(np.asarray(rows, np.float32))
    C, n = a.shape
    s = _pow2_scale(a.max(axis=1), np)
    a = a / s[:, None]  # exact: a power of two per row
    top = a.max(axis=1)
    scale = np.where(top > 0, top, 1.0).astype(np.float32)
    cnt = np.empty((C, bins), np.int64)
    s1 = np.empty((C, bins), np.float64)
    R = max(1, 65536 // bins)  # rows per bincount: the counters stay in cache
    for r in range(0, C, R):
        ar = a[r:r + R]
        idx = np.minimum((ar / scale[r:r + R, None] * bins).astype(np.int64), bins - 1)
        idx += np.arange(ar.shape[0], dtype=np.int64)[:, None] * bins
        n_r = ar.shape[0] * bins
        cnt[r:r + R] = np.bincount(idx.ravel(), minlength=n_r).reshape(-1, bins)
        s1[r:r + R] = np.bincount(idx.ravel(), weights=ar.ravel(), minlength=n_r).reshape(-1, bins)
    zeros = np.zeros((C, 1))
    c0 = np.concatenate([zeros, np.cumsum(cnt, axis=1)], axis=1) / n
    c1 = np.concatenate([zeros, np.cumsum(s1, axis=1)], axis=1) / n
    x = np.linspace(0.0, 1.0, bins + 1)[None, :] * scale[:, None]
    m2 = np.einsum("ij,ij->i", a, a, dtype=np.float64) / n
    f32 = np.float32
    return Moments(x=x.astype(f32), c0=c0.astype(f32), c1=c1.astype(f32), m2=m2.astype(f32),
                   top=top.astype(f32), scale=s, kind="uniform")


# --- Unit-variance densities of |w| in closed form --------------------------------------------


def gaussian_cdf(t: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Partial moments of ``|w|`` for ``w ~ N(0, 1)``: ``P(|w|<=t)``, ``E[|w| 1{|w|<=t}]``."""
    t = jnp.asarray(t, jnp.float32)
    c0 = erf(t / _SQRT2)
    c1 = jnp.sqrt(2.0 / jnp.pi) * (1.0 - jnp.exp(-0.5 * t * t))
    return c0, c1


def laplace_cdf(t: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Partial moments of ``|w|`` for a unit-variance Laplace ``w`` (scale ``1/sqrt(2)``)."""
    t = jnp.asarray(t, jnp.float32)
    lam = _SQRT2  # |w| ~ Exp(rate sqrt(2)), mean 1/sqrt(2), E[w^2] = 1
    e = jnp.exp(-lam * t)
    c0 = 1.0 - e
    c1 = (1.0 - e * (1.0 + lam * t)) / lam
    return c0, c1


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DensityMoments:
    """Closed-form moments of a unit-variance Gaussian or Laplace ``|w|`` (same role as Moments).

    ``top`` is the upper end used to scale parameter searches (no density has a maximum;
    12 standard deviations holds all levels worth using up to 8 bits).
    """

    density: str = dataclasses.field(metadata=dict(static=True))
    m2: jax.Array = dataclasses.field(default_factory=lambda: jnp.float32(1.0))
    top: jax.Array = dataclasses.field(default_factory=lambda: jnp.float32(12.0))

    def cdf(self, t: jax.Array) -> tuple[jax.Array, jax.Array]:
        return gaussian_cdf(t) if self.density == "gaussian" else laplace_cdf(t)


def density_moments(density: str) -> DensityMoments:
    """Moments of the unit-variance ``"gaussian"`` or ``"laplace"`` density."""
    if density not in DENSITIES:
        raise ValueError(f"unknown density {density!r}; choose one of {DENSITIES}")
    return DensityMoments(density=density)


def half_r(pos_levels: jax.Array, lower: jax.Array, moments) -> jax.Array:
    """Exact ``r`` of the symmetric quantizer ``sign(w) q(|w|)`` on a moments table.

    ``pos_levels: (K,)`` ascending positive levels ``p_k``; ``lower: (K,)`` ascending lower
    decision boundaries on ``|w|`` (``|w| in [lower_k, lower_{k+1})`` maps to ``p_k``; below
    ``lower_0`` maps to zero, so ``lower_0 = 0`` for a level set without zero). Returns a scalar.
    """
    c0, c1 = moments.cdf(lower)
    n0 = jnp.append(c0, 1.0)
    n1 = jnp.append(c1, moments.cdf(jnp.asarray(moments.top * 4 + 1e30))[1])
    mass = jnp.diff(n0)
    first = jnp.diff(n1)
    e_wq = jnp.sum(pos_levels * first)
    e_qq = jnp.sum(pos_levels * pos_levels * mass)
    den = jnp.sqrt(moments.m2 * e_qq)
    return jnp.where(den > 0, e_wq / jnp.where(den > 0, den, 1.0), 0.0)


def density_r(levels: jax.Array, thresholds: jax.Array, density: str = "gaussian") -> jax.Array:
    """Exact ``r`` of a symmetric codebook on a unit-variance Gaussian or Laplace density.

    ``levels: (L,)`` ascending, symmetric about zero; ``thresholds: (L-1,)`` ascending decision
    boundaries (as in a fitted :class:`paper_repro.core.quantize.Quantizer`). Scale-free in the sense
    that the codebook is in units of the density's standard deviation.
    """
    levels = jnp.asarray(levels, jnp.float32)
    thresholds = jnp.asarray(thresholds, jnp.float32)
    L = levels.shape[-1]
    K = L // 2
    pos = levels[L - K:]
    lower = thresholds[L - K - 1:] if L % 2 else jnp.concatenate([jnp.zeros((1,)), thresholds[K:]])
    return half_r(pos, lower, density_moments(density))
