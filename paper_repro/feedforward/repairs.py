"""Data-free repairs around post-training quantization, on any traced layer graph.

Correlation scores a quantizer by ``r = corr(w, Q(w))``; it is blind to the mean of
``Q(w) - w``. A network is not: a change in a kernel's sum (its DC gain) shifts every output
channel's mean, and small kernels (MobileNet's nine-weight depthwise channels) make such
shifts large. The tools here fix that and the other known data-free failure modes, without
images or retraining, on the wiring that :mod:`paper_repro.feedforward.graph` traces from
the model itself (Flax modules, any JAX function, ONNX graphs):

- :func:`propagate`: the expected value and variance of every node's output, computed
  analytically through the graph from the input statistics of the preprocessing convention
  (:data:`PREPROCESS_STATS`: per-channel mean and std of natural images after
  normalisation; constants, not data). Linear layers map means exactly (zero-padding borders
  included, by running the layer on the mean map) and variances under an independent-input
  approximation (the layer run with squared kernels); batch norms with statistics set each
  channel's average moments to them (``beta``, ``gamma^2 var / (var + eps)``), the
  propagated maps keeping the spatial pattern; ReLU /
  ReLU6 take clipped-Gaussian moments, other activations Gauss-Hermite quadrature; max
  pooling the exact maximum of independent Gaussians (through the monotone activation before
  it); sums, concatenations, slices, shuffles and pads carry moments along.
- :func:`bias_correct`: the expected output shift of each quantized layer,
  ``E[y_q - y] = layer(E[x]; W_q) - layer(E[x]; W)`` averaged over output positions, absorbed
  into the layer's bias, or the following batch norm's moving mean, or a new bias where the
  model reads one. The pipeline (:func:`quantize_model`, the commands, the recipe) corrects
  only layers whose expected input is *anchored* in known
  statistics (:func:`anchoring`: batch-norm statistics or the preprocessing constants,
  through linear maps and activations of known moments) are corrected: on real images the
  independent-input variance approximation underestimates deep pre-activation variances
  many times over (ShuffleNetV2 with folded batch norms: 5-25x), and corrections from such
  means cost accuracy; ``scope="all"`` corrects every layer from the propagated moments.
- :func:`mean_preserving_codes`: re-round a few weights per output channel to the adjacent
  level so that ``sum Q(w) = sum w`` per channel (codes stay on the codebook).
- :func:`fold_bn`: fold each batch norm into the preceding kernel (what a deployment would
  quantize); the batch norm is left as an exact identity plus bias.
- :func:`equalize`: cross-layer equalization of channel ranges of consecutive kernels
  (Nagel et al. 2019): channel ``c`` of the first kernel divided by ``s_c``, input channel
  ``c`` of the next multiplied by ``s_c``; exact through ReLU, and through ReLU6 only where
  worst-case interval bounds (:func:`output_bounds`) keep the channel below the clip.
- :func:`allocate` / :func:`allocate_bits`: per-layer bit widths (and, given several level
  families, each layer's family) for an average budget (codes plus codebook parameters),
  chosen greedily to minimize the predicted relative output noise
  ``sum over layers (1 - r^2) / r^2``, with ``r`` measured per output channel and width
  (:func:`channel_noise`). With a coded budget (``--coded-budget``) the codes count as
  entropy coding stores them, so the budget is the size of an entropy-coded file.
- :data:`RECIPES`: the named data-free recipe (``--recipe datafree`` of ``paper-repro
  evaluate`` and ``paper-repro pack``), the same settings on every network; ``--recipe
  datafree-opt`` keeps its levels and widths and optimizes the rounding
  (:mod:`paper_repro.feedforward.rounding`, :mod:`paper_repro.feedforward.calibration`).

Measured with the recipe (``paper-repro evaluate ... --policy crop --recipe datafree
--avg-bits B --json`` on the 1300-image validation sample; drop vs float on the same images):

=============================================  =====  ======  ======  ==========
network (float top-1)                          bits   top-1   drop    file ratio
=============================================  =====  ======  ======  ==========
MobileNet 0.75, Keras .h5 (78.08)              avg 5  77.77   0.31    5.90x
MobileNet 0.75                                 avg 4  75.31   2.77    7.22x
MobileNet 0.75                                 avg 3  63.69   14.38   9.29x
ShuffleNetV2 x0.5, ONNX, BN folded (71.23)     avg 5  69.46   1.77    6.08x
ShuffleNetV2 x0.5                              avg 4  66.54   4.69    7.55x
digits CNN, held-out 449 (98.66)               avg 4  97.77   0.89    5.65x
digits CNN                                     avg 3  98.22   0.45    6.84x
=============================================  =====  ======  ======  ==========

(file ratio: float32 bytes over the bytes of the packed file ``paper-repro pack --recipe
datafree`` writes, fixed-width codes; ``results/datafree/recipes/``.)

ShuffleNetV2 is dominated by mean shifts (exponential 6 bits per channel with no repair:
67.31; linear 8 bits: 70.69; exponential 8 bits: 71.23) and at 5 bits average by its
classifier (three quarters of its weights, 4 bits): even a bias correction with the true
layer-input means (measured on images, not data-free) only reaches 70.31 there.

A network's graph is traced once and attached to its parameters (:func:`attach_task`,
:func:`attach`; :func:`quantize_model` finds it again by the parameter tree's identity), or
passed with its input statistics as ``wiring=Wiring(graph, mean, std, lo, hi)``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np
from scipy import special

from paper_repro.core import correlation as corr_mod
from paper_repro.core import quantize as Q
from paper_repro.feedforward import graph as G

# Per-channel (mean, std, min, max) of natural images after each preprocessing convention,
# from the usual ImageNet RGB channel means (123.68, 116.78, 103.94) and standard deviations
# (58.4, 57.1, 57.4) on the 0..255 scale. Channel order is the network input's ('caffe': BGR).
_RGB_MEAN = np.array([123.68, 116.78, 103.94])
_RGB_STD = np.array([58.4, 57.1, 57.4])
PREPROCESS_STATS: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {
    # x / 127.5 - 1: values in [-1, 1]
    "tf": (_RGB_MEAN / 127.5 - 1, _RGB_STD / 127.5, np.full(3, -1.0), np.full(3, 1.0)),
    # BGR, ImageNet BGR means subtracted: mean ~0 per channel
    "caffe": (np.zeros(3), _RGB_STD[::-1].copy(), -np.array([103.939, 116.779, 123.68]),
              255.0 - np.array([103.939, 116.779, 123.68])),
    # (x / 255 - mean) / std with the ImageNet mean and std: ~0 mean, ~1 std per channel
    "torch": (np.zeros(3), np.ones(3),
              -np.array([0.485, 0.456, 0.406]) / np.array([0.229, 0.224, 0.225]),
              (1 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])),
}


# --- Graphs attached to parameter trees ---------------------------------------------------------


@dataclasses.dataclass(eq=False)
class Wiring:
    """A traced graph plus the input statistics its moments start from.

    ``in_mean`` / ``in_std``: ``(C,)`` per channel or the input's full per-example shape;
    ``in_lo`` / ``in_hi``: bounds of the preprocessed input (for :func:`output_bounds`).
    """

    graph: G.Graph
    in_mean: np.ndarray
    in_std: np.ndarray
    in_lo: np.ndarray
    in_hi: np.ndarray
    preprocess: str = ""


_ATTACHED: dict[int, tuple[Any, Wiring]] = {}


def attach(params, wiring: Wiring) -> Wiring:
    """Remember ``wiring`` for this parameter tree (by identity; the tree is kept alive), so
    that :func:`quantize_model` (and sweeps calling it) find the graph. Returns ``wiring``."""
    _ATTACHED[id(params)] = (params, wiring)
    return wiring


def attached(params) -> Wiring | None:
    """The :class:`Wiring` attached to this very tree, or ``None``."""
    hit = _ATTACHED.get(id(params))
    return hit[1] if hit is not None and hit[0] is params else None


_OPTIMIZERS: dict[int, tuple[Any, dict]] = {}


def attach_optimizer(params, config, *, progress: bool = False) -> dict:
    """Have :func:`quantize_model` run the optimized rounding
    (:class:`~paper_repro.feedforward.calibration.OptConfig` ``config``) on this very tree
    (by identity, like :func:`attach`). Returns the record, whose ``"last"`` holds the summary
    of the latest run (:func:`optimizer_record`)."""
    rec = {"config": config, "progress": progress, "last": {}}
    _OPTIMIZERS[id(params)] = (params, rec)
    return rec


def attached_optimizer(params) -> dict | None:
    """The record of :func:`attach_optimizer` for this very tree, or ``None``."""
    hit = _OPTIMIZERS.get(id(params))
    return hit[1] if hit is not None and hit[0] is params else None


def optimizer_record(params) -> dict:
    """``{"datafree_opt": summary}`` of the latest optimized rounding of this tree (empty
    when none ran)."""
    hit = attached_optimizer(params)
    return {"datafree_opt": hit["last"]} if hit is not None and hit["last"] else {}


def input_statistics(preprocess: Any, *, model: str | None = None
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(mean, std, lo, hi)`` of the preprocessed input for a preprocessing convention.

    ``"tf"``, ``"caffe"``, ``"torch"``: :data:`PREPROCESS_STATS` (per channel). The
    embedded digits CNN (``model="digits_cnn"``, grey levels / 16): the mean and standard
    deviation images of its training split (no labels), in [0, 1]. Raises ``ValueError``
    for any other convention.
    """
    if isinstance(preprocess, str) and preprocess in PREPROCESS_STATS:
        return tuple(np.asarray(a, np.float64) for a in PREPROCESS_STATS[preprocess])
    if model == "digits_cnn":
        from paper_repro.feedforward import digits

        train, _ = digits.load_data()
        x = np.asarray(digits.preprocess(np.asarray(train.images, np.float32)), np.float64)
        return x.mean(0), x.std(0), np.zeros(1), np.ones(1)
    raise ValueError(f"no input statistics for preprocessing {preprocess!r}: use one of "
                     f"{sorted(PREPROCESS_STATS)} or pass the statistics to Wiring(...)")


