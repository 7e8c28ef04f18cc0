"""Correlation between weights and their quantized copies (docs/theory.md section 2).

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


def sample_r(w: jax.Array, w_hat: jax.Array) -> jax.Array:
    """Pearson correlation of two arrays of the same shape (flattened). Scalar.

    Returns 0 when either array is constant (no correlation can be measured).
    """
    w = jnp.ravel(jnp.asarray(w, jnp.float32))
    w_hat = jnp.ravel(jnp.asarray(w_hat, jnp.float32))
    if w.shape != w_hat.shape:
        raise ValueError(f"shapes differ: {w.shape} vs {w_hat.shape}")
    a = w - jnp.mean(w)
    b = w_hat - jnp.mean(w_hat)
    den = jnp.sqrt(jnp.sum(a * a) * jnp.sum(b * b))
    return jnp.where(den > 0, jnp.sum(a * b) / jnp.where(den > 0, den, 1.0), 0.0)


def sheppard(r):
    """Probability that two correlated Gaussian fields have the same sign: ``1 - arccos(r)/pi``."""
    return 1.0 - jnp.arccos(jnp.clip(r, -1.0, 1.0)) / jnp.pi


def noise_strength(r):
    """Relative static-noise variance ``delta^2 = 1/r^2 - 1`` of a quantized linear map."""
    return 1.0 / jnp.square(r) - 1.0


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Moments:
    """Cumulative partial moments of ``|w|``, for exact ``r`` of any symmetric level set.

    ``x: (n+1,)`` ascending abscissae starting at 0; ``c0, c1: (n+1,)`` are the fractions
    ``P(|w| <= x)`` and the partial means ``E[|w| 1{|w| <= x}]``; ``m2`` is ``E[w^2]``;
    ``top`` is ``max|w|`` (the largest abscissa). ``kind="step"``: a sorted sample, exact
    step functions; ``kind="uniform"``: a histogram on uniform bins, linear inside each bin
    (its mass spread uniformly). Leading batch axes (per channel) are allowed on every field.
    """

    x: jax.Array
    c0: jax.Array
    c1: jax.Array
    m2: jax.Array
    top: jax.Array
    kind: str = dataclasses.field(default="step", metadata=dict(static=True))

    def cdf(self, t: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``(P(|w| <= t), E[|w| 1{|w| <= t}])`` at thresholds ``t: (k,)``."""
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
    n = a.shape[0]
    x = jnp.concatenate([jnp.zeros((1,), a.dtype), a])
    c0 = jnp.arange(n + 1, dtype=jnp.float32) / n
    c1 = jnp.concatenate([jnp.zeros((1,), a.dtype), jnp.cumsum(a) / n])
    return Moments(x=x, c0=c0, c1=c1, m2=jnp.mean(a * a), top=a[-1])


def moments_from_histogram(w: jax.Array, *, bins: int = 2048) -> Moments:
    """Moments table from a histogram of ``|w|`` on ``[0, max|w|]``: one pass, O(n + bins).

    Each bin keeps its exact count and exact sum of ``|w|``, so the first partial moment is
    exact at the bin edges; inside a bin mass is spread uniformly.
    """
    a = jnp.abs(jnp.ravel(jnp.asarray(w, jnp.float32)))
    n = a.shape[0]
    top = jnp.max(a)
    scale = jnp.where(top > 0, top, 1.0)
    idx = jnp.clip((a / scale * bins).astype(jnp.int32), 0, bins - 1)
    cnt = jnp.zeros((bins,), jnp.float32).at[idx].add(1.0)
    s1 = jnp.zeros((bins,), jnp.float32).at[idx].add(a)
    x = jnp.linspace(0.0, 1.0, bins + 1) * scale
    c0 = jnp.concatenate([jnp.zeros((1,)), jnp.cumsum(cnt)]) / n
    c1 = jnp.concatenate([jnp.zeros((1,)), jnp.cumsum(s1)]) / n
    return Moments(x=x, c0=c0, c1=c1, m2=jnp.mean(a * a), top=top, kind="uniform")


def histogram_moments_rows(rows: np.ndarray, *, bins: int = 2048) -> Moments:
    """Histogram moments of every row of ``rows: (C, n)`` at once, in NumPy (no compile).

    Same table as :func:`moments_from_histogram` per row, batched: fields ``(C, bins+1)``.
    One pass over the weights (``np.bincount``); used by the fitting code on concrete arrays.
    """
    a = np.abs(np.asarray(rows, np.float32))
    C, n = a.shape
    top = a.max(axis=1)
    scale = np.where(top > 0, top, 1.0).astype(np.float32)
    idx = np.minimum((a / scale[:, None] * bins).astype(np.int64), bins - 1)
    idx += np.arange(C, dtype=np.int64)[:, None] * bins
    cnt = np.bincount(idx.ravel(), minlength=C * bins).reshape(C, bins)
    s1 = np.bincount(idx.ravel(), weights=a.ravel(), minlength=C * bins).reshape(C, bins)
    zeros = np.zeros((C, 1))
    c0 = np.concatenate([zeros, np.cumsum(cnt, axis=1)], axis=1) / n
    c1 = np.concatenate([zeros, np.cumsum(s1, axis=1)], axis=1) / n
    x = np.linspace(0.0, 1.0, bins + 1)[None, :] * scale[:, None]
    m2 = np.einsum("ij,ij->i", a, a, dtype=np.float64) / n
    f32 = np.float32
    return Moments(x=x.astype(f32), c0=c0.astype(f32), c1=c1.astype(f32), m2=m2.astype(f32),
                   top=top.astype(f32), kind="uniform")


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
