"""Data-free repairs around post-training quantization (docs/theory.md sections 2 and 4).

Correlation (section 2) scores a quantizer by ``r = corr(w, Q(w))``; it is blind to the mean
of ``Q(w) - w``. A ReLU6 network with batch norm is not: a change in a kernel's sum (its DC
gain) shifts every output channel's mean, and MobileNet v1's depthwise channels (nine weights
each) make such shifts large. The tools here fix that and the other known data-free failure
modes, without images or retraining:

- :func:`bias_correct`: the expected output shift of each quantized kernel,
  ``E[y_q - y] = sum (Q(w) - w) E[x]``, with ``E[x]`` from the preceding batch norm (``beta``
  as the mean, ``gamma sqrt(var / (var + eps))`` as the spread) pushed analytically through
  ReLU / ReLU6 (a clipped-Gaussian mean, :func:`clipped_gaussian_moments`), or, for the
  first layer, from the input statistics (the mean of preprocessed ImageNet). The shift is
  averaged over output positions with the layer's own zero padding (image borders see fewer
  taps) and absorbed into the following batch norm's moving mean, or the layer's bias.
- :func:`mean_preserving_codes`: re-round a few weights per output channel to the adjacent
  level so that ``sum Q(w) = sum w`` per channel (codes stay on the codebook).
- :func:`fold_bn`: fold each batch norm into the preceding kernel (what a deployment would
  quantize); the batch norm is left as an exact identity plus bias.
- :func:`equalize`: cross-layer equalization of channel ranges of consecutive kernels
  (Nagel et al. 2019, data-free quantization): channel ``c`` of the first kernel (and its
  bias) divided by ``s_c``, input channel ``c`` of the next multiplied by ``s_c``; exact
  through ReLU, and through ReLU6 only where the channel never reaches the clip (checked on the
  batch-norm statistics, ``beta + 4 spread < 6 min(1, s_c)``), otherwise ``s_c = 1``.
- :func:`allocate_bits`: per-layer bit widths for an average budget (codes plus codebook
  parameters), chosen greedily to minimize the predicted relative output noise
  ``sum over layers (1 - r^2) / r^2`` (section 2), with ``r`` measured per output channel
  and width (:func:`channel_noise`).

Measured (``notebooks/datafree.ipynb``, ``results/datafree/``; least-squares gain, per-channel
correlation-fitted levels, batch norm in float). MobileNet 0.75 on 1300 real validation
images, float top-1 78.08:

==========================================  =======  =====================================
configuration                               top-1    compression (codebooks as parameters)
==========================================  =======  =====================================
linear 5 bits                               25.00    5.86
linear 5 + bias correction                  74.15    5.86
linear 5 + mean-preserving                  60.38    5.86
linear 5 + mean-preserving + correction     76.92    5.86
... + fold + equalize                       76.62    5.86
mixed, 5.0 bits average, linear, mp + bc    77.62    5.98   (target: lose <= 0.5: met)
exponential 5 + bias correction             76.46    5.74
linear 6 + bias correction                  77.77    4.96
linear 4 + mean-preserving + correction     66.62    7.15
exponential 4 + mp + bc                     75.23    6.97
mixed, 4.0 bits average, exponential        75.92    7.33   (target: lose <= 2: 2.15 lost)
==========================================  =======  =====================================

Digits CNN: see ``results/datafree/digits/table.md`` (bias correction recovers most of
the 2-bit loss there too).

All of it needs the wiring of a network: which kernel feeds which batch norm or bias, which
activation and pooling precede each kernel, the padding of each convolution. :func:`topology`
gives it for MobileNet v1, MobileNetV2 and the embedded digits CNN (from the parameter names;
a network not recognized raises with what to do).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from scipy import special

from paper_repro.core import correlation as corr_mod
from paper_repro.core import quantize as Q
from paper_repro.feedforward.models.mobilenet import _V1_BLOCKS

BN_EPS = 1e-3  # Keras BatchNormalization default, used by every Keras-applications model here
_DN = ("NHWC", "HWIO", "NHWC")

# Mean and standard deviation of the 'tf'-preprocessed ImageNet input (x / 127.5 - 1), from the
# usual ImageNet RGB channel means (123.68, 116.78, 103.94) and stds (58.4, 57.1, 57.4).
IMAGENET_TF_MEAN = (123.68 / 127.5 - 1, 116.78 / 127.5 - 1, 103.94 / 127.5 - 1)
IMAGENET_TF_STD = (58.4 / 127.5, 57.1 / 127.5, 57.4 / 127.5)


# --- Topology -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Layer:
    """One quantizable kernel and its wiring.

    ``name``: the layer (params key); ``var``: its kernel variable (``kernel``,
    ``depthwise_kernel``); ``kind``: ``conv`` ``(kh, kw, in, out)``, ``depthwise``
    ``(kh, kw, C, 1)`` or ``dense`` ``(in, out)``; ``bn``: the batch norm right after (``None``:
    the layer's own ``bias`` absorbs shifts); ``act``: activation after it (``relu6``, ``relu``,
    ``linear``); ``prev``: the layer whose activated output feeds this one (``None``: the
    network input); ``pool``: what lies between (``None``, ``"gap"`` global average,
    ``"max2_flatten"`` 2x2 max-pool then flatten); ``strides``, ``padding`` (``"SAME"``,
    ``"VALID"`` or explicit pairs, zero padding included), ``in_hw`` the input's spatial size.
    """

    name: str
    var: str
    kind: str
    bn: str | None
    act: str
    prev: str | None
    pool: str | None = None
    strides: int = 1
    padding: Any = "VALID"
    in_hw: tuple[int, int] | None = None

    @property
    def path(self) -> str:
        return f"{self.name}/{self.var}"


def _same_out(h: int, s: int) -> int:
    return -(-h // s)


def mobilenet_v1_topology(params, *, input_size: int = 224) -> list[Layer]:
    """MobileNet v1 (``conv1``, ``conv_dw_i`` / ``conv_pw_i``, ``conv_preds``)."""
    n = max(int(m.group(1)) for k in params if (m := re.fullmatch(r"conv_dw_(\d+)", k)))
    hw = input_size
    out = [Layer("conv1", "kernel", "conv", "conv1_bn", "relu6", None, strides=2,
                 padding="SAME", in_hw=(hw, hw))]
    hw = _same_out(hw, 2)
    prev = "conv1"
    for i in range(1, n + 1):
        # the Keras model's stride-2 blocks (models.mobilenet._V1_BLOCKS)
        stride = 2 if i in _V1_STRIDE2 else 1
        out.append(Layer(f"conv_dw_{i}", "depthwise_kernel", "depthwise", f"conv_dw_{i}_bn",
                         "relu6", prev, strides=stride,
                         padding="SAME" if stride == 1 else ((0, 1), (0, 1)), in_hw=(hw, hw)))
        hw = hw if stride == 1 else (hw + 1 - 3) // 2 + 1
        out.append(Layer(f"conv_pw_{i}", "kernel", "conv", f"conv_pw_{i}_bn", "relu6",
                         f"conv_dw_{i}", padding="SAME", in_hw=(hw, hw)))
        prev = f"conv_pw_{i}"
    if "conv_preds" in params:
        out.append(Layer("conv_preds", "kernel", "conv", None, "linear", prev, pool="gap",
                         in_hw=(1, 1)))
    return out


_V1_STRIDE2 = tuple(i for i, (_, st) in enumerate(_V1_BLOCKS, start=1) if st == 2)


def mobilenet_v2_topology(params, *, input_size: int = 224) -> list[Layer]:
    """MobileNetV2 (``Conv1``, ``expanded_conv_*``, ``block_i_*``, ``Conv_1``, ``predictions``).

    The residual sums feed the next block's expansion: their mean is the sum of the two
    branches' means (each a linear batch-norm output), which is what ``prev`` = a tuple
    expresses here.
    """
    from paper_repro.feedforward.models.mobilenet import _V2_BLOCKS

    hw = input_size
    out = [Layer("Conv1", "kernel", "conv", "bn_Conv1", "relu6", None, strides=2,
                 padding="SAME", in_hw=(hw, hw))]
    hw = _same_out(hw, 2)
    prev: Any = "Conv1"
    for b, (_, stride, _) in enumerate(_V2_BLOCKS):
        pre = f"block_{b}_" if b else "expanded_conv_"
        if b:
            out.append(Layer(f"{pre}expand", "kernel", "conv", f"{pre}expand_BN", "relu6", prev,
                             padding="SAME", in_hw=(hw, hw)))
            dw_prev = f"{pre}expand"
        else:
            dw_prev = prev
        pad = "SAME" if stride == 1 else ((1 - (1 - hw % 2), 1), (1 - (1 - hw % 2), 1))
        out.append(Layer(f"{pre}depthwise", "depthwise_kernel", "depthwise", f"{pre}depthwise_BN",
                         "relu6", dw_prev, strides=stride, padding=pad, in_hw=(hw, hw)))
        hw = hw if stride == 1 else _same_out(hw, 2)
        out.append(Layer(f"{pre}project", "kernel", "conv", f"{pre}project_BN", "linear",
                         f"{pre}depthwise", padding="SAME", in_hw=(hw, hw)))
        c_in = np.shape(params[f"{pre}depthwise"]["depthwise_kernel"])[2]
        c_in = c_in if not b else np.shape(params[f"{pre}expand"]["kernel"])[2]
        c_out = np.shape(params[f"{pre}project"]["kernel"])[-1]
        residual = b and stride == 1 and c_in == c_out
        prev = (f"{pre}project",) + (prev if isinstance(prev, tuple) else (prev,)) \
            if residual else f"{pre}project"
    out.append(Layer("Conv_1", "kernel", "conv", "Conv_1_bn", "relu6", prev, padding="SAME",
                     in_hw=(hw, hw)))
    if "predictions" in params:
        out.append(Layer("predictions", "kernel", "dense", None, "linear", "Conv_1", pool="gap"))
    return out


def digits_topology(params) -> list[Layer]:
    """The embedded digits CNN: conv1 - ReLU - conv2 - ReLU - maxpool 2 - fc1 - ReLU - dense."""
    return [
        Layer("conv1", "kernel", "conv", None, "relu", None, padding="SAME", in_hw=(8, 8)),
        Layer("conv2", "kernel", "conv", None, "relu", "conv1", padding="SAME", in_hw=(8, 8)),
        Layer("fc1", "kernel", "dense", None, "relu", "conv2", pool="max2_flatten"),
        Layer("dense", "kernel", "dense", None, "linear", "fc1"),
    ]


def topology(params, *, input_size: int = 224) -> list[Layer]:
    """The wiring of a supported network, recognized from its parameter names.

    ``input_size``: the ImageNet models' input side (the digits CNN is always 8x8).

    Raises ``ValueError`` for other networks: write a list of :class:`Layer` for it (see
    :func:`mobilenet_v1_topology`) and pass it as ``topo=``.
    """
    keys = set(params)
    if {"conv1", "conv_dw_1", "conv_pw_1"} <= keys:
        return mobilenet_v1_topology(params, input_size=input_size)
    if {"Conv1", "expanded_conv_depthwise", "Conv_1"} <= keys:
        return mobilenet_v2_topology(params, input_size=input_size)
    if {"conv1", "conv2", "fc1", "dense"} <= keys:
        return digits_topology(params)
    raise ValueError(
        "bias correction, batch-norm folding and equalization need the network's wiring; "
        f"known: MobileNet v1/v2 and the digits CNN, got layers like {sorted(keys)[:5]}. "
        "Pass topo=[correction.Layer(...), ...] for another network.")


def input_stats(params, *, preprocess_mode: Any = "tf") -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (or per-pixel) mean and std of the preprocessed network input.

    ImageNet models: the 'tf' / 'caffe' transforms of the usual ImageNet RGB statistics.
    The digits CNN: mean and std images of its training split (the analogue of the published
    ImageNet mean; no labels used). Returns ``(mean, std)``, each ``(C,)`` or ``(H, W, C)``.
    """
    keys = set(params)
    if {"conv1", "conv2", "fc1", "dense"} <= keys:
        from paper_repro.feedforward import digits

        train, _ = digits.load_data()
        x = digits.preprocess(np.asarray(train.images, np.float32))
        return x.mean(0), x.std(0)
    if preprocess_mode == "caffe":
        mean_bgr = np.zeros(3, np.float32)  # caffe subtracts the mean itself
        std = np.array([57.4, 57.1, 58.4], np.float32)
        return mean_bgr, std
    return np.asarray(IMAGENET_TF_MEAN, np.float32), np.asarray(IMAGENET_TF_STD, np.float32)


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