def attach_task(task, *, model: Any = None) -> Wiring:
    """Trace a :class:`~paper_repro.feedforward.sweep.Task`'s network once and attach the
    graph and the input statistics of its preprocessing to ``task.params``.

    ``model``: an ONNX model (:func:`paper_repro.feedforward.onnx_model.load_onnx`) whose
    graph is read from its node list; otherwise ``task.apply_fn`` is traced at the input
    shape of the task's images. Idempotent.
    """
    hit = attached(task.params)
    if hit is not None:
        return hit
    images = task.data.images if hasattr(task.data, "images") else task.data[0]
    shape = (1,) + tuple(np.shape(images)[1:])
    if model is not None and hasattr(model, "nodes") and hasattr(model, "constants"):
        graph = G.from_onnx(model)
    else:
        graph = G.trace(task.apply_fn, task.params, shape)
    mode = task.preprocess_mode
    mean, std, lo, hi = input_statistics(mode, model=task.info.get("model"))
    return attach(task.params, Wiring(graph, mean, std, lo, hi,
                                      mode if isinstance(mode, str) else str(task.info.get(
                                          "model", ""))))


# --- Analytic moments ---------------------------------------------------------------------------


def clipped_gaussian_moments(m, s, *, lo: float = 0.0, hi: float = math.inf):
    """Mean and variance of ``clip(X, lo, hi)`` for ``X ~ N(m, s^2)`` (elementwise, numpy).

    ``s = 0`` gives ``clip(m)`` and variance 0.
    """
    m = np.asarray(m, np.float64)
    s = np.asarray(s, np.float64)
    s_ = np.maximum(s, 1e-30)
    a = (lo - m) / s_
    b = (hi - m) / s_ if np.isfinite(hi) else np.full_like(m, np.inf)
    pa, pb = special.ndtr(a), special.ndtr(b)
    phia = np.exp(-0.5 * a**2) / math.sqrt(2 * math.pi)
    phib = np.where(np.isfinite(b), np.exp(-0.5 * np.where(np.isfinite(b), b, 0) ** 2)
                    / math.sqrt(2 * math.pi), 0.0)
    mass = pb - pa
    # E[X 1{a<Z<b}] and E[X^2 1{a<Z<b}] for X = m + s Z
    e1 = m * mass + s_ * (phia - phib)
    bphib = np.where(np.isfinite(b), np.where(np.isfinite(b), b, 0.0) * phib, 0.0)
    e2 = (m**2 + s_**2) * mass + 2 * m * s_ * (phia - phib) + s_**2 * (a * phia - bphib)
    hi_ = hi if np.isfinite(hi) else 0.0
    mean = lo * pa + e1 + hi_ * (1 - pb)
    second = lo**2 * pa + e2 + hi_**2 * (1 - pb)
    var = np.maximum(second - mean**2, 0.0)
    det = s <= 1e-30
    mean = np.where(det, np.clip(m, lo, hi), mean)
    var = np.where(det, 0.0, var)
    return mean, var


@dataclasses.dataclass
class Moments:
    """Expected value and variance of one node's output, per element (shape = the node's
    output without the batch axis). ``pre``: ``(m, s, lo, hi)`` when the output is
    ``clip(N(m, s^2), lo, hi)`` elementwise (a ReLU / ReLU6 of a Gaussian), else ``None``.
    ``anchored``: the mean follows from known statistics (batch-norm statistics, the
    preprocessing constants) through linear maps and activations of known moments only, not
    from a variance of the independent-input approximation (see :func:`anchoring`)."""

    mean: np.ndarray
    var: np.ndarray
    pre: tuple | None = None
    anchored: bool = True


_CLIPS = {"relu": (0.0, math.inf), "relu6": (0.0, 6.0)}
_HERMITE = np.polynomial.hermite.hermgauss(48)


def _np(x) -> np.ndarray:
    return np.asarray(x, np.float64)


def _f64(values) -> dict:
    return {p: np.asarray(v, np.float64) for p, v in values.items()}


def _run(node: G.Node, values, *xs) -> np.ndarray:
    """``node.fn`` on unbatched maps (one example), in NumPy float64."""
    return np.asarray(node.fn(values, *(np.asarray(x, np.float64)[None] for x in xs)),
                      np.float64)[0]


def _squared(values: Mapping[str, Any], node: G.Node, *, absolute: bool = False) -> dict:
    """``values`` with ``node``'s kernels squared (or made absolute) and its bias zeroed."""
    v = dict(values)
    for k in node.kernels:
        v[k] = np.abs(v[k]) if absolute else v[k] * v[k]
    if node.bias is not None:
        v[node.bias] = np.zeros_like(v[node.bias])
    return v


def _channel_map(vec, shape, axis) -> np.ndarray:
    """``(C,)`` per-channel values broadcast to an unbatched ``shape`` (channel ``axis`` of
    the batched tensor), or a full map returned as is."""
    vec = np.asarray(vec, np.float64)
    if tuple(vec.shape) == tuple(shape):
        return vec
    ax = axis % (len(shape) + 1) - 1
    sh = [1] * len(shape)
    sh[ax] = -1
    return np.broadcast_to(vec.reshape(sh), tuple(shape)).copy()


def _per_channel(x, axis) -> np.ndarray:
    """Mean over every axis but the channel axis (``axis`` of the batched tensor) of an
    unbatched map."""
    x = np.asarray(x, np.float64)
    ax = axis % (x.ndim + 1) - 1
    return np.moveaxis(x, ax, 0).reshape(x.shape[ax], -1).mean(1)


def bn_vars(node: G.Node) -> dict[str, str]:
    """``{"gamma", "beta", "mean", "var"} -> path`` of a batch norm (what it has)."""
    if "bn_vars" in node.attrs:
        return dict(node.attrs["bn_vars"])
    g = node.group
    names = {"gamma": "gamma", "beta": "beta", "mean": "moving_mean", "var": "moving_variance"}
    return {k: f"{g}/{v}" for k, v in names.items() if f"{g}/{v}" in node.reads}


