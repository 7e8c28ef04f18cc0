"""What users would reach for instead: uniform int4/int8 weight quantization from qwix (docs/theory.md §4).

docs/theory.md, section 4: no JAX library offers correlation-chosen exponential levels; the
closest off-the-shelf choice is symmetric per-channel integer quantization. This module runs
**qwix 0.1.8** (``pip install qwix==0.1.8``, imported lazily) on the same kernels our
quantizers see and compares correlation and accuracy side by side.

How qwix is used, and why not through its model interception: qwix's post-training provider
(``qwix.PtqProvider`` with ``weight_qtype`` only) refuses convolutions without activation
quantization (``qwix/_src/providers/ptq.py``, ``conv_general_dilated``: "requires same
act_qtype and weight_qtype"), and our models are Keras-layout Flax ports anyway. Weight-only
quantization with float activations is exactly "replace each kernel by its dequantized
copy", so we call qwix's public array API on every selected kernel,
``qwix.dequantize(qwix.quantize(w, jnp.int4 | jnp.int8, channelwise_axes=(out_axis,),
calibration_method="absmax"))``, and run the float model on the result.

qwix's scheme (``qwix/_src/core/qarray.py``: ``calibrate``, ``compute_scale_zero_point``,
``quantize_with_scale_zero_point``; ``numerics.get_symmetric_bound``): per channel
``scale = absmax / (2^(b-1) - 1 + 0.5)``, ``q = clip(round_half_even(w / scale),
-2^(b-1), 2^(b-1) - 1)``, ``w_hat = q scale``; 2^b levels (int4: -8..7), the top code
reaching ``absmax`` only from one side. :func:`uniform_reference` re-implements it in numpy
(tests check qwix against it).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from paper_repro.core import quantize as Q

QWIX_PIN = "qwix==0.1.8"
DEFAULT_SELECT = r".*kernel"


class BaselineUnavailableError(ImportError):
    """The comparison library is not installed."""


def qwix_available() -> bool:
    try:
        import qwix  # noqa: F401
    except ImportError:
        return False
    return True


def _qwix():
    try:
        import qwix
    except ImportError as e:
        raise BaselineUnavailableError(
            f"qwix is not installed; `pip install {QWIX_PIN}` to run the library baseline "
            "(our own quantizers need nothing extra)") from e
    return qwix


def qwix_quantize(w, *, bits: int, channel_axis: int | None = -1) -> np.ndarray:
    """qwix's symmetric absmax int quantization of ``w`` (any shape), dequantized, float32.

    ``bits`` 2..8: ``jnp.int4`` / ``jnp.int8`` at 4 / 8, qwix's synthetic ``"int2"`` ...
    ``"int7"`` qtypes otherwise; ``channel_axis`` the per-channel axis (``None``: one scale
    per tensor).
    """
    import jax.numpy as jnp

    qwix = _qwix()
    qtypes = {4: jnp.int4, 8: jnp.int8, **{b: f"int{b}" for b in (2, 3, 5, 6, 7)}}
    if bits not in qtypes:
        raise ValueError(f"qwix integer baseline supports bits 2..8, got {bits}")
    w = jnp.asarray(w, jnp.float32)
    axes = () if channel_axis is None else (channel_axis % w.ndim,)
    qa = qwix.quantize(w, qtypes[bits], channelwise_axes=axes, calibration_method="absmax")
    return np.asarray(qwix.dequantize(qa), np.float32)


def uniform_reference(w, *, bits: int, channel_axis: int | None = -1) -> np.ndarray:
    """numpy re-implementation of qwix's scheme (module docstring); same shape, float32."""
    w = np.asarray(w, np.float32)
    if channel_axis is None:
        absmax = np.max(np.abs(w), keepdims=True)
    else:
        ax = channel_axis % w.ndim
        absmax = np.max(np.abs(w), axis=tuple(i for i in range(w.ndim) if i != ax),
                        keepdims=True)
    qmax = 2 ** (bits - 1) - 1
    scale = (absmax / np.float32(qmax + 0.5)).astype(np.float32)
    scale = np.where(scale < np.sqrt(np.finfo(np.float32).tiny), np.float32(1), scale)
    q = np.clip(np.round(w / scale), -qmax - 1, qmax)
    return (q * scale).astype(np.float32)