def _activate(m, s, act):
    if act == "relu6":
        return clipped_gaussian_moments(m, s, lo=0.0, hi=6.0)
    if act == "relu":
        return clipped_gaussian_moments(m, s, lo=0.0)
    if act == "linear":
        return np.asarray(m, np.float64), np.asarray(s, np.float64) ** 2
    raise ValueError(f"unknown activation {act!r}")


def bn_moments(bn: Mapping[str, Any], *, eps: float = BN_EPS) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``beta`` and spread ``|gamma| sqrt(var / (var + eps))`` of a batch norm's output."""
    var = np.asarray(bn["moving_variance"], np.float64)
    gamma = np.asarray(bn.get("gamma", np.ones_like(var)), np.float64)
    beta = np.asarray(bn.get("beta", np.zeros_like(var)), np.float64)
    return beta, np.abs(gamma) * np.sqrt(var / (var + eps))


def _conv(x, w, layer: Layer):
    """Apply ``layer``'s linear map to ``x (1, H, W, C)`` (or ``(1, n)`` for dense)."""
    if layer.kind == "dense":
        return x @ w
    pad = layer.padding if isinstance(layer.padding, str) else tuple(map(tuple, layer.padding))
    s = (layer.strides, layer.strides)
    if layer.kind == "depthwise":
        kh, kw, c, mult = w.shape
        return lax.conv_general_dilated(x, w.reshape(kh, kw, 1, c * mult), s, pad,
                                        dimension_numbers=_DN, feature_group_count=c)
    return lax.conv_general_dilated(x, w, s, pad, dimension_numbers=_DN)