def bn_affine(node: G.Node, values) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel ``(a, b)`` of a batch norm ``y = a x + b``, from its parameters and
    epsilon. Raises ``ValueError`` when the epsilon is unknown."""
    bv, eps = bn_vars(node), node.attrs.get("eps")
    if eps is None or not {"mean", "var"} <= set(bv):
        raise ValueError(f"batch norm {node.name!r}: statistics or epsilon unknown")
    var = _np(values[bv["var"]])
    gamma = _np(values[bv["gamma"]]) if "gamma" in bv else np.ones_like(var)
    beta = _np(values[bv["beta"]]) if "beta" in bv else np.zeros_like(var)
    a = gamma / np.sqrt(var + eps)
    return a, beta - _np(values[bv["mean"]]) * a


def _max_of_gaussians(m, s, lo, hi, reduce: Callable, *, grid: int = 96):
    """Moments of ``clip(max over each window of independent N(m_i, s_i^2), lo, hi)``.

    ``reduce(x)`` sums ``x`` (input-shaped) over each window. With ``G(t)`` the product of
    the window's normal CDFs, ``E[Y] = L + int_L^U (1 - G)``, ``E[Y^2] = L^2 + int_L^U 2t
    (1 - G)`` on ``[L, U]`` (``lo``/``hi``, or eight standard deviations out).
    """
    s = np.maximum(s, 1e-9 * (np.abs(m).max() + 1e-30))
    L = lo if math.isfinite(lo) else float((m - 8 * s).min())
    U = hi if math.isfinite(hi) else float((m + 8 * s).max())
    U = max(U, L + 1e-9)
    t = np.linspace(L, U, grid)
    surv = np.stack([1.0 - np.exp(reduce(special.log_ndtr((tk - m) / s))) for tk in t])
    w = np.full(grid, (U - L) / (grid - 1))
    w[0] = w[-1] = w[0] / 2
    e1 = L + np.tensordot(w, surv, axes=(0, 0))
    e2 = L * L + np.tensordot(w * 2 * t, surv, axes=(0, 0))
    return e1, np.maximum(e2 - e1 * e1, 0.0)


def _window_reduce(node: G.Node) -> Callable:
    if node.op == "maxpool":
        win, st, pad = (node.attrs["window"], node.attrs["window_strides"],
                        node.attrs["window_padding"])
        dil = node.attrs.get("window_dilation", (1,) * len(win))

        def red(x):
            return G.np_reduce_window(x[None], 0.0, np.add, win, st, pad, dil)[0]
        return red
    axes = tuple(a - 1 for a in node.attrs["axes"])
    keep = len(node.out_shape) == len(node.attrs["in_shapes"][0])

    def red(x):
        return np.sum(x, axis=axes, keepdims=keep)
    return red


def propagate(graph: G.Graph, params, *, in_mean, in_std, bn_stats: bool = True
              ) -> dict[str, Moments]:
    """:class:`Moments` of every node's output (and ``"input"``), computed analytically.

    ``in_mean`` / ``in_std``: per channel ``(C,)`` or the input's unbatched shape;
    ``bn_stats``: batch norms with moving statistics reset the moments to them (else a
    batch norm is an affine map like any other). Inputs of a node are treated as independent
    (sums add variances; max pools take independent maxima). Nodes without a rule (a
    softmax) get NaN moments. NumPy float64, one example map per node.
    """
    values = _f64(G.flat_values(params))
    ax = graph.channel_axis
    shape0 = graph.input_shape[1:]
    out = {"input": Moments(_channel_map(in_mean, shape0, ax),
                            _channel_map(np.asarray(in_std, np.float64) ** 2, shape0, ax))}
    for node in graph.nodes:
        out[node.name] = _node_moments(graph, node, values, [out[i] for i in node.inputs],
                                       bn_stats)
    for name, (known_mean, _) in anchoring(graph, params, bn_stats=bn_stats).items():
        out[name].anchored = known_mean
    return out


def anchoring(graph: G.Graph, params, *, bn_stats: bool = True) -> dict[str, tuple[bool, bool]]:
    """Which propagated moments follow from known statistics: ``{node: (mean known, variance
    known)}``. The input's are (the preprocessing constants); a batch norm with moving
    statistics knows both; linear maps keep a known mean but their output variance is the
    independent-input approximation (real features are correlated, so it can be far off);
    an activation knows its output only from known input moments, a max pool never (it
    assumes independent neighbours); sums,
    concatenations, slices and pads keep what their inputs know."""
    values = G.flat_values(params)
    out = {"input": (True, True)}
    for n in graph.nodes:
        ins = [out[i] for i in n.inputs]
        m_ok = all(i[0] for i in ins)
        v_ok = all(i[1] for i in ins)
        if n.is_layer or n.op in ("sumpool", "sum"):
            res = (m_ok, False)
        elif n.op == "bn":
            stats = bn_stats and {"mean", "var"} <= set(bn_vars(n)) and \
                bn_vars(n)["mean"] in values
            res = (True, True) if stats else (m_ok, v_ok)
        elif n.op == "act" and n.act in ("identity", "affine"):
            res = (m_ok, v_ok)
        elif n.op == "act":
            res = (m_ok and v_ok, m_ok and v_ok)
        elif n.op in ("maxpool", "max"):  # assumes independent neighbours: an approximation
            res = (False, False)
        elif n.op in ("add", "sub"):
            res = (m_ok, False)
        elif n.op in ("concat", "reshape", "transpose", "slice", "reverse", "pad"):
            res = (m_ok, v_ok)
        else:
            res = (False, False)
        out[n.name] = res
    return out


def _pre_bounds(graph, name):
    """Clip bounds of the ``pre`` Gaussian carried by node ``name`` (through data moves)."""
    node = graph[name]
    while node.op != "act":
        node = graph[node.inputs[0]]
    return _CLIPS[node.act]


def _node_moments(graph, node, values, ins, bn_stats) -> Moments:
    op = node.op
    ax = graph.channel_axis
    if node.is_layer:
        m = _run(node, values, ins[0].mean)
        v = _run(node, _squared(values, node), ins[0].var)
        return Moments(m, np.maximum(v, 0.0))
    if op == "bn":
        bv = bn_vars(node)
        zero = _run(node, values, np.zeros_like(ins[0].mean))
        a = _run(node, values, np.ones_like(ins[0].mean)) - zero
        m = _run(node, values, ins[0].mean)
        v = a * a * ins[0].var
        if bn_stats and {"mean", "var"} <= set(bv):
            # the statistics fix each channel's average; the propagated maps keep the spatial
            # pattern (image borders see fewer taps)
            shape = node.out_shape[1:]
            mm = _channel_map(values[bv["mean"]], node.attrs["in_shapes"][0][1:], ax)
            beta = _run(node, values, mm)
            m = m - _channel_map(_per_channel(m, ax), shape, ax) + beta
            spread2 = _channel_map(values[bv["var"]], shape, ax) * a * a
            avg = _channel_map(_per_channel(v, ax), shape, ax)
            v = np.where(avg > 0, v * spread2 / np.where(avg > 0, avg, 1.0), spread2)
        return Moments(m, np.maximum(v, 0.0))
    if op == "act":
        return _act_moments(node, values, ins[0])
    if op in ("add", "sub"):
        m = ins[0].mean + ins[1].mean if op == "add" else ins[0].mean - ins[1].mean
        return Moments(m, ins[0].var + ins[1].var)
    if op == "mul":
        (m1, v1), (m2, v2) = (ins[0].mean, ins[0].var), (ins[1].mean, ins[1].var)
        return Moments(m1 * m2, v1 * v2 + v1 * m2 * m2 + v2 * m1 * m1)
    if op in ("concat", "reshape", "transpose", "slice", "reverse", "pad"):
        m = _run(node, values, *(i.mean for i in ins))
        zero = _run(node, values, *(np.zeros_like(i.var) for i in ins))
        v = _run(node, values, *(i.var for i in ins)) - zero
        pre = None
        if len(ins) == 1 and ins[0].pre is not None and (
                op != "pad" or node.attrs.get("value") == 0.0):  # zero: clip(N(0, 0))
            pre = (_run(node, values, ins[0].pre[0]), _run(node, values, ins[0].pre[1])) + \
                tuple(ins[0].pre[2:])
        return Moments(m, np.maximum(v, 0.0), pre)
    if op in ("sumpool", "sum"):
        return Moments(_run(node, values, ins[0].mean), _run(node, values, ins[0].var))
    if op in ("maxpool", "max"):
        src = ins[0]
        if src.pre is not None:
            mm, ss, lo, hi = src.pre
        else:
            mm, ss, lo, hi = src.mean, np.sqrt(src.var), -math.inf, math.inf
        return Moments(*_max_of_gaussians(mm, ss, lo, hi, _window_reduce(node)))
    nan = np.full(node.out_shape[1:], np.nan)
    return Moments(nan, nan)


def _act_moments(node: G.Node, values, x: Moments) -> Moments:
    kind = node.act
    if kind in _CLIPS:
        lo, hi = _CLIPS[kind]
        s = np.sqrt(x.var)
        m, v = clipped_gaussian_moments(x.mean, s, lo=lo, hi=hi)
        return Moments(m, v, (x.mean, s, lo, hi))
    if kind in ("identity", "affine"):
        zero = _run(node, values, np.zeros_like(x.mean))
        a = _run(node, values, np.ones_like(x.mean)) - zero
        return Moments(a * x.mean + zero, a * a * x.var)
    # any other elementwise function: Gauss-Hermite quadrature
    t, w = _HERMITE
    s = np.sqrt(x.var)
    f = np.stack([_run(node, values, x.mean + math.sqrt(2.0) * s * tk) for tk in t])
    wn = (w / math.sqrt(math.pi)).reshape((-1,) + (1,) * x.mean.ndim)
    m = (wn * f).sum(0)
    return Moments(m, np.maximum((wn * f * f).sum(0) - m * m, 0.0))


# --- Bias correction ----------------------------------------------------------------------------


def expected_shift(graph: G.Graph, node: G.Node, values_float, values_q, in_mean) -> np.ndarray:
    """``(C_out,)`` expected output shift of layer ``node`` when its kernels change from
    ``values_float`` to ``values_q`` (flat ``{path: array}``): the layer run on its mean
    input map (zero padding included) with each, differenced, averaged over positions."""
    return layer_shifts(graph, values_float, values_q, {node.name: in_mean})[node.name]


def layer_shifts(graph: G.Graph, values_float, values_q,
                 in_means: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """:func:`expected_shift` of every layer named in ``in_means``."""
    out = {}
    for n, mean in in_means.items():
        node = graph[n]
        vf = _f64({p: values_float[p] for p in node.reads})
        vq = dict(vf)
        vq.update(_f64({k: values_q[k] for k in node.kernels}))
        y = _run(node, vq, mean) - _run(node, vf, mean)
        out[n] = _per_channel(y, graph.channel_axis) if y.ndim > 1 else y
    return out


def find_sink(graph: G.Graph, node: G.Node, values) -> tuple[str, str] | None:
    """Where layer ``node``'s output shift goes: ``("bias", path)`` (subtract), ``("bn",
    moving-mean path)`` (add; the batch norm that alone reads the layer), ``("new", path)``
    (a bias to create), or ``None`` when the model has none of these (an ONNX ``MatMul``
    whose bias is a separate ``Add`` of a constant: the constant is not a parameter)."""
    if node.bias is not None:
        return "bias", node.bias
    cons = graph.consumers(node.name)
    if len(cons) == 1 and graph[cons[0]].op == "bn":
        mean = bn_vars(graph[cons[0]]).get("mean")
        if mean in values:
            return "bn", mean
    if graph.bias_creatable:
        return "new", f"{node.group}/bias"
    return None


def shift_sink(graph: G.Graph, node: G.Node, values) -> tuple[str, str]:
    """:func:`find_sink`, raising ``ValueError`` where there is none."""
    sink = find_sink(graph, node, values)
    if sink is None:
        raise ValueError(f"layer {node.name!r} has no bias and no batch norm to absorb its "
                         "output shift, and the model reads no bias it does not have; keep it "
                         "in float (keep_float) or switch bias correction off")
    return sink


def bias_correct(graph: G.Graph, params_float, params_q, moments: Mapping[str, Moments], *,
                 paths: Sequence[str] | None = None, scope: str = "all"
                 ) -> tuple[dict, dict[str, np.ndarray]]:
    """Absorb each quantized layer's expected output shift (new tree; inputs not mutated).

    ``params_float``: the float reference (same layout as ``params_q``, e.g. both folded);
    ``moments``: :func:`propagate` on the float network (scaled like ``params_float`` if it
    was equalized). ``scope``: ``"all"`` corrects every quantized layer from the propagated
    moments; ``"anchored"`` only layers whose expected input is :attr:`Moments.anchored`
    (known statistics, see :func:`anchoring`; what :func:`quantize_model` does by default).
    A layer with nowhere to absorb its shift (:func:`find_sink` is ``None``) stays
    uncorrected. Returns ``(new_params, {layer: shift (C_out,)})`` for the corrected layers.
    """
    if scope not in ("anchored", "all"):
        raise ValueError(f"scope must be 'anchored' or 'all', got {scope!r}")
    vf = G.flat_values(params_float)
    vq = G.flat_values(params_q)
    new = _copy_tree(params_q)
    todo = [n for n in graph.layers if (paths is None or any(k in paths for k in n.kernels))
            and not all(np.array_equal(np.asarray(vf[k]), np.asarray(vq[k]))
                        for k in n.kernels)
            and (scope == "all" or moments[n.inputs[0]].anchored)
            and find_sink(graph, n, vq) is not None]
    shifts = layer_shifts(graph, vf, vq, {n.name: moments[n.inputs[0]].mean for n in todo})
    for node in todo:
        shift = shifts[node.name]
        kind, path = shift_sink(graph, node, vq)
        if kind == "new":
            _set(new, path, (-shift).astype(np.float32))
            continue
        cur = np.asarray(_get(new, path))
        val = cur.astype(np.float64) + (shift if kind == "bn" else -shift)
        _set(new, path, val.astype(cur.dtype))
    return new, shifts


def _copy_tree(params):
    return {k: _copy_tree(v) if isinstance(v, Mapping) else v for k, v in params.items()}


def _get(tree, path):
    for k in path.split("/"):
        tree = tree[k]
    return tree


def _set(tree, path, value):
    *head, last = path.split("/")
    for k in head:
        tree = tree.setdefault(k, {})
    tree[last] = value


# --- Mean-preserving rounding -------------------------------------------------------------------


def mean_preserving_codes(w, codes, q: Q.Quantizer, *, channel_axis: int = -1) -> np.ndarray:
    """Re-round codes so each output channel's ``sum Q(w)`` is as close as possible to ``sum w``.

    Per channel, the weights are moved to the adjacent level (up when the sum is short, down
    when it is over) in order of least added squared error per unit of sum recovered, and the
    prefix that brings the sum closest is kept. Codes stay on ``q``'s codebook.
    ``w: any shape``, ``codes`` same shape; ``channel_axis``: output channels (sums over the
    rest). Returns the new codes (same dtype).
    """
    w = np.asarray(w, np.float64)
    codes = np.asarray(codes)
    ax = channel_axis % w.ndim
    rows_w = np.moveaxis(w, ax, 0).reshape(w.shape[ax], -1)
    rows_c = np.moveaxis(codes, ax, 0).reshape(w.shape[ax], -1).astype(np.int64)
    levels = np.asarray(q.levels, np.float64)
    L = levels.shape[-1]
    if levels.ndim == 1:
        lv = np.broadcast_to(levels, (rows_w.shape[0], L))
    else:
        q_ax = q.channel_axis % w.ndim
        if q_ax != ax:
            raise ValueError("per-channel quantizer on another axis than the output channels")
        lv = levels
    qv = np.take_along_axis(lv, rows_c, 1)
    delta = (rows_w - qv).sum(1)  # > 0: the quantized sum is short
    new_c = rows_c.copy()
    for sign in (1, -1):
        sel = np.where(sign * delta > 0)[0]
        if sel.size == 0:
            continue
        c = rows_c[sel]
        nb = np.clip(c + sign, 0, L - 1)
        lvs = lv[sel]
        qn = np.take_along_axis(lvs, nb, 1)
        q0 = qv[sel]
        gain = sign * (qn - q0)  # > 0 where a move exists
        ww = rows_w[sel]
        cost = (qn - ww) ** 2 - (q0 - ww) ** 2
        ok = gain > 0
        eff = np.where(ok, cost / np.where(ok, gain, 1.0), np.inf)
        order = np.argsort(eff, axis=1, kind="stable")
        g_sorted = np.take_along_axis(np.where(ok, gain, 0.0), order, 1)
        cum = np.concatenate([np.zeros((len(sel), 1)), np.cumsum(g_sorted, 1)], 1)
        k = np.argmin(np.abs(sign * delta[sel][:, None] - cum), 1)
        take = np.arange(order.shape[1])[None, :] < k[:, None]
        moved = np.zeros_like(take)
        np.put_along_axis(moved, order, take, 1)
        new_c[sel] = np.where(moved & ok, nb, c)
    shape = np.moveaxis(codes, ax, 0).shape
    return np.moveaxis(new_c.reshape(shape), 0, ax).astype(codes.dtype)


def apply_mean_preserving(params_q, report: list[dict], params_float, *,
                          channel_axis: int | None = None) -> tuple[dict, list[dict]]:
    """Re-round every quantized leaf of a :func:`~paper_repro.core.quantize.quantize_tree` result
    with :func:`mean_preserving_codes` (output channels by the Keras layout); update the
    report's codes, ``r`` and ``zero_fraction``. Returns ``(new_params, new_report)``."""
    flat = dict(Q.tree_paths(params_float))
    new = {k: dict(v) if isinstance(v, Mapping) else v for k, v in params_q.items()}
    out = []
    for row in report:
        path, qz = row["path"], row["quantizer"]
        w = np.asarray(flat[path])
        ax = Q.default_channel_axis(path, w) if channel_axis is None else channel_axis
        codes = mean_preserving_codes(w, row["codes"], qz, channel_axis=ax)
        w_hat = np.asarray(Q.decode(codes, qz)).astype(w.dtype)
        layer, var = path.rsplit("/", 1)
        new[layer][var] = w_hat
        out.append({**row, "codes": jnp.asarray(codes),
                    "r": float(corr_mod.sample_r(jnp.asarray(w), jnp.asarray(w_hat))),
                    "zero_fraction": float(np.mean(w_hat == 0))})
    return new, out