def quantize_tree(params, *, bits: int, select: str = DEFAULT_SELECT,
                  backend: str = "qwix") -> tuple[Any, list[dict]]:
    """Quantize every kernel matching ``select`` per output channel with qwix (``backend=
    "qwix"``) or :func:`uniform_reference` (``"reference"``).

    Returns ``(new_params, report)`` like :func:`paper_repro.core.quantize.quantize_tree` (report
    rows: path, shape, size, bits, n_levels, std, max_over_std, kurtosis, r, zero_fraction).
    The channel axis is the Keras output axis (depthwise ``(kh, kw, C, mult)``: C).
    """
    import re

    import jax

    from paper_repro.feedforward import explorer as X

    if backend not in ("qwix", "reference"):
        raise ValueError(f"backend must be 'qwix' or 'reference', got {backend!r}")
    fn = qwix_quantize if backend == "qwix" else uniform_reference
    pat = re.compile(select)
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    out, report = [], []
    for keypath, leaf in flat:
        path = "/".join(Q._key_str(k) for k in keypath)
        if not (pat.fullmatch(path) and np.ndim(leaf) > 0):
            out.append(leaf)
            continue
        w = np.asarray(leaf, np.float32)
        w_hat = fn(w, bits=bits, channel_axis=Q.default_channel_axis(path, w))
        out.append(w_hat)
        a = w.astype(np.float64)
        std = float(a.std())
        report.append({"path": path, "shape": w.shape, "size": int(w.size), "bits": bits,
                       "n_levels": 2 ** bits, "std": std,
                       "max_over_std": float(np.abs(a).max() / std) if std > 0 else 0.0,
                       "kurtosis": Q.kurtosis(a), "r": X.sample_r(w, w_hat),
                       "zero_fraction": float(np.mean(w_hat == 0))})
    if not report:
        raise ValueError(f"select={select!r} matches no array leaf")
    return jax.tree_util.tree_unflatten(treedef, out), report


def _ours(scheme: str, bits: int, granularity: str = "channel"):
    from paper_repro.feedforward import sweep as E

    return E.QuantConfig(scheme=scheme, fit="corr", bits=bits, granularity=granularity)


def comparison_methods(bits: Sequence[int] = (4, 8)) -> list[tuple[str, int, Any]]:
    """``[(label, bits, how)]``: qwix int-b per channel vs ours (linear / exponential,
    correlation-fitted, per channel) at each width; ``how`` is ``"qwix"`` or a QuantConfig."""
    out = []
    for b in bits:
        out.append((f"qwix int{b} per-channel absmax", b, "qwix"))
        out.append((f"ours linear corr per-channel {b}b", b, _ours("linear", b)))
        out.append((f"ours exponential corr per-channel {b}b", b, _ours("exponential", b)))
    return out


