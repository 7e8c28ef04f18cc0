"""Correlation explorer: per-layer statistics and r = corr(w, Q(w)) of any model (docs/theory.md §2).

docs/theory.md, section 2: a layer quantized with correlation ``r`` adds relative output noise
``(1 - r^2) / r^2``; heavy tails (large kurtosis, large ``max|w| / std``) are what make
exponential levels pay off, since a linear grid pinned at ``max|w|`` wastes its levels on the
few large weights. This module turns a model into arrays and rows for the plots of
:mod:`paper_repro.experiments.plot_explorer` and the notebook ``notebooks/explorer.ipynb``:

- :func:`load_model` loads "any model": a registry name with a Keras ``.h5`` file
  (:func:`paper_repro.feedforward.weights.load`), any legacy Keras ``.h5`` read generically
  (:func:`paper_repro.feedforward.weights.read_h5`), a Flax params pytree, the real MobileNet 0.75 in the
  shared data folder, or synthetic Gaussian/Laplace layers (always available);
  :func:`default_model` picks the real MobileNet when present, else the synthetic one.
- :func:`layer_stats` -> one row per kernel (std, max/std, kurtosis, tail mass, spread of the
  per-channel scales); :func:`r_table` -> one row per (layer, scheme, fit, granularity, bits)
  with the sample ``r``; :func:`layer_view` -> the arrays behind the per-layer plots.
- "Does correlation predict accuracy?": :func:`accuracy_rows` reads a sweep's rows (or runs a
  small digits-CNN sweep when no ImageNet sweep is there), :func:`correlation_vs_accuracy`
  relates the network-level summaries of the per-layer r (``noise_sum``, ``r_mean``,
  ``r_min``) to the measured top-1 drop: Spearman rho per predictor, an isotonic fit and a
  logistic fit of the drop on ``log10(noise_sum)`` with their R^2.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from paper_repro.core import quantize as Q

DEFAULT_SELECT = r".*kernel"
SYNTHETIC = ("synthetic", "synthetic_gaussian", "synthetic_laplace")
REAL_MOBILENET = "mobilenet_0.75"
REAL_MOBILENET_FILE = Path("keras-weights") / "mobilenet_7_5_224_tf.h5"
PREDICTORS = ("noise_sum", "r_mean", "r_min")


# --- Loading "any model" ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Model:
    """A parameter tree to explore: ``params`` any pytree of arrays; ``source`` says where it
    came from (shown in figures and meta.json)."""

    name: str
    params: Any
    source: str


def synthetic_params(*, seed: int = 0, scale: float = 1.0) -> dict:
    """Synthetic Keras-layout layers with known densities: ``{layer: {var: float32 array}}``.

    ``gauss_conv/kernel: (3, 3, 16, 32)`` Gaussian; ``laplace_conv/kernel: (3, 3, 32, 32)``
    Laplace; ``gauss_dw/depthwise_kernel: (3, 3, 32, 1)`` Gaussian; ``laplace_dense/kernel:
    (512, 64)`` Laplace. Every output channel gets its own scale (log-normal, sigma 0.5), as in
    trained networks, so per-channel fits have something to gain. Deterministic per ``seed``
    (a numpy Generator: no compilation).
    """
    rng = np.random.default_rng(seed)
    shapes = {
        "gauss_conv/kernel": ((3, 3, 16, 32), "gaussian", -1),
        "laplace_conv/kernel": ((3, 3, 32, 32), "laplace", -1),
        "gauss_dw/depthwise_kernel": ((3, 3, 32, 1), "gaussian", -2),
        "laplace_dense/kernel": ((512, 64), "laplace", -1),
    }
    out: dict[str, dict[str, np.ndarray]] = {}
    for path, (shape, density, axis) in shapes.items():
        w = (rng.standard_normal(shape) if density == "gaussian"
             else rng.laplace(size=shape) / math.sqrt(2.0))
        ch = np.exp(0.5 * rng.standard_normal(shape[axis]))
        bshape = [1] * len(shape)
        bshape[axis] = shape[axis]
        layer, var = path.split("/")
        out.setdefault(layer, {})[var] = (scale * 0.05 * w * ch.reshape(bshape)
                                          ).astype(np.float32)
    return out


def real_mobilenet_path() -> Path | None:
    """The MobileNet 0.75 ``.h5`` in the shared data folder, or ``None`` when absent."""
    from paper_repro.feedforward import weights as W

    d = W.shared_data_dir()
    p = d / REAL_MOBILENET_FILE if d is not None else None
    return p if p is not None and p.is_file() else None


def available_models() -> list[str]:
    """Names :func:`load_model` takes without a path: the real MobileNet when present, then
    the synthetic models (always)."""
    return ([REAL_MOBILENET] if real_mobilenet_path() else []) + list(SYNTHETIC)


@functools.lru_cache(maxsize=8)
def _load_cached(name: str, path: str | None, alpha: float | None, seed: int) -> Model:
    return _load(name, path=path, alpha=alpha, seed=seed)


def _load(name: str, *, path, alpha, seed) -> Model:
    from paper_repro.feedforward import models
    from paper_repro.feedforward import weights as W

    key = name.lower()
    if key in SYNTHETIC:
        params = synthetic_params(seed=seed)
        if key != "synthetic":
            want = key.split("_")[1]
            params = {k: v for k, v in params.items() if k.startswith(want[:5])}
        return Model(name=key, params=params, source=f"synthetic (seed {seed})")
    if key == REAL_MOBILENET and path is None:
        p = real_mobilenet_path()
        if p is None:
            raise FileNotFoundError(
                "the real MobileNet 0.75 weights are not here: set PAPER_REPRO_SHARED_DATA to "
                f"the folder holding {REAL_MOBILENET_FILE}, or use a synthetic model "
                f"({', '.join(SYNTHETIC)})")
        return Model(name=key, params=W.load(models.get("mobilenet", 0.75), p), source=str(p))
    if path is None:
        raise ValueError(f"model {name!r} needs a weight file (path=...); without one choose "
                         f"one of {available_models()}")
    if key in ("h5", "keras", "keras_h5"):
        return Model(name=Path(path).stem, params=W.read_h5(path), source=str(path))
    spec = models.get("mobilenet" if key == REAL_MOBILENET else name,
                      0.75 if key == REAL_MOBILENET else alpha)
    return Model(name=key, params=W.load(spec, path), source=str(path))


def load_model(name: str | None = None, *, path: str | os.PathLike | None = None,
               params: Any = None, alpha: float | None = None, seed: int = 0) -> Model:
    """Load a model to explore.

    Args:
      name: ``"mobilenet_0.75"`` (the shared-data file), a registry name (``"resnet50"``...,
        with ``path`` to its Keras ``.h5``), ``"h5"`` (any legacy Keras ``.h5`` at ``path``,
        read generically), ``"synthetic"`` / ``"synthetic_gaussian"`` /
        ``"synthetic_laplace"``, or any label when ``params`` is given.
      path: a Keras ``.h5`` weight file.
      params: a Flax params pytree (or any pytree of arrays); used as is.
      alpha: MobileNet width multiplier for registry loads.
      seed: seed of the synthetic weights.
    """
    if params is not None:
        if "params" in params and len(params) == 1:  # a Flax variables dict
            params = params["params"]
        return Model(name=name or "params", params=params, source="pytree")
    if name is None:
        raise ValueError("give a model name, a path or a params pytree")
    return _load_cached(name, None if path is None else str(path), alpha, seed)


def default_model(*, seed: int = 0) -> Model:
    """The real MobileNet 0.75 when the shared data is present, else the synthetic layers."""
    return load_model(available_models()[0], seed=seed)


# --- Per-layer statistics -----------------------------------------------------------------------


def _walk(tree, prefix=""):
    """``[(path, leaf)]`` in the tree's own order (nested mappings keep insertion order, as
    in Keras files and model creation); other pytrees in JAX's flattening order."""
    if isinstance(tree, Mapping):
        out = []
        for k, v in tree.items():
            out.extend(_walk(v, f"{prefix}/{k}" if prefix else str(k)))
        return out
    if isinstance(tree, (np.ndarray, jax.Array)) or np.isscalar(tree):
        return [(prefix, tree)]
    return [(f"{prefix}/{p}" if prefix else p, x) for p, x in Q.tree_paths(tree)]