# --- Batch-norm folding and equalization --------------------------------------------------------


def _out_channels(node: G.Node, path: str, w: np.ndarray) -> tuple[np.ndarray, Callable]:
    """How ``node``'s kernel at ``path`` maps to output channels: ``(w2, back)`` with
    ``w2[..., o]`` the weights of output channel ``o`` and ``back(w2)`` the kernel again."""
    last = path.rpartition("/")[2]
    if node.op == "separable" and path == node.kernels[0]:
        raise ValueError("the depthwise half of a separable layer has no output channels")
    if node.op == "depthwise" and "depthwise" in last:  # Keras (kh, kw, C, mult)
        return w.reshape(w.shape[:-2] + (-1,)), lambda a: a.reshape(w.shape)
    return w, lambda a: a


def _in_axis(node: G.Node, w: np.ndarray, c_in: int) -> int:
    """Kernel axis of ``node``'s input channels (first kernel of a separable layer)."""
    if node.op == "dense":
        return 0
    if np.shape(w)[-2] == c_in:
        return -2
    if node.op == "depthwise" and np.shape(w)[-1] == c_in:  # ONNX / PyTorch (kh, kw, 1, C)
        return -1
    raise ValueError(f"cannot tell the input-channel axis of {node.name!r} ({np.shape(w)})")