def _as_map(v, layer: Layer):
    """Broadcast per-channel ``(C,)`` stats to the layer's input map ``(1, H, W, C)``."""
    v = np.asarray(v, np.float32)
    if layer.kind == "dense":
        return v.reshape(1, -1)
    if v.ndim == 1:
        h, w = layer.in_hw
        return np.broadcast_to(v, (1, h, w, v.shape[0])).copy()
    return v[None]


def layer_moments(params, topo: Sequence[Layer], *, in_mean, in_std, eps: float = BN_EPS,
                  key=None, mc_samples: int = 512) -> dict[str, dict[str, np.ndarray]]:
    """Data-free moments of every layer's input and pre-activation output.

    Returns ``{layer: {"in_mean", "in_var", "out_mean", "out_std"}}``; input moments are
    ``(C,)`` per channel or ``(H, W, C)`` maps. A layer followed by batch norm takes its output
    moments from the batch norm; one with a bias propagates its input moments (independent
    inputs: ``var = sum w^2 var_in``). A 2x2 max-pool is handled by Monte Carlo over
    independent Gaussians (``key``, ``mc_samples``).
    """
    key = jax.random.PRNGKey(0) if key is None else key
    out: dict[str, dict[str, np.ndarray]] = {}
    post: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # activated output (mean, var) per layer
    for layer in topo:
        if layer.prev is None:
            m_in, v_in = np.asarray(in_mean, np.float64), np.asarray(in_std, np.float64) ** 2
        else:
            prevs = layer.prev if isinstance(layer.prev, tuple) else (layer.prev,)
            m_in = sum(post[p][0] for p in prevs)
            v_in = sum(post[p][1] for p in prevs)
        if layer.pool == "gap" and np.ndim(m_in) == 3:
            m_in, v_in = m_in.mean((0, 1)), v_in.mean((0, 1))
        elif layer.pool == "max2_flatten":
            k1, key = jax.random.split(key)
            h, w, c = m_in.shape
            z = np.asarray(jax.random.normal(k1, (mc_samples, h, w, c)))
            x = m_in + np.sqrt(v_in) * z
            x = x[:, : h // 2 * 2, : w // 2 * 2].reshape(mc_samples, h // 2, 2, w // 2, 2, c)
            x = x.max((2, 4)).reshape(mc_samples, -1)
            m_in, v_in = x.mean(0), x.var(0)
        rec = {"in_mean": m_in, "in_var": v_in}
        if layer.bn is not None:
            o_m, o_s = bn_moments(params[layer.bn], eps=eps)
        else:
            w = jnp.asarray(params[layer.name][layer.var], jnp.float32)
            b = np.asarray(params[layer.name].get("bias", 0.0), np.float64)
            mm = np.asarray(_conv(_as_map(m_in, layer), w, layer), np.float64)[0]
            vv = np.asarray(_conv(_as_map(v_in, layer), w * w, layer), np.float64)[0]
            o_m, o_s = mm + b, np.sqrt(np.maximum(vv, 0.0))
        rec["out_mean"], rec["out_std"] = o_m, o_s
        post[layer.name] = _activate(o_m, o_s, layer.act)
        out[layer.name] = rec
    return out


# --- Bias correction ----------------------------------------------------------------------------


def expected_shift(layer: Layer, w, w_hat, in_mean) -> np.ndarray:
    """``(C_out,)`` expected output shift of ``layer`` when ``w`` becomes ``w_hat``.

    ``E[y_q - y] = conv(E[x], w_hat - w)`` with the layer's zero padding, averaged over the
    output positions (the least-squares constant when borders see fewer taps).
    """
    dw = jnp.asarray(w_hat, jnp.float32) - jnp.asarray(w, jnp.float32)
    y = np.asarray(_conv(_as_map(in_mean, layer), dw, layer), np.float64)
    return y.reshape(-1, y.shape[-1]).mean(0)


def bias_correct(params_float, params_q, topo: Sequence[Layer], moments, *,
                 paths: Sequence[str] | None = None) -> tuple[dict, dict[str, np.ndarray]]:
    """Absorb each quantized kernel's expected output shift (new tree, input not mutated).

    ``params_float``: the float reference (same layout as ``params_q``, e.g. both folded);
    ``moments``: :func:`layer_moments` of the float network (input means, scaled like
    ``params_float`` if it was equalized). Batch norm: ``moving_mean += shift``; bias:
    ``bias -= shift`` (created if absent is not supported: such a layer raises).
    Returns ``(new_params, {layer: shift (C_out,)})``.
    """
    new = {k: dict(v) if isinstance(v, Mapping) else v for k, v in params_q.items()}
    shifts = {}
    for layer in topo:
        if paths is not None and layer.path not in paths:
            continue
        w = params_float[layer.name][layer.var]
        wq = params_q[layer.name][layer.var]
        if np.array_equal(np.asarray(w), np.asarray(wq)):
            continue
        shift = expected_shift(layer, w, wq, moments[layer.name]["in_mean"])
        shifts[layer.name] = shift
        if layer.bn is not None:
            bn = dict(new[layer.bn])
            bn["moving_mean"] = (np.asarray(bn["moving_mean"], np.float64) + shift).astype(
                np.asarray(bn["moving_mean"]).dtype)
            new[layer.bn] = bn
        else:
            if "bias" not in new[layer.name]:
                raise ValueError(f"layer {layer.name!r} has neither a batch norm nor a bias to "
                                 "absorb its shift; keep it in float (keep_float)")
            b = np.asarray(new[layer.name]["bias"])
            new[layer.name]["bias"] = (b.astype(np.float64) - shift).astype(b.dtype)
    return new, shifts


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


def apply_mean_preserving(params_q, report: list[dict], params_float) -> tuple[dict, list[dict]]:
    """Re-round every quantized leaf of a :func:`~paper_repro.core.quantize.quantize_tree` result
    with :func:`mean_preserving_codes` (output channels by the Keras layout); update the
    report's codes, ``r`` and ``zero_fraction``. Returns ``(new_params, new_report)``."""
    flat = dict(Q.tree_paths(params_float))
    new = {k: dict(v) if isinstance(v, Mapping) else v for k, v in params_q.items()}
    out = []
    for row in report:
        path, qz = row["path"], row["quantizer"]
        w = np.asarray(flat[path])
        ax = Q.default_channel_axis(path, w)
        codes = mean_preserving_codes(w, row["codes"], qz, channel_axis=ax)
        w_hat = np.asarray(Q.decode(codes, qz)).astype(w.dtype)
        layer, var = path.rsplit("/", 1)
        new[layer][var] = w_hat
        out.append({**row, "codes": jnp.asarray(codes),
                    "r": float(corr_mod.sample_r(jnp.asarray(w), jnp.asarray(w_hat))),
                    "zero_fraction": float(np.mean(w_hat == 0))})
    return new, out


# --- Batch-norm folding and equalization --------------------------------------------------------


def _out_axis(layer: Layer) -> int:
    return -2 if layer.kind == "depthwise" else -1


def fold_bn(params, topo: Sequence[Layer], *, eps: float = BN_EPS) -> dict:
    """Fold each layer's batch norm into its kernel; the batch norm becomes identity + bias.

    ``w' = w * inv`` per output channel, ``inv = gamma / sqrt(var + eps)``; the batch norm keeps
    ``beta' = beta - mean * inv`` with ``gamma = sqrt(1 + eps)``, ``var = 1``, ``mean = 0`` (so
    it computes ``x + beta'``, up to one rounding). Same tree structure; input not mutated.
    """
    new = {k: dict(v) if isinstance(v, Mapping) else v for k, v in params.items()}
    for layer in topo:
        if layer.bn is None:
            continue
        bn = params[layer.bn]
        var = np.asarray(bn["moving_variance"], np.float64)
        gamma = np.asarray(bn.get("gamma", np.ones_like(var)), np.float64)
        beta = np.asarray(bn.get("beta", np.zeros_like(var)), np.float64)
        inv = gamma / np.sqrt(var + eps)
        w = np.asarray(params[layer.name][layer.var], np.float64)
        shape = [1] * w.ndim
        shape[_out_axis(layer)] = -1
        dt = np.asarray(params[layer.name][layer.var]).dtype
        new[layer.name][layer.var] = (w * inv.reshape(shape)).astype(dt)
        nb = {"moving_mean": np.zeros_like(var, dtype=np.float32),
              "moving_variance": np.ones_like(var, dtype=np.float32),
              "gamma": np.full(var.shape, math.sqrt(1 + eps), np.float32),
              "beta": (beta - np.asarray(bn["moving_mean"], np.float64) * inv).astype(np.float32)}
        new[layer.bn] = {k: nb[k] for k in bn}
    return new


def output_upper_bounds(params, topo: Sequence[Layer], *, input_max: float = 1.0) -> dict:
    """Worst-case upper bound of each layer's pre-activation output on a *folded* network.

    ``top_c = bias_c + sum max(w, 0) * max(x)`` (``|w|`` on the signed network input), the inputs' maxima propagated through ReLU6
    (at most 6), ReLU and pooling; ``input_max`` bounds the preprocessed input ('tf': 1).
    Returns ``{layer: (C_out,)}`` (``inf`` where unbounded).
    """
    post: dict[str, np.ndarray] = {}
    out = {}
    for layer in topo:
        if layer.prev is None:
            xmax: Any = input_max
        else:
            prevs = layer.prev if isinstance(layer.prev, tuple) else (layer.prev,)
            xmax = np.minimum(sum(post[p] for p in prevs), 1e30)  # unbounded: huge, not inf
        w = np.asarray(params[layer.name][layer.var], np.float64)
        # inputs in [0, xmax] after ReLU/ReLU6; the network input lies in [-xmax, xmax]
        wp = np.abs(w) if layer.prev is None else np.maximum(w, 0.0)
        if layer.kind == "depthwise":
            xm = np.broadcast_to(xmax, (w.shape[2],)) if np.ndim(xmax) == 0 else xmax
            top = (wp.sum((0, 1)) * np.asarray(xm)[:, None]).reshape(-1)
        elif layer.kind == "dense" and layer.pool == "max2_flatten":
            top = np.full(w.shape[-1], np.inf)
        else:
            wp2 = wp.reshape(-1, w.shape[-2], w.shape[-1]).sum(0)
            xm = np.broadcast_to(xmax, (w.shape[-2],)) if np.ndim(xmax) == 0 else xmax
            top = np.asarray(xm) @ wp2
        if layer.bn is not None:
            bn = params[layer.bn]
            var = np.asarray(bn["moving_variance"], np.float64)
            inv = np.asarray(bn.get("gamma", np.ones_like(var)), np.float64) / np.sqrt(
                var + BN_EPS)
            top = top * np.abs(inv) + np.asarray(bn.get("beta", 0.0), np.float64) \
                - np.asarray(bn["moving_mean"], np.float64) * inv
            if np.any(inv < 0):
                top = np.where(inv < 0, np.inf, top)
        elif "bias" in params[layer.name]:
            top = top + np.asarray(params[layer.name]["bias"], np.float64)
        out[layer.name] = top
        cap = {"relu6": 6.0, "relu": np.inf, "linear": np.inf}[layer.act]
        post[layer.name] = np.clip(top, 0.0, cap) if layer.act != "linear" else np.full_like(
            top, np.inf)
    return out


def _channel_range(w, axis):
    w = np.asarray(w, np.float64)
    ax = axis % w.ndim
    return np.abs(np.moveaxis(w, ax, 0).reshape(w.shape[ax], -1)).max(1)


def equalize(params, topo: Sequence[Layer], moments, *, iterations: int = 4,
             margin: float | None = None, clip: float = 6.0, s_max: float = 1e3) -> tuple[dict, dict]:
    """Cross-layer equalization on a *folded* network (see :func:`fold_bn`).

    For each pair (layer A with a batch norm and ReLU/ReLU6, layer B fed only by A, channels
    one-to-one), channel ``c``: ``s_c = sqrt(r_A / r_B)`` (``r`` = the channel's max |w|),
    ``A[..., c] /= s_c``, A's bias (the folded ``beta``) ``/= s_c``, ``B``'s input channel
    ``*= s_c``; both ranges become ``sqrt(r_A r_B)``. ReLU6 is exact only where the channel
    stays below the clip: with ``top`` an upper bound of the channel's pre-activation,
    ``s_c >= top / clip`` is enforced and channels with ``top >= clip`` keep ``s_c = 1``.
    ``margin=None`` (default, exact): ``top`` is the worst case over all inputs
    (:func:`output_upper_bounds`); a number uses the batch-norm statistics,
    ``top = mean + margin * spread`` (more channels equalized, not exact on heavy tails).
    Repeats ``iterations`` sweeps.
    Returns ``(new_params, {layer A: total scale (C,)})``; divide the moments of A's output
    by it (:func:`scale_moments`).
    """
    new = {k: dict(v) if isinstance(v, Mapping) else v for k, v in params.items()}
    feeds: dict[str, list[Layer]] = {}
    for layer in topo:
        if isinstance(layer.prev, str):
            feeds.setdefault(layer.prev, []).append(layer)
    pairs = []
    for a in topo:
        bs = feeds.get(a.name, [])
        if (a.bn is None or a.act not in ("relu", "relu6") or len(bs) != 1
                or bs[0].pool is not None or bs[0].kind == "dense"):
            continue
        pairs.append((a, bs[0]))
    upper = output_upper_bounds(params, topo) if margin is None else None
    total = {a.name: np.ones(np.shape(params[a.name][a.var])[_out_axis(a)]) for a, _ in pairs}
    for _ in range(iterations):
        for a, b in pairs:
            wa = np.asarray(new[a.name][a.var], np.float64)
            wb = np.asarray(new[b.name][b.var], np.float64)
            ra = _channel_range(wa, _out_axis(a))
            rb = _channel_range(wb, -2)
            if margin is None:
                top = upper[a.name] / total[a.name]
            else:
                m = np.asarray(moments[a.name]["out_mean"]) / total[a.name]
                sd = np.asarray(moments[a.name]["out_std"]) / total[a.name]
                top = m + margin * sd
            ok = (ra > 1e-8 * ra.max()) & (rb > 1e-8 * rb.max())
            s = np.where(ok, np.sqrt(ra / np.where(ok, rb, 1.0)), 1.0)
            s = np.clip(s, 1 / s_max, s_max)
            if a.act == "relu6":
                s = np.where(~(top < clip), 1.0, np.maximum(s, np.maximum(top, 0.0) / clip))
            shape_a = [1] * wa.ndim
            shape_a[_out_axis(a)] = -1
            shape_b = [1] * wb.ndim
            shape_b[-2] = -1
            new[a.name][a.var] = (wa / s.reshape(shape_a)).astype(np.float32)
            new[b.name][b.var] = (wb * s.reshape(shape_b)).astype(np.float32)
            bn = dict(new[a.bn])
            bn["beta"] = (np.asarray(bn["beta"], np.float64) / s).astype(np.float32)
            new[a.bn] = bn
            total[a.name] = total[a.name] * s
    return new, total


def scale_moments(moments, scales: Mapping[str, np.ndarray], topo: Sequence[Layer]) -> dict:
    """Moments after :func:`equalize`: A's output divided by its scale, B's input too."""
    out = {k: dict(v) for k, v in moments.items()}
    for layer in topo:
        if layer.name in scales:
            s = scales[layer.name]
            out[layer.name]["out_mean"] = out[layer.name]["out_mean"] / s
            out[layer.name]["out_std"] = out[layer.name]["out_std"] / s
        if isinstance(layer.prev, str) and layer.prev in scales and layer.pool is None:
            s = scales[layer.prev]
            out[layer.name]["in_mean"] = out[layer.name]["in_mean"] / s
            out[layer.name]["in_var"] = out[layer.name]["in_var"] / s**2
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
                codebook: str = "params") -> list[dict]:
    """For each path and bit width: ``r``, predicted noise (:func:`channel_noise`) and storage
    bits (codes ``size * b`` plus 32 bits per codebook float, :func:`codebook_floats`)."""
    flat = dict(Q.tree_paths(params))
    out = []
    kw = dict(scheme=scheme, fit=fit, granularity=granularity, gain=gain, rounding=rounding,
              method=method, codebook=codebook)
    for path in paths:
        arr = np.ascontiguousarray(np.asarray(flat[path], np.float32))
        key = (path, hashlib.sha1(arr.tobytes()).hexdigest(), tuple(int(b) for b in choices),
               tuple(sorted(kw.items())))
        if key not in _COST_CACHE:
            _COST_CACHE[key] = _path_costs(path, arr, choices, **kw)
        out += _COST_CACHE[key]
    return out