def compare(task, *, bits: Sequence[int] = (4, 8), limit: int | None = None,
            progress: bool = False, log=print) -> list[dict]:
    """Side by side on one task: float, qwix int-b per channel, ours at b bits.

    Every row: method, bits, n_levels, top1, top5, top1_drop (paired vs float on the same
    images, with its bootstrap interval), r_mean (size-weighted), r_min, noise_sum
    (``sum (1 - r^2)/r^2``), quantize_s. Needs qwix (raises
    :class:`BaselineUnavailableError` with the install command otherwise).
    """
    from paper_repro.core import stats
    from paper_repro.feedforward import sweep as E

    _qwix()
    float_res = E.evaluate_params(task, task.params, limit=limit, progress=progress)
    rows = [{"method": "float", "bits": 32, "n_levels": "", "top1": 100 * float_res.top1,
             "top5": 100 * float_res.top5, "top1_drop": 0.0, "top1_drop_low": 0.0,
             "top1_drop_high": 0.0, "r_mean": 1.0, "r_min": 1.0, "noise_sum": 0.0,
             "n_images": float_res.n_images, "quantize_s": 0.0}]
    log(f"float: top-1 {rows[0]['top1']:.2f}")
    for label, b, how in comparison_methods(bits):
        t0 = time.perf_counter()
        if how == "qwix":
            qp, report = quantize_tree(task.params, bits=b)
            n_levels = 2 ** b
        else:
            qp, report = E.quantize_params(task.params, how)
            n_levels = Q.n_levels(how.scheme, b)
        t_q = time.perf_counter() - t0
        res = E.evaluate_params(task, qp, limit=limit, progress=progress)
        pc = stats.paired_comparison(float_res, res, metric="top1", n_resamples=2000)
        row = {"method": label, "bits": b, "n_levels": n_levels, "top1": 100 * res.top1,
               "top5": 100 * res.top5, "top1_drop": 100 * pc.drop,
               "top1_drop_low": 100 * pc.drop_low, "top1_drop_high": 100 * pc.drop_high,
               **{k: v for k, v in E.correlation_summary(report).items()
                  if k in ("r_mean", "r_min", "noise_sum")},
               "n_images": res.n_images, "quantize_s": round(t_q, 2)}
        rows.append(row)
        log(f"{label}: top-1 {row['top1']:.2f} (drop {row['top1_drop']:+.2f}), "
            f"r_mean {row['r_mean']:.5f}, r_min {row['r_min']:.5f}")
    return rows


def markdown_table(rows: list[dict]) -> str:
    """The comparison as a markdown table (percent, r to 5 digits)."""
    lines = ["| method | bits | levels | top-1 | top-5 | top-1 drop [95% CI] | mean r | min r | "
             "noise sum |", "|" + "---|" * 9]
    for r in rows:
        ci = (f" [{r['top1_drop_low']:+.2f}, {r['top1_drop_high']:+.2f}]"
              if "top1_drop_low" in r else "")
        lines.append(f"| {r['method']} | {r['bits']} | {r['n_levels']} | {r['top1']:.2f} | "
                     f"{r['top5']:.2f} | {r['top1_drop']:+.2f}{ci} | {r['r_mean']:.5f} | "
                     f"{r['r_min']:.5f} | {r['noise_sum']:.4f} |")
    return "\n".join(lines) + "\n"


def mobilenet_task(*, progress: bool = False):
    """The real MobileNet 0.75 on the 1300 shared validation images (centre crop, as the
    ImageNet sweep); raises ``FileNotFoundError`` saying what to set when the data is absent."""
    from paper_repro.feedforward import sweep as E
    from paper_repro.feedforward import weights as W

    root = W.shared_data_dir()
    if root is None or not (root / "imagenet-val-1300").is_dir():
        raise FileNotFoundError("the 1300-image sample is not here: set PAPER_REPRO_SHARED_DATA "
                                "to the folder holding imagenet-val-1300/ and keras-weights/")
    return E.imagenet_task("mobilenet", alpha=0.75,
                           weights=root / "keras-weights" / "mobilenet_7_5_224_tf.h5",
                           data=root / "imagenet-val-1300" / "images",
                           labels=root / "imagenet-val-1300" / "labels.txt",
                           policy="crop", progress=progress)


def run(task=None, *, name: str = "explorer/baselines", bits: Sequence[int] = (4, 8),
        limit: int | None = None, progress: bool = False, log=print) -> list[dict]:
    """:func:`compare` on ``task`` (default: :func:`mobilenet_task`) and write
    ``results/<name>/``: table.csv, table.md, meta.json."""
    from paper_repro import results as R

    task = task if task is not None else mobilenet_task(progress=progress)
    t0 = time.perf_counter()
    rows = compare(task, bits=bits, limit=limit, progress=progress, log=log)
    d = R.results_dir(name)
    R.write_csv(d / "table.csv", rows)
    (d / "table.md").write_text(markdown_table(rows))
    import qwix

    R.write_meta(d, {"task": task.name, **task.info, "bits": list(bits), "limit": limit,
                     "library": f"qwix {qwix.__version__}"}, time.perf_counter() - t0)
    return rows