def _out_kernel(node: G.Node) -> str:
    return node.kernels[-1]


def _bn_pairs(graph: G.Graph) -> list[tuple[G.Node, G.Node]]:
    out = []
    for n in graph.layers:
        cons = graph.consumers(n.name)
        if len(cons) == 1 and graph[cons[0]].op == "bn":
            out.append((n, graph[cons[0]]))
    return out


def fold_bn(graph: G.Graph, params) -> dict:
    """Fold each batch norm into the layer it alone follows; the batch norm becomes an exact
    identity plus bias (``var = 1 - eps``, ``mean = 0``, ``gamma = 1``, ``beta`` = the folded
    offset, the layer's own bias moved into it). Same tree structure; input not mutated.
    Raises ``ValueError`` where a batch norm's epsilon or statistics are unknown."""
    values = G.flat_values(params)
    new = _copy_tree(params)
    for layer, bn in _bn_pairs(graph):
        bv = bn_vars(bn)
        eps = bn.attrs.get("eps")
        if eps is None or not {"mean", "var", "beta"} <= set(bv):
            raise ValueError(f"batch norm {bn.name!r}: epsilon or beta unknown, cannot fold")
        a, c = bn_affine(bn, values)
        path = _out_kernel(layer)
        w = _np(values[path])
        w2, back = _out_channels(layer, path, w)
        _set(new, path, back(w2 * a).astype(np.asarray(values[path]).dtype))
        _identity_bn(new, values, layer, bn, a, c)
    return new


def _identity_bn(new, values, layer: G.Node, bn: G.Node, a, c) -> None:
    """After ``bn``'s scale ``a`` went into ``layer``'s kernel: ``bn`` becomes the identity
    plus the offset ``c`` (plus ``a`` times the layer's bias, which becomes zero) in ``new``:
    ``mean = 0``, ``var = 1 - eps``, ``gamma = 1``, ``beta`` the offset."""
    bv = bn_vars(bn)
    if layer.bias is not None:
        c = c + a * _np(values[layer.bias])
        _set(new, layer.bias, np.zeros_like(np.asarray(values[layer.bias])))
    n = a.shape[0]
    _set(new, bv["mean"], np.zeros(n, np.float32))
    _set(new, bv["var"], np.full(n, 1.0 - bn.attrs["eps"], np.float32))
    if "gamma" in bv and bv["gamma"] in values:
        _set(new, bv["gamma"], np.ones(n, np.float32))
    _set(new, bv["beta"], c.astype(np.float32))


def fold_into_codebooks(graph: G.Graph, params_q, report: Sequence[Mapping]
                        ) -> tuple[dict, list[dict], list[str]]:
    """Fold each batch norm into the per-channel codebooks of the quantized layer it alone
    follows, for storage: the same network in fewer stored numbers.

    A batch norm is ``z = a_c u + b_c`` per channel; with one codebook per output channel,
    ``a_c W_q`` is the same codes on the codebook scaled by ``|a_c|`` (codes mirrored,
    ``L - 1 - k``, where ``a_c < 0``; the codebooks are symmetric). The batch norm becomes the
    identity plus the folded offset (as :func:`fold_bn`: ``mean = 0``, ``var = 1 - eps``,
    ``gamma = 1``, ``beta = b_c`` plus the layer's bias times ``a_c``, the bias then zero):
    constant leaves, which the packed format stores as one number each
    (:func:`paper_repro.core.storage.pack_tree` with ``fill=True``). Layers quantized per
    tensor, with unsymmetric codebooks, or whose codebook rows are not the batch norm's
    channels are left as they are. The result equals the quantized network up to float32
    rounding (the scaled codebook is rebuilt from its stored parameters, bit for bit as the
    file decodes). Returns ``(params, report, folded layer names)``; inputs not mutated.
    """
    from paper_repro.core import storage

    values = G.flat_values(params_q)
    rows = {r["path"]: dict(r) for r in report}
    new = _copy_tree(params_q)
    folded = []
    for layer, bn in _bn_pairs(graph):
        path = _out_kernel(layer)
        row = rows.get(path)
        bv = bn_vars(bn)
        eps = bn.attrs.get("eps")
        if row is None or eps is None or not {"mean", "var", "beta"} <= set(bv):
            continue
        q = row["quantizer"]
        if q.granularity != "channel":
            continue
        levels = np.asarray(q.levels, np.float32)
        L = levels.shape[-1]
        if not np.array_equal(levels[:, ::-1], -levels):  # mirrored codes need symmetry
            continue
        a, c = bn_affine(bn, values)
        w = np.asarray(values[path])
        ax = q.channel_axis % w.ndim
        if w.shape[ax] != a.shape[0]:
            continue
        form, book = storage._codebook(levels, symmetric=True, q=q)
        s = np.abs(a)
        if form == "params":
            book2 = np.array(book, np.float32)
            book2[:, 0] = (book[:, 0].astype(np.float64) * s).astype(np.float32)
            levels2 = storage._from_params(book2, q.scheme, q.bits, L).astype(np.float32)
            params2 = {**q.params, "c": book2[:, 0], "gain": np.ones_like(book2[:, 0])}
            if book2.shape[1] > 1:
                params2["a"] = book2[:, 1]
        elif form == "half":
            half = (book.astype(np.float64) * s[:, None]).astype(np.float32)
            levels2 = storage._full_from_half(half, L).astype(np.float32)
            params2 = dict(q.params)
        else:
            continue
        codes = np.asarray(row["codes"])
        flip = np.moveaxis(np.broadcast_to((a < 0).reshape((-1,) + (1,) * (w.ndim - 1)),
                                           np.moveaxis(codes, ax, 0).shape), 0, ax)
        codes2 = np.where(flip, L - 1 - codes, codes).astype(codes.dtype)
        q2 = Q.Quantizer(jnp.asarray(levels2), jnp.asarray((levels2[:, 1:] + levels2[:, :-1]) / 2),
                         params2, q.scheme, q.bits, q.granularity, q.channel_axis)
        w2 = np.asarray(Q.decode(jnp.asarray(codes2), q2)).astype(w.dtype)
        want, _ = _out_channels(layer, path, w.astype(np.float64))
        got, _ = _out_channels(layer, path, w2.astype(np.float64))
        if not np.allclose(got, want * a, rtol=1e-5, atol=1e-6 * np.abs(want * a).max()):
            continue  # the codebook rows are not the batch norm's channels
        _set(new, path, w2)
        _identity_bn(new, values, layer, bn, a, c)
        rows[path] = {**row, "codes": jnp.asarray(codes2), "quantizer": q2,
                      "r": float(corr_mod.sample_r(jnp.asarray(want * a, jnp.float32),
                                                   jnp.asarray(got, jnp.float32)))}
        folded.append(layer.name)
    return new, [rows[r["path"]] for r in report], folded


def output_bounds(graph: G.Graph, params, *, in_lo, in_hi) -> dict[str, tuple]:
    """Worst-case interval ``(lo, hi)`` of every node's output (unbatched maps) for inputs in
    ``[in_lo, in_hi]`` (per channel): linear layers by centre and radius (the radius through
    ``|W|``), batch norms and affine maps exactly, monotone activations and pools at the
    ends, other activations by sampling the interval."""
    values = _f64(G.flat_values(params))
    ax = graph.channel_axis
    shape0 = graph.input_shape[1:]
    big = 1e30
    out = {"input": (_channel_map(in_lo, shape0, ax), _channel_map(in_hi, shape0, ax))}
    for node in graph.nodes:
        ins = [tuple(np.clip(x, -big, big) for x in out[i]) for i in node.inputs]
        lo0, hi0 = ins[0]
        if node.is_layer:
            c, r = (lo0 + hi0) / 2, (hi0 - lo0) / 2
            yc = _run(node, values, c)
            yr = _run(node, _squared(values, node, absolute=True), r)
            res = (yc - yr, yc + yr)
        elif node.op == "bn" or node.act in ("affine", "identity"):
            zero = _run(node, values, np.zeros_like(lo0))
            a = _run(node, values, np.ones_like(lo0)) - zero
            u, v = a * lo0 + zero, a * hi0 + zero
            res = (np.minimum(u, v), np.maximum(u, v))
        elif node.op == "act":
            f = np.stack([_run(node, values, lo0 + t * (hi0 - lo0))
                          for t in np.linspace(0.0, 1.0, 33)])
            res = (f.min(0), f.max(0))
        elif node.op == "add":
            res = (lo0 + ins[1][0], hi0 + ins[1][1])
        elif node.op == "sub":
            res = (lo0 - ins[1][1], hi0 - ins[1][0])
        elif node.op == "mul":
            q = np.stack([lo0 * ins[1][0], lo0 * ins[1][1], hi0 * ins[1][0], hi0 * ins[1][1]])
            res = (q.min(0), q.max(0))
        else:  # data movement, sums and max pools: monotone in every input
            res = (_run(node, values, *(i[0] for i in ins)),
                   _run(node, values, *(i[1] for i in ins)))
        out[node.name] = (np.where(res[0] <= -big, -np.inf, res[0]),
                          np.where(res[1] >= big, np.inf, res[1]))
    return out


