"""Layer graphs of trained CNNs, traced from the model itself (no hand-written topology).

A :class:`Graph` is the ordered list of a network's operations as the data-free repairs
(:mod:`paper_repro.feedforward.repairs`) need them: which kernel feeds which batch norm, what
lies between two layers, where branches split and join. Nodes are

- layers: ``conv``, ``depthwise``, ``grouped``, ``dense`` and ``separable`` (a depthwise
  kernel then a 1x1 pointwise kernel in one module), each with the parameter paths of its
  kernels and bias (``"conv1/kernel"``, the ``/``-joined paths of
  :func:`paper_repro.core.quantize.tree_paths`);
- ``bn``: inference batch norm (its parameter group holds ``moving_mean``/``moving_variance``);
- ``act``: an elementwise function of one tensor, classified by probing it as ``relu``,
  ``relu6``, ``hard_swish``, ``hard_sigmoid``, ``sigmoid``, ``silu``, ``tanh``,
  ``identity``, ``affine`` or ``elementwise`` (anything else);
- joins and data movement: ``add``, ``sub``, ``mul`` (two tensors), ``concat``, ``slice``
  (channel split), ``reshape``, ``transpose`` (channel shuffle), ``pad``, ``maxpool``,
  ``sumpool``, ``avgpool``, ``sum`` / ``mean`` / ``max`` (reductions, e.g. global pooling).

Every node carries ``fn(values, *inputs) -> output``: its own computation on batched arrays,
``values`` a flat ``{path: array}`` of the parameters, so that moments, shifts and bounds are
computed by running the node itself (with squared or quantized kernels where needed).
:meth:`Graph.apply` runs the whole graph and reproduces the model's output.

Sources:

- :func:`trace` (Flax / any JAX function ``apply_fn(params, x)``): the jaxpr of one call,
  with nested calls inlined. A layer is the set of operations under the module's name scope
  (Flax names every module call; the scope's components match the parameter group's path),
  or, without scopes, the operations that read the group's parameters. Everything outside
  layers becomes activation and join nodes.
- :func:`from_onnx` (an ONNX node list: op types, inputs, outputs, attributes; kernels in
  ``HWIO`` / ``(in, out)`` layout in a ``{node: {"kernel", "bias"}}`` tree): one node per
  ONNX operation, computed here in the ONNX layout (NCHW). :func:`load_onnx_graph` reads an
  ``.onnx`` file into such a tree.

Layer tables (:func:`layer_table`) summarise the wiring per kernel: the batch norm and
activation after it, the layers feeding it (through joins), its stride and total zero padding.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend.core import Literal as _Literal  # noqa: E402

from paper_repro.core import quantize as Q

LAYER_OPS = ("conv", "depthwise", "grouped", "dense", "separable")
BN_VARS = ("moving_mean", "moving_variance")
_CALLS = ("pjit", "jit", "closed_call", "core_call", "custom_jvp_call", "custom_vjp_call",
          "custom_vjp_call_jaxpr", "remat", "checkpoint", "remat2")
_ELEMENTWISE = frozenset((
    "add", "sub", "mul", "div", "max", "min", "neg", "abs", "exp", "exp2", "log", "log1p",
    "expm1", "logistic", "tanh", "sqrt", "rsqrt", "cbrt", "integer_pow", "pow", "square",
    "convert_element_type", "copy", "copy_p", "select_n", "clamp", "sign", "erf", "erfc",
    "floor", "ceil", "round", "reduce_precision", "stop_gradient", "sin", "cos"))
_MOVES = {"reshape": "reshape", "squeeze": "reshape", "expand_dims": "reshape",
          "broadcast_in_dim": "reshape", "transpose": "transpose", "slice": "slice",
          "concatenate": "concat", "pad": "pad", "rev": "reverse",
          "reduce_window_max": "maxpool", "reduce_window_sum": "sumpool",
          "reduce_sum": "sum", "reduce_max": "max"}


@dataclasses.dataclass(frozen=True, eq=False)
class Node:
    """One operation of a :class:`Graph`.

    ``name``: unique (a layer or batch norm is named by its parameter group, other nodes
    ``<op>_<k>``); ``op``: see the module docstring; ``inputs``: producer node names
    (``"input"`` is the network input); ``group``: parameter group path (layers, ``bn``);
    ``kernels`` / ``bias``: full parameter paths; ``act``: the function class of an ``act``
    node; ``attrs``: ``in_shapes``, ``out_shape`` (batched), ``strides`` / ``padding`` (spatial
    axes, explicit ``(lo, hi)`` zero padding) for convolutions and pools, ``eps`` for batch
    norms, ``value`` for pads, ``in_axis`` / ``out_axis`` (kernel axes of input and output
    channels); ``fn(values, *inputs)``: the computation, ``values`` a flat ``{path: array}``.
    """

    name: str
    op: str
    inputs: tuple[str, ...]
    fn: Callable = dataclasses.field(repr=False)
    group: str | None = None
    kernels: tuple[str, ...] = ()
    bias: str | None = None
    act: str | None = None
    attrs: Mapping[str, Any] = dataclasses.field(default_factory=dict, repr=False)
    reads: tuple[str, ...] = ()

    def __post_init__(self):
        if not self.reads:
            reads = getattr(self.fn, "reads", None)
            if reads is None:
                reads = self.kernels + ((self.bias,) if self.bias else ()) + tuple(
                    self.attrs.get("bn_vars", {}).values())
            object.__setattr__(self, "reads", tuple(reads))

    @property
    def is_layer(self) -> bool:
        return self.op in LAYER_OPS

    @property
    def out_shape(self) -> tuple[int, ...]:
        return tuple(self.attrs["out_shape"])


@dataclasses.dataclass(eq=False)
class Graph:
    """A traced network: ``nodes`` in a topological order, the input's batched shape, the
    output node, the channel axis of activations (``-1`` NHWC for the Keras ports, ``1`` NCHW
    for ONNX), the parameter paths, and where it came from (``"jaxpr"`` or ``"onnx"``).

    ``bias_creatable``: whether a ``bias`` leaf added to a bias-free layer's group is read by
    the model (ONNX convolutions: yes; Flax modules built with ``use_bias=False``: no).
    """

    nodes: list[Node]
    input_shape: tuple[int, ...]
    output: str
    channel_axis: int
    paths: tuple[str, ...]
    source: str
    bias_creatable: bool = False

    def __post_init__(self):
        self.by_name = {n.name: n for n in self.nodes}
        if len(self.by_name) != len(self.nodes):
            raise ValueError("two graph nodes share a name")
        cons: dict[str, list[str]] = {n.name: [] for n in self.nodes}
        cons["input"] = []
        for n in self.nodes:
            for i in n.inputs:
                cons[i].append(n.name)
        self._consumers = cons

    def __getitem__(self, name: str) -> Node:
        return self.by_name[name]

    @property
    def layers(self) -> list[Node]:
        return [n for n in self.nodes if n.is_layer]

    def consumers(self, name: str) -> list[str]:
        """Names of the nodes reading ``name``'s output (``"input"``: the network input)."""
        return list(self._consumers[name])

    def kernel_paths(self) -> list[str]:
        """Every layer kernel's parameter path, in graph order."""
        return [k for n in self.layers for k in n.kernels]

    def layer_of(self, path: str) -> Node:
        """The layer node owning kernel ``path``; ``KeyError`` if none."""
        for n in self.layers:
            if path in n.kernels:
                return n
        raise KeyError(f"no layer of the graph owns {path!r}")

    def apply(self, params, x, *, capture: bool = False):
        """Run the graph: ``x`` batched input (any batch size) -> output; with
        ``capture=True`` also ``{node: output}`` of every node. NumPy input runs in NumPy
        (float64, nothing compiled); JAX input (or under ``jax.jit``) through JAX."""
        values = flat_values(params)
        numpy = isinstance(x, np.ndarray)
        if self.source == "jaxpr" and x.shape[0] != self.input_shape[0]:
            # traced at a fixed batch: run one example at a time
            if numpy:
                res = [self._run(values, x[i:i + 1], capture) for i in range(x.shape[0])]
                out = np.concatenate([r[0] for r in res])
                env = {k: np.concatenate([r[1][k] for r in res]) for k in res[0][1]}
                return (out, env) if capture else out

            def one(xi):
                out, env = self._run(values, xi[None], True)
                return out[0], {k: v[0] for k, v in env.items()}

            out, env = jax.vmap(one)(jnp.asarray(x))
            return (out, env) if capture else out
        out, env = self._run(values, x if numpy else jnp.asarray(x), capture)
        return (out, env) if capture else out

    def _run(self, values, x, capture):
        env = {"input": x}
        remaining = {n.name: len(self._consumers[n.name]) for n in self.nodes}
        remaining["input"] = len(self._consumers["input"])
        keep: dict[str, Any] = {}
        for n in self.nodes:
            env[n.name] = n.fn(values, *(env[i] for i in n.inputs))
            if capture:
                keep[n.name] = env[n.name]
            if not capture:
                for i in n.inputs:
                    remaining[i] -= 1
                    if remaining[i] == 0 and i != self.output:
                        env.pop(i, None)
        return env[self.output], keep

    def summary(self) -> list[dict]:
        """One JSON-able dict per node: name, op, inputs, act, kernels, bias, out_shape."""
        return [{"name": n.name, "op": n.op, "inputs": list(n.inputs), "act": n.act,
                 "kernels": list(n.kernels), "bias": n.bias,
                 "out_shape": list(n.attrs.get("out_shape", ()))} for n in self.nodes]


