"""ONNX models in and out: run an ONNX graph as one jitted JAX function, write it back.

:func:`load_onnx` parses an ``.onnx`` file with the ``onnx`` package and turns its graph into
``apply(params, x) -> logits``, a single ``jax.jit``-compiled function whose weights live in a
plain nested dict, so that the package's quantizers (``paper_repro.core.quantize``) work on
it unchanged. :func:`save_onnx` writes the same graph back with the weights of a (for example
quantized, dequantized-float) copy of that dict, so that onnxruntime or any other ONNX runtime
runs the quantized model.

Parameters (``OnnxModel.params``)
    One entry per node that owns weights, keyed by the node's sanitized unique name
    (:attr:`Node.name`, e.g. ``/stage2/stage2.0/branch1/branch1.0/Conv`` ->
    ``stage2_stage2.0_branch1_branch1.0_Conv``), in the Flax / Keras layout:

    - ``Conv``: ``kernel`` ``(*kernel_spatial, in_channels / group, out_channels)`` (HWIO
      for 2-D: output channels on the LAST axis, depthwise kernels ``(kh, kw, 1, C * mult)``),
      ``bias`` ``(out_channels,)``;
    - ``Gemm``: ``kernel`` ``(in, out)`` (``B``, or ``B.T`` when ``transB=1``), ``bias``
      (``C`` as stored in the file, usually ``(out,)``);
    - ``MatMul`` with a 2-D initializer as second operand: ``kernel`` ``(in, out)``;
    - ``BatchNormalization``: ``scale``, ``bias``, ``mean``, ``var``, each ``(C,)``.

    Only initializers (or ``Constant`` node values) read by exactly one of these slots become
    parameters; every other
    initializer (shape tensors, constants of ``Add`` / ``Mul``, weights shared by several
    nodes) is a fixed constant (``OnnxModel.constants``). Float16 / float64 initializers are
    converted to float32; all float arithmetic runs in float32. Output channels are always on
    the last axis of a kernel, depthwise ones included: per-channel quantization takes
    ``channel_axis=-1``.

Inputs
    ``apply(params, x)`` takes ``x`` as the ONNX graph declares it: ``(N, C, H, W)`` (NCHW)
    for image models, any float dtype (cast to float32). ``apply_nhwc(params, x)`` takes
    ``(N, H, W, C)`` (the package's image pipeline) for the same graph. Both return the graph
    output (a tuple when the graph has several), float32. Both are jitted: one compilation
    per input shape.

Execution
    Rank >= 3 activations are kept channels-last internally (``(N, H, W, C)``), where XLA's
    CPU convolutions are fastest; operators that depend on the axis order (``Reshape``,
    ``Transpose``, ``Flatten``, ``Gather``, ...) see the ONNX (channels-first) order, and
    axis attributes of ``Concat`` / ``Slice`` / ``Split`` / ``Pad`` / reductions / pools are
    remapped, so results equal the ONNX semantics. On CPU, depthwise convolutions run as a sum
    of shifted products, grouped convolutions as one convolution per group, 1x1 convolutions
    as matmuls and stems with few input channels as patches + matmul (XLA's CPU grouped
    convolution is tens of times slower; see ``conv_impl`` of :func:`load_onnx`). Shape
    computations (``Shape -> Gather -> Concat -> Reshape`` chains of PyTorch exports) are
    evaluated with numpy while tracing, with the concrete input shape, so every shape is
    static under ``jit``.

Supported operators: see :data:`SUPPORTED_OPS`. Any other operator raises
``ValueError("unsupported ONNX operator 'X' (node N)")`` when the file is loaded.

Example::

    from paper_repro.core import quantize as Q
    from paper_repro.feedforward import onnx_model

    m = onnx_model.load_onnx("shufflenet_v2_x0_5_fp16.onnx")
    logits = m.apply(m.params, x_nchw)                       # (N, 1000)
    q_params, report = Q.quantize_tree(m.params, scheme="linear", bits=4)
    onnx_model.save_onnx(m, q_params, "shufflenet_q4.onnx")  # runs in onnxruntime
"""

from __future__ import annotations

import copy
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "SUPPORTED_OPS",
    "Node",
    "WeightSlot",
    "OnnxModel",
    "load_onnx",
    "save_onnx",
]


# --------------------------------------------------------------------------- data classes


@dataclass(frozen=True, eq=False)
class Node:
    """One ONNX node, in graph (topological) order.

    Attributes:
      index: position in the graph's node list.
      name: sanitized unique name (``[A-Za-z0-9_.-]``); the key in ``params`` for nodes with
        weights.
      onnx_name: the node's name in the file (``""`` when it has none).
      op_type: ONNX operator, e.g. ``"Conv"``.
      inputs: input tensor names; ``""`` marks an omitted optional input.
      outputs: output tensor names.
      attrs: attribute values as Python objects (int, float, str, lists, numpy arrays for
        tensor attributes).
      weights: parameter key (``"kernel"``, ``"bias"``, ``"scale"``, ``"mean"``, ``"var"``) ->
        initializer name, for the inputs held in ``params[name]``.
    """

    index: int
    name: str
    onnx_name: str
    op_type: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: Mapping[str, Any]
    weights: Mapping[str, str] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """How errors name this node: its ONNX name, or ``#index`` when it has none."""
        return repr(self.onnx_name) if self.onnx_name else f"#{self.index}"


@dataclass(frozen=True)
class WeightSlot:
    """Where one parameter comes from and goes back to.

    Attributes:
      initializer: the tensor's name in the file (an initializer, or the output of a
        ``Constant`` node).
      node: :attr:`Node.name` (first key in ``params``).
      key: second key in ``params`` (``"kernel"``, ``"bias"``, ...).
      layout: ``"conv"`` (file ``(out, in/group, *k)`` <-> params ``(*k, in/group, out)``),
        ``"transpose"`` (Gemm ``transB=1``: file ``(out, in)`` <-> params ``(in, out)``) or
        ``"same"``.
      onnx_shape: the initializer's shape in the file.
      onnx_dtype: its ONNX element type (``onnx.TensorProto`` enum).
      constant_node: index of the ``Constant`` node holding the tensor, None for an
        initializer.
    """

    initializer: str
    node: str
    key: str
    layout: str
    onnx_shape: tuple[int, ...]
    onnx_dtype: int
    constant_node: int | None = None


# --------------------------------------------------------------------------- helpers


def _onnx():
    import onnx

    return onnx


_FLOAT_TYPES = {1, 10, 11, 16}  # FLOAT, FLOAT16, DOUBLE, BFLOAT16


def _np_dtype_for(elem_type: int) -> np.dtype:
    """numpy dtype used here for an ONNX element type (float types -> float32)."""
    if elem_type in _FLOAT_TYPES:
        return np.dtype(np.float32)
    onnx = _onnx()
    try:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type))
    except Exception as e:  # noqa: BLE001 - any lookup failure means: unknown type
        raise ValueError(f"unsupported ONNX element type {elem_type}") from e


