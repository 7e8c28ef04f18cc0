"""Statistics for accuracies measured on a finite set of images (docs/theory.md, sections 1 and 4).

The papers report top-1 / top-5 accuracies of a float network and of its quantized copies on
the same validation images. Two kinds of uncertainty matter here:

- the accuracy of *one* network on N images: a binomial proportion, reported with the
  Wilson score interval (:func:`wilson_interval`), which stays inside [0, 1] and behaves at
  0 % and 100 %;
- the *difference* between two networks evaluated on the *same* images (float vs quantized):
  a paired comparison. Images both get right or both get wrong carry no information; the
  discordant ones do. :func:`mcnemar_exact` tests "same accuracy" with the exact binomial
  (McNemar) test, :func:`paired_bootstrap` gives a confidence interval of the accuracy drop,
  and :func:`paired_comparison` does both for two evaluation results.

All functions take per-image correctness as boolean arrays ``(N,)`` and are plain NumPy /
SciPy (host-side, float64).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats as _st

__all__ = [
    "wilson_interval",
    "McNemarResult",
    "mcnemar_exact",
    "BootstrapResult",
    "paired_bootstrap",
    "PairedComparison",
    "paired_comparison",
]


def wilson_interval(k: int, n: int, *, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion ``k / n``.

    Args:
      k: successes, ``0 <= k <= n``.
      n: trials. ``n = 0`` gives the uninformative interval ``(0.0, 1.0)``.
      confidence: two-sided coverage, in (0, 1).

    Returns:
      ``(low, high)`` as fractions in [0, 1].
    """
    k, n = int(k), int(n)
    if n < 0 or k < 0 or k > n:
        raise ValueError(f"wilson_interval needs 0 <= k <= n, got k={k}, n={n}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if n == 0:
        return (0.0, 1.0)
    z = float(_st.norm.ppf(0.5 + confidence / 2.0))
    p = k / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1.0 - p) / n + z * z / (4.0 * n * n)) / denom
    # At k = 0 or k = n the exact bound is 0 or 1; clip float rounding.
    low = 0.0 if k == 0 else max(0.0, centre - half)
    high = 1.0 if k == n else min(1.0, centre + half)
    return (low, high)


def _as_bool_pair(a: Any, b: Any) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a)
    b = np.asarray(b)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(
            f"paired statistics need two 1-D correctness arrays of the same length "
            f"(one entry per image, same images in the same order); got {a.shape} and {b.shape}"
        )
    if a.dtype != bool or b.dtype != bool:
        raise TypeError(f"correctness arrays must be boolean, got {a.dtype} and {b.dtype}")
    return a, b


@dataclass(frozen=True)
class McNemarResult:
    """Exact McNemar test on paired correctness.

    Attributes:
      n: number of images.
      only_a: images that A gets right and B gets wrong.
      only_b: images that B gets right and A gets wrong.
      p_value: two-sided exact p-value of ``only_a == only_b`` in expectation.
    """

    n: int
    only_a: int
    only_b: int
    p_value: float


def mcnemar_exact(correct_a: Any, correct_b: Any) -> McNemarResult:
    """Exact (binomial) McNemar test that two classifiers have the same accuracy.

    Under the null hypothesis each discordant image is equally likely to favour A or B, so
    ``only_a ~ Binomial(only_a + only_b, 1/2)``; the two-sided p-value is
    ``min(1, 2 * P[X <= min(only_a, only_b)])``. No discordant image gives ``p = 1``.

    Args:
      correct_a: ``(N,)`` bool, per-image correctness of classifier A.
      correct_b: ``(N,)`` bool, of classifier B on the same images in the same order.
    """
    a, b = _as_bool_pair(correct_a, correct_b)
    only_a = int(np.sum(a & ~b))
    only_b = int(np.sum(~a & b))
    m = only_a + only_b
    if m == 0:
        p = 1.0
    else:
        p = min(1.0, 2.0 * float(_st.binom.cdf(min(only_a, only_b), m, 0.5)))
    return McNemarResult(n=int(a.size), only_a=only_a, only_b=only_b, p_value=p)


@dataclass(frozen=True)
class BootstrapResult:
    """Bootstrap confidence interval of ``accuracy(A) - accuracy(B)``.

    Attributes:
      drop: observed ``mean(correct_a) - mean(correct_b)`` (a fraction; positive = B worse).
      low, high: percentile interval at ``confidence``.
      confidence: two-sided coverage.
      n_resamples: bootstrap resamples drawn.
      seed: seed of the resampling.
    """

    drop: float
    low: float
    high: float
    confidence: float
    n_resamples: int
    seed: int