def kernels(params, *, select: str = DEFAULT_SELECT,
            layers: Sequence[str] | int | None = None) -> list[tuple[str, np.ndarray]]:
    """``[(path, w: float32 array)]`` of the array leaves whose path matches ``select``, in
    the model's order.

    ``layers``: keep only these paths, or the first ``layers`` ones when an int.
    """
    pat = re.compile(select)
    leaves = _walk(params)
    out = [(p, np.asarray(x, np.float32)) for p, x in leaves
           if pat.fullmatch(p) and np.ndim(x) > 0 and np.size(x) > 1]
    if not out:
        raise ValueError(f"select={select!r} matches no array leaf of this model; paths look "
                         f"like {[p for p, _ in leaves][:5]}")
    if isinstance(layers, int):
        out = out[:layers]
    elif layers is not None:
        want = set(layers)
        missing = want - {p for p, _ in out}
        if missing:
            raise ValueError(f"unknown layers {sorted(missing)}; see explorer.kernels(...)")
        out = [(p, w) for p, w in out if p in want]
    return out


def channel_axis_of(path: str, w) -> int:
    """Output-channel axis (Keras layouts; depthwise ``(kh, kw, C, mult)`` uses C)."""
    return Q.default_channel_axis(path, w) % max(np.ndim(w), 1)