def equalize_pairs(graph: G.Graph) -> list[tuple[G.Node, list[G.Node], G.Node]]:
    """``(A, chain, B)``: layer ``A``, then only a batch norm, a ReLU / ReLU6 and zero pads,
    each the only reader of the one before, into layer ``B`` whose input channels are ``A``'s
    output channels one to one (a convolution, depthwise or separable layer)."""
    out = []
    for a in graph.layers:
        chain, cur = [], a.name
        while True:
            cons = graph.consumers(cur)
            if len(cons) != 1:
                break
            nxt = graph[cons[0]]
            if nxt.is_layer:
                if nxt.op in ("conv", "depthwise", "separable") and any(
                        c.op == "act" and c.act in ("relu", "relu6") for c in chain):
                    out.append((a, chain, nxt))
                break
            ok = (nxt.op == "bn" and not chain) or (nxt.op == "act" and nxt.act in (
                "relu", "relu6") and not any(c.op == "act" for c in chain)) or (
                nxt.op == "pad" and nxt.attrs.get("value") == 0.0)
            if not ok:
                break
            chain.append(nxt)
            cur = nxt.name
    return out


def _channel_range(w, axis):
    w = np.asarray(w, np.float64)
    ax = axis % w.ndim
    return np.abs(np.moveaxis(w, ax, 0).reshape(w.shape[ax], -1)).max(1)


def _channel_max(x, axis) -> np.ndarray:
    """Max over every axis but the channel axis of an unbatched map."""
    x = np.asarray(x, np.float64)
    if x.ndim == 1:
        return x
    ax = axis % (x.ndim + 1) - 1
    return np.moveaxis(x, ax, 0).reshape(x.shape[ax], -1).max(1)


def equalize(graph: G.Graph, params, *, in_lo, in_hi, iterations: int = 4,
             clip: float = 6.0, s_max: float = 1e3) -> tuple[dict, dict[str, np.ndarray]]:
    """Cross-layer equalization on a *folded* network (see :func:`fold_bn`).

    For each pair of :func:`equalize_pairs`, channel ``c``: ``s_c = sqrt(r_A / r_B)``
    (``r`` = the channel's max ``|w|``), ``A``'s output channel (and its bias and the folded
    batch-norm offset) divided by ``s_c``, ``B``'s input channel multiplied by it. Through
    ReLU6 only where the worst-case bound ``top`` of the channel before the clip
    (:func:`output_bounds` from ``[in_lo, in_hi]``) allows: ``s_c >= top / clip``, and
    ``s_c = 1`` where ``top >= clip``. Repeats ``iterations`` sweeps. Returns
    ``(new_params, {A: total scale (C,)})``; :func:`scale_moments` divides the moments of
    ``A``'s chain by it.
    """
    pairs = equalize_pairs(graph)
    values = G.flat_values(params)
    bounds = output_bounds(graph, params, in_lo=in_lo, in_hi=in_hi)
    ax = graph.channel_axis
    cur = dict(values)
    total: dict[str, np.ndarray] = {}
    tops: dict[str, np.ndarray] = {}
    for a, chain, _ in pairs:
        pre_act = chain[0].name if chain[0].op == "bn" else a.name
        tops[a.name] = _channel_max(bounds[pre_act][1], ax)
        total[a.name] = np.ones_like(tops[a.name])
    for _ in range(iterations):
        for a, chain, b in pairs:
            pa = _out_kernel(a)
            wa = _np(cur[pa])
            wa2, back_a = _out_channels(a, pa, wa)
            pb = b.kernels[0]
            wb = _np(cur[pb])
            axb = _in_axis(b, wb, b.attrs["in_shapes"][0][ax])
            ra = _channel_range(wa2, -1)
            rb = _channel_range(wb, axb)
            top = tops[a.name] / total[a.name]
            ok = (ra > 1e-8 * ra.max()) & (rb > 1e-8 * rb.max())
            s = np.where(ok, np.sqrt(ra / np.where(ok, rb, 1.0)), 1.0)
            s = np.clip(s, 1 / s_max, s_max)
            if any(c.op == "act" and c.act == "relu6" for c in chain):
                s = np.where(~(top < clip), 1.0, np.maximum(s, np.maximum(top, 0.0) / clip))
            cur[pa] = back_a(wa2 / s).astype(np.float32)
            shp = [1] * wb.ndim
            shp[axb] = -1
            cur[pb] = (wb * s.reshape(shp)).astype(np.float32)
            offs = [a.bias] if a.bias is not None else []
            offs += [bn_vars(c)["beta"] for c in chain if c.op == "bn"]
            for p in offs:
                cur[p] = (_np(cur[p]) / s).astype(np.float32)
            total[a.name] = total[a.name] * s
    new = _copy_tree(params)
    for p, v in cur.items():
        if v is not values[p]:
            _set(new, p, v)
    return new, total


def scale_moments(graph: G.Graph, moments: Mapping[str, Moments],
                  scales: Mapping[str, np.ndarray]) -> dict[str, Moments]:
    """Moments after :func:`equalize`: every node of ``A``'s chain divided by ``A``'s
    scale along the channel axis (so the next layer's input mean is in the new units)."""
    out = dict(moments)
    pairs = {a.name: chain for a, chain, _ in equalize_pairs(graph)}
    for name, s in scales.items():
        for n in [graph[name]] + pairs.get(name, []):
            m = out[n.name]
            sm = _channel_map(s, m.mean.shape, graph.channel_axis)
            pre = None if m.pre is None else (m.pre[0] / sm, m.pre[1] / sm) + m.pre[2:]
            out[n.name] = Moments(m.mean / sm, m.var / sm**2, pre, m.anchored)
    return out


# --- Mixed bit widths ---------------------------------------------------------------------------


def codebook_floats(q: Q.Quantizer, *, codebook: str = "params") -> int:
    """Float32 numbers stored for ``q``'s codebook(s): ``"params"`` is what the packed format
    writes (:func:`paper_repro.core.storage.codebook_nbytes` / 4: linear, pow2, sign one
    scale per codebook, exponential scale and base, Lloyd-Max its positive levels);
    ``"levels"`` counts every level (a format that stores whole codebooks)."""
    from paper_repro.core import storage

    if codebook == "levels":
        return int(np.size(q.levels))
    if codebook != "params":
        raise ValueError(f"codebook must be 'params' or 'levels', got {codebook!r}")
    return storage.codebook_nbytes(q) // 4


def channel_noise(w, w_hat, *, channel_axis: int = -1) -> float:
    """Predicted relative output noise of a layer: the mean over output channels of
    ``(1 - r_c^2) / r_c^2``, ``r_c`` the cosine of channel ``c``'s weights and their quantized
    copy (each channel is normalized by its own batch norm, so each one's relative error is
    what propagates). Channels with no weight (``|w_c| < 1e-6 max``) are skipped."""
    w = np.asarray(w, np.float64)
    ax = channel_axis % w.ndim
    a = np.moveaxis(w, ax, 0).reshape(w.shape[ax], -1)
    b = np.moveaxis(np.asarray(w_hat, np.float64), ax, 0).reshape(a.shape)
    na, nb = np.sqrt((a * a).sum(1)), np.sqrt((b * b).sum(1))
    live = na > 1e-6 * na.max() if na.max() > 0 else np.zeros(len(na), bool)
    if not live.any():
        return 0.0
    r = np.where(nb[live] > 0, (a[live] * b[live]).sum(1) / (na[live] * np.maximum(nb[live],
                                                                                   1e-300)), 0)
    r = np.clip(r, 1e-3, 1.0)
    return float(np.mean((1 - r * r) / (r * r)))