def paired_bootstrap(
    correct_a: Any,
    correct_b: Any,
    *,
    n_resamples: int = 10_000,
    confidence: float = 0.95,
    seed: int = 0,
) -> BootstrapResult:
    """Paired bootstrap of the accuracy drop ``mean(a) - mean(b)`` over images.

    Images are resampled with replacement, the same image for A and B (the pairing). The
    per-image difference ``d = a - b`` takes only the values -1, 0, +1, so resampling N
    images is the same in distribution as drawing the three counts from a multinomial with
    the observed frequencies; that is what is drawn (exact, and O(n_resamples) whatever N).

    Args:
      correct_a, correct_b: ``(N,)`` bool, same images in the same order, ``N >= 1``.
      n_resamples: number of bootstrap resamples.
      confidence: two-sided coverage of the percentile interval.
      seed: seed of the NumPy generator (explicit; no global state).
    """
    a, b = _as_bool_pair(correct_a, correct_b)
    n = a.size
    if n == 0:
        raise ValueError("paired_bootstrap needs at least one image")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    d = a.astype(np.int8) - b.astype(np.int8)
    freq = np.array([np.sum(d == -1), np.sum(d == 0), np.sum(d == 1)], dtype=np.float64) / n
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n, freq, size=int(n_resamples))
    drops = (counts[:, 2] - counts[:, 0]) / n
    alpha = 1.0 - confidence
    low, high = np.quantile(drops, [alpha / 2.0, 1.0 - alpha / 2.0])
    return BootstrapResult(
        drop=float(d.mean()),
        low=float(low),
        high=float(high),
        confidence=confidence,
        n_resamples=int(n_resamples),
        seed=int(seed),
    )


@dataclass(frozen=True)
class PairedComparison:
    """A vs B on the same images (see :func:`paired_comparison`). Accuracies are fractions."""

    metric: str
    n_images: int
    acc_a: float
    acc_b: float
    drop: float
    drop_low: float
    drop_high: float
    confidence: float
    only_a: int
    only_b: int
    p_value: float

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def __str__(self) -> str:
        return (
            f"{self.metric}: {100 * self.acc_a:.2f}% -> {100 * self.acc_b:.2f}% "
            f"(drop {100 * self.drop:+.2f} points, {100 * self.confidence:.0f}% CI "
            f"[{100 * self.drop_low:+.2f}, {100 * self.drop_high:+.2f}]; McNemar "
            f"{self.only_a} vs {self.only_b} discordant, p={self.p_value:.3g}; "
            f"n={self.n_images})"
        )


def _correctness(x: Any, metric: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Per-image correctness and image indices of an evaluation result or a bool array."""
    if hasattr(x, "correct1"):
        arr = {"top1": x.correct1, "top5": x.correct5}.get(metric)
        if arr is None:
            raise ValueError(f"metric must be 'top1' or 'top5', got {metric!r}")
        return np.asarray(arr), np.asarray(x.indices)
    return np.asarray(x), None


def paired_comparison(
    a: Any,
    b: Any,
    *,
    metric: str = "top1",
    n_resamples: int = 10_000,
    confidence: float = 0.95,
    seed: int = 0,
) -> PairedComparison:
    """Compare two classifiers evaluated on the same images: accuracy drop, CI, McNemar p.

    Args:
      a, b: evaluation results (objects with ``correct1``, ``correct5`` and ``indices``, e.g.
        :class:`paper_repro.feedforward.imagenet.EvalResult`) or ``(N,)`` bool correctness arrays. For
        results, their ``indices`` (which images) must agree, else a ``ValueError`` says so.
      metric: ``"top1"`` or ``"top5"`` (results only; arrays are used as given).
      n_resamples, confidence, seed: see :func:`paired_bootstrap`.
    """
    ca, ia = _correctness(a, metric)
    cb, ib = _correctness(b, metric)
    if ia is not None and ib is not None and not np.array_equal(ia, ib):
        raise ValueError(
            "the two results were computed on different images (their `indices` differ); "
            "evaluate both on the same data with the same limit / per_class"
        )
    mc = mcnemar_exact(ca, cb)
    bs = paired_bootstrap(ca, cb, n_resamples=n_resamples, confidence=confidence, seed=seed)
    return PairedComparison(
        metric=metric,
        n_images=mc.n,
        acc_a=float(ca.mean()) if ca.size else float("nan"),
        acc_b=float(cb.mean()) if cb.size else float("nan"),
        drop=bs.drop,
        drop_low=bs.low,
        drop_high=bs.high,
        confidence=confidence,
        only_a=mc.only_a,
        only_b=mc.only_b,
        p_value=mc.p_value,
    )