def layer_stats(params, *, select: str = DEFAULT_SELECT, layers=None) -> list[dict]:
    """One row per kernel: the statistics that say whether exponential levels should help.

    Columns: ``path, kind, shape, size, std, max_over_std, kurtosis`` (excess; 0 Gaussian,
    3 Laplace), ``tail_mass`` (fraction with ``|w| > 3 std``; 0.0027 Gaussian, 0.0144 Laplace),
    ``channel_spread`` (95th / 5th percentile of the per-channel std; large means per-channel
    scales help; percentiles, because trained nets have dead channels with std 0).
    """
    rows = []
    for i, (path, w) in enumerate(kernels(params, select=select, layers=layers)):
        a = w.astype(np.float64)
        std = float(a.std())
        ax = channel_axis_of(path, w)
        ch = np.moveaxis(a, ax, 0).reshape(a.shape[ax], -1).std(axis=1)
        rows.append({
            "index": i, "path": path, "kind": layer_kind(path, w),
            "shape": "x".join(str(s) for s in w.shape), "size": int(w.size), "std": std,
            "max_over_std": float(np.abs(a).max() / std) if std > 0 else 0.0,
            "kurtosis": Q.kurtosis(a),
            "tail_mass": float(np.mean(np.abs(a - a.mean()) > 3 * std)) if std > 0 else 0.0,
            "channel_spread": _spread(ch),
        })
    return rows


def _spread(ch: np.ndarray) -> float:
    lo, hi = np.percentile(ch, [5, 95])
    return float(hi / lo) if lo > 0 else float("inf")


def layer_kind(path: str, w) -> str:
    """``"depthwise"``, ``"pointwise"`` (1x1 conv), ``"conv"``, ``"dense"``."""
    if "depthwise" in path.lower():
        return "depthwise"
    if np.ndim(w) == 4:
        return "pointwise" if tuple(np.shape(w)[:2]) == (1, 1) else "conv"
    return "dense" if np.ndim(w) == 2 else f"{np.ndim(w)}d"


def apply_quantizer(w: np.ndarray, q: Q.Quantizer) -> np.ndarray:
    """Nearest-level dequantized copy of ``w`` (any shape) under a fitted quantizer, in numpy.

    The same coding as :func:`paper_repro.core.quantize.encode` / ``decode`` (``searchsorted``
    on the thresholds, left side) without a compilation per tensor shape, which keeps the
    explorer's many small layers x configurations fast.
    """
    w = np.asarray(w, np.float32)
    levels, thr = np.asarray(q.levels), np.asarray(q.thresholds)
    if q.granularity == "tensor":
        return levels[np.searchsorted(thr, w, side="left")].astype(np.float32)
    ax = q.channel_axis % w.ndim
    moved = np.moveaxis(w, ax, 0)
    rows = moved.reshape(moved.shape[0], -1)
    out = np.empty_like(rows)
    for c in range(rows.shape[0]):
        out[c] = levels[c][np.searchsorted(thr[c], rows[c], side="left")]
    return np.moveaxis(out.reshape(moved.shape), 0, ax)