def layer_costs(params, paths: Sequence[str], *, choices: Sequence[int], scheme: str,
                fit: str = "corr", granularity: str = "tensor", gain: bool = False,
                rounding: str = "linear", method: str = "histogram",
                codebook: str = "params", channel_axis: int | None = None,
                coded: bool = False, progress: bool = False) -> list[dict]:
    """For each path and bit width: ``r``, predicted noise (:func:`channel_noise`) and storage
    bits (codes ``size * b`` plus 32 bits per codebook float, :func:`codebook_floats`).
    ``coded``: the codes are counted as entropy coding stores them instead (the exact ANS
    model and stream of the nearest-level codes, or the fixed width where that is smaller,
    :func:`paper_repro.core.storage.codes_nbytes`); ``fixed_bits`` keeps the fixed count.
    ``progress``: a bar on stderr, a step per layer (a minute for MobileNet per channel)."""
    from tqdm.auto import tqdm

    flat = dict(Q.tree_paths(params))
    out = []
    kw = dict(scheme=scheme, fit=fit, granularity=granularity, gain=gain, rounding=rounding,
              method=method, codebook=codebook, channel_axis=channel_axis)
    for path in tqdm(paths, desc=f"fitting {scheme} levels", unit="layer", leave=False,
                     disable=not progress):
        arr = np.ascontiguousarray(np.asarray(flat[path], np.float32))
        key = (path, hashlib.sha1(arr.tobytes()).hexdigest(), tuple(int(b) for b in choices),
               tuple(sorted(kw.items())), bool(coded))
        if key not in _COST_CACHE:
            _COST_CACHE[key] = _path_costs(path, arr, choices, coded=coded, **kw)
        out += _COST_CACHE[key]
    return out


_COST_CACHE: dict = {}  # (path, weights digest, choices, knobs) -> rows: sweeps refit nothing


def _path_costs(path, arr, choices, *, scheme, fit, granularity, gain, rounding, method,
                codebook, channel_axis=None, coded=False):
    from paper_repro.core import storage

    out = []
    w = jnp.asarray(arr)
    ax = Q.default_channel_axis(path, w) if channel_axis is None else channel_axis
    table = Q.moments(w, granularity=granularity, channel_axis=ax, method=method)
    for b in choices:
        q = Q.fit(w, scheme=scheme, bits=int(b), fit=fit, granularity=granularity,
                  channel_axis=ax, gain=gain, rounding=rounding, method=method, table=table)
        codes = Q.encode(w, q)
        w_hat = Q.decode(codes, q)
        r = float(np.clip(corr_mod.sample_r(w, w_hat), 1e-6, 1.0))
        books = 32 * codebook_floats(q, codebook=codebook)
        row = {"path": path, "bits": int(b), "size": int(w.size), "r": r,
               "noise": channel_noise(w, w_hat, channel_axis=ax),
               "storage_bits": int(w.size) * int(b) + books}
        if coded:
            c = np.asarray(codes)
            row["fixed_bits"] = row["storage_bits"]
            row["storage_bits"] = 8 * storage.codes_nbytes(c.size, q.n_levels, codes=c,
                                                            coding="ans") + books
        out.append(row)
    return out


def allocate_bits(costs: list[dict], *, avg_bits: float) -> dict[str, int]:
    """Greedy bit allocation: ``{path: bits}`` with total storage (codes + codebooks) at most
    ``avg_bits`` per quantized weight, minimizing the summed predicted noise
    (:func:`allocate`, keeping only the widths)."""
    return {p: c["bits"] for p, c in allocate(costs, avg_bits=avg_bits).items()}


def _frontier(options: list[dict]) -> list[dict]:
    """The options of one layer that no other beats: sorted by storage, each strictly less
    noisy than every cheaper one (an option with at least the storage and at least the noise
    of another is never worth taking)."""
    out: list[dict] = []
    for c in sorted(options, key=lambda c: (c["storage_bits"], c["noise"])):
        if not out or c["noise"] < out[-1]["noise"]:
            out.append(c)
    return out


def allocate(costs: list[dict], *, avg_bits: float) -> dict[str, dict]:
    """Greedy allocation over each layer's options (rows of :func:`layer_costs`: a width,
    and with ``"scheme"`` a level family too): ``{path: chosen row}`` with total storage
    (codes + codebooks) at most ``avg_bits`` per quantized weight, minimizing the summed
    predicted noise.

    Each layer keeps only its undominated options (:func:`_frontier`), starts at its cheapest
    one, and the upgrade with the largest noise reduction per extra stored bit that still fits
    is taken until none fits. Raises ``ValueError`` if even the cheapest options do not fit.
    """
    by_path: dict[str, list[dict]] = {}
    for c in costs:
        by_path.setdefault(c["path"], []).append(c)
    by_path = {p: _frontier(v) for p, v in by_path.items()}
    budget = avg_bits * sum(v[0]["size"] for v in by_path.values())
    cur = {p: v[0] for p, v in by_path.items()}
    used = sum(c["storage_bits"] for c in cur.values())
    if used > budget:
        raise ValueError(f"avg_bits={avg_bits} is below the narrowest allocation "
                         f"({used / (budget / avg_bits):.2f} bits per weight with codebooks)")
    while True:
        best, best_val = None, 0.0
        for p, v in by_path.items():
            c0 = cur[p]
            for c in v:
                extra = c["storage_bits"] - c0["storage_bits"]
                gain = c0["noise"] - c["noise"]
                if extra <= 0 or gain <= 0 or used + extra > budget:
                    continue
                if gain / extra > best_val:
                    best, best_val = (p, c), gain / extra
        if best is None:
            break
        p, c = best
        used += c["storage_bits"] - cur[p]["storage_bits"]
        cur[p] = c
    return cur


def choose_levels(params, paths: Sequence[str], *, scheme: str, avg_bits: float,
                  families: Sequence[str] = (), bits_choices: Sequence[int] = (2, 3, 4, 5, 6,
                                                                               7, 8),
                  coded_budget: bool = False, progress: bool = False,
                  **fit_kwargs) -> dict[str, dict]:
    """Each layer's width (and, with ``families``, level family besides ``scheme``) for an
    average of ``avg_bits`` stored bits per weight: ``{path: row}`` of :func:`layer_costs`
    (``bits``, ``scheme``, ``size``, ``r``, ``noise``, ``storage_bits``) as :func:`allocate`
    chose them. ``coded_budget``: the codes count as entropy coding stores them
    (:func:`layer_costs` with ``coded``), so a layer whose codes compress well costs less and
    gets wider. ``fit_kwargs``: the fit settings (fit, granularity, gain, rounding, method,
    channel_axis); widths a family refuses are skipped for it. ``progress``: see
    :func:`layer_costs`."""
    kw = {k: fit_kwargs[k] for k in ("fit", "granularity", "gain", "rounding", "method",
                                     "channel_axis") if k in fit_kwargs}
    costs = []
    for s in dict.fromkeys((scheme, *families)):
        ok = [b for b in bits_choices if _width_error(s, b, fit_kwargs) is None]
        if not ok:  # the reason, in one line
            raise ValueError(_width_error(s, bits_choices[0], fit_kwargs))
        costs += [dict(c, scheme=s) for c in layer_costs(params, paths, choices=ok, scheme=s,
                                                         coded=coded_budget, progress=progress,
                                                         **kw)]
    return allocate(costs, avg_bits=avg_bits)


# --- The whole pipeline -------------------------------------------------------------------------


def _width_error(scheme: str, bits: int, fit_kwargs: Mapping[str, Any]) -> str | None:
    """Why ``scheme`` refuses ``bits`` with the fit settings in ``fit_kwargs`` (``None``: it
    accepts them)."""
    try:
        Q.check_args(scheme, int(bits), fit_kwargs.get("fit", "corr"),
                     fit_kwargs.get("granularity", "tensor"), fit_kwargs.get("rounding",
                                                                             "linear"))
    except ValueError as e:
        return str(e)
    return None


def _wiring(params, graph, wiring) -> Wiring:
    if wiring is not None:
        return wiring
    hit = attached(params)
    if graph is not None:
        if hit is not None and hit.graph is graph:
            return hit
        raise ValueError("graph= needs its input statistics: pass wiring=Wiring(graph, ...)")
    if hit is None:
        raise ValueError("bias correction, folding and equalization need the network's traced "
                         "graph: call repairs.attach_task(task) (or repairs.attach(params, "
                         "Wiring(graph.trace(apply_fn, params, input_shape), ...))) first")
    return hit