def _to_numpy(tensor) -> np.ndarray:
    """A TensorProto as numpy; floats as float32."""
    onnx = _onnx()
    a = np.asarray(onnx.numpy_helper.to_array(tensor))
    if a.dtype.kind == "f" or tensor.data_type in _FLOAT_TYPES:
        a = a.astype(np.float32)
    return a


def _attr_value(attr) -> Any:
    onnx = _onnx()
    v = onnx.helper.get_attribute_value(attr)
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if isinstance(v, onnx.TensorProto):
        return _to_numpy(v)
    if isinstance(v, list | tuple):
        out = []
        for e in v:
            if isinstance(e, bytes):
                out.append(e.decode("utf-8", "replace"))
            elif isinstance(e, onnx.TensorProto):
                out.append(_to_numpy(e))
            else:
                out.append(e)
        return out
    return v


def _sanitize(name: str) -> str:
    s = re.sub(r"[^0-9A-Za-z_.-]+", "_", name).strip("_")
    return s


def _unique_names(raw: Sequence[tuple[str, str]]) -> list[str]:
    """Sanitized unique names for ``(onnx_name, op_type)`` pairs."""
    seen: set[str] = set()
    out = []
    for i, (name, op) in enumerate(raw):
        base = _sanitize(name) or f"{op}_{i}"
        cand, k = base, 1
        while cand in seen:
            cand = f"{base}_{k}"
            k += 1
        seen.add(cand)
        out.append(cand)
    return out