_COST_CACHE: dict = {}  # (path, weights digest, choices, knobs) -> rows: sweeps refit nothing


def _path_costs(path, arr, choices, *, scheme, fit, granularity, gain, rounding, method,
                codebook):
    out = []
    w = jnp.asarray(arr)
    ax = Q.default_channel_axis(path, w)
    table = Q.moments(w, granularity=granularity, channel_axis=ax, method=method)
    for b in choices:
        q = Q.fit(w, scheme=scheme, bits=int(b), fit=fit, granularity=granularity,
                  channel_axis=ax, gain=gain, rounding=rounding, method=method, table=table)
        w_hat = Q.decode(Q.encode(w, q), q)
        r = float(np.clip(corr_mod.sample_r(w, w_hat), 1e-6, 1.0))
        out.append({"path": path, "bits": int(b), "size": int(w.size), "r": r,
                    "noise": channel_noise(w, w_hat, channel_axis=ax),
                    "storage_bits": int(w.size) * int(b)
                    + 32 * codebook_floats(q, codebook=codebook)})
    return out


def allocate_bits(costs: list[dict], *, avg_bits: float) -> dict[str, int]:
    """Greedy bit allocation: ``{path: bits}`` with total storage (codes + codebooks) at most
    ``avg_bits`` per quantized weight, minimizing the summed predicted noise.

    Starts every layer at its cheapest width, then repeatedly takes the upgrade (to any wider
    choice) with the largest noise reduction per extra stored bit that still fits.
    Raises ``ValueError`` if even the narrowest widths do not fit.
    """
    by_path: dict[str, list[dict]] = {}
    for c in costs:
        by_path.setdefault(c["path"], []).append(c)
    for v in by_path.values():
        v.sort(key=lambda c: c["bits"])
    budget = avg_bits * sum(v[0]["size"] for v in by_path.values())
    cur = {p: min(v, key=lambda c: c["storage_bits"]) for p, v in by_path.items()}
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
    return {p: c["bits"] for p, c in cur.items()}