def sample_r(w, w_hat) -> float:
    """Pearson correlation of two arrays (float64 numpy; as
    :func:`paper_repro.core.correlation.sample_r`, 0 for a constant array)."""
    a = np.ravel(w).astype(np.float64)
    b = np.ravel(w_hat).astype(np.float64)
    a, b = a - a.mean(), b - b.mean()
    den = math.sqrt(float(a @ a) * float(b @ b))
    return float(a @ b) / den if den > 0 else 0.0


def quantize_layer(w, *, path: str = "", scheme: str, fit: str, bits: int,
                   granularity: str = "tensor", table=None) -> tuple[np.ndarray, Q.Quantizer]:
    """``(w_hat, quantizer)`` for one kernel (channel axis from the Keras layout)."""
    q = Q.fit(w, scheme=scheme, bits=bits, fit=fit, granularity=granularity,
              channel_axis=channel_axis_of(path, w), table=table)
    return apply_quantizer(w, q), q


def _valid(scheme: str, fit: str, bits: int) -> bool:
    try:
        Q.check_args(scheme, bits, fit)
    except ValueError:
        return False
    return True


def r_table(params, *, schemes: Sequence[str] = ("linear", "exponential"),
            fits: Sequence[str] = ("max", "corr"), bits: Sequence[int] = range(2, 9),
            granularities: Sequence[str] = ("tensor", "channel"),
            select: str = DEFAULT_SELECT, layers=None) -> list[dict]:
    """r per layer vs bits for every scheme, fit and granularity: one row per combination.

    Columns: ``index, path, kind, size, scheme, fit, granularity, bits, n_levels, r,
    noise`` (= ``(1 - r^2) / r^2``, the layer's relative output noise, docs/theory.md §2),
    ``zero_fraction``. Combinations a scheme refuses (``lloyd_max`` with ``fit="max"``, zero
    levels at 1 bit) are skipped. Moments are computed once per layer and granularity.
    """
    rows = []
    for i, (path, w) in enumerate(kernels(params, select=select, layers=layers)):
        for g in granularities:
            table = Q.moments(w, granularity=g, channel_axis=channel_axis_of(path, w))
            for s in schemes:
                for f in fits:
                    for b in bits:
                        if not _valid(s, f, int(b)):
                            continue
                        w_hat, q = quantize_layer(w, path=path, scheme=s, fit=f, bits=int(b),
                                                  granularity=g, table=table)
                        r = sample_r(w, w_hat)
                        rc = min(max(r, 1e-6), 1.0)
                        rows.append({
                            "index": i, "path": path, "kind": layer_kind(path, w),
                            "size": int(w.size), "scheme": s, "fit": f, "granularity": g,
                            "bits": int(b), "n_levels": q.n_levels, "r": r,
                            "noise": (1 - rc * rc) / (rc * rc),
                            "zero_fraction": float(np.mean(w_hat == 0)),
                        })
    return rows