def flat_values(params) -> dict[str, Any]:
    """``{path: array}`` of a parameter tree (a flat dict is returned as is)."""
    if isinstance(params, Mapping) and params and all(
            not isinstance(v, Mapping) for v in params.values()) and any(
            "/" in k for k in params):
        return dict(params)
    return dict(Q.tree_paths(params))


def groups_of(paths: Sequence[str]) -> dict[str, dict[str, str]]:
    """``{group: {var: path}}``: parameter paths grouped by everything before the last ``/``."""
    out: dict[str, dict[str, str]] = {}
    for p in paths:
        g, _, var = p.rpartition("/")
        out.setdefault(g, {})[var] = p
    return out


# --- Tracing JAX / Flax models ------------------------------------------------------------------


class _Val:
    """A constant operand (literal or closed-over array)."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value


@dataclasses.dataclass
class _Eq:
    prim: Any
    params: dict
    ins: list  # int ids or _Val
    outs: list[int]
    scope: tuple[str, ...]


def _sub_jaxpr(eqn):
    if eqn.primitive.name not in _CALLS:
        return None
    for key in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
        j = eqn.params.get(key)
        if j is None:
            continue
        if hasattr(j, "jaxpr") and hasattr(j, "consts"):
            return j.jaxpr, list(j.consts)
        if hasattr(j, "eqns"):
            return j, []
    return None


def _inline(jaxpr, consts, args, scope, out: list[_Eq], avals: dict, counter: list[int]):
    env: dict[Any, Any] = {}
    for v, c in zip(jaxpr.constvars, consts):
        env[v] = _Val(c)
    for v, a in zip(jaxpr.invars, args):
        env[v] = a

    def read(a):
        if isinstance(a, _Literal):
            return _Val(a.val)
        return env[a]

    for e in jaxpr.eqns:
        ins = [read(a) for a in e.invars]
        stack = tuple(c for c in str(e.source_info.name_stack).split("/") if c)
        sc = scope + stack
        sub = _sub_jaxpr(e)
        if sub is not None and len(sub[0].invars) == len(ins):
            res = _inline(sub[0], sub[1], ins, sc, out, avals, counter)
            for v, r in zip(e.outvars, res):
                env[v] = r
            continue
        outs = []
        for v in e.outvars:
            counter[0] += 1
            outs.append(counter[0])
            avals[counter[0]] = v.aval
            env[v] = counter[0]
        out.append(_Eq(e.primitive, dict(e.params), ins, outs, sc))
    return [read(a) for a in jaxpr.outvars]


def _bind(eq: _Eq, args):
    res = eq.prim.bind(*args, **eq.params)
    return res if eq.prim.multiple_results else [res]


# --- NumPy evaluation of traced operations (no compilation: moments, shifts, bounds) ------------


def np_conv(x, k, *, strides, padding, rhs_dilation=None, groups: int = 1,
            spec: tuple = ((0, 1, 2, 3), (0, 1, 2, 3), (0, 1, 2, 3))) -> np.ndarray:
    """``lax.conv_general_dilated`` in NumPy (float64). ``spec``: ``(lhs, rhs, out)`` dimension
    specs as in ``ConvDimensionNumbers`` (``(batch, feature, *spatial)`` positions of the
    input, ``(out, in, *spatial)`` of the kernel, ``(batch, feature, *spatial)`` of the
    output); ``padding``: explicit ``(lo, hi)`` pairs (negative crops)."""
    lhs, rhs, outs = spec
    x = np.transpose(np.asarray(x, np.float64), lhs)
    w = np.transpose(np.asarray(k, np.float64), rhs)
    nd = x.ndim - 2
    dil = tuple(rhs_dilation or (1,) * nd)
    x = _np_pad(x, [(0, 0), (0, 0)] + [tuple(p) for p in padding])
    n, c = x.shape[:2]
    o, cin_g = w.shape[:2]
    kern = w.shape[2:]
    out_sp = [(x.shape[2 + i] - dil[i] * (kern[i] - 1) - 1) // strides[i] + 1 for i in range(nd)]
    y = np.zeros((n, o) + tuple(out_sp))
    cout_g = o // groups
    for t in np.ndindex(*kern):
        idx = (slice(None), slice(None)) + tuple(
            slice(t[i] * dil[i], t[i] * dil[i] + strides[i] * (out_sp[i] - 1) + 1, strides[i])
            for i in range(nd))
        xt = x[idx]
        wt = w[(slice(None), slice(None)) + t]  # (O, cin_g)
        if groups == 1:
            y += np.moveaxis(np.tensordot(wt, xt, axes=([1], [1])), 0, 1)
        elif cin_g == 1 and cout_g == 1:
            y += xt * wt[:, 0].reshape((1, -1) + (1,) * nd)
        else:
            xg = xt.reshape((n, groups, cin_g) + xt.shape[2:])
            wg = wt.reshape(groups, cout_g, cin_g)
            y += np.einsum("ngc...,goc->ngo...", xg, wg).reshape(y.shape)
    return np.transpose(y, np.argsort(outs))


def _np_pad(x, pads, value=0.0):
    pos = [(max(lo, 0), max(hi, 0)) for lo, hi in pads]
    x = np.pad(x, pos, constant_values=value)
    idx = tuple(slice(-min(lo, 0), x.shape[i] - (-min(hi, 0)) if hi < 0 else None)
                for i, (lo, hi) in enumerate(pads))
    return x[idx]


def np_reduce_window(x, init, op, window, strides, padding, dilation=None) -> np.ndarray:
    """``lax.reduce_window`` with ``op`` ``np.maximum`` / ``np.add`` in NumPy."""
    x = _np_pad(np.asarray(x, np.float64), [tuple(p) for p in padding], init)
    dil = tuple(dilation or (1,) * x.ndim)
    outs = [(x.shape[i] - dil[i] * (window[i] - 1) - 1) // strides[i] + 1
            for i in range(x.ndim)]
    y = None
    for t in np.ndindex(*window):
        idx = tuple(slice(t[i] * dil[i], t[i] * dil[i] + strides[i] * (outs[i] - 1) + 1,
                          strides[i]) for i in range(x.ndim))
        y = x[idx].copy() if y is None else op(y, x[idx])
    return y


def _np_dot_general(a, b, dimension_numbers, **_):
    (lc, rc), (lb, rb) = dimension_numbers
    letters = iter("abcdefghijklmnopqrstuvwxyz")
    la = [next(letters) for _ in range(a.ndim)]
    lb_ = [next(letters) for _ in range(b.ndim)]
    for i, j in zip(lc, rc):
        lb_[j] = la[i]
    for i, j in zip(lb, rb):
        lb_[j] = la[i]
    out = [la[i] for i in lb] + [la[i] for i in range(a.ndim) if i not in lc and i not in lb] \
        + [lb_[j] for j in range(b.ndim) if j not in rc and j not in rb]
    return np.einsum(f"{''.join(la)},{''.join(lb_)}->{''.join(out)}", a, b)


def _np_conv_prim(x, k, *, window_strides, padding, lhs_dilation, rhs_dilation,
                  dimension_numbers, feature_group_count, batch_group_count, **_):
    if batch_group_count != 1 or any(d != 1 for d in lhs_dilation):
        return None
    dn = dimension_numbers
    return np_conv(x, k, strides=window_strides, padding=padding, rhs_dilation=rhs_dilation,
                   groups=feature_group_count, spec=(dn.lhs_spec, dn.rhs_spec, dn.out_spec))


def _np_select(which, *cases):
    which = np.asarray(which)
    if which.dtype == bool:
        return np.where(which, cases[1], cases[0])
    return np.choose(which, cases)


def _np_convert(x, *, new_dtype, **_):
    dt = np.dtype(new_dtype)
    return np.asarray(x, np.float64) if dt.kind == "f" else np.asarray(x).astype(dt)


def _np_broadcast(x, *, shape, broadcast_dimensions, **_):
    x = np.asarray(x)
    sh = [1] * len(shape)
    for i, d in enumerate(broadcast_dimensions):
        sh[d] = x.shape[i]
    return np.broadcast_to(x.reshape(sh), tuple(shape))


def _np_rw(op, init):
    def f(x, *, window_dimensions, window_strides, padding, base_dilation, window_dilation,
          **_):
        if any(d != 1 for d in base_dilation):
            return None
        return np_reduce_window(x, init, op, window_dimensions, window_strides, padding,
                                window_dilation)
    return f


def _erf(x):
    from scipy import special
    return special.erf(x)


_NP: dict[str, Callable] = {
    "add": lambda a, b: np.add(a, b), "sub": lambda a, b: np.subtract(a, b),
    "mul": lambda a, b: np.multiply(a, b), "div": lambda a, b: np.divide(a, b),
    "max": lambda a, b: np.maximum(a, b), "min": lambda a, b: np.minimum(a, b),
    "neg": lambda a: -np.asarray(a), "abs": np.abs, "sign": np.sign,
    "rsqrt": lambda a: 1.0 / np.sqrt(a), "sqrt": np.sqrt, "exp": np.exp, "log": np.log,
    "log1p": np.log1p, "expm1": np.expm1, "tanh": np.tanh, "erf": _erf,
    "logistic": lambda a: 1.0 / (1.0 + np.exp(-np.asarray(a))),
    "square": np.square, "integer_pow": lambda a, *, y: np.asarray(a) ** y,
    "pow": lambda a, b: np.power(a, b),
    "copy": lambda a: np.asarray(a), "copy_p": lambda a: np.asarray(a),
    "stop_gradient": lambda a: np.asarray(a),
    "reduce_precision": lambda a, **_: np.asarray(a),
    "convert_element_type": _np_convert,
    "select_n": _np_select,
    "clamp": lambda lo, x, hi: np.clip(x, lo, hi),
    "broadcast_in_dim": _np_broadcast,
    "reshape": lambda x, *, new_sizes, dimensions=None, **_: np.reshape(x, new_sizes)
    if dimensions is None else None,
    "squeeze": lambda x, *, dimensions: np.squeeze(x, axis=tuple(dimensions)),
    "expand_dims": lambda x, *, dimensions: np.expand_dims(x, tuple(dimensions)),
    "slice": lambda x, *, start_indices, limit_indices, strides: np.asarray(x)[tuple(
        slice(a, b, 1 if strides is None else strides[i])
        for i, (a, b) in enumerate(zip(start_indices, limit_indices)))],
    "pad": lambda x, v, *, padding_config: None if any(c[2] for c in padding_config)
    else _np_pad(np.asarray(x, np.float64), [(c[0], c[1]) for c in padding_config],
                 float(np.asarray(v))),
    "concatenate": lambda *xs, dimension: np.concatenate(xs, axis=dimension),
    "transpose": lambda x, *, permutation: np.transpose(x, permutation),
    "rev": lambda x, *, dimensions: np.flip(x, axis=tuple(dimensions)),
    "reduce_sum": lambda x, *, axes, **_: np.sum(x, axis=tuple(axes)),
    "reduce_max": lambda x, *, axes, **_: np.max(x, axis=tuple(axes)),
    "conv_general_dilated": _np_conv_prim,
    "dot_general": lambda a, b, *, dimension_numbers, **_: _np_dot_general(
        np.asarray(a, np.float64), np.asarray(b, np.float64), dimension_numbers),
    "reduce_window_sum": _np_rw(np.add, 0.0),
    "reduce_window_max": _np_rw(np.maximum, -np.inf),
}


_NP_PARAMS = frozenset((
    "integer_pow", "convert_element_type", "broadcast_in_dim", "reshape", "squeeze",
    "expand_dims", "slice", "pad", "concatenate", "transpose", "rev", "reduce_sum",
    "reduce_max", "conv_general_dilated", "dot_general", "reduce_window_sum",
    "reduce_window_max"))


def _np_bind(eq: _Eq, args):
    f = _NP.get(eq.prim.name)
    res = None
    if f is not None:
        res = f(*args, **eq.params) if eq.prim.name in _NP_PARAMS else f(*args)
    if res is None:  # no NumPy rule for these parameters: run JAX eagerly
        res = eq.prim.bind(*(jnp.asarray(a) for a in args), **eq.params)
        if eq.prim.multiple_results:
            return [np.asarray(r, np.float64) if jnp.issubdtype(r.dtype, jnp.floating)
                    else np.asarray(r) for r in res]
        res = np.asarray(res, np.float64) if jnp.issubdtype(res.dtype, jnp.floating) \
            else np.asarray(res)
    return [np.asarray(res)]


def _is_numpy(xs) -> bool:
    return all(isinstance(x, (np.ndarray, np.generic, float, int)) for x in xs)


def _evaluator(eqns: list[_Eq], inputs: list[int], output: int, param_ids: Mapping[int, str]):
    """``fn(values, *inputs) -> output`` running ``eqns`` (in order); parameter ids are read
    from ``values`` by path. NumPy inputs run in NumPy (float64), others through JAX."""

    def fn(values, *xs):
        env: dict[int, Any] = dict(zip(inputs, xs))
        numpy = _is_numpy(xs)
        for i, p in param_ids.items():
            env[i] = np.asarray(values[p], np.float64) if numpy else values[p]
        bind = _np_bind if numpy else _bind
        for eq in eqns:
            args = [a.value if isinstance(a, _Val) else env[a] for a in eq.ins]
            for o, r in zip(eq.outs, bind(eq, args)):
                env[o] = r
        return env[output]

    return fn


def trace(apply_fn: Callable, params, input_shape: Sequence[int], *,
          channel_axis: int = -1) -> Graph:
    """The layer graph of ``apply_fn(params, x)`` for inputs of ``input_shape`` (batched,
    e.g. ``(1, 224, 224, 3)``), traced once from its jaxpr (nothing is computed).

    ``apply_fn`` may be jitted. Layers are found from the parameter groups (see the module
    docstring); raises ``ValueError`` for an operation on the data path that no rule covers
    (a convolution outside any parameter group, a reduction other than sum/max, ...), or for
    a parameter group called twice.
    """
    leaves = Q.tree_paths(params)
    paths = [p for p, _ in leaves]
    treedef = jax.tree_util.tree_structure(params)
    flat = [jax.ShapeDtypeStruct(np.shape(x), jnp.result_type(x)) for _, x in leaves]
    x0 = jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32)

    def f(flat_leaves, x):
        return apply_fn(jax.tree_util.tree_unflatten(treedef, flat_leaves), x)

    closed = jax.make_jaxpr(f)(flat, x0)
    jx = closed.jaxpr
    eqns: list[_Eq] = []
    avals: dict[int, Any] = {}
    counter = [0]
    args = []
    for v in jx.invars:
        counter[0] += 1
        avals[counter[0]] = v.aval
        args.append(counter[0])
    param_ids = {i: p for i, p in zip(args[:-1], paths)}
    x_id = args[-1]
    outs = _inline(jx, list(closed.consts), args, (), eqns, avals, counter)
    if len(outs) != 1 or isinstance(outs[0], _Val):
        raise ValueError("apply_fn must return one array computed from its input")
    return _build_from_eqns(eqns, avals, param_ids, x_id, outs[0], paths, tuple(input_shape),
                            channel_axis)


def _match_group(scope: tuple[str, ...], groups: Mapping[str, Any]) -> str | None:
    best = None
    for i in range(len(scope)):
        for j in range(len(scope), i, -1):
            g = "/".join(scope[i:j])
            if g in groups and (best is None or j - i > best[0]):
                best = (j - i, g)
                break
    return None if best is None else best[1]


def _build_from_eqns(eqns, avals, param_ids, x_id, out_id, paths, input_shape, channel_axis):
    groups = groups_of(paths)
    path_group = {p: p.rpartition("/")[0] for p in paths}
    # which ids carry data (depend on x) and which groups' parameters each constant reads
    data = {x_id}
    pgroups: dict[int, frozenset] = {i: frozenset((path_group[p],)) for i, p in
                                     param_ids.items()}
    producer: dict[int, int] = {}
    for k, eq in enumerate(eqns):
        ids = [a for a in eq.ins if not isinstance(a, _Val)]
        for o in eq.outs:
            producer[o] = k
        if any(a in data for a in ids):
            data.update(eq.outs)
        else:
            g = frozenset().union(*(pgroups.get(a, frozenset()) for a in ids)) if ids \
                else frozenset()
            for o in eq.outs:
                pgroups[o] = g
    if out_id not in data:
        raise ValueError("the model's output does not depend on its input")
    # group of every data operation: the module scope, else the parameters it reads
    eq_group: dict[int, str | None] = {}
    for k, eq in enumerate(eqns):
        if not any(o in data for o in eq.outs):
            continue
        g = _match_group(eq.scope, groups)
        if g is None:
            used = frozenset().union(*(pgroups.get(a, frozenset()) for a in eq.ins
                                       if not isinstance(a, _Val) and a not in data))
            g = next(iter(used)) if len(used) == 1 else None
        eq_group[k] = g
    consumers: dict[int, list[int]] = {}
    for k, eq in enumerate(eqns):
        for a in eq.ins:
            if not isinstance(a, _Val):
                consumers.setdefault(a, []).append(k)

    def const_closure(ids):
        """Indices of the constant equations needed to compute ``ids``."""
        need: set[int] = set()
        stack = [a for a in ids if not isinstance(a, _Val) and a not in data
                 and a not in param_ids]
        while stack:
            a = stack.pop()
            k = producer.get(a)
            if k is None or k in need:
                continue
            need.add(k)
            stack += [b for b in eqns[k].ins if not isinstance(b, _Val) and b not in data
                      and b not in param_ids]
        return need

    def const_value(a):
        """The value of a constant operand that reads no parameter (``None`` if it does)."""
        if isinstance(a, _Val):
            return float(np.asarray(a.value))
        if pgroups.get(a):
            return None
        idx = sorted(const_closure([a]))
        return float(np.asarray(_evaluator([eqns[k] for k in idx], [], a, {})({})))

    def used_params(idx):
        ids = {a for k in idx for a in eqns[k].ins if not isinstance(a, _Val)}
        return {i: param_ids[i] for i in ids if i in param_ids}

    def make_fn(idx: list[int], inputs: list[int], output: int):
        idx = sorted(set(idx) | const_closure([a for k in idx for a in eqns[k].ins]))
        used = used_params(idx)
        fn = _evaluator([eqns[k] for k in idx], inputs, output, used)
        fn.reads = tuple(sorted(used.values()))
        return fn

    def shape(i):
        return tuple(avals[i].shape)

    # --- layer and batch-norm groups
    nodes: list[tuple[int, Node]] = []  # (position, node)
    name_of: dict[int, str] = {x_id: "input"}
    members: dict[str, list[int]] = {}
    for k, g in eq_group.items():
        if g is not None:
            members.setdefault(g, []).append(k)
    in_group = {k for ks in members.values() for k in ks}
    for g, ks in members.items():
        produced = {o for k in ks for o in eqns[k].outs}
        ins = sorted({a for k in ks for a in eqns[k].ins if not isinstance(a, _Val)
                      and a in data and a not in produced})
        outs = sorted({o for o in produced if o in data and (
            o == out_id or any(c not in ks for c in consumers.get(o, [])))})
        if len(ins) != 1 or len(outs) != 1:
            raise ValueError(f"parameter group {g!r} has {len(ins)} data inputs and "
                             f"{len(outs)} outputs; only single-input, single-output layers "
                             "(no shared or multi-branch modules) are supported")
        node = _layer_node(g, groups[g], ks, eqns, ins[0], outs[0], shape, make_fn,
                           channel_axis, data, param_ids)
        nodes.append((max(ks), node))
        name_of[outs[0]] = g
    # --- everything else: activations (elementwise regions) and joins
    root: dict[int, int] = {x_id: x_id}
    region: dict[int, list[int]] = {}
    for k, eq in enumerate(eqns):
        if k in in_group or k not in eq_group:
            for o in eq.outs:
                root[o] = o
            continue
        dins = [a for a in eq.ins if not isinstance(a, _Val) and a in data]
        name = eq.prim.name
        o = eq.outs[0]
        if name in _ELEMENTWISE and len(eq.outs) == 1:
            roots = {root[a] for a in dins}
            same = all(shape(a) == shape(o) for a in dins)
            if len(roots) == 1 and same:
                r = roots.pop()
                root[o] = r
                region.setdefault(r, []).append(k)
                continue
        root[o] = o
    counters: dict[str, int] = {}

    def fresh(op):
        counters[op] = counters.get(op, 0) + 1
        return f"{op}_{counters[op]}"

    region_eqs = {k for ks in region.values() for k in ks}
    # region outputs: values of a region read outside it (or the network output)
    for r, ks in region.items():
        kset = set(ks)
        outs = [o for k in ks for o in eqns[k].outs if o == out_id or any(
            c not in kset for c in consumers.get(o, []))]
        for o in outs:
            anc = _ancestors_in(o, kset, eqns, producer)
            fn = make_fn(anc, [r], o)
            act = _classify_act(fn, shape(r), anc, eqns, data, shape)
            name = fresh(act if act in ("relu", "relu6") else "act")
            nodes.append((max(anc), Node(name, "act", (r,), fn, act=act,
                                         attrs={"in_shapes": (shape(r),),
                                                "out_shape": shape(o)})))
            name_of[o] = name
    for k, eq in enumerate(eqns):
        if k not in eq_group or k in in_group or k in region_eqs:
            continue
        dins = [a for a in eq.ins if not isinstance(a, _Val) and a in data]
        pname = eq.prim.name
        if pname in _ELEMENTWISE:
            op = {"add": "add", "sub": "sub", "mul": "mul"}.get(pname)
            if op is None or len(dins) != 2:
                raise ValueError(f"unsupported join {pname!r} of {len(dins)} tensors "
                                 "outside a layer (add, sub and mul are supported)")
        elif pname in _MOVES:
            op = _MOVES[pname]
        else:
            raise ValueError(f"unsupported operation {pname!r} on the data path outside any "
                             "layer (scope " + "/".join(eq.scope) + ")")
        if len(eq.outs) != 1:
            raise ValueError(f"operation {pname!r} with several outputs is not supported")
        attrs = {"in_shapes": tuple(shape(a) for a in dins), "out_shape": shape(eq.outs[0])}
        attrs.update(_move_attrs(pname, eq, channel_axis))
        if pname == "pad" and attrs["value"] is None:
            attrs["value"] = const_value(eq.ins[1])
        fn = make_fn([k], dins, eq.outs[0])
        name = fresh(op)
        # the same tensor read twice (x + x) keeps both operands
        nodes.append((k, Node(name, op, tuple(dins), fn, attrs=attrs)))
        name_of[eq.outs[0]] = name
    nodes.sort(key=lambda t: t[0])
    out_nodes = []
    for _, n in nodes:
        out_nodes.append(dataclasses.replace(n, inputs=tuple(name_of[i] for i in n.inputs)))
    return Graph(out_nodes, input_shape, name_of[out_id], channel_axis, tuple(paths), "jaxpr",
                 bias_creatable=False)


def _ancestors_in(o, kset, eqns, producer):
    out, stack = set(), [o]
    while stack:
        a = stack.pop()
        k = producer.get(a)
        if k is None or k not in kset or k in out:
            continue
        out.add(k)
        stack += [b for b in eqns[k].ins if not isinstance(b, _Val)]
    return sorted(out)


def _move_attrs(pname, eq, channel_axis) -> dict:
    p = eq.params
    if pname == "pad":
        val = eq.ins[1].value if isinstance(eq.ins[1], _Val) else None
        return {"padding_config": tuple(tuple(int(c) for c in cfg) for cfg in
                                        p["padding_config"]),
                "value": None if val is None else float(np.asarray(val))}
    if pname in ("reduce_window_max", "reduce_window_sum"):
        pad = tuple(tuple(int(c) for c in q) for q in p["padding"])
        return {"window": tuple(int(w) for w in p["window_dimensions"]),
                "window_strides": tuple(int(s) for s in p["window_strides"]),
                "window_padding": pad}
    if pname in ("reduce_sum", "reduce_max"):
        return {"axes": tuple(int(a) for a in p["axes"])}
    if pname == "concatenate":
        return {"axis": int(p["dimension"])}
    if pname == "transpose":
        return {"perm": tuple(int(a) for a in p["permutation"])}
    return {}


def _spatial(ndim: int, channel_axis: int) -> tuple[int, ...]:
    c = channel_axis % ndim
    return tuple(a for a in range(1, ndim) if a != c)


def _layer_node(g, gvars, ks, eqns, in_id, out_id, shape, make_fn, channel_axis, data,
                param_ids):
    fn = make_fn(ks, [in_id], out_id)
    attrs: dict[str, Any] = {"in_shapes": (shape(in_id),), "out_shape": shape(out_id)}
    path_id = {p: i for i, p in param_ids.items()}
    if set(BN_VARS) <= set(gvars):
        mv = path_id[gvars["moving_variance"]]
        eps = None
        for k in ks:  # the literal added to the moving variance
            eq = eqns[k]
            if eq.prim.name == "add" and mv in eq.ins:
                lit = [a for a in eq.ins if isinstance(a, _Val)]
                eps = float(np.asarray(lit[0].value)) if lit else None
                break
        if eps is None:
            for eq in eqns:
                if eq.prim.name == "add" and mv in eq.ins:
                    lit = [a for a in eq.ins if isinstance(a, _Val)]
                    eps = float(np.asarray(lit[0].value)) if lit else None
                    break
        attrs["eps"] = eps
        return Node(g, "bn", (in_id,), fn, group=g, attrs=attrs)
    kernels = tuple(p for v, p in sorted(gvars.items()) if v != "bias" and "kernel" in v)
    if not kernels:
        kernels = tuple(p for v, p in sorted(gvars.items()) if v != "bias"
                        and len(shape(path_id[p])) >= 2)
    bias = gvars.get("bias")
    convs = [eqns[k] for k in ks if eqns[k].prim.name == "conv_general_dilated"]
    if len(kernels) == 2:
        dw = [p for p in kernels if "depthwise" in p.rpartition("/")[2]]
        pw = [p for p in kernels if p not in dw]
        if len(dw) != 1:
            raise ValueError(f"layer {g!r} has two kernels {kernels}; only a depthwise + "
                             "pointwise pair (separable convolution) is supported")
        op, kernels = "separable", (dw[0], pw[0])
    elif len(kernels) == 1:
        nd = len(shape(path_id[kernels[0]]))
        if nd == 2:
            op = "dense"
        elif convs:
            fgc = int(convs[0].params.get("feature_group_count", 1))
            c_in = shape(in_id)[channel_axis]
            op = "conv" if fgc == 1 else "depthwise" if fgc == c_in else "grouped"
        else:  # a convolution written with shifts or im2col: the kernel's name tells
            op = "depthwise" if "depthwise" in kernels[0].rpartition("/")[2] else "conv"
    else:
        raise ValueError(f"layer {g!r} has parameters {sorted(gvars)}: no kernel to quantize")
    attrs.update(_geometry([eqns[k] for k in ks], shape(in_id), channel_axis, data))
    return Node(g, op, (in_id,), fn, group=g, kernels=kernels, bias=bias, attrs=attrs)


def _geometry(geqns, in_shape, channel_axis, data) -> dict:
    nd = len(in_shape)
    sp = _spatial(nd, channel_axis)
    if nd < 3:
        return {}
    convs = [e for e in geqns if e.prim.name == "conv_general_dilated"]
    if convs:
        p = convs[0].params
        return {"strides": tuple(int(s) for s in p["window_strides"]),
                "padding": tuple(tuple(int(c) for c in q) for q in p["padding"])}
    pads = [e for e in geqns if e.prim.name == "pad" and not isinstance(e.ins[0], _Val)
            and e.ins[0] in data]
    padding = tuple((0, 0) for _ in sp)
    if pads:
        cfg = pads[0].params["padding_config"]
        padding = tuple((int(cfg[a][0]), int(cfg[a][1])) for a in sp)
    strides = [1] * len(sp)
    for e in geqns:
        if e.prim.name == "slice" and e.params.get("strides"):
            for j, a in enumerate(sp):
                strides[j] = max(strides[j], int(e.params["strides"][a]))
    return {"strides": tuple(strides), "padding": padding}


# --- Activation classes -------------------------------------------------------------------------


_PROBE = np.linspace(-9.0, 9.0, 181)
_KNOWN = {
    "identity": lambda t: t,
    "relu": lambda t: np.maximum(t, 0),
    "relu6": lambda t: np.clip(t, 0, 6),
    "hard_swish": lambda t: t * np.clip(t + 3, 0, 6) / 6,
    "hard_sigmoid": lambda t: np.clip(t + 3, 0, 6) / 6,
    "sigmoid": lambda t: 1 / (1 + np.exp(-t)),
    "silu": lambda t: t / (1 + np.exp(-t)),
    "tanh": np.tanh,
}


def classify_scalar(f: Callable[[np.ndarray], np.ndarray]) -> str:
    """Name of the scalar function ``f`` from its values on ``[-9, 9]``: one of
    :data:`_KNOWN`'s keys, ``"affine"`` (``a t + b``), or ``"elementwise"``."""
    y = np.asarray(f(_PROBE), np.float64)
    for name, g in _KNOWN.items():
        if np.allclose(y, g(_PROBE), rtol=1e-4, atol=1e-5):
            return name
    a = (y[-1] - y[0]) / (_PROBE[-1] - _PROBE[0])
    if np.allclose(y, y[0] + a * (_PROBE - _PROBE[0]), rtol=1e-4, atol=1e-5):
        return "affine"
    return "elementwise"