# --- The whole pipeline -------------------------------------------------------------------------


def quantize_model(params, *, paths: Sequence[str], scheme: str, bits: int | None = None,
                   avg_bits: float | None = None, bits_choices: Sequence[int] = (2, 3, 4, 5, 6,
                                                                                7, 8),
                   fold: bool = False, equalize_ranges: bool = False,
                   bias_correction: bool = False, mean_preserving: bool = False,
                   topo: Sequence[Layer] | None = None, preprocess_mode: Any = "tf",
                   **fit_kwargs) -> tuple[dict, list[dict], dict]:
    """Fold / equalize, allocate bits, quantize ``paths``, re-round, correct biases.

    Order: fold batch norms (``fold`` or ``equalize_ranges``) -> equalize -> choose per-layer
    widths for ``avg_bits`` (else ``bits`` everywhere) ->
    :func:`~paper_repro.core.quantize.quantize_tree` -> mean-preserving re-rounding -> bias
    correction against the (folded, equalized) float network. ``fit_kwargs`` go to
    :func:`~paper_repro.core.quantize.fit`. Returns ``(new_params, report, info)``; ``info`` has the
    per-layer bits and, with correction, the largest absorbed shift.
    """
    needs_topo = fold or equalize_ranges or bias_correction
    topo = (topology(params) if topo is None else topo) if needs_topo else topo
    info: dict[str, Any] = {}
    ref = params
    moments = None
    if needs_topo:
        in_mean, in_std = input_stats(params, preprocess_mode=preprocess_mode)
        moments = layer_moments(params, topo, in_mean=in_mean, in_std=in_std)
    if fold or equalize_ranges:
        ref = fold_bn(ref, topo)
    if equalize_ranges:
        ref, scales = equalize(ref, topo, moments)
        moments = scale_moments(moments, scales, topo)
        if scales:
            info["equalize_scale_range"] = [float(min(s.min() for s in scales.values())),
                                            float(max(s.max() for s in scales.values()))]
    if avg_bits is not None:
        kw = {k: fit_kwargs[k] for k in ("fit", "granularity", "gain", "rounding", "method")
              if k in fit_kwargs}
        costs = layer_costs(ref, paths, choices=bits_choices, scheme=scheme, **kw)
        bits_map = allocate_bits(costs, avg_bits=avg_bits)
        info["bits"] = bits_map
        qbits: Any = bits_map
    else:
        if bits is None:
            raise ValueError("give bits= or avg_bits=")
        qbits = bits
    select = "|".join(re.escape(p) for p in paths)
    qp, report = Q.quantize_tree(ref, select=select, scheme=scheme, bits=qbits, **fit_kwargs)
    if mean_preserving:
        qp, report = apply_mean_preserving(qp, report, ref)
    if bias_correction:
        qp, shifts = bias_correct(ref, qp, topo, moments, paths=paths)
        info["max_abs_shift"] = float(max((np.abs(s).max() for s in shifts.values()),
                                          default=0.0))
    return qp, report, info