def network_summary(rows: list[dict]) -> list[dict]:
    """Network-level summaries of :func:`r_table` rows per (scheme, fit, granularity, bits):
    size-weighted mean r, min r and the predicted noise sum (as
    :func:`paper_repro.feedforward.sweep.correlation_summary`)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["scheme"], r["fit"], r["granularity"], r["bits"]), []).append(r)
    out = []
    for (s, f, g, b), rs in sorted(groups.items()):
        size = np.array([r["size"] for r in rs], float)
        r = np.array([r["r"] for r in rs])
        rc = np.clip(r, 1e-6, 1.0)
        out.append({"scheme": s, "fit": f, "granularity": g, "bits": b,
                    "r_mean": float(np.sum(r * size) / size.sum()), "r_min": float(r.min()),
                    "noise_sum": float(np.sum((1 - rc**2) / rc**2)), "n_layers": len(rs)})
    return out


def layer_view(params, path: str | int, *, scheme: str, fit: str, bits: int,
               granularity: str = "tensor", select: str = DEFAULT_SELECT,
               max_points: int = 200_000, seed: int = 0) -> dict:
    """The arrays behind the per-layer plots of one kernel and one quantizer.

    Returns ``{"path", "w": (n,), "w_hat": (n,)`` (a random subsample of at most
    ``max_points`` weights, same indices, fixed ``seed``), ``"levels": (L,)`` (per tensor) or
    ``(C, L)`` (per channel), ``"r"`` (on all weights), ``"stats"`` (the
    :func:`layer_stats` row), ``"scheme", "fit", "bits", "granularity"}``.
    """
    ks = kernels(params, select=select)
    if isinstance(path, (int, np.integer)):
        if not 0 <= int(path) < len(ks):
            raise ValueError(f"layer index {path} out of range 0..{len(ks) - 1}")
        path = ks[int(path)][0]
    found = [(i, w) for i, (p, w) in enumerate(ks) if p == path]
    if not found:
        raise ValueError(f"no kernel {path!r}; choose one of {[p for p, _ in ks][:8]}...")
    i, w = found[0]
    w_hat, q = quantize_layer(w, path=path, scheme=scheme, fit=fit, bits=int(bits),
                              granularity=granularity)
    r = sample_r(w, w_hat)
    flat, flat_hat = w.ravel(), w_hat.ravel()
    if flat.size > max_points:
        idx = np.random.default_rng(seed).choice(flat.size, max_points, replace=False)
        flat, flat_hat = flat[idx], flat_hat[idx]
    stats = layer_stats({path: w}, select=re.escape(path))[0]
    stats["index"] = i
    return {"path": path, "w": flat, "w_hat": flat_hat, "levels": np.asarray(q.levels),
            "r": r, "stats": stats, "scheme": scheme, "fit": fit, "bits": int(bits),
            "granularity": granularity}


# --- Explorer config and arrays (for results.run_or_load) ---------------------------------------


def default_config(*, smoke: bool = False) -> dict:
    """The explorer's configuration: which model, layers, schemes, fits, bits."""
    return {
        "model": available_models()[0], "seed": 0, "select": DEFAULT_SELECT,
        "layers": 4 if smoke else None,
        "schemes": ["linear", "exponential"] if smoke else ["linear", "exponential",
                                                              "lloyd_max"],
        "fits": ["corr"] if smoke else ["max", "corr"],
        "bits": [3, 4] if smoke else [2, 3, 4, 5, 6, 8],
        "granularities": ["tensor", "channel"],
        "view": {"scheme": "exponential", "fit": "corr", "bits": 4, "granularity": "tensor"},
    }


def rows_to_arrays(rows: list[dict], prefix: str = "") -> dict[str, np.ndarray]:
    """Columns of ``rows`` as arrays (strings as unicode arrays, so ``np.load`` needs no
    pickle)."""
    if not rows:
        return {}
    return {prefix + k: np.asarray([r[k] for r in rows]) for k in rows[0]}


def arrays_to_rows(data: Mapping[str, np.ndarray], prefix: str = "") -> list[dict]:
    """Inverse of :func:`rows_to_arrays`: rows of plain Python values."""
    cols = {k[len(prefix):]: v for k, v in data.items() if k.startswith(prefix)}
    if not cols:
        return []
    n = len(next(iter(cols.values())))
    return [{k: v[i].item() for k, v in cols.items()} for i in range(n)]


