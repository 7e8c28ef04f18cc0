"""Replica-symmetric T = 0 theory of Hopfield networks with quantized couplings (docs/theory.md §3).

A quantized Hebbian matrix is written ``Q(T) = a T + eta``: a Hebbian network plus static
Gaussian coupling noise of relative variance ``delta^2 = 1/r^2 - 1`` where ``r = corr(T, Q(T))``
(Sompolinsky 1986). The replica-symmetric zero-temperature equations (Amit, Gutfreund and
Sompolinsky 1987, with the static noise added) are

    m  = erf(m / sqrt(2 s2))
    C  = sqrt(2/pi) / sqrt(s2) * exp(-m^2 / (2 s2))
    R  = 1 / (1 - C)^2
    s2 = alpha (R + delta^2)

Substituting ``y = m / sqrt(2 s2)`` makes every quantity explicit in ``y``:

    m(y)     = erf(y)
    C(y)     = 2 y exp(-y^2) / (sqrt(pi) erf(y))
    alpha(y) = erf(y)^2 / (2 y^2) / ((1 - C)^-2 + delta^2)

The retrieval branch is ``y > y*`` where ``alpha(y)`` decreases from its maximum; the capacity
is that maximum, ``alpha_c = max_y alpha(y)`` (a saddle-node: above it only the non-retrieval
solution is left). Float couplings give the AGS value ``alpha_c = 0.1379``; sign (clipped)
couplings, ``r^2 = 2/pi``, give 0.1018. The "naive" estimate rescales the load only,
``0.138 r^2``; it ignores that the static noise does not grow with the load the way the
pattern crosstalk does.

Everything here is pure ``jax.numpy``, jit-able and vectorized over ``r`` (and ``alpha``).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import erf

#: AGS capacity of float couplings (rounded, as quoted in the literature).
ALPHA_C_AGS = 0.138
#: Published fractions of the float capacity kept by discrete synapses at 1/2/3/4 bits
#: (Knoblauch 2016; the 4-bit value is ">0.99").
PUBLISHED_FRACTIONS = {1: 0.64, 2: 0.88, 3: 0.96, 4: 0.99}

_Y_LO, _Y_HI = 0.3, 8.0
_GOLD = (math.sqrt(5.0) - 1.0) / 2.0


def noise_variance(r):
    """Relative static-noise variance ``delta^2 = 1/r^2 - 1`` (``r`` scalar or array)."""
    r = jnp.asarray(r, jnp.float32)
    return 1.0 / jnp.square(r) - 1.0


def _C(y):
    return 2.0 * y * jnp.exp(-y * y) / (jnp.sqrt(jnp.pi) * erf(y))


def alpha_of_y(y, delta2):
    """Load ``alpha`` at which ``y = m / sqrt(2 s2)`` solves the RS equations (broadcasts)."""
    y = jnp.asarray(y, jnp.float32)
    e = erf(y)
    return e * e / (2.0 * y * y) / (1.0 / jnp.square(1.0 - _C(y)) + delta2)


def _argmax_y(delta2, iters: int = 60):
    """Golden-section search for the ``y`` that maximizes ``alpha(y)`` (scalar ``delta2``)."""

    def body(_, ab):
        a, b = ab
        c = b - _GOLD * (b - a)
        d = a + _GOLD * (b - a)
        left = alpha_of_y(c, delta2) > alpha_of_y(d, delta2)
        return jnp.where(left, a, c), jnp.where(left, d, b)

    a, b = jax.lax.fori_loop(0, iters, body, (jnp.float32(0.8), jnp.float32(3.0)))
    return 0.5 * (a + b)


@jax.jit
def capacity(r):
    """Static-noise RS capacity ``alpha_c(r)``. ``r``: scalar or ``(k,)``; returns the same shape.

    ``r = 1`` gives the AGS value 0.1379; ``r = sqrt(2/pi)`` (sign couplings) gives 0.1018.
    """
    delta2 = noise_variance(r)
    flat = jnp.ravel(delta2)
    y = jax.vmap(_argmax_y)(flat)
    return alpha_of_y(y, flat).reshape(delta2.shape)


@jax.jit
def capacity_overlap(r):
    """Retrieval overlap ``m_c`` at the capacity (the height of the jump), same shape as ``r``."""
    delta2 = noise_variance(r)
    flat = jnp.ravel(delta2)
    y = jax.vmap(_argmax_y)(flat)
    return erf(y).reshape(delta2.shape)


def naive_capacity(r):
    """The naive estimate ``0.138 r^2`` (load rescaled by the signal fraction only)."""
    return ALPHA_C_AGS * jnp.square(jnp.asarray(r, jnp.float32))


def _retrieval_y(alpha, delta2, iters: int = 60):
    """The retrieval-branch ``y`` with ``alpha(y) = alpha`` (bisection; NaN above capacity)."""
    y_star = _argmax_y(delta2)
    a_max = alpha_of_y(y_star, delta2)

    def body(_, lohi):
        lo, hi = lohi
        mid = 0.5 * (lo + hi)
        above = alpha_of_y(mid, delta2) > alpha  # alpha(y) decreases on the branch
        return jnp.where(above, mid, lo), jnp.where(above, hi, mid)

    lo, hi = jax.lax.fori_loop(0, iters, body, (y_star, jnp.float32(_Y_HI)))
    return jnp.where(alpha <= a_max, 0.5 * (lo + hi), jnp.nan)


@jax.jit
def overlap_curve(alpha, r):
    """Retrieval overlap ``m(alpha)`` for couplings of correlation ``r``.

    ``alpha: (A,)`` loads; ``r``: scalar or ``(k,)``. Returns ``(A,)`` or ``(k, A)``; NaN where
    ``alpha > alpha_c(r)`` (no retrieval solution; the network falls to a spin-glass state).
    ``alpha = 0`` gives ``m = 1``.
    """
    alpha = jnp.asarray(alpha, jnp.float32)
    delta2 = noise_variance(r)
    flat = jnp.ravel(delta2)
    safe = jnp.maximum(alpha, 1e-12)
    y = jax.vmap(lambda d2: jax.vmap(lambda a: _retrieval_y(a, d2))(safe))(flat)
    m = jnp.where(alpha[None, :] > 0, erf(y), 1.0)
    return m.reshape(delta2.shape + alpha.shape)


def error_fraction(alpha, r):
    """Fraction of wrong bits ``(1 - m) / 2`` in the retrieval state; same shapes as overlap_curve."""
    return 0.5 * (1.0 - overlap_curve(alpha, r))


# --- r of a quantizer on the Gaussian density of Hebbian couplings ---------------------------

FLOAT = "float"


@functools.lru_cache(maxsize=256)
def gaussian_r(scheme: str, bits: int, *, fit: str = "corr", top: float | None = None
               ) -> tuple[float, dict]:
    """``r`` of the ``scheme``/``bits`` quantizer fitted on the unit Gaussian density.

    The off-diagonal Hebbian couplings ``T / sqrt(M)`` are Gaussian for large ``M``, so the
    theory fits the codebook on the exact density (``quantize.fit_moments`` on
    ``correlation.density_moments("gaussian")``) and ``r`` is exact. ``fit="max"`` pins the
    top level at ``top`` (the largest coupling in units of the std, which grows with ``N``:
    about ``sqrt(2 ln(N^2 / 2))``), so it needs ``top=``. ``scheme="float"`` gives ``r = 1``.
    Returns ``(r, {"levels": [...], "thresholds": [...], "params": {"c", "a"}})``.
    """
    if scheme == FLOAT:
        return 1.0, {"levels": [], "thresholds": [], "params": {}}
    from paper_repro.core import correlation, quantize

    if fit == "max" and top is None:
        raise ValueError("fit='max' pins the top level at max|w|: pass top= (in std units)")
    bits = 1 if scheme == "sign" else int(bits)
    quantize.check_args(scheme, bits, fit)
    dm = correlation.DensityMoments(
        density="gaussian", m2=jnp.float32(1.0),
        top=jnp.float32(12.0 if top is None else top))
    out = quantize.fit_moments(dm, scheme=scheme, bits=bits, fit=fit)
    zero = quantize.has_zero(scheme)
    lower = quantize.lower_bounds(out["p"], zero=zero)
    levels, thresholds = quantize.full_codebook(out["p"], lower, zero=zero)
    return float(out["r"]), {"levels": np.asarray(levels).tolist(),
                             "thresholds": np.asarray(thresholds).tolist(),
                             "params": {"c": float(out["c"]), "a": float(out["a"])}}


def codebook_r(levels, thresholds) -> float:
    """``r`` of a given symmetric codebook (in std units) on the unit Gaussian density."""
    from paper_repro.core import correlation

    return float(correlation.density_r(jnp.asarray(levels), jnp.asarray(thresholds),
                                       density="gaussian"))


def theory_row(scheme: str, bits: int | None, *, fit: str = "corr") -> dict:
    """One row of the theory table: ``r``, ``r2``, ``delta2``, ``alpha_c``, naive, fraction."""
    r, info = gaussian_r(scheme, int(bits or 1), fit=fit)
    ac = float(capacity(jnp.float32(r)))
    ac_float = float(capacity(jnp.float32(1.0)))
    return {
        "scheme": scheme, "bits": bits, "fit": fit if scheme != FLOAT else None,
        "n_levels": len(info["levels"]) or None,
        "r": r, "r2": r * r, "delta2": 1.0 / (r * r) - 1.0,
        "alpha_c": ac, "alpha_c_naive": float(naive_capacity(r)),
        "fraction_of_float": ac / ac_float,
        "m_c": float(capacity_overlap(jnp.float32(r))),
        "params": info["params"],
    }


TABLE_SCHEMES = ("linear", "linear_midrise", "exponential", "exponential_nozero", "pow2",
                 "lloyd_max")


def theory_table(bits=(2, 3, 4, 5)) -> dict:
    """``{"float": row, "sign": row, "ternary": row, "<scheme>-<b>": row, ...}`` with rows of
    :func:`theory_row` (r, r2, delta2, alpha_c, alpha_c_naive, fraction_of_float, ...)."""
    out = {"float": theory_row("float", None), "sign": theory_row("sign", 1),
           "ternary": theory_row("linear", 2)}
    for sch in TABLE_SCHEMES:
        for b in bits:
            out[f"{sch}-{b}"] = theory_row(sch, b)
    return out