# --- Sweeps, tables and the figure (used by notebooks/datafree.ipynb) ---------------------------


def repair_configs(*, bits: Sequence[int] = (5, 4), schemes: Sequence[str] = ("linear",
                                                                                "exponential"),
                   granularity: str = "channel", gain: bool = True,
                   mixed: bool = True) -> list:
    """The ladder of repairs per scheme and width: plain, +bias correction, +mean-preserving,
    +both, +fold/equalize, and mixed widths (``avg_bits = bits``, from 3 bits) with both."""
    from paper_repro.feedforward.sweep import QuantConfig

    out = []
    for b in bits:
        for s in schemes:
            base = dict(scheme=s, fit="corr", bits=b, granularity=granularity, gain=gain)
            out += [QuantConfig(**base), QuantConfig(**base, bias_correction=True),
                    QuantConfig(**base, mean_preserving=True),
                    QuantConfig(**base, mean_preserving=True, bias_correction=True),
                    QuantConfig(**base, fold_bn=True, equalize=True, mean_preserving=True,
                                bias_correction=True)]
            if mixed and b >= 3:  # at 2 bits the codebook scales alone exceed small budgets
                out.append(QuantConfig(**base, avg_bits=float(b), mean_preserving=True,
                                       bias_correction=True))
    return out