def _classify_act(fn, in_shape, anc, eqns, data, shape) -> str:
    consts = [a for k in anc for a in eqns[k].ins if not (isinstance(a, int) and a in data)]
    if any(np.ndim(a.value) > 0 if isinstance(a, _Val) else len(shape(a)) > 0
           for a in consts):
        # per-element constants: affine or not, probed on a few inputs
        z = np.zeros(in_shape, np.float64)
        f0, f1, f2 = (np.asarray(fn({}, z + t), np.float64) for t in (0., 1., 3.))
        return "affine" if np.allclose(f2 - f0, 3 * (f1 - f0), rtol=1e-4, atol=1e-5) \
            else "elementwise"

    # scalar constants only: the region works elementwise on any shape, probe it on a vector
    return classify_scalar(lambda t: np.asarray(fn({}, np.asarray(t, np.float64))))


# --- Layer tables -------------------------------------------------------------------------------


def follow(graph: Graph, name: str) -> tuple[str | None, str]:
    """``(bn, act)`` right after node ``name``: the batch norm that is its only consumer (or
    ``None``), then the activation that is the only consumer of that (``"linear"`` if none)."""
    bn = None
    cur = name
    cons = graph.consumers(cur)
    if len(cons) == 1 and graph[cons[0]].op == "bn":
        bn = cur = cons[0]
        cons = graph.consumers(cur)
    if len(cons) == 1 and graph[cons[0]].op == "act":
        return bn, graph[cons[0]].act or "elementwise"
    return bn, "linear"