class _V:
    """A value during tracing: numpy (a compile-time constant) or a jax array.

    ``cl`` marks a rank >= 3 array stored channels-last: stored = native.transpose(0, 2, ...,
    r-1, 1), where native is the ONNX (channels-first) order.
    """

    __slots__ = ("x", "cl")

    def __init__(self, x, cl: bool = False):
        self.x = np.asarray(x) if isinstance(x, np.generic) else x
        self.cl = cl

    @property
    def const(self) -> bool:
        return isinstance(self.x, np.ndarray)

    @property
    def rank(self) -> int:
        return len(self.x.shape)

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape in the ONNX (native) order."""
        s = tuple(self.x.shape)
        return tuple(s[i] for i in _from_cl(len(s))) if self.cl else s


def _to_cl(r: int) -> tuple[int, ...]:
    return (0,) + tuple(range(2, r)) + (1,)


def _from_cl(r: int) -> tuple[int, ...]:
    return (0, r - 1) + tuple(range(1, r - 1))


def _cl_axis(a: int, r: int) -> int:
    """Position in the channels-last storage of native axis ``a``."""
    a = a % r
    return 0 if a == 0 else (r - 1 if a == 1 else a - 1)


def _native(v: _V):
    if not v.cl:
        return v.x
    return _xp(v).transpose(v.x, _from_cl(v.rank))


def _as_cl(v: _V):
    if v.cl:
        return v.x
    if v.rank < 3:
        raise ValueError(
            f"expected a tensor of rank >= 3 with channels on axis 1, got shape {v.shape}"
        )
    return _xp(v).transpose(v.x, _to_cl(v.rank))


def _xp(*vals: _V):
    import jax.numpy as jnp

    return np if all(v.const for v in vals) else jnp


def _const(v: _V | None, what: str, node: Node) -> np.ndarray | None:
    if v is None:
        return None
    if not v.const:
        raise ValueError(
            f"{what} of {node.op_type} node {node.label} depends on the input values; only "
            f"values computable from shapes and constants are supported (jit needs static shapes)"
        )
    return np.asarray(v.x)


def _align(vals: Sequence[_V]) -> tuple[list[Any], bool]:
    """Arrays of ``vals`` in one common layout (channels-last if any is, and ranks allow)."""
    cls = [v for v in vals if v.cl]
    if not cls:
        return [v.x for v in vals], False
    r = cls[0].rank
    if any(v.rank > r or (v.cl and v.rank != r) for v in vals):
        return [_native(v) for v in vals], False
    out = []
    for v in vals:
        if v.cl:
            out.append(v.x)
        elif v.rank == 0:
            out.append(v.x)
        else:
            xp = _xp(v)
            x = xp.reshape(v.x, (1,) * (r - v.rank) + tuple(v.x.shape))
            out.append(xp.transpose(x, _to_cl(r)))
    return out, True


# --------------------------------------------------------------------------- operators


class _Ctx:
    """What operators need besides their inputs."""

    def __init__(self, params, *, opset: int, precision, conv_impl: str):
        self.params = params
        self.opset = opset
        self.precision = precision
        self.conv_impl = conv_impl

    def weight(self, node: Node, key: str, arg: _V | None):
        """The parameter ``params[node.name][key]`` if the node owns it, else the input."""
        if key in node.weights:
            import jax.numpy as jnp

            return jnp.asarray(self.params[node.name][key], jnp.float32), True
        if arg is None:
            return None, False
        return arg.x, False


def _ints(v, n: int | None = None, default: int | None = None) -> list[int]:
    if v is None:
        return [default] * n
    return [int(e) for e in v]


def _spatial_pads(node: Node, in_sizes, kernel, strides, dilations) -> list[tuple[int, int]]:
    """Explicit (begin, end) padding per spatial axis, with ``auto_pad``."""
    nd = len(in_sizes)
    auto = node.attrs.get("auto_pad", "NOTSET")
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        pads = []
        for L, k, s, d in zip(in_sizes, kernel, strides, dilations, strict=False):
            out = -(-L // s)
            total = max((out - 1) * s + (k - 1) * d + 1 - L, 0)
            small, big = total // 2, total - total // 2
            pads.append((small, big) if auto == "SAME_UPPER" else (big, small))
        return pads
    if auto == "VALID":
        return [(0, 0)] * nd
    if auto not in ("NOTSET", ""):
        raise ValueError(f"unknown auto_pad {auto!r} in node {node.label}")
    p = node.attrs.get("pads")
    if p is None:
        return [(0, 0)] * nd
    p = [int(e) for e in p]
    return [(p[i], p[i + nd]) for i in range(nd)]


_IM2COL_MAX_CIN = 4  # dense convolutions with at most this many input channels use patches


def _op_conv(ctx: _Ctx, node: Node, args):
    import jax.numpy as jnp
    from jax import lax

    x = args[0]
    r = x.rank
    nd = r - 2
    if nd not in (1, 2, 3):
        raise ValueError(f"Conv node {node.label}: {nd}-D convolutions are not supported (1-3)")
    w, from_params = ctx.weight(node, "kernel", args[1])
    if not from_params:  # an ONNX-layout weight computed in the graph
        w = jnp.asarray(_native(args[1]), jnp.float32).transpose(tuple(range(2, r)) + (1, 0))
    b, _ = ctx.weight(node, "bias", args[2] if len(args) > 2 else None)
    xs = jnp.asarray(_as_cl(x), jnp.float32)
    kernel = tuple(w.shape[:nd])
    strides = _ints(node.attrs.get("strides"), nd, 1)
    dil = _ints(node.attrs.get("dilations"), nd, 1)
    group = int(node.attrs.get("group", 1))
    in_sizes = xs.shape[1:-1]
    pads = _spatial_pads(node, in_sizes, kernel, strides, dil)
    c_in = xs.shape[-1]
    cin_g, c_out = w.shape[-2], w.shape[-1]
    if cin_g * group != c_in or c_out % group:
        raise ValueError(
            f"Conv node {node.label}: weight {tuple(w.shape)} (params layout) does not fit "
            f"{c_in} input channels in {group} groups"
        )
    spec = {1: ("NWC", "WIO", "NWC"), 2: ("NHWC", "HWIO", "NHWC"), 3: ("NDHWC", "DHWIO", "NDHWC")}[
        nd
    ]

    def conv(a, k, groups=1):
        return lax.conv_general_dilated(
            a,
            k,
            window_strides=strides,
            padding=pads,
            rhs_dilation=dil,
            dimension_numbers=spec,
            feature_group_count=groups,
            precision=ctx.precision,
        )

    impl = ctx.conv_impl
    pointwise = math.prod(kernel) == 1 and all(p == (0, 0) for p in pads)
    if group == 1 and impl == "cpu" and pointwise:  # 1x1: a matmul over channels
        a = (
            xs
            if all(st == 1 for st in strides)
            else xs[(slice(None),) + tuple(slice(None, None, st) for st in strides)]
        )
        y = jnp.matmul(a, w.reshape(c_in, c_out), precision=ctx.precision)
    elif group == 1 and impl == "cpu" and c_in <= _IM2COL_MAX_CIN:
        # few input channels (the RGB stem): patches + one matmul beat XLA's CPU convolution
        pt = lax.conv_general_dilated_patches(
            xs,
            kernel,
            strides,
            pads,
            rhs_dilation=dil,
            dimension_numbers=spec,
            precision=ctx.precision,
        )  # (N, *out, C * prod(kernel)), features ordered (C, *kernel)
        wk = jnp.moveaxis(w, -2, 0).reshape(-1, c_out)
        y = jnp.matmul(pt, wk, precision=ctx.precision)
    elif group == 1:
        y = conv(xs, w)
    elif impl == "xla":
        y = conv(xs, w, group)
    elif cin_g == 1:  # depthwise (channel multiplier c_out / c_in): sum of shifted products
        mult = c_out // group
        a = jnp.repeat(xs, mult, axis=-1) if mult > 1 else xs
        a = lax.pad(a, jnp.float32(0), [(0, 0, 0)] + [(lo, hi, 0) for lo, hi in pads] + [(0, 0, 0)])
        outs = [
            (a.shape[1 + i] - dil[i] * (kernel[i] - 1) - 1) // strides[i] + 1 for i in range(nd)
        ]
        y = None
        for offs in np.ndindex(*kernel):
            start = [0] + [o * d for o, d in zip(offs, dil, strict=False)] + [0]
            limit = (
                [a.shape[0]]
                + [
                    st + s * (n - 1) + 1
                    for st, s, n in zip(start[1:-1], strides, outs, strict=False)
                ]
                + [a.shape[-1]]
            )
            term = lax.slice(a, start, limit, [1] + list(strides) + [1]) * w[offs + (0,)]
            y = term if y is None else y + term
    else:  # grouped: one dense convolution per group
        m = c_out // group
        y = jnp.concatenate(
            [
                conv(xs[..., g * cin_g : (g + 1) * cin_g], w[..., g * m : (g + 1) * m])
                for g in range(group)
            ],
            axis=-1,
        )
    if b is not None:
        y = y + jnp.asarray(b, jnp.float32)
    return [_V(y, True)]


def _op_gemm(ctx: _Ctx, node: Node, args):
    import jax.numpy as jnp

    a = jnp.asarray(_native(args[0]), jnp.float32)
    if a.ndim != 2:
        raise ValueError(f"Gemm node {node.label}: input A must be 2-D, got shape {tuple(a.shape)}")
    if node.attrs.get("transA", 0):
        a = a.T
    bmat, from_params = ctx.weight(node, "kernel", args[1])
    if not from_params:
        bmat = jnp.asarray(_native(args[1]), jnp.float32)
        if node.attrs.get("transB", 0):
            bmat = bmat.T
    y = jnp.matmul(a, bmat, precision=ctx.precision)
    alpha = float(node.attrs.get("alpha", 1.0))
    if alpha != 1.0:
        y = y * alpha
    c, c_from_params = ctx.weight(node, "bias", args[2] if len(args) > 2 else None)
    if c is not None:
        if not c_from_params:
            c = _native(args[2])
        beta = float(node.attrs.get("beta", 1.0))
        c = jnp.asarray(c, jnp.float32)
        y = y + (c * beta if beta != 1.0 else c)
    return [_V(y)]


def _op_matmul(ctx: _Ctx, node: Node, args):
    import jax.numpy as jnp

    a = jnp.asarray(_native(args[0]), jnp.float32)
    bmat, from_params = ctx.weight(node, "kernel", args[1])
    if not from_params:
        bmat = jnp.asarray(_native(args[1]), jnp.float32)
    return [_V(jnp.matmul(a, bmat, precision=ctx.precision))]


def _op_batchnorm(ctx: _Ctx, node: Node, args):
    import jax.numpy as jnp

    if node.attrs.get("training_mode", 0):
        raise ValueError(f"BatchNormalization node {node.label}: training_mode=1 is not supported")
    x = args[0]
    vals = []
    for i, key in enumerate(("scale", "bias", "mean", "var"), start=1):
        v, from_params = ctx.weight(node, key, args[i])
        vals.append(jnp.asarray(v if from_params else _native(args[i]), jnp.float32))
    scale, bias, mean, var = vals
    eps = float(node.attrs.get("epsilon", 1e-5))
    mul = scale / jnp.sqrt(var + eps)
    add = bias - mean * mul
    xx = jnp.asarray(x.x, jnp.float32)
    if x.cl or x.rank <= 2:
        return [_V(xx * mul + add, x.cl)]
    shape = (-1,) + (1,) * (x.rank - 2)
    return [_V(xx * mul.reshape(shape) + add.reshape(shape))]


def _pool_geometry(node: Node, in_sizes):
    kernel = _ints(node.attrs.get("kernel_shape"))
    nd = len(kernel)
    if len(in_sizes) != nd:
        raise ValueError(
            f"{node.op_type} node {node.label}: kernel_shape {kernel} does not fit input"
        )
    strides = _ints(node.attrs.get("strides"), nd, 1)
    dil = _ints(node.attrs.get("dilations"), nd, 1)
    pads = _spatial_pads(node, in_sizes, kernel, strides, dil)
    extra = []
    for L, k, s, d, (lo, hi) in zip(in_sizes, kernel, strides, dil, pads, strict=False):
        eff = d * (k - 1) + 1
        span = L + lo + hi - eff
        if node.attrs.get("ceil_mode", 0):
            out = -(-span // s) + 1
            if (out - 1) * s >= L + lo:  # the last window must start inside the input
                out -= 1
        else:
            out = span // s + 1
        extra.append(max((out - 1) * s + eff - (L + lo + hi), 0))
    return kernel, strides, dil, pads, extra


def _op_maxpool(ctx: _Ctx, node: Node, args):
    import jax.numpy as jnp
    from jax import lax

    if len(node.outputs) > 1 and node.outputs[1]:
        raise ValueError(f"MaxPool node {node.label}: the Indices output is not supported")
    xs = jnp.asarray(_as_cl(args[0]), jnp.float32)
    kernel, strides, dil, pads, extra = _pool_geometry(node, xs.shape[1:-1])
    y = lax.reduce_window(
        xs,
        -jnp.inf,
        lax.max,
        (1, *kernel, 1),
        (1, *strides, 1),
        [(0, 0)] + [(lo, hi + e) for (lo, hi), e in zip(pads, extra, strict=False)] + [(0, 0)],
        window_dilation=(1, *dil, 1),
    )
    return [_V(y, True)]


def _op_avgpool(ctx: _Ctx, node: Node, args):
    import jax.numpy as jnp
    from jax import lax

    xs = jnp.asarray(_as_cl(args[0]), jnp.float32)
    in_sizes = xs.shape[1:-1]
    kernel, strides, dil, pads, extra = _pool_geometry(node, in_sizes)
    win, st, dl = (1, *kernel, 1), (1, *strides, 1), (1, *dil, 1)
    padding = [(0, 0)] + [(lo, hi + e) for (lo, hi), e in zip(pads, extra, strict=False)] + [(0, 0)]
    s = lax.reduce_window(xs, 0.0, lax.add, win, st, padding, window_dilation=dl)
    if node.attrs.get("count_include_pad", 0):  # explicit pads count, the ceil overhang not
        ones = jnp.ones(
            (1, *[L + lo + hi for L, (lo, hi) in zip(in_sizes, pads, strict=False)], 1), jnp.float32
        )
        cnt_pad = [(0, 0)] + [(0, e) for e in extra] + [(0, 0)]
    else:
        ones = jnp.ones((1, *in_sizes, 1), jnp.float32)
        cnt_pad = padding
    cnt = lax.reduce_window(ones, 0.0, lax.add, win, st, cnt_pad, window_dilation=dl)
    return [_V(s / cnt, True)]


def _op_global_pool(ctx: _Ctx, node: Node, args):
    import jax.numpy as jnp

    xs = jnp.asarray(_as_cl(args[0]), jnp.float32)
    axes = tuple(range(1, xs.ndim - 1))
    if node.op_type == "GlobalAveragePool":
        return [_V(jnp.mean(xs, axis=axes, keepdims=True), True)]
    return [_V(jnp.max(xs, axis=axes, keepdims=True), True)]


def _op_reduce(ctx: _Ctx, node: Node, args):
    x = args[0]
    axes = None
    if len(args) > 1 and args[1] is not None:
        axes = [int(a) for a in _const(args[1], "axes", node).ravel()]
    elif "axes" in node.attrs:
        axes = [int(a) for a in node.attrs["axes"]]
    keep = bool(node.attrs.get("keepdims", 1))
    r = x.rank
    if not axes:
        if node.attrs.get("noop_with_empty_axes", 0):
            return [x]
        axes = list(range(r))
    axes = sorted({a % r for a in axes})
    xp = _xp(x)
    fn = {"ReduceMean": xp.mean, "ReduceSum": xp.sum, "ReduceMax": xp.max, "ReduceMin": xp.min}[
        node.op_type
    ]
    if x.cl:
        y = _V(fn(x.x, axis=tuple(_cl_axis(a, r) for a in axes), keepdims=True), True)
        if keep:
            return [y]
        return [_V(xp.squeeze(_native(y), axis=tuple(axes)))]
    return [_V(fn(x.x, axis=tuple(axes), keepdims=keep))]


def _unary(fn_name: str) -> Callable:
    def op(ctx: _Ctx, node: Node, args):
        import jax
        import jax.numpy as jnp

        x = args[0]
        a = jnp.asarray(x.x, jnp.float32)
        at = node.attrs
        if fn_name == "relu":
            y = jnp.maximum(a, 0.0)
        elif fn_name == "sigmoid":
            y = jax.nn.sigmoid(a)
        elif fn_name == "tanh":
            y = jnp.tanh(a)
        elif fn_name == "hardsigmoid":
            y = jnp.clip(float(at.get("alpha", 0.2)) * a + float(at.get("beta", 0.5)), 0.0, 1.0)
        elif fn_name == "hardswish":
            y = a * jnp.clip(a / 6.0 + 0.5, 0.0, 1.0)
        elif fn_name == "leakyrelu":
            y = jnp.where(a >= 0, a, float(at.get("alpha", 0.01)) * a)
        else:  # pragma: no cover - registry and table agree
            raise AssertionError(fn_name)
        return [_V(y, x.cl)]

    return op


def _op_clip(ctx: _Ctx, node: Node, args):
    import jax.numpy as jnp

    x = args[0]
    lo = hi = None
    if len(args) > 1 and args[1] is not None:
        lo = args[1].x
    elif "min" in node.attrs:
        lo = float(node.attrs["min"])
    if len(args) > 2 and args[2] is not None:
        hi = args[2].x
    elif "max" in node.attrs:
        hi = float(node.attrs["max"])
    y = jnp.asarray(x.x)
    if lo is not None:
        y = jnp.maximum(y, jnp.asarray(lo, y.dtype))
    if hi is not None:
        y = jnp.minimum(y, jnp.asarray(hi, y.dtype))
    return [_V(y, x.cl)]


def _op_softmax(ctx: _Ctx, node: Node, args):
    import jax
    import jax.numpy as jnp

    a = jnp.asarray(_native(args[0]), jnp.float32)
    if ctx.opset >= 13:
        return [_V(jax.nn.softmax(a, axis=int(node.attrs.get("axis", -1))))]
    axis = int(node.attrs.get("axis", 1)) % max(a.ndim, 1)
    flat = a.reshape((math.prod(a.shape[:axis]), -1))
    return [_V(jax.nn.softmax(flat, axis=-1).reshape(a.shape))]


def _int_div(a, b):
    q = np.abs(a) // np.abs(b)
    return np.where((a < 0) ^ (b < 0), -q, q).astype(np.result_type(a, b))


_BINARY = {
    "Add": (np.add, "add"),
    "Sub": (np.subtract, "subtract"),
    "Mul": (np.multiply, "multiply"),
    "Div": (None, "divide"),
}


def _op_binary(ctx: _Ctx, node: Node, args):
    import jax.numpy as jnp

    a, b = args
    np_fn, jnp_name = _BINARY[node.op_type]
    if a.const and b.const:
        xa, xb = np.asarray(a.x), np.asarray(b.x)
        if node.op_type == "Div":
            if xa.dtype.kind in "iu" and xb.dtype.kind in "iu":
                return [_V(_int_div(xa, xb))]
            return [_V(np.asarray(xa / xb))]
        return [_V(np.asarray(np_fn(xa, xb)))]
    (xa, xb), cl = _align([a, b])
    return [_V(getattr(jnp, jnp_name)(xa, xb), cl)]


def _op_concat(ctx: _Ctx, node: Node, args):
    import jax.numpy as jnp

    vals = [v for v in args if v is not None]
    axis = int(node.attrs["axis"])
    if all(v.const for v in vals):
        return [_V(np.concatenate([np.asarray(v.x) for v in vals], axis=axis))]
    xs, cl = _align(vals)
    r = vals[0].rank
    return [_V(jnp.concatenate(xs, axis=_cl_axis(axis, r) if cl else axis), cl)]


def _op_reshape(ctx: _Ctx, node: Node, args):
    x = args[0]
    target = [int(e) for e in _const(args[1], "the target shape", node).ravel()]
    shape = x.shape
    allowzero = int(node.attrs.get("allowzero", 0))
    out = [shape[i] if (t == 0 and not allowzero) else t for i, t in enumerate(target)]
    xp = _xp(x)
    return [_V(xp.reshape(_native(x), tuple(out)))]


def _op_flatten(ctx: _Ctx, node: Node, args):
    x = args[0]
    shape = x.shape
    axis = int(node.attrs.get("axis", 1)) % (len(shape) + 1) if shape else 0
    xp = _xp(x)
    return [_V(xp.reshape(_native(x), (math.prod(shape[:axis]), math.prod(shape[axis:]))))]


def _op_transpose(ctx: _Ctx, node: Node, args):
    x = args[0]
    perm = node.attrs.get("perm")
    perm = tuple(int(p) for p in perm) if perm is not None else tuple(reversed(range(x.rank)))
    return [_V(_xp(x).transpose(_native(x), perm))]


def _slice_index(dim: int, start: int, end: int, step: int) -> slice:
    if step == 0:
        raise ValueError("Slice step 0")
    if start < 0:
        start += dim
    if end < 0:
        end += dim
    if step > 0:
        start, end = min(max(start, 0), dim), min(max(end, 0), dim)
        return slice(start, end, step)
    start, end = min(max(start, 0), dim - 1), min(max(end, -1), dim - 1)
    return slice(start, None if end < 0 else end, step)


def _op_slice(ctx: _Ctx, node: Node, args):
    x = args[0]
    if ctx.opset < 10:
        starts = node.attrs["starts"]
        ends = node.attrs["ends"]
        axes = node.attrs.get("axes")
        steps = None
    else:
        starts = _const(args[1], "starts", node).ravel().tolist()
        ends = _const(args[2], "ends", node).ravel().tolist()
        axes = (
            _const(args[3], "axes", node).ravel().tolist()
            if len(args) > 3 and args[3] is not None
            else None
        )
        steps = (
            _const(args[4], "steps", node).ravel().tolist()
            if len(args) > 4 and args[4] is not None
            else None
        )
    r = x.rank
    shape = x.shape
    axes = list(range(len(starts))) if axes is None else [int(a) % r for a in axes]
    steps = [1] * len(starts) if steps is None else steps
    idx = [slice(None)] * r
    for a, s, e, st in zip(axes, starts, ends, steps, strict=False):
        sl = _slice_index(shape[a], int(s), int(e), int(st))
        idx[_cl_axis(a, r) if x.cl else a] = sl
    return [_V(x.x[tuple(idx)], x.cl)]


def _op_split(ctx: _Ctx, node: Node, args):
    x = args[0]
    r = x.rank
    axis = int(node.attrs.get("axis", 0)) % r
    dim = x.shape[axis]
    n = len(node.outputs)
    if len(args) > 1 and args[1] is not None:
        sizes = [int(e) for e in _const(args[1], "split", node).ravel()]
    elif "split" in node.attrs:
        sizes = [int(e) for e in node.attrs["split"]]
    else:
        n = int(node.attrs.get("num_outputs", n))
        size = -(-dim // n)
        sizes = [size] * (n - 1) + [dim - size * (n - 1)]
    if sum(sizes) != dim:
        raise ValueError(f"Split node {node.label}: sizes {sizes} do not add up to {dim}")
    ax = _cl_axis(axis, r) if x.cl else axis
    outs, start = [], 0
    for s in sizes:
        idx = [slice(None)] * r
        idx[ax] = slice(start, start + s)
        outs.append(_V(x.x[tuple(idx)], x.cl))
        start += s
    return outs


def _op_pad(ctx: _Ctx, node: Node, args):
    import jax.numpy as jnp
    from jax import lax

    x = args[0]
    r = x.rank
    mode = node.attrs.get("mode", "constant")
    if ctx.opset < 11:
        pads = [int(p) for p in node.attrs["pads"]]
        value = float(node.attrs.get("value", 0.0))
        axes = list(range(r))
    else:
        pads = [int(p) for p in _const(args[1], "pads", node).ravel()]
        value = 0.0
        if len(args) > 2 and args[2] is not None and np.size(args[2].x):
            value = float(np.asarray(_const(args[2], "constant_value", node)).ravel()[0])
        axes = list(range(r))
        if len(args) > 3 and args[3] is not None:
            axes = [int(a) % r for a in _const(args[3], "axes", node).ravel()]
    k = len(axes)
    per_axis = [(0, 0)] * r
    for i, a in enumerate(axes):
        per_axis[_cl_axis(a, r) if x.cl else a] = (pads[i], pads[i + k])
    a = jnp.asarray(x.x)
    if mode == "constant":
        y = lax.pad(a, jnp.asarray(value, a.dtype), [(lo, hi, 0) for lo, hi in per_axis])
    elif mode in ("reflect", "edge", "wrap"):
        if any(lo < 0 or hi < 0 for lo, hi in per_axis):
            raise ValueError(f"Pad node {node.label}: negative pads need mode 'constant'")
        y = jnp.pad(a, per_axis, mode=mode)
    else:
        raise ValueError(f"Pad node {node.label}: unknown mode {mode!r}")
    return [_V(y, x.cl)]


def _op_identity(ctx: _Ctx, node: Node, args):
    if node.op_type == "Dropout" and len(node.outputs) > 1 and node.outputs[1]:
        raise ValueError(f"Dropout node {node.label}: the mask output is not supported")
    return [args[0]]


def _op_constant(ctx: _Ctx, node: Node, args):
    at = node.attrs
    if "value" in at:
        return [_V(np.asarray(at["value"]))]
    if "value_float" in at:
        return [_V(np.asarray(at["value_float"], np.float32))]
    if "value_floats" in at:
        return [_V(np.asarray(at["value_floats"], np.float32))]
    if "value_int" in at:
        return [_V(np.asarray(at["value_int"], np.int64))]
    if "value_ints" in at:
        return [_V(np.asarray(at["value_ints"], np.int64))]
    raise ValueError(f"Constant node {node.label}: unsupported value attribute {sorted(at)}")


def _op_shape(ctx: _Ctx, node: Node, args):
    shape = args[0].shape
    start = int(node.attrs.get("start", 0))
    end = node.attrs.get("end")
    sl = shape[start:] if end is None else shape[start : int(end)]
    return [_V(np.asarray(sl, np.int64))]


def _op_gather(ctx: _Ctx, node: Node, args):
    import jax.numpy as jnp

    x, ind = args
    axis = int(node.attrs.get("axis", 0)) % x.rank
    dim = x.shape[axis]
    if ind.const:
        idx = np.asarray(ind.x).astype(np.int64)
        idx = np.where(idx < 0, idx + dim, idx)
        if x.const:
            return [_V(np.take(np.asarray(x.x), idx, axis=axis))]
        return [_V(jnp.take(_native(x), jnp.asarray(idx, jnp.int32), axis=axis))]
    i = jnp.asarray(ind.x)
    i = jnp.where(i < 0, i + dim, i)
    return [_V(jnp.take(jnp.asarray(_native(x)), i, axis=axis))]


def _axes_arg(ctx: _Ctx, node: Node, args, *, opset_inputs: int = 13) -> list[int] | None:
    if ctx.opset >= opset_inputs:
        if len(args) > 1 and args[1] is not None:
            return [int(a) for a in _const(args[1], "axes", node).ravel()]
        return None
    a = node.attrs.get("axes")
    return None if a is None else [int(e) for e in a]


def _op_unsqueeze(ctx: _Ctx, node: Node, args):
    x = args[0]
    axes = _axes_arg(ctx, node, args)
    if axes is None:
        raise ValueError(f"Unsqueeze node {node.label}: axes missing")
    shape = list(x.shape)
    r = len(shape) + len(axes)
    for a in sorted(a % r for a in axes):
        shape.insert(a, 1)
    return [_V(_xp(x).reshape(_native(x), tuple(shape)))]


def _op_squeeze(ctx: _Ctx, node: Node, args):
    x = args[0]
    axes = _axes_arg(ctx, node, args)
    shape = x.shape
    r = len(shape)
    drop = {i for i, s in enumerate(shape) if s == 1} if axes is None else {a % r for a in axes}
    for a in drop:
        if shape[a] != 1:
            raise ValueError(f"Squeeze node {node.label}: axis {a} has size {shape[a]}, not 1")
    new = tuple(s for i, s in enumerate(shape) if i not in drop)
    return [_V(_xp(x).reshape(_native(x), new))]


def _op_cast(ctx: _Ctx, node: Node, args):
    import jax.numpy as jnp

    x = args[0]
    dt = _np_dtype_for(int(node.attrs["to"]))
    if x.const:
        return [_V(np.asarray(x.x).astype(dt))]
    import jax

    return [_V(jnp.asarray(x.x).astype(jax.dtypes.canonicalize_dtype(dt)), x.cl)]


_OPS: dict[str, Callable] = {
    "Conv": _op_conv,
    "Gemm": _op_gemm,
    "MatMul": _op_matmul,
    "BatchNormalization": _op_batchnorm,
    "Relu": _unary("relu"),
    "Sigmoid": _unary("sigmoid"),
    "Tanh": _unary("tanh"),
    "HardSigmoid": _unary("hardsigmoid"),
    "HardSwish": _unary("hardswish"),
    "LeakyRelu": _unary("leakyrelu"),
    "Clip": _op_clip,
    "Softmax": _op_softmax,
    "Add": _op_binary,
    "Sub": _op_binary,
    "Mul": _op_binary,
    "Div": _op_binary,
    "Concat": _op_concat,
    "Reshape": _op_reshape,
    "Flatten": _op_flatten,
    "Transpose": _op_transpose,
    "Slice": _op_slice,
    "Split": _op_split,
    "MaxPool": _op_maxpool,
    "AveragePool": _op_avgpool,
    "GlobalAveragePool": _op_global_pool,
    "GlobalMaxPool": _op_global_pool,
    "ReduceMean": _op_reduce,
    "ReduceSum": _op_reduce,
    "ReduceMax": _op_reduce,
    "ReduceMin": _op_reduce,
    "Pad": _op_pad,
    "Identity": _op_identity,
    "Dropout": _op_identity,
    "Constant": _op_constant,
    "Shape": _op_shape,
    "Gather": _op_gather,
    "Unsqueeze": _op_unsqueeze,
    "Squeeze": _op_squeeze,
    "Cast": _op_cast,
}

#: The ONNX operators (default domain) this module runs.
SUPPORTED_OPS: tuple[str, ...] = tuple(sorted(_OPS))

# op type -> (input index, params key) of the inputs that become parameters
_WEIGHT_INPUTS = {
    "Conv": ((1, "kernel"), (2, "bias")),
    "Gemm": ((1, "kernel"), (2, "bias")),
    "MatMul": ((1, "kernel"),),
    "BatchNormalization": ((1, "scale"), (2, "bias"), (3, "mean"), (4, "var")),
}


# --------------------------------------------------------------------------- the model


@dataclass(eq=False)
class OnnxModel:
    """An ONNX graph ready to run in JAX (see the module docstring).

    Attributes:
      params: nested dict ``{node_name: {"kernel": ..., "bias": ...}}`` of float32 arrays.
      apply: jitted ``(params, x) -> y``; ``x`` in the graph's layout (NCHW for image
        models), ``y`` the graph output (a tuple when there are several).
      apply_nhwc: jitted ``(params, x) -> y`` with ``x`` ``(N, H, W, C)``.
      input_name: the graph input's name.
      input_shape: its declared shape, ``None`` for symbolic dims (e.g. the batch).
      input_dtype: its declared numpy dtype (``apply`` itself computes in float32).
      output_names: the graph outputs' names.
      nodes: the graph's nodes in order (:class:`Node`).
      constants: initializers that are not parameters, float32 / integer numpy arrays.
      slots: how parameters map to initializers (:class:`WeightSlot`), for :func:`save_onnx`.
      opset: the default-domain opset version.
      proto: the parsed ``onnx.ModelProto`` (as read, not modified).
      path: the file read, or None.
    """

    params: dict[str, dict[str, Any]]
    apply: Callable[[Any, Any], Any]
    apply_nhwc: Callable[[Any, Any], Any]
    input_name: str
    input_shape: tuple[int | None, ...]
    input_dtype: np.dtype
    output_names: tuple[str, ...]
    nodes: tuple[Node, ...]
    constants: dict[str, np.ndarray]
    slots: tuple[WeightSlot, ...]
    opset: int
    proto: Any = field(repr=False)
    path: Path | None = None

    def __call__(self, x, params: Any = None):
        """``apply(params or self.params, x)``."""
        return self.apply(self.params if params is None else params, x)

    def __repr__(self) -> str:
        n = sum(int(np.size(v)) for d in self.params.values() for v in d.values())
        return (
            f"OnnxModel({self.path.name if self.path else '<proto>'}: input {self.input_name!r} "
            f"{self.input_shape}, {len(self.nodes)} nodes, {len(self.params)} weighted nodes, "
            f"{n:,} parameters)"
        )


def _read_model(source) -> tuple[Any, Path | None]:
    onnx = _onnx()
    if isinstance(source, onnx.ModelProto):
        return source, None
    if isinstance(source, bytes | bytearray):
        try:
            return onnx.load_model_from_string(bytes(source)), None
        except Exception as e:  # noqa: BLE001 - the parser raises several types
            raise ValueError(
                f"bytes given are not an ONNX model ({type(e).__name__}: {e})"
            ) from None
    path = Path(os.fspath(source)).expanduser()
    if not path.exists():
        raise ValueError(f"ONNX file not found: {path}")
    if not path.is_file():
        raise ValueError(f"{path} is not a file (expected an .onnx model file)")
    try:
        proto = onnx.load(str(path))
    except Exception as e:  # noqa: BLE001 - the parser raises several types
        raise ValueError(f"{path} is not a readable ONNX model ({type(e).__name__}: {e})") from None
    if not proto.HasField("graph") or not proto.graph.node:
        raise ValueError(f"{path} is not an ONNX model (no graph nodes)")
    return proto, path


def load_onnx(
    source: str | os.PathLike | bytes | Any,
    *,
    precision: str = "highest",
    conv_impl: str = "auto",
    check: bool = True,
) -> OnnxModel:
    """Read an ONNX model and build its JAX function and parameter tree.

    Args:
      source: path of an ``.onnx`` file, its bytes, or an ``onnx.ModelProto``.
      precision: matmul / convolution precision passed to XLA (``"highest"`` gives float32
        accuracy on every backend; ``"default"`` lets GPUs use TF32 / bf16 passes).
      conv_impl: how convolutions run: ``"auto"`` (``"cpu"`` on a CPU backend, else
        ``"xla"``), ``"xla"`` (``lax.conv_general_dilated`` throughout, grouped ones with
        ``feature_group_count``) or ``"cpu"`` (the forms above, faster on XLA:CPU). Both give
        the ONNX result.
      check: trace the graph once with the declared input shape (symbolic dims set to 1) so
        that shape errors surface now, not at the first call.

    Returns:
      :class:`OnnxModel`.

    Raises:
      ValueError: missing or unreadable file, unsupported operator (``"unsupported ONNX
        operator 'X' (node N)"``), not exactly one graph input, shapes that depend on
        input values.
    """
    import jax
    import jax.numpy as jnp

    onnx = _onnx()
    if precision not in ("highest", "high", "default"):
        raise ValueError(f"precision must be 'highest', 'high' or 'default', got {precision!r}")
    if conv_impl not in ("auto", "xla", "cpu"):
        raise ValueError(f"conv_impl must be 'auto', 'xla' or 'cpu', got {conv_impl!r}")
    proto, path = _read_model(source)
    where = path.name if path is not None else "model"
    g = proto.graph
    opset = next((int(o.version) for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    raw_nodes = list(g.node)
    for i, n in enumerate(raw_nodes):
        label = repr(n.name) if n.name else f"#{i}"
        if n.domain not in ("", "ai.onnx") or n.op_type not in _OPS:
            op = n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}"
            raise ValueError(f"unsupported ONNX operator {op!r} (node {label})")
    if len(g.sparse_initializer):
        raise ValueError(f"{where}: sparse initializers are not supported")

    inits = {t.name: t for t in g.initializer}
    # Constant nodes holding a tensor can hold weights too (some exporters write them so)
    const_nodes = {
        n.output[0]: (i, a.t)
        for i, n in enumerate(raw_nodes)
        if n.op_type == "Constant"
        for a in n.attribute
        if a.name == "value" and a.type == onnx.AttributeProto.TENSOR
    }
    consumers: dict[str, int] = {}
    for n in raw_nodes:
        for name in n.input:
            if name:
                consumers[name] = consumers.get(name, 0) + 1
    for o in g.output:
        consumers[o.name] = consumers.get(o.name, 0) + 1

    names = _unique_names([(n.name, n.op_type) for n in raw_nodes])
    params: dict[str, dict[str, Any]] = {}
    slots: list[WeightSlot] = []
    claimed: set[str] = set()
    nodes: list[Node] = []
    for i, (n, nm) in enumerate(zip(raw_nodes, names, strict=False)):
        attrs = {a.name: _attr_value(a) for a in n.attribute}
        weights: dict[str, str] = {}
        for idx, key in _WEIGHT_INPUTS.get(n.op_type, ()):
            if idx >= len(n.input):
                continue
            iname = n.input[idx]
            if not iname or consumers.get(iname, 0) != 1 or iname in claimed:
                continue
            if iname in inits:
                t, cnode = inits[iname], None
            elif iname in const_nodes:
                cnode, t = const_nodes[iname]
            else:
                continue
            if t.data_type not in _FLOAT_TYPES:
                continue
            a = _to_numpy(t)
            if n.op_type == "Conv" and key == "kernel":
                if a.ndim < 3:
                    continue
                layout = "conv"
                a = a.transpose(tuple(range(2, a.ndim)) + (1, 0))
            elif key == "kernel" and n.op_type in ("Gemm", "MatMul"):
                if a.ndim != 2:
                    continue
                layout = "transpose" if (n.op_type == "Gemm" and attrs.get("transB", 0)) else "same"
                if layout == "transpose":
                    a = a.T
            else:
                layout = "same"
            params.setdefault(nm, {})[key] = np.ascontiguousarray(a, np.float32)
            weights[key] = iname
            claimed.add(iname)
            slots.append(
                WeightSlot(
                    iname, nm, key, layout, tuple(int(d) for d in t.dims), int(t.data_type), cnode
                )
            )
        nodes.append(
            Node(
                index=i,
                name=nm,
                onnx_name=n.name,
                op_type=n.op_type,
                inputs=tuple(n.input),
                outputs=tuple(n.output),
                attrs=attrs,
                weights=weights,
            )
        )
    constants = {k: _to_numpy(t) for k, t in inits.items() if k not in claimed}

    real_inputs = [v for v in g.input if v.name not in inits]
    if len(real_inputs) != 1:
        raise ValueError(
            f"{where}: expected exactly one graph input, found {len(real_inputs)} "
            f"({', '.join(v.name for v in real_inputs)})"
        )
    inp = real_inputs[0]
    tt = inp.type.tensor_type
    in_shape = tuple((int(d.dim_value) if d.HasField("dim_value") else None) for d in tt.shape.dim)
    in_dtype = (
        np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type))
        if tt.elem_type
        else np.dtype(np.float32)
    )
    input_name = inp.name
    output_names = tuple(o.name for o in g.output)
    prec = {
        "highest": jax.lax.Precision.HIGHEST,
        "high": jax.lax.Precision.HIGH,
        "default": jax.lax.Precision.DEFAULT,
    }[precision]
    impl = conv_impl
    if impl == "auto":
        impl = "cpu" if jax.default_backend() == "cpu" else "xla"
    # Constant nodes whose value went into params need not run
    nodes_t = tuple(n for n in nodes if not (n.op_type == "Constant" and n.outputs[0] in claimed))
    const_vals = dict(constants)
    claimed_t = frozenset(claimed)

    def run(params, x, channels_last: bool):
        ctx = _Ctx(params, opset=opset, precision=prec, conv_impl=impl)
        x = jnp.asarray(x)
        if x.dtype != jnp.float32 and jnp.issubdtype(x.dtype, jnp.floating):
            x = x.astype(jnp.float32)
        env: dict[str, _V] = {k: _V(v) for k, v in const_vals.items()}
        env.update({k: _V(None) for k in claimed_t})  # read from params by their nodes
        env[input_name] = _V(x, channels_last and x.ndim >= 3)
        for node in nodes_t:
            try:
                args = [env[name] if name else None for name in node.inputs]
            except KeyError as e:
                raise ValueError(
                    f"{node.op_type} node {node.label}: input {e.args[0]!r} is not produced by the graph"
                ) from None
            try:
                outs = _OPS[node.op_type](ctx, node, args)
            except ValueError:
                raise
            except Exception as e:  # noqa: BLE001 - name the node in every failure
                raise ValueError(
                    f"{node.op_type} node {node.label}: {type(e).__name__}: {e}"
                ) from e
            for name, v in zip(node.outputs, outs, strict=False):
                if name:
                    env[name] = v
        ys = [jnp.asarray(_native(env[name])) for name in output_names]
        return ys[0] if len(ys) == 1 else tuple(ys)

    apply = jax.jit(lambda params, x: run(params, x, False))
    apply.__doc__ = "(params, x: (N, C, H, W) float) -> graph output, float32 (jitted)."

    def _nhwc(params, x):
        x = jnp.asarray(x)
        if x.ndim < 3:
            raise ValueError(f"apply_nhwc expects (N, ..., C), got shape {tuple(x.shape)}")
        return run(params, x, True)

    apply_nhwc = jax.jit(_nhwc)
    model = OnnxModel(
        params=params,
        apply=apply,
        apply_nhwc=apply_nhwc,
        input_name=input_name,
        input_shape=in_shape,
        input_dtype=in_dtype,
        output_names=output_names,
        nodes=nodes_t,
        constants=constants,
        slots=tuple(slots),
        opset=opset,
        proto=proto,
        path=path,
    )
    if check and in_shape and all(d is not None for d in in_shape[1:]):
        shape = tuple(1 if d is None else d for d in in_shape)
        jax.eval_shape(apply, params, jax.ShapeDtypeStruct(shape, jnp.float32))
    return model


# --------------------------------------------------------------------------- export


def _float32_graph(proto) -> None:
    """Make every float tensor of ``proto`` float32 in place (initializers, Constant values,
    Cast targets, graph inputs / outputs / value_info)."""
    onnx = _onnx()
    FLOAT = onnx.TensorProto.FLOAT
    narrow = {onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}

    def fix_tensor(t):
        if t.data_type in narrow:
            a = _to_numpy(t)
            t.CopyFrom(onnx.numpy_helper.from_array(a, t.name))

    g = proto.graph
    for t in g.initializer:
        fix_tensor(t)
    for n in g.node:
        for a in n.attribute:
            if a.type == onnx.AttributeProto.TENSOR:
                fix_tensor(a.t)
            elif n.op_type == "Cast" and a.name == "to" and a.i in narrow:
                a.i = FLOAT
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        tt = vi.type.tensor_type
        if tt.elem_type in narrow:
            tt.elem_type = FLOAT


def save_onnx(
    model: OnnxModel,
    params: Mapping[str, Mapping[str, Any]],
    path: str | os.PathLike,
    *,
    dtype: str = "float32",
) -> Path:
    """Write ``model``'s graph with the weights of ``params`` (e.g. quantized) into ``path``.

    Each parameter goes back into its initializer in the ONNX layout (Conv kernels
    ``(*k, in/group, out)`` -> ``(out, in/group, *k)``, Gemm ``transB`` kernels transposed
    back). Everything else (nodes, attributes, other initializers) is written unchanged.

    Args:
      model: from :func:`load_onnx`.
      params: a tree with the structure and shapes of ``model.params``.
      path: the ``.onnx`` file to write (parent folders are created).
      dtype: ``"float32"``: the whole graph in float32 (float16 / float64 initializers,
        Constant values, Cast targets, inputs and outputs converted), so the written weights
        are exactly ``params``; ``"original"``: each parameter in its initializer's original
        type (float16 weights are rounded to float16), the rest of the graph unchanged.

    Returns:
      The written path.
    """
    onnx = _onnx()
    if dtype not in ("float32", "original"):
        raise ValueError(f"dtype must be 'float32' or 'original', got {dtype!r}")
    proto = copy.deepcopy(model.proto)
    if dtype == "float32":
        _float32_graph(proto)
    by_name = {t.name: t for t in proto.graph.initializer}
    for s in model.slots:
        if s.constant_node is not None:
            by_name[s.initializer] = next(
                a.t for a in proto.graph.node[s.constant_node].attribute if a.name == "value"
            )
    for s in model.slots:
        try:
            a = np.asarray(params[s.node][s.key], np.float32)
        except (KeyError, TypeError, IndexError):
            raise ValueError(
                f"params has no entry {s.node}/{s.key} (initializer {s.initializer!r})"
            ) from None
        want = tuple(np.shape(model.params[s.node][s.key]))
        if a.shape != want:
            raise ValueError(f"params {s.node}/{s.key} has shape {a.shape}, the model needs {want}")
        if s.layout == "conv":
            r = a.ndim
            a = a.transpose((r - 1, r - 2) + tuple(range(r - 2)))
        elif s.layout == "transpose":
            a = a.T
        a = np.ascontiguousarray(a.reshape(s.onnx_shape))
        if dtype == "original":
            a = a.astype(onnx.helper.tensor_dtype_to_np_dtype(s.onnx_dtype))
        t = by_name[s.initializer]
        t.CopyFrom(onnx.numpy_helper.from_array(a, t.name))
    out = Path(os.fspath(path)).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(out))
    return out