def paper_recipe_configs() -> list:
    """The papers' recipe before any repair (least-squares gain, batch norm in float): linear
    per tensor with top = max at 8 / 6 / 5 bits, exponential per tensor at 5 (max-anchored and
    correlation-fitted), correlation-fitted per channel (linear 5 / 6, exponential 5), and the
    same per-channel ones with bias correction."""
    from paper_repro.feedforward.sweep import QuantConfig as QC

    return ([QC(scheme="linear", fit="max", bits=b, gain=True) for b in (8, 6, 5)]
            + [QC(scheme="exponential", fit=f, bits=5, gain=True) for f in ("max", "corr")]
            + [QC(scheme=s, fit="corr", bits=b, granularity="channel", gain=True)
               for s, b in (("linear", 5), ("linear", 6), ("exponential", 5))]
            + [QC(scheme=s, fit="corr", bits=b, granularity="channel", gain=True,
                  bias_correction=True)
               for s, b in (("linear", 5), ("exponential", 5), ("linear", 6))])


def headline_configs() -> list:
    """The repaired configurations reported against the 5- and 4-bit targets."""
    from paper_repro.feedforward.sweep import QuantConfig as QC

    lin5 = dict(scheme="linear", fit="corr", bits=5, granularity="channel", gain=True)
    lin4 = {**lin5, "bits": 4}
    exp4 = {**lin4, "scheme": "exponential"}
    both = dict(mean_preserving=True, bias_correction=True)
    return [QC(**lin5, **both), QC(**lin5, avg_bits=5.0, **both),
            QC(**lin4, **both), QC(**lin4, avg_bits=4.0, **both),
            QC(**exp4, **both), QC(**exp4, avg_bits=4.0, **both),
            QC(**lin5, mean_preserving=True),
            QC(**lin5, fold_bn=True, equalize=True, **both),
            QC(**lin4, bias_correction=True)]