def producers(graph: Graph, name: str) -> tuple[str, ...]:
    """The layers whose outputs reach node ``name``'s input through non-layer nodes (batch
    norms, activations, joins), in graph order; empty when it reads the network input."""
    seen, out = set(), set()
    stack = list(graph[name].inputs)
    while stack:
        n = stack.pop()
        if n in seen or n == "input":
            continue
        seen.add(n)
        node = graph[n]
        if node.is_layer:
            out.add(n)
        else:
            stack += list(node.inputs)
    order = {n.name: i for i, n in enumerate(graph.nodes)}
    return tuple(sorted(out, key=order.get))


def layer_table(graph: Graph) -> list[dict]:
    """One row per layer: ``name``, ``op``, ``kernels``, ``bias``, ``bn``, ``act`` (see
    :func:`follow`), ``prev`` (:func:`producers`), ``between`` (the ops of the non-layer,
    non-norm nodes on the way from the producers), ``strides``, ``padding`` (the layer's own
    zero padding plus zero ``pad`` nodes right before it), ``in_hw`` (spatial size before
    that padding; ``None`` for dense layers)."""
    rows = []
    for n in graph.layers:
        bn, act = follow(graph, n.name)
        pad = [list(p) for p in n.attrs.get("padding", ())]
        src = n.inputs[0]
        between = []
        cur = src
        while cur != "input" and not graph[cur].is_layer:
            node = graph[cur]
            if node.op == "pad" and not between and pad:
                sp = _spatial(len(node.out_shape), graph.channel_axis)
                cfg = node.attrs["padding_config"]
                for j, a in enumerate(sp):
                    pad[j][0] += cfg[a][0]
                    pad[j][1] += cfg[a][1]
                src = node.inputs[0]
            elif node.op not in ("bn", "act"):
                between.append(node.op)
            if len(node.inputs) != 1:
                break
            cur = node.inputs[0]
        in_shape = graph.input_shape if src == "input" else graph[src].out_shape
        hw = None
        if n.op != "dense":
            sp = _spatial(len(in_shape), graph.channel_axis)
            hw = tuple(int(in_shape[a]) for a in sp)
        rows.append({"name": n.name, "op": n.op, "kernels": n.kernels, "bias": n.bias,
                     "bn": bn, "act": act, "prev": producers(graph, n.name),
                     "between": tuple(reversed(between)),
                     "strides": tuple(n.attrs.get("strides", ())),
                     "padding": tuple(tuple(p) for p in pad), "in_hw": hw})
    return rows