def explore(model: Model, config: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Statistics (``stats/*``) and the r table (``r/*``) of a model as arrays."""
    kw = dict(select=config["select"], layers=config["layers"])
    stats = layer_stats(model.params, **kw)
    rt = r_table(model.params, schemes=config["schemes"], fits=config["fits"],
                 bits=config["bits"], granularities=config["granularities"], **kw)
    return {**rows_to_arrays(stats, "stats/"), **rows_to_arrays(rt, "r/")}


# --- Does correlation predict accuracy? ---------------------------------------------------------


def sweep_rows_from(rows: Sequence[dict]) -> list[dict]:
    """The quantized rows of a sweep that carry a top-1 drop and the correlation summaries;
    repaired (bias-corrected, mean-preserving, mixed-width...) rows left out."""
    out = []
    for r in rows:
        if r.get("scheme") in (None, "") or "top1_drop" not in r or "noise_sum" not in r:
            continue
        if any(r.get(k) for k in ("bias_correction", "mean_preserving", "fold_bn", "equalize")):
            continue
        if r.get("avg_bits") not in (None, ""):
            continue
        out.append(r)
    return out


def sweep_rows(path: str | os.PathLike) -> list[dict]:
    """:func:`sweep_rows_from` of a sweep CSV (:class:`paper_repro.results.ResultsTable`)."""
    from paper_repro.results import ResultsTable

    return sweep_rows_from(ResultsTable(path).rows())


IMAGENET_SWEEP = Path("imagenet") / "mobilenet_0.75_val1300" / "sweep.csv"


def accuracy_rows(*, smoke: bool = False, min_rows: int = 12, sweep: str | os.PathLike | None
                  = None, digits_bits: Sequence[int] | None = None,
                  progress: bool = False) -> tuple[list[dict], dict]:
    """Rows (top-1 drop + correlation summaries) for the correlation-vs-accuracy figure.

    Reads the MobileNet 0.75 sweep (``results/imagenet/mobilenet_0.75_val1300/sweep.csv``,
    or ``sweep``) when it holds at least ``min_rows`` quantized rows; otherwise (or with
    ``smoke``) runs a small sweep of the digits CNN into ``results/explorer/digits_sweep/``
    (resumable). Returns ``(rows, info)``, ``info`` saying which data was used.
    """
    from paper_repro import results as R
    from paper_repro.feedforward import sweep as E

    path = Path(sweep) if sweep is not None else (
        Path(os.environ.get("PAPER_REPRO_RESULTS", R.RESULTS_DIR)) / IMAGENET_SWEEP)
    if not smoke and path.is_file():
        rows = sweep_rows(path)
        if len(rows) >= min_rows:
            return rows, {"data": "imagenet", "sweep": str(path), "n_rows": len(rows),
                          "model": rows[0].get("model"), "task": rows[0].get("task")}
    bits = list(digits_bits or ((2, 3, 4) if smoke else (2, 3, 4, 5, 6)))
    configs = E.sweep_configs(bits=bits, schemes=("linear", "exponential"),
                              fits=("corr",) if smoke else ("max", "corr"),
                              granularities=("tensor",) if smoke else ("tensor", "channel"),
                              lloyd_max=not smoke)
    table = R.ResultsTable(R.results_dir("explorer/digits_sweep") / "sweep.csv")
    task = E.digits_task()
    rows = E.run_sweep(task, configs, table, progress=progress, log=lambda *_: None)
    rows = [r for r in rows if r.get("scheme") is not None and "top1_drop" in r]
    return rows, {"data": "digits", "sweep": str(table.path), "n_rows": len(rows),
                  "model": "digits_cnn", "task": task.name,
                  "why": "smoke run" if smoke else f"no ImageNet sweep with >= {min_rows} rows "
                                                   f"at {path}"}


def _r2(y, yhat) -> float:
    ss = float(np.sum((y - np.mean(y)) ** 2))
    return 1.0 - float(np.sum((y - yhat) ** 2)) / ss if ss > 0 else float("nan")


def logistic(x, lo, hi, x0, k):
    """``lo + (hi - lo) / (1 + exp(-k (x - x0)))``, the drop as a function of log10 noise."""
    return lo + (hi - lo) / (1.0 + np.exp(-k * (x - x0)))


def correlation_vs_accuracy(rows: list[dict], *, target: str = "top1_drop",
                            predictors: Sequence[str] = PREDICTORS) -> dict:
    """How well the network-level correlation summaries predict the accuracy drop.

    For every predictor: Spearman rho (and p) with ``target`` (sign: ``noise_sum`` should be
    positive, ``r_mean``/``r_min`` negative), and an isotonic fit of the target on it (R^2,
    in-sample). For ``x = log10(noise_sum)``: a 4-parameter logistic fit (R^2, RMSE, params;
    upper asymptote at most the float top-1 when known) and a leave-one-out R^2 of the
    isotonic fit (out-of-sample quality). Returns arrays for plotting too.
    """
    from scipy import optimize, stats
    from sklearn.isotonic import IsotonicRegression

    rows = [r for r in rows if r.get(target) is not None and np.isfinite(float(r[target]))]
    if len(rows) < 4:
        raise ValueError(f"need at least 4 rows with {target!r} to relate correlation to "
                         f"accuracy, got {len(rows)}")
    y = np.array([float(r[target]) for r in rows])
    out: dict[str, Any] = {"target": target, "n": len(rows), "y": y, "predictors": {}}
    for p in predictors:
        x = np.array([float(r[p]) for r in rows])
        rho, pv = stats.spearmanr(x, y)
        inc = p == "noise_sum"
        iso = IsotonicRegression(increasing=inc, out_of_bounds="clip").fit(x, y)
        out["predictors"][p] = {"x": x, "spearman_rho": float(rho), "spearman_p": float(pv),
                                "kendall_tau": float(stats.kendalltau(x, y)[0]),
                                "isotonic_r2": _r2(y, iso.predict(x))}
    x = np.log10(np.maximum(np.array([float(r["noise_sum"]) for r in rows]), 1e-12))
    # Leave-one-out isotonic predictions: an honest, out-of-sample quality of the ranking fit.
    loo = np.empty_like(y)
    for i in range(len(y)):
        m = np.arange(len(y)) != i
        loo[i] = IsotonicRegression(out_of_bounds="clip").fit(x[m], y[m]).predict(x[i:i + 1])[0]
    top = max(float(np.max(y)), 1.0)
    p0 = [float(np.min(y)), top, float(np.median(x)), 2.0]
    try:
        popt, _ = optimize.curve_fit(logistic, x, y, p0=p0, maxfev=20000,
                                     bounds=([-50, 0, -12, 0.01], [50, 100, 12, 50]))
        yhat = logistic(x, *popt)
        fit = {"params": {k: float(v) for k, v in zip(("lo", "hi", "x0", "k"), popt,
                                                        strict=True)},
               "r2": _r2(y, yhat), "rmse": float(np.sqrt(np.mean((y - yhat) ** 2)))}
    except (RuntimeError, ValueError) as e:  # a fit that fails is reported, not hidden
        fit = {"params": None, "r2": float("nan"), "rmse": float("nan"), "error": str(e)}
    out["log10_noise"] = x
    out["logistic"] = fit
    out["isotonic_loo_r2"] = _r2(y, loo)
    out["isotonic_loo_rmse"] = float(np.sqrt(np.mean((y - loo) ** 2)))
    return out


def fit_summary_rows(fit: dict) -> list[dict]:
    """The quality numbers of :func:`correlation_vs_accuracy` as printable rows."""
    rows = [{"predictor": p, "spearman_rho": d["spearman_rho"], "spearman_p": d["spearman_p"],
             "kendall_tau": d["kendall_tau"], "isotonic_r2_in_sample": d["isotonic_r2"]}
            for p, d in fit["predictors"].items()]
    lg = fit["logistic"]
    rows.append({"predictor": "log10(noise_sum): logistic", "spearman_rho": float("nan"),
                 "spearman_p": float("nan"), "kendall_tau": float("nan"),
                 "isotonic_r2_in_sample": float("nan"), "logistic_r2": lg["r2"],
                 "logistic_rmse_points": lg["rmse"],
                 "isotonic_loo_r2": fit["isotonic_loo_r2"],
                 "isotonic_loo_rmse_points": fit["isotonic_loo_rmse"]})
    keys = ["predictor", "spearman_rho", "spearman_p", "kendall_tau", "isotonic_r2_in_sample",
            "logistic_r2", "logistic_rmse_points", "isotonic_loo_r2", "isotonic_loo_rmse_points"]
    return [{k: r.get(k, float("nan")) for k in keys} for r in rows]


POINT_COLUMNS = ("label", "scheme", "fit", "granularity", "bits", "top1", "top1_drop",
                 "r_mean", "r_min", "noise_sum")


def accuracy_points(rows: list[dict]) -> list[dict]:
    """The columns of the correlation-vs-accuracy figure, one row per configuration."""
    return [{k: r.get(k) for k in POINT_COLUMNS} for r in rows]


def recipe_points(rows: Sequence[dict], *, model: str) -> list[dict]:
    """The quantized rows of one network in a ``datafree/recipes`` table as points of the
    correlation-vs-accuracy figure: :data:`POINT_COLUMNS` plus ``group`` (the recipe) and
    ``avg_bits`` (``bits`` is the average width; ``r_min`` is not recorded there)."""
    out = []
    for r in rows:
        if r.get("model") != model or r.get("recipe") in (None, "float") or \
                r.get("top1_drop") is None or r.get("noise_sum") is None:
            continue
        levels = r.get("levels") or r["scheme"]
        out.append({"label": f"{r['recipe']} {levels} avg {float(r['avg_bits']):g} bits",
                    "group": r["recipe"], "scheme": levels, "fit": "corr",
                    "granularity": "channel", "bits": float(r["avg_bits"]),
                    "avg_bits": float(r["avg_bits"]), "top1": r.get("top1"),
                    "top1_drop": float(r["top1_drop"]), "r_mean": r.get("r_mean"),
                    "r_min": None, "noise_sum": float(r["noise_sum"])})
    return out


def split_points(rows: Sequence[dict]) -> tuple[list[dict], list[dict]]:
    """``(sweep points, recipe points)``: the points the relation is fitted on (no ``group``)
    and the ones it is checked against (:func:`recipe_points`)."""
    fitted = [r for r in rows if not r.get("group")]
    return fitted, [r for r in rows if r.get("group")]


def predicted_drops(fit: dict, rows: Sequence[dict]) -> list[dict]:
    """Out-of-sample check of a :func:`correlation_vs_accuracy` fit on other configurations
    (e.g. the data-free recipes, which the fit never saw): per row the measured drop, the
    drop the logistic law predicts from ``noise_sum`` and the residual (measured minus
    predicted), in points. Rows without a finite ``noise_sum`` are skipped."""
    lg = fit["logistic"]
    out = []
    for r in rows:
        ns = r.get("noise_sum")
        if ns is None or not np.isfinite(float(ns)):
            continue
        x = float(np.log10(max(float(ns), 1e-12)))
        pred = float(logistic(x, **lg["params"])) if lg["params"] else float("nan")
        out.append({"label": r["label"], "group": r.get("group", ""), "scheme": r.get("scheme"),
                    "bits": r.get("bits"), "noise_sum": float(ns),
                    "top1_drop": float(r["top1_drop"]), "predicted_drop": pred,
                    "residual": float(r["top1_drop"]) - pred})
    return out


def predicted_summary(checked: Sequence[dict]) -> dict:
    """Spearman rho of noise and measured drop over ``checked`` rows
    (:func:`predicted_drops`) and the mean / largest absolute residual (points)."""
    from scipy import stats

    if len(checked) < 3:
        return {"n": len(checked)}
    x = [r["noise_sum"] for r in checked]
    y = [r["top1_drop"] for r in checked]
    res = np.array([r["residual"] for r in checked])
    return {"n": len(checked), "spearman_rho": float(stats.spearmanr(x, y)[0]),
            "mean_residual": float(res.mean()), "max_abs_residual": float(np.abs(res).max())}


def baseline_rows(name: str = "explorer/baselines") -> list[dict]:
    """Rows of ``results/<name>/table.csv`` written by :func:`paper_repro.feedforward.baselines.run`
    (``[]`` when it has not been run here)."""
    import csv

    from paper_repro import results as R

    p = Path(os.environ.get("PAPER_REPRO_RESULTS", R.RESULTS_DIR)) / name / "table.csv"
    if not p.is_file():
        return []
    with p.open(newline="") as f:
        return list(csv.DictReader(f))