def markdown_table(rows: list[dict]) -> str:
    """Markdown: configuration, top-1 / top-5, drop vs float, code bits per weight and the
    compression ratio with codebooks stored as levels and as parameters."""
    lines = ["| configuration | top-1 | top-5 | drop top-1 [95% CI] | code bits/weight | "
             "compression (levels / params) |", "|" + "---|" * 6]
    for r in rows:
        if r.get("scheme") in (None, "", "None"):
            lines.append(f"| float | {float(r['top1']):.2f} | {float(r['top5']):.2f} | | 32 | "
                         "1.00 |")
            continue
        drop = (f"{float(r['top1_drop']):+.2f} [{float(r['top1_drop_low']):+.2f}, "
                f"{float(r['top1_drop_high']):+.2f}]" if "top1_drop" in r else "")
        lines.append(f"| {r['label']} | {float(r['top1']):.2f} | {float(r['top5']):.2f} | "
                     f"{drop} | {float(r.get('code_bits_per_weight', 0)):.2f} | "
                     f"{float(r['compression_ratio']):.2f} / "
                     f"{float(r.get('compression_ratio_param_codebooks', 0)):.2f} |")
    return "\n".join(lines) + "\n"


def plot_repairs(rows: list[dict], *, title: str = ""):
    """Horizontal bars: top-1 of each configuration, float as a line. Returns the Figure."""
    import matplotlib.pyplot as plt

    base = next((r for r in rows if r.get("scheme") in (None, "", "None")), None)
    qrows = [r for r in rows if r.get("scheme") not in (None, "", "None")]
    fig, ax = plt.subplots(figsize=(7, 0.28 * len(qrows) + 1.2))
    y = np.arange(len(qrows))
    ax.barh(y, [float(r["top1"]) for r in qrows], color=[
        "C1" if r.get("avg_bits") not in (None, "", "None") else
        "C2" if r.get("bias_correction") in (True, "True") else "C0" for r in qrows])
    ax.set_yticks(y, [r["label"] for r in qrows], fontsize=7)
    ax.invert_yaxis()
    if base is not None:
        ax.axvline(float(base["top1"]), color="k", lw=1, ls="--", label="float")
        ax.legend(loc="lower right", fontsize=7)
    ax.set_xlabel("top-1 (%)")
    ax.set_title(title, fontsize=9)
    return fig


def repairs_to_results(task, configs, name: str, *, limit=None, progress=False,
                       title: str | None = None) -> list[dict]:
    """Run (or resume) a sweep of repaired configurations; write ``results/<name>/``:
    sweep.csv (resumable), table.csv, table.md, top1.png/.pdf, meta.json."""
    import time

    from paper_repro.feedforward import sweep as E
    from paper_repro import results as R

    d = R.results_dir(name)
    t0 = time.perf_counter()
    rows = E.run_sweep(task, configs, R.ResultsTable(d / "sweep.csv"), limit=limit,
                       progress=progress, log=print if progress else (lambda *_: None))
    order = {c.label(): i for i, c in enumerate(configs)}
    rows = sorted(rows, key=lambda r: -1 if r.get("label") == "float" else
                  order.get(r.get("label"), len(order)))
    rows = [r for r in rows if r.get("label") == "float" or r.get("label") in order]
    R.write_csv(d / "table.csv", rows)
    (d / "table.md").write_text(markdown_table(rows))
    R.save_figure(plot_repairs(rows, title=title or task.name), name, stem="top1")
    R.write_meta(d, {"task": task.name, **task.info, "configs": [c.key() for c in configs],
                     "limit": limit}, time.perf_counter() - t0, n_rows=len(rows))
    return rows