# --- ONNX graphs --------------------------------------------------------------------------------


_ONNX_ACTS = {"Relu": "relu", "Sigmoid": "sigmoid", "Tanh": "tanh", "HardSwish": "hard_swish"}
_ONNX_MOVES = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Dropout",
               "Transpose", "Concat", "Slice", "Split", "Pad"}


def _onnx_pads(attrs, in_sizes, kernel, strides, dil) -> list[tuple[int, int]]:
    nd = len(in_sizes)
    auto = attrs.get("auto_pad", "NOTSET")
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        out = []
        for n, k, s, d in zip(in_sizes, kernel, strides, dil):
            total = max((-(-n // s) - 1) * s + (k - 1) * d + 1 - n, 0)
            lo, hi = total // 2, total - total // 2
            out.append((lo, hi) if auto == "SAME_UPPER" else (hi, lo))
        return out
    if auto == "VALID":
        return [(0, 0)] * nd
    p = [int(e) for e in attrs.get("pads", [0] * (2 * nd))]
    return [(p[i], p[i + nd]) for i in range(nd)]


def _pool_extra(attrs, in_sizes, kernel, strides, dil, pads) -> list[int]:
    """Extra end padding so that ``ceil_mode=1`` windows are all computed."""
    extra = []
    for n, k, s, d, (lo, hi) in zip(in_sizes, kernel, strides, dil, pads):
        eff = d * (k - 1) + 1
        span = n + lo + hi - eff
        if attrs.get("ceil_mode", 0):
            out = -(-span // s) + 1
            if (out - 1) * s >= n + lo:
                out -= 1
        else:
            out = span // s + 1
        extra.append(max((out - 1) * s + eff - (n + lo + hi), 0))
    return extra


def from_onnx(model, *, batch: int = 1) -> Graph:
    """The layer graph of an ONNX model loaded by
    :func:`paper_repro.feedforward.onnx_model.load_onnx` (its ``nodes``, ``constants``,
    ``params``, ``input_name``, ``input_shape``, ``output_names``).

    One node per ONNX operation, computed here in the ONNX layout (``(N, C, H, W)``, channel
    axis 1) from the parameter tree (``kernel`` in ``HWIO`` / ``(in, out)``). Operations on
    constants only (shape arithmetic) are folded. ``AveragePool`` / ``GlobalAveragePool`` /
    ``ReduceMean`` become a sum and an ``affine`` division; ``Split`` one ``slice`` per output;
    ``Add`` / ``Sub`` / ``Mul`` / ``Div`` by a constant an ``act`` node. Raises ``ValueError``
    for an operator with no rule (its name and the node).
    """
    shape_in = tuple(batch if (d is None or i == 0) else int(d)
                     for i, d in enumerate(model.input_shape))
    params = model.params
    paths = tuple(p for p, _ in Q.tree_paths(params))
    consts: dict[str, np.ndarray] = {k: np.asarray(v) for k, v in model.constants.items()}
    data: dict[str, tuple[str, tuple[int, ...]]] = {model.input_name: ("input", shape_in)}
    nodes: list[Node] = []
    counters: dict[str, int] = {}
    values0 = flat_values(params)

    def fresh(op):
        counters[op] = counters.get(op, 0) + 1
        return f"{op}_{counters[op]}"

    def add(name, op, ins, fn, out_tensor, **kw):
        in_shapes = tuple(data[t][1] for t in ins)
        out = jax.eval_shape(lambda *xs: fn(values0, *xs),
                             *(jax.ShapeDtypeStruct(s, jnp.float32) for s in in_shapes))
        attrs = dict(kw.pop("attrs", {}))
        attrs.update(in_shapes=in_shapes, out_shape=tuple(out.shape))
        nodes.append(Node(name, op, tuple(data[t][0] for t in ins), fn, attrs=attrs, **kw))
        data[out_tensor] = (name, tuple(out.shape))

    for nd in model.nodes:
        op_type, at = nd.op_type, dict(nd.attrs)
        ins = [t for t in nd.inputs]
        d_ins = [t for t in ins if t in data]
        label = f"{op_type} node {nd.onnx_name or nd.name!r}"
        w = dict(nd.weights)

        def const(i, default=None, ins=ins, label=label):
            if i >= len(ins) or not ins[i]:
                return default
            if ins[i] in consts:
                return consts[ins[i]]
            raise ValueError(f"{label}: input {ins[i]!r} must be a constant")

        if op_type == "Constant":
            val = at.get("value")
            if val is None:
                for k in ("value_float", "value_int", "value_floats", "value_ints"):
                    if k in at:
                        val = np.asarray(at[k])
            consts[nd.outputs[0]] = np.asarray(val)
            continue
        if op_type == "Shape" and d_ins:
            consts[nd.outputs[0]] = np.asarray(data[d_ins[0]][1], np.int64)
            continue
        if not d_ins and not w:
            consts.update(zip(nd.outputs, _fold_onnx(op_type, at, [
                consts.get(t) if t else None for t in ins], label)))
            continue
        if op_type == "Conv":
            _onnx_conv(nd, at, w, data, add, label, values0)
        elif op_type in ("Gemm", "MatMul"):
            _onnx_dense(nd, at, w, data, add, label, const)
        elif op_type == "BatchNormalization":
            _onnx_bn(nd, at, w, data, add, label)
        elif op_type in _ONNX_ACTS or op_type in ("Clip", "LeakyRelu", "HardSigmoid"):
            _onnx_act(nd, at, data, add, fresh, const)
        elif op_type in ("Add", "Sub", "Mul", "Div"):
            _onnx_binary(nd, data, add, fresh, consts, label)
        elif op_type in ("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool",
                         "ReduceMean", "ReduceSum", "ReduceMax"):
            _onnx_pool(nd, at, data, add, fresh, const, label)
        elif op_type in _ONNX_MOVES:
            _onnx_move(nd, at, data, add, fresh, const, label)
        elif op_type in ("Softmax", "LogSoftmax"):
            axis = int(at.get("axis", -1))
            f = jax.nn.softmax if op_type == "Softmax" else jax.nn.log_softmax
            add(fresh("softmax"), "softmax", [ins[0]],
                lambda v, x, f=f, axis=axis: np.asarray(f(jnp.asarray(x), axis=axis),
                                                        np.float64) if _xp(x) is np else
                f(x, axis=axis), nd.outputs[0])
        else:
            raise ValueError(f"no graph rule for ONNX operator {op_type!r} ({label})")
    outs = [t for t in model.output_names]
    if len(outs) != 1 or outs[0] not in data:
        raise ValueError("the ONNX graph must have one output computed from its input")
    return Graph(nodes, shape_in, data[outs[0]][0], 1, paths, "onnx", bias_creatable=False)


def _fold_onnx(op_type, at, vals, label) -> list[np.ndarray]:
    """Constant folding of shape arithmetic (numpy)."""
    a = vals[0] if vals else None
    if op_type in ("Identity", "Cast"):
        return [np.asarray(a) if op_type == "Identity" else np.asarray(a)]
    if op_type in ("Add", "Sub", "Mul", "Div"):
        f = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply,
             "Div": np.floor_divide if np.asarray(a).dtype.kind in "iu" else np.divide}[op_type]
        return [np.asarray(f(vals[0], vals[1]))]
    if op_type == "Concat":
        return [np.concatenate([np.asarray(v) for v in vals if v is not None],
                               axis=int(at["axis"]))]
    if op_type == "Gather":
        return [np.take(a, np.asarray(vals[1]), axis=int(at.get("axis", 0)))]
    if op_type == "Unsqueeze":
        axes = at.get("axes", None if len(vals) < 2 else list(np.asarray(vals[1]).ravel()))
        out = np.asarray(a)
        for ax in sorted(int(x) % (out.ndim + len(axes)) for x in axes):
            out = np.expand_dims(out, ax)
        return [out]
    if op_type == "Squeeze":
        axes = at.get("axes", None if len(vals) < 2 else list(np.asarray(vals[1]).ravel()))
        return [np.squeeze(a, axis=None if axes is None else tuple(int(x) for x in axes))]
    if op_type == "Reshape":
        return [np.reshape(a, [int(s) if s != 0 else a.shape[i] for i, s in
                               enumerate(np.asarray(vals[1]).ravel())])]
    raise ValueError(f"no constant rule for ONNX operator {op_type!r} ({label})")


def _xp(*xs):
    return np if _is_numpy(xs) else jnp


def _conv_nchw(x, k, strides, pads, dil, groups):
    return lax.conv_general_dilated(x, k, strides, pads, rhs_dilation=dil,
                                    dimension_numbers=("NCHW", "HWIO", "NCHW"),
                                    feature_group_count=groups,
                                    precision=lax.Precision.HIGHEST)


def _onnx_conv(nd, at, w, data, add, label, values):
    if "kernel" not in w:
        raise ValueError(f"{label}: the kernel must be a parameter (an initializer)")
    name = nd.name
    kpath, bpath = f"{name}/kernel", (f"{name}/bias" if "bias" in w else None)
    shape = data[nd.inputs[0]][1]
    if len(shape) != 4:
        raise ValueError(f"{label}: only 2-D convolutions are supported")
    strides = tuple(int(s) for s in at.get("strides", (1, 1)))
    dil = tuple(int(s) for s in at.get("dilations", (1, 1)))
    group = int(at.get("group", 1))
    kshape = tuple(int(k) for k in at.get("kernel_shape", np.shape(values[kpath])[:2]))

    def fn(v, x, kpath=kpath, bpath=bpath, strides=strides, dil=dil, group=group):
        xp = _xp(x)
        k = xp.asarray(v[kpath])
        pads = _onnx_pads(at, x.shape[2:], k.shape[:2], strides, dil)
        if xp is np:
            y = np_conv(x, k, strides=strides, padding=pads, rhs_dilation=dil, groups=group,
                        spec=((0, 1, 2, 3), (3, 2, 0, 1), (0, 1, 2, 3)))
        else:
            y = _conv_nchw(x, k, strides, pads, dil, group)
        if bpath is not None:
            y = y + xp.asarray(v[bpath])[None, :, None, None]
        return y

    c_in = shape[1]
    op = "conv" if group == 1 else "depthwise" if group == c_in else "grouped"
    pads = tuple(_onnx_pads(at, shape[2:], kshape, strides, dil))
    add(name, op, [nd.inputs[0]], fn, nd.outputs[0], group=name, kernels=(kpath,),
        bias=bpath, attrs={"strides": strides, "padding": pads, "dilations": dil,
                           "groups": group})


def _onnx_dense(nd, at, w, data, add, label, const):
    if "kernel" not in w:
        raise ValueError(f"{label}: the weight matrix must be a parameter (an initializer)")
    name = nd.name
    kpath, bpath = f"{name}/kernel", (f"{name}/bias" if "bias" in w else None)
    alpha = float(at.get("alpha", 1.0))
    beta = float(at.get("beta", 1.0))
    if at.get("transA", 0):
        raise ValueError(f"{label}: transA=1 is not supported")

    def fn(v, x, kpath=kpath, bpath=bpath, alpha=alpha, beta=beta):
        xp = _xp(x)
        y = (np.matmul(x, np.asarray(v[kpath], np.float64)) if xp is np else
             jnp.matmul(x, jnp.asarray(v[kpath]), precision=lax.Precision.HIGHEST))
        if alpha != 1.0:
            y = y * alpha
        if bpath is not None:
            y = y + beta * xp.asarray(v[bpath])
        return y

    add(name, "dense", [nd.inputs[0]], fn, nd.outputs[0], group=name, kernels=(kpath,),
        bias=bpath)


def _onnx_bn(nd, at, w, data, add, label):
    name = nd.name
    if set(w) != {"scale", "bias", "mean", "var"}:
        raise ValueError(f"{label}: scale, bias, mean and var must all be parameters")
    eps = float(at.get("epsilon", 1e-5))
    p = {k: f"{name}/{k}" for k in w}

    def fn(v, x, p=p, eps=eps):
        xp = _xp(x)
        s = xp.asarray(v[p["scale"]]) / xp.sqrt(xp.asarray(v[p["var"]]) + eps)
        b = xp.asarray(v[p["bias"]]) - xp.asarray(v[p["mean"]]) * s
        sh = (1, -1) + (1,) * (x.ndim - 2)
        return x * s.reshape(sh) + b.reshape(sh)

    add(name, "bn", [nd.inputs[0]], fn, nd.outputs[0], group=name,
        attrs={"eps": eps, "bn_vars": {"gamma": p["scale"], "beta": p["bias"],
                                       "mean": p["mean"], "var": p["var"]}})


def _onnx_act(nd, at, data, add, fresh, const):
    op_type = nd.op_type
    if op_type == "Clip":
        lo = const(1, at.get("min"))
        hi = const(2, at.get("max"))
        lo = None if lo is None else float(np.asarray(lo).ravel()[0])
        hi = None if hi is None else float(np.asarray(hi).ravel()[0])

        def f(x, lo=lo, hi=hi):
            xp = _xp(x)
            if lo is not None:
                x = xp.maximum(x, lo)
            return x if hi is None else xp.minimum(x, hi)
    elif op_type == "LeakyRelu":
        alpha = float(at.get("alpha", 0.01))

        def f(x, alpha=alpha):
            return _xp(x).where(x >= 0, x, alpha * x)
    elif op_type == "HardSigmoid":
        alpha, beta = float(at.get("alpha", 0.2)), float(at.get("beta", 0.5))

        def f(x, alpha=alpha, beta=beta):
            return _xp(x).clip(alpha * x + beta, 0.0, 1.0)
    else:
        f = {"Relu": lambda x: _xp(x).maximum(x, 0.0),
             "Sigmoid": lambda x: 1 / (1 + _xp(x).exp(-x)), "Tanh": lambda x: _xp(x).tanh(x),
             "HardSwish": lambda x: x * _xp(x).clip(x / 6 + 0.5, 0, 1)}[op_type]
    kind = classify_scalar(lambda t: np.asarray(f(np.asarray(t, np.float64))))
    add(fresh(kind if kind in ("relu", "relu6") else "act"), "act", [nd.inputs[0]],
        lambda v, x, f=f: f(x), nd.outputs[0], act=kind)


def _onnx_binary(nd, data, add, fresh, consts, label):
    a, b = nd.inputs[:2]
    f = {"Add": lambda x, y: x + y, "Sub": lambda x, y: x - y, "Mul": lambda x, y: x * y,
         "Div": lambda x, y: x / y}[nd.op_type]
    if a in data and b in data:
        op = {"Add": "add", "Sub": "sub", "Mul": "mul"}.get(nd.op_type)
        if op is None:
            raise ValueError(f"{label}: division of two tensors is not supported")
        add(fresh(op), op, [a, b], lambda v, x, y, f=f: f(x, y), nd.outputs[0])
        return
    x_first = a in data
    c = np.asarray(consts[b if x_first else a], np.float64)

    def g(v, x, c=c, x_first=x_first, f=f):
        c = c if _xp(x) is np else jnp.asarray(c, jnp.float32)
        return f(x, c) if x_first else f(c, x)

    kind = (classify_scalar(lambda t: np.asarray(g({}, np.asarray(t, np.float64))))
            if c.ndim == 0 or c.size == 1 else "affine")
    add(fresh("act"), "act", [a if x_first else b], g, nd.outputs[0], act=kind)


def _onnx_pool(nd, at, data, add, fresh, const, label):
    op_type = nd.op_type
    x = nd.inputs[0]
    shape = data[x][1]
    r = len(shape)
    if op_type in ("GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceSum",
                   "ReduceMax"):
        if op_type.startswith("Global"):
            axes, keep = tuple(range(2, r)), True
        else:
            ax = at.get("axes")
            if ax is None and len(nd.inputs) > 1 and nd.inputs[1]:
                ax = const(1)
            axes = tuple(range(r)) if ax is None else tuple(
                sorted(int(a) % r for a in np.asarray(ax).ravel()))
            keep = bool(at.get("keepdims", 1))
        n = int(np.prod([shape[a] for a in axes]))
        if op_type in ("GlobalMaxPool", "ReduceMax"):
            add(fresh("max"), "max", [x], lambda v, t, axes=axes, keep=keep: _xp(t).max(
                t, axis=axes, keepdims=keep), nd.outputs[0], attrs={"axes": axes})
            return
        tmp = nd.outputs[0] + "#sum"
        add(fresh("sum"), "sum", [x], lambda v, t, axes=axes, keep=keep: _xp(t).sum(
            t, axis=axes, keepdims=keep), tmp, attrs={"axes": axes})
        if op_type == "ReduceSum":
            data[nd.outputs[0]] = data.pop(tmp)
            return
        add(fresh("act"), "act", [tmp], lambda v, t, n=n: t / n, nd.outputs[0],
            act="affine")
        return
    kernel = tuple(int(k) for k in at["kernel_shape"])
    k = len(kernel)
    strides = tuple(int(s) for s in at.get("strides", (1,) * k))
    dil = tuple(int(s) for s in at.get("dilations", (1,) * k))
    pads = _onnx_pads(at, shape[2:], kernel, strides, dil)
    extra = _pool_extra(at, shape[2:], kernel, strides, dil, pads)
    window, wst = (1, 1) + kernel, (1, 1) + strides
    wpad = ((0, 0), (0, 0)) + tuple((lo, hi + e) for (lo, hi), e in zip(pads, extra))
    wdil = (1, 1) + dil
    attrs = {"window": window, "window_strides": wst, "window_padding": wpad,
             "window_dilation": wdil}
    if op_type == "MaxPool":
        if len(nd.outputs) > 1 and nd.outputs[1]:
            raise ValueError(f"{label}: the Indices output is not supported")
        add(fresh("maxpool"), "maxpool", [x], lambda v, t: np_reduce_window(
            t, -np.inf, np.maximum, window, wst, wpad, wdil) if _xp(t) is np else
            lax.reduce_window(t, -jnp.inf, lax.max, window, wst, wpad, window_dilation=wdil),
            nd.outputs[0], attrs=attrs)
        return
    tmp = nd.outputs[0] + "#sum"
    add(fresh("sumpool"), "sumpool", [x], lambda v, t: np_reduce_window(
        t, 0.0, np.add, window, wst, wpad, wdil) if _xp(t) is np else lax.reduce_window(
        t, 0.0, lax.add, window, wst, wpad, window_dilation=wdil), tmp, attrs=attrs)
    if at.get("count_include_pad", 0):
        ones = np.ones((1, 1) + tuple(n + lo + hi for n, (lo, hi) in zip(shape[2:], pads)),
                       np.float32)
        cpad = ((0, 0), (0, 0)) + tuple((0, e) for e in extra)
    else:
        ones = np.ones((1, 1) + tuple(shape[2:]), np.float32)
        cpad = wpad
    cnt = np.asarray(lax.reduce_window(jnp.asarray(ones), 0.0, lax.add, window, wst, cpad,
                                       window_dilation=wdil))
    add(fresh("act"), "act", [tmp], lambda v, t, cnt=cnt: t / cnt, nd.outputs[0],
        act="affine")


def _onnx_move(nd, at, data, add, fresh, const, label):
    op_type = nd.op_type
    x = nd.inputs[0]
    shape = data[x][1]
    r = len(shape)
    if op_type in ("Identity", "Dropout"):
        if len(nd.outputs) > 1 and nd.outputs[1]:
            raise ValueError(f"{label}: the mask output is not supported")
        data[nd.outputs[0]] = data[x]
        return
    if op_type == "Concat":
        axis = int(at["axis"]) % r
        ins = [t for t in nd.inputs if t]
        if not all(t in data for t in ins):
            raise ValueError(f"{label}: concatenation with a constant is not supported")
        add(fresh("concat"), "concat", ins, lambda v, *xs, axis=axis: _xp(*xs).concatenate(
            xs, axis=axis), nd.outputs[0], attrs={"axis": axis})
        return
    if op_type == "Transpose":
        perm = tuple(int(p) for p in at.get("perm", tuple(reversed(range(r)))))
        add(fresh("transpose"), "transpose", [x], lambda v, t, perm=perm: _xp(t).transpose(
            t, perm), nd.outputs[0], attrs={"perm": perm})
        return
    if op_type in ("Reshape", "Flatten", "Squeeze", "Unsqueeze"):
        if op_type == "Reshape":
            tgt = [int(s) for s in np.asarray(const(1)).ravel()]
            allowzero = int(at.get("allowzero", 0))
            tgt = [shape[i] if (s == 0 and not allowzero) else s for i, s in enumerate(tgt)]
            out = np.empty(shape, np.int8).reshape(tgt).shape
        elif op_type == "Flatten":
            axis = int(at.get("axis", 1)) % (r + 1)
            out = (int(np.prod(shape[:axis])), int(np.prod(shape[axis:])))
        else:
            axes = at.get("axes")
            if axes is None and len(nd.inputs) > 1 and nd.inputs[1]:
                axes = np.asarray(const(1)).ravel().tolist()
            dummy = np.empty(shape, np.int8)
            if op_type == "Squeeze":
                out = np.squeeze(dummy, axis=None if axes is None else tuple(
                    int(a) for a in axes)).shape
            else:
                for ax in sorted(int(a) % (r + len(axes)) for a in axes):
                    dummy = np.expand_dims(dummy, ax)
                out = dummy.shape
        out = tuple(int(s) for s in out)
        add(fresh("reshape"), "reshape", [x], lambda v, t, out=out: _xp(t).reshape(
            t, (t.shape[0],) + out[1:]), nd.outputs[0])
        return
    if op_type in ("Slice", "Split"):
        if op_type == "Slice":
            starts = np.asarray(const(1)).ravel().tolist()
            ends = np.asarray(const(2)).ravel().tolist()
            axes = np.asarray(const(3, np.arange(len(starts)))).ravel().tolist()
            steps = np.asarray(const(4, np.ones(len(starts), np.int64))).ravel().tolist()
            idx = [slice(None)] * r
            for a, s, e, st in zip(axes, starts, ends, steps):
                idx[int(a) % r] = slice(*slice(int(s), int(min(e, 2**62)),
                                               int(st)).indices(shape[int(a) % r]))
            specs = [(nd.outputs[0], tuple(idx))]
        else:
            axis = int(at.get("axis", 0)) % r
            sizes = at.get("split")
            if sizes is None and len(nd.inputs) > 1 and nd.inputs[1]:
                sizes = np.asarray(const(1)).ravel().tolist()
            n = len(nd.outputs)
            if sizes is None:
                size = -(-shape[axis] // n)
                sizes = [size] * (n - 1) + [shape[axis] - size * (n - 1)]
            specs, start = [], 0
            for o, s in zip(nd.outputs, sizes):
                idx = [slice(None)] * r
                idx[axis] = slice(start, start + int(s))
                specs.append((o, tuple(idx)))
                start += int(s)
        for o, idx in specs:
            if idx[0] != slice(None) and idx[0] != slice(0, shape[0], 1):
                raise ValueError(f"{label}: slicing the batch axis is not supported")
            idx = (slice(None),) + idx[1:]
            add(fresh("slice"), "slice", [x], lambda v, t, idx=idx: t[idx], o,
                attrs={"index": idx})
        return
    if op_type == "Pad":
        mode = at.get("mode", "constant")
        if mode != "constant":
            raise ValueError(f"{label}: only constant padding is supported")
        pads = at.get("pads")
        if pads is None:
            pads = np.asarray(const(1)).ravel().tolist()
        value = float(np.asarray(const(2, at.get("value", 0.0))).ravel()[0]) \
            if (len(nd.inputs) > 2 and nd.inputs[2]) or "value" in at else 0.0
        cfg = tuple((int(pads[i]), int(pads[i + r]), 0) for i in range(r))
        add(fresh("pad"), "pad", [x], lambda v, t, cfg=cfg, value=value: _np_pad(
            t, [c[:2] for c in cfg], value) if _xp(t) is np else lax.pad(
            t, jnp.asarray(value, t.dtype), cfg), nd.outputs[0],
            attrs={"padding_config": cfg, "value": value})
        return
    raise ValueError(f"no graph rule for ONNX operator {op_type!r} ({label})")