def quantize_model(params, *, paths: Sequence[str], scheme: str, bits: int | None = None,
                   avg_bits: float | None = None, bits_choices: Sequence[int] = (2, 3, 4, 5, 6,
                                                                                7, 8),
                   fold: bool = False, equalize_ranges: bool = False,
                   bias_correction: bool = False, mean_preserving: bool = False,
                   graph: G.Graph | None = None, wiring: Wiring | None = None,
                   bn_stats: bool = True, bias_scope: str = "anchored",
                   optimize: Any = None, families: Sequence[str] = (),
                   coded_budget: bool = False, progress: bool = False,
                   **fit_kwargs) -> tuple[dict, list[dict], dict]:
    """Fold / equalize, allocate bits, quantize ``paths``, re-round, correct biases.

    Order: fold batch norms (``fold`` or ``equalize_ranges``) -> equalize -> choose per-layer
    widths for ``avg_bits`` (else ``bits`` everywhere) ->
    :func:`~paper_repro.core.quantize.quantize_tree` -> mean-preserving re-rounding -> bias
    correction against the (folded, equalized) float network. The graph and input statistics
    come from ``wiring``, else from :func:`attach` (``graph`` alone is accepted when it is
    the attached one). ``families``: with ``avg_bits``, other level families (scheme names)
    the allocation may choose per layer besides ``scheme`` (each layer then gets the family
    and width of least predicted noise per stored bit, :func:`allocate`;
    ``info["schemes"]`` records the choice). ``coded_budget``: ``avg_bits`` counts the codes
    as entropy coding stores them (:func:`choose_levels`). ``bn_stats``: see :func:`propagate`;
    ``progress``: a bar on stderr while the widths are chosen. ``bias_scope``: see
    :func:`bias_correct`. ``fit_kwargs`` go to
    :func:`~paper_repro.core.quantize.fit`. Returns ``(new_params, report, info)``; ``info``
    has the per-layer bits and, with correction, the largest absorbed shift.

    ``optimize``: a :class:`paper_repro.feedforward.calibration.OptConfig` (or one attached
    with :func:`attach_optimizer`): the codes are re-chosen by
    :func:`paper_repro.feedforward.calibration.optimize` (SQuant flips, synthetic images,
    learned rounding, its own bias correction) instead of the mean-preserving re-rounding and
    the bias correction here; ``info["datafree_opt"]`` summarises it.
    """
    hit = attached_optimizer(params) if optimize is None else None
    if hit is not None:
        optimize = hit["config"]
    if optimize is not None and (mean_preserving or bias_correction or fold or
                                 equalize_ranges):
        raise ValueError("optimized rounding replaces the mean-preserving re-rounding and the "
                         "bias correction, and works on the unfolded network: drop "
                         "mean_preserving, bias_correction, fold and equalize")
    needs = fold or equalize_ranges or bias_correction or optimize is not None
    info: dict[str, Any] = {}
    ref = params
    moments = None
    wr = _wiring(params, graph, wiring) if needs else None
    if bias_correction:
        moments = propagate(wr.graph, params, in_mean=wr.in_mean, in_std=wr.in_std,
                            bn_stats=bn_stats)
    if fold or equalize_ranges:
        ref = fold_bn(wr.graph, ref)
    if equalize_ranges:
        ref, scales = equalize(wr.graph, ref, in_lo=wr.in_lo, in_hi=wr.in_hi)
        if moments is not None:
            moments = scale_moments(wr.graph, moments, scales)
        if scales:
            info["equalize_scale_range"] = [float(min(s.min() for s in scales.values())),
                                            float(max(s.max() for s in scales.values()))]
    schemes = list(dict.fromkeys((scheme, *families)))
    qscheme: Any = scheme
    if avg_bits is not None:
        chosen = choose_levels(ref, paths, scheme=scheme, families=families, avg_bits=avg_bits,
                               bits_choices=bits_choices, coded_budget=coded_budget,
                               progress=progress, **fit_kwargs)
        qbits: Any = {p: c["bits"] for p, c in chosen.items()}
        info["bits"] = qbits
        if len(schemes) > 1:
            qscheme = {p: c["scheme"] for p, c in chosen.items()}
            info["schemes"] = qscheme
    else:
        if bits is None:
            raise ValueError("give bits= or avg_bits=")
        if len(schemes) > 1:
            raise ValueError("families= (a level family per layer) needs avg_bits=")
        if coded_budget:
            raise ValueError("coded_budget= (entropy-coded bits counted) needs avg_bits=")
        qbits = bits
    select = "|".join(re.escape(p) for p in paths)
    qp, report = Q.quantize_tree(ref, select=select, scheme=qscheme, bits=qbits, **fit_kwargs)
    if optimize is not None:
        from paper_repro.feedforward import calibration

        qp, report, oinfo = calibration.optimize(
            ref, qp, report, graph=wr.graph, in_mean=wr.in_mean, in_std=wr.in_std,
            in_lo=wr.in_lo, in_hi=wr.in_hi, config=optimize,
            channel_axis=fit_kwargs.get("channel_axis"),
            progress=bool(hit["progress"]) if hit is not None else False)
        info["datafree_opt"] = calibration.summary(oinfo)
        # in place: task.info holds this dict (paper_repro.commands._recipe.prepare_task)
        if hit is not None:
            hit["last"].clear()
            hit["last"].update(info["datafree_opt"])
    if mean_preserving:
        qp, report = apply_mean_preserving(qp, report, ref,
                                           channel_axis=fit_kwargs.get("channel_axis"))
    if bias_correction:
        qp, shifts = bias_correct(wr.graph, ref, qp, moments, paths=paths, scope=bias_scope)
        vq = G.flat_values(qp)
        nowhere = [n.name for n in wr.graph.layers if any(k in paths for k in n.kernels)
                   and find_sink(wr.graph, n, vq) is None]
        if nowhere:
            info["uncorrected_layers"] = nowhere
            warnings.warn(f"bias correction: {len(nowhere)} layer(s) have no bias, batch norm "
                          f"or creatable bias to absorb their output shift and are left "
                          f"uncorrected: {', '.join(nowhere[:4])}"
                          f"{' ...' if len(nowhere) > 4 else ''}", UserWarning, stacklevel=2)
        info["corrected_layers"] = len(shifts)
        info["max_abs_shift"] = float(max((np.abs(s).max() for s in shifts.values()),
                                          default=0.0))
    return qp, report, info


# --- The named recipe ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Recipe:
    """A named set of data-free settings, the same on every network: ``settings`` are
    :class:`~paper_repro.feedforward.sweep.QuantConfig` fields; the average width is the
    caller's (``avg_bits``)."""

    name: str
    settings: Mapping[str, Any]
    why: str
    # OptConfig fields of the optimized rounding that replaces the code re-rounding and the
    # bias correction (paper_repro.feedforward.calibration); None: none
    optimize: Mapping[str, Any] | None = None

    def flags(self) -> str:
        """The command-line switches the recipe stands for."""
        out = []
        for k, v in self.settings.items():
            flag = "--" + k.replace("_", "-")
            text = ",".join(v) if isinstance(v, (tuple, list)) else v
            out.append(flag if v is True else f"{flag} {text}")
        if self.optimize is not None:
            out.append("+ optimized rounding (SQuant flips, synthetic images, learned rounding)")
        return " ".join(out) + " (with --avg-bits B)"

    def opt_config(self):
        """The :class:`~paper_repro.feedforward.calibration.OptConfig` (``None`` if none)."""
        if self.optimize is None:
            return None
        from paper_repro.feedforward.calibration import OptConfig

        return OptConfig(**self.optimize)

    def config(self, *, avg_bits: float, **fields):
        """The :class:`~paper_repro.feedforward.sweep.QuantConfig` at ``avg_bits``."""
        from paper_repro.feedforward.sweep import QuantConfig

        return QuantConfig(**self.settings, avg_bits=float(avg_bits), **fields)


RECIPES: dict[str, Recipe] = {
    "datafree": Recipe(
        "datafree",
        {"scheme": "exponential", "fit": "corr", "granularity": "channel", "gain": True,
         "families": ("lloyd_max",), "mean_preserving": True, "bias_correction": True},
        "levels fitted per output channel by correlation with a least-squares gain (each "
        "channel is normalised on its own downstream, so its own codebook); for the average "
        "budget each layer gets a width and a level family - exponential, or Lloyd-Max "
        "(the levels of greatest correlation, one stored number per level) - by least "
        "predicted output noise per stored bit, codebooks counted; codes re-rounded so that every "
        "channel keeps its weight sum; the remaining expected output shift of every layer "
        "whose expected input follows from known statistics (batch norms, the preprocessing) "
        "computed through the traced graph and absorbed into its bias or batch norm. "
        "No batch-norm folding or equalization (they change no output in float and cost "
        "accuracy once quantized)."),
    "datafree-opt": Recipe(
        "datafree-opt",
        {"scheme": "exponential", "fit": "corr", "granularity": "channel", "gain": True,
         "families": ("lloyd_max",)},
        "the levels, level families and per-layer widths of 'datafree'; only which of its two neighbouring "
        "levels each weight takes is optimized: SQuant flips (each kernel's and each output "
        "channel's accumulated rounding error within half a step), then images synthesized "
        "from the batch-norm statistics (or the traced graph's analytic moments) at the "
        "network's input size, and layer by layer a learned rounding of each kernel against "
        "the float layer's output on them (soft rounding with an annealed regularizer, then "
        "exact flips; each layer keeps the candidate with the lowest error on held-out "
        "synthetic images), each layer's expected output shift absorbed as it goes. The "
        "learned rounding runs only when the synthetic images reproduce their targets "
        "(statistic loss at most 1); otherwise the SQuant codes are kept with the analytic "
        "bias correction of 'datafree'. No real data, no labels, no retraining; cached by "
        "configuration and model.",
        optimize={}),
}

def describe_recipes() -> str:
    """Text for ``paper-repro recipes``: each recipe, its switches and why."""
    import textwrap

    return "\n\n".join(f"{r.name}: {r.flags()}\n" + textwrap.fill(
        r.why, width=92, initial_indent="  ", subsequent_indent="  ") for r in RECIPES.values())
