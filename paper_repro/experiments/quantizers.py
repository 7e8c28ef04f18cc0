"""Compute the quantizer figure's data (docs/theory.md, section 2): arrays in, no plotting.

:func:`quantizer_curves` gives, for Gaussian and Laplace weights and each scheme,

- ``r`` vs bits from theory (exact partial moments of the density, correlation-fitted),
- ``r`` vs bits measured on Monte-Carlo samples (correlation-fitted and max-anchored),
- the fitted level sets at ``show_bits`` bits, to draw over the densities.
"""

from __future__ import annotations

import jax
import numpy as np

from paper_repro.core import correlation as C
from paper_repro.core import quantize as Q
from paper_repro.experiments.base import Experiment, register

SCHEMES = ("linear", "exponential", "pow2", "lloyd_max")


def default_config(smoke: bool = False) -> dict:
    """The figure's config: ``smoke`` shrinks the sample and the bit range."""
    return {
        "seed": 0,
        "n_samples": 20_000 if smoke else 1_000_000,
        "bits": [2, 3, 4] if smoke else [2, 3, 4, 5, 6, 7, 8],
        "schemes": list(SCHEMES),
        "densities": list(C.DENSITIES),
        "show_bits": 3,
        "method": "histogram",
    }


def sample(density: str, n: int, key) -> np.ndarray:
    """``n`` unit-variance weights from ``density`` (float32)."""
    w = (jax.random.normal(key, (n,)) if density == "gaussian"
         else jax.random.laplace(key, (n,)) / np.sqrt(2.0))
    return np.asarray(w, np.float32)


def quantizer_curves(config: dict) -> dict[str, np.ndarray]:
    """All arrays of the quantizer figure. Shapes: ``r_*: (densities, schemes, bits)``.

    Returns ``bits``, ``r_theory`` (corr fit on the density), ``r_corr`` and ``r_max``
    (sample r, correlation-fitted and max-anchored; ``nan`` where a fit does not apply),
    ``levels_<density>_<scheme>_<fit>`` (positive levels at ``show_bits``, in std units), and
    the ``grid``/``pdf_<density>`` arrays for drawing the densities.
    """
    bits = list(config["bits"])
    dens, schemes = list(config["densities"]), list(config["schemes"])
    shape = (len(dens), len(schemes), len(bits))
    out = {k: np.full(shape, np.nan) for k in ("r_theory", "r_corr", "r_max")}
    keys = jax.random.split(jax.random.key(config["seed"]), len(dens))
    grid = np.linspace(-5, 5, 801)
    res: dict[str, np.ndarray] = {"bits": np.array(bits), "grid": grid}
    res["pdf_gaussian"] = np.exp(-grid**2 / 2) / np.sqrt(2 * np.pi)
    res["pdf_laplace"] = np.exp(-np.sqrt(2) * np.abs(grid)) / np.sqrt(2)
    for i, d in enumerate(dens):
        w = sample(d, config["n_samples"], keys[i])
        dm = C.density_moments(d)
        for j, s in enumerate(schemes):
            for k, b in enumerate(bits):
                out["r_theory"][i, j, k] = float(Q.fit_moments(dm, scheme=s, bits=b)["r"])
                for f in Q.FITS:
                    if s == "lloyd_max" and f == "max":
                        continue
                    w_hat, q = Q.quantize(w, scheme=s, bits=b, fit=f, method=config["method"])
                    out[f"r_{f}"][i, j, k] = float(C.sample_r(w, w_hat))
                    if b == config["show_bits"]:
                        lv = np.asarray(q.levels)
                        res[f"levels_{d}_{s}_{f}"] = lv[lv > 0]
    res.update(out)
    return res


# docs/theory.md, section 2, "Reference correlations" (unit-variance densities, optimal parameters).
REFERENCE_R = {
    ("gaussian", "linear"): {2: 0.8999, 3: 0.9763, 4: 0.9935, 5: 0.9982},
    ("gaussian", "exponential"): {2: 0.8999, 3: 0.9768, 4: 0.9935, 5: 0.9981},
    ("gaussian", "lloyd_max"): {1: 0.7979, 2: 0.9394, 3: 0.9826, 4: 0.9952, 5: 0.9988},
    ("laplace", "linear"): {2: 0.8578, 3: 0.9576, 4: 0.9862, 5: 0.9955},
    ("laplace", "exponential"): {2: 0.8578, 3: 0.9646, 4: 0.9902, 5: 0.9971},
    ("laplace", "lloyd_max"): {1: 0.7071, 2: 0.9076, 3: 0.9724, 4: 0.9923, 5: 0.9979},
}


def summary_rows(data: dict, config: dict) -> list[dict]:
    """One row per (density, scheme, bits): reference r, theory r, sample r (corr and max)."""
    rows = []
    for i, d in enumerate(config["densities"]):
        for j, s in enumerate(config["schemes"]):
            for k, b in enumerate(np.asarray(data["bits"]).tolist()):
                ref = REFERENCE_R.get((d, s), {}).get(b)
                rows.append({
                    "density": d, "scheme": s, "bits": b,
                    "r_reference": ref if ref is not None else float("nan"),
                    "r_theory": round(float(data["r_theory"][i, j, k]), 4),
                    "r_sample_corr": round(float(data["r_corr"][i, j, k]), 4),
                    "r_sample_max": round(float(data["r_max"][i, j, k]), 4),
                })
    return rows


# --- declaration ----------------------------------------------------------------------------


def _plot(data, config):
    from paper_repro.experiments import plot_quantizers

    return plot_quantizers.plot_quantizers(data, config)


register(Experiment(
    name="quantizers",
    title="Level sets and correlation r vs bits on Gaussian and Laplace weights",
    config=default_config,
    compute=lambda config, ctx: quantizer_curves(config),
    plots={"quantizers": _plot},
    tables={"summary.csv": lambda data, config: summary_rows(data, config)},
    notebook="quantizers",
    runtime="about 1 min full, 20 s smoke (2 cores)",
))
