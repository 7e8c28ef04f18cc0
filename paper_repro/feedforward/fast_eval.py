"""Fast inference of the Flax model ports: batch norm folded into the kernels, CPU-friendly ops.

:func:`make_eval_apply` gives ``f(params, x) -> logits`` with the signature and the params
tree of :func:`paper_repro.feedforward.models.make_apply` (the unfolded Keras layout, float or
quantized), computed the way models are deployed:

- **batch norm folded**: a convolution (or separable convolution) whose output goes straight
  into an inference batch norm runs as one convolution with the kernel's output channels
  scaled by ``gamma / sqrt(moving_variance + eps)`` and the bias
  ``beta + (bias - moving_mean) * scale``. The folding happens inside the jitted function, at
  evaluation time, so the quantization target stays the unfolded kernel: quantize first, the
  evaluation folds the quantized kernel. Exact up to float32 rounding (about 1e-6 relative per
  layer; the ImageNet top-1/top-5 of the real MobileNet on 1300 images is unchanged);
- **CPU-friendly operations** (what XLA's CPU backend runs fastest; the same choices as
  :mod:`paper_repro.feedforward.onnx_model`): 1x1 convolutions as one matmul over channels,
  convolutions with few input channels (the RGB stem) as patches + one matmul, depthwise
  convolutions as a sum of shifted products; other convolutions as XLA convolutions.

The model's modules are run unchanged; :func:`flax.linen.intercept_methods` replaces the calls
of ``Conv2D``, ``DepthwiseConv2D``, ``SeparableConv2D`` and ``BatchNorm``
(:mod:`paper_repro.feedforward.models.layers`) by the fast versions. The unfused convolution a
folded batch norm replaces is never used, and XLA drops it. :func:`make_apply` of the models
registry stays the reference (the Keras summation order) and is what the graph tracer of the
data-free repairs reads.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from paper_repro.feedforward.models import layers as L

# dense convolutions with at most this many input channels run as patches + one matmul
PATCHES_MAX_CIN = 4
# images per inner step of a jitted evaluation: small enough that a layer's activations stay in
# the CPU caches (MobileNet 0.75 on 2 cores: batch 5 runs about 3x faster per image than 50)
CHUNK = 5


def bn_affine(bn: dict, *, epsilon: float) -> tuple[jax.Array, jax.Array]:
    """Inference batch norm as ``y = x * scale + shift``; ``bn`` holds ``moving_mean``,
    ``moving_variance`` and optionally ``gamma`` / ``beta`` (each ``(C,)``). Same formula as
    :class:`~paper_repro.feedforward.models.layers.BatchNorm`. Returns ``(scale, shift)``, each
    ``(C,)``."""
    scale = lax.rsqrt(bn["moving_variance"] + epsilon)
    if "gamma" in bn:
        scale = scale * bn["gamma"]
    shift = -bn["moving_mean"] * scale
    if "beta" in bn:
        shift = shift + bn["beta"]
    return scale, shift


def _spatial_pads(x, kernel_hw, strides, padding) -> tuple[tuple[int, int], tuple[int, int]]:
    p = L._padding(padding)
    if p == "SAME":
        return (L._same_pads(x.shape[1], kernel_hw[0], strides[0]),
                L._same_pads(x.shape[2], kernel_hw[1], strides[1]))
    if p == "VALID":
        return ((0, 0), (0, 0))
    return p


def conv2d(x, kernel, *, strides=1, padding="valid") -> jax.Array:
    """Keras ``Conv2D`` without bias: ``x (N, H, W, in)``, ``kernel (kh, kw, in, out)`` ->
    ``(N, H', W', out)``. 1x1 kernels: a matmul over channels (strided by slicing); few input
    channels: patches ``(N, H', W', kh * kw * in)`` + one matmul; else an XLA convolution."""
    kh, kw, cin, cout = kernel.shape
    st = L._pair(strides)
    pads = _spatial_pads(x, (kh, kw), st, padding)
    if kh == kw == 1 and pads == ((0, 0), (0, 0)):
        if st != (1, 1):
            x = x[:, :: st[0], :: st[1], :]
        return jnp.matmul(x, kernel.reshape(cin, cout))
    if cin <= PATCHES_MAX_CIN:
        x = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
        n, hp, wp, _ = x.shape
        ho, wo = (hp - kh) // st[0] + 1, (wp - kw) // st[1] + 1
        cols = [
            lax.slice(x, (0, i, j, 0), (n, i + st[0] * (ho - 1) + 1, j + st[1] * (wo - 1) + 1, cin),
                      (1, st[0], st[1], 1))
            for i in range(kh)
            for j in range(kw)
        ]  # features ordered (kh, kw, in), as the kernel's leading axes
        return jnp.matmul(jnp.concatenate(cols, axis=-1), kernel.reshape(kh * kw * cin, cout))
    return lax.conv_general_dilated(x, kernel, st, pads, dimension_numbers=L._DN)


def _conv_layer(module: nn.Module, x, p: dict, scale=None, shift=None) -> jax.Array:
    """One conv-type layer (``module`` is the Keras-layer module, ``p`` its params) with the
    batch norm ``(scale, shift)`` folded in when given."""
    bias = p.get("bias")
    if isinstance(module, L.Conv2D):
        k = p["kernel"]
        y = conv2d(x, k if scale is None else k * scale, strides=module.strides,
                   padding=module.padding)
    elif isinstance(module, L.DepthwiseConv2D):
        k = p["depthwise_kernel"]
        if scale is not None:
            kh, kw, cin, mult = k.shape
            k = (k.reshape(kh, kw, cin * mult) * scale).reshape(k.shape)
        y = L._depthwise_shift(x, k, module.strides, module.padding)
    elif isinstance(module, L.SeparableConv2D):
        pk = p["pointwise_kernel"]
        y = L._depthwise_shift(x, p["depthwise_kernel"], module.strides, module.padding)
        y = conv2d(y, pk if scale is None else pk * scale)
    else:  # pragma: no cover - only the classes above are intercepted
        raise TypeError(f"not a convolution layer: {type(module).__name__}")
    if scale is None:
        return y if bias is None else y + bias
    return y + (shift if bias is None else bias * scale + shift)


_CONVS = (L.Conv2D, L.DepthwiseConv2D, L.SeparableConv2D)


def _interceptor() -> Callable:
    """A fresh :func:`flax.linen.intercept_methods` hook for one trace: conv-type layers run
    fast; a batch norm whose input is a conv layer's output recomputes that layer folded."""
    produced: dict[int, tuple[Any, nn.Module, Any, dict]] = {}

    def hook(next_fun, args, kwargs, context):
        m = context.module
        if context.method_name != "__call__" or kwargs or len(args) != 1:
            return next_fun(*args, **kwargs)
        (x,) = args
        if isinstance(m, _CONVS):
            p = dict(m.variables["params"])
            y = _conv_layer(m, x, p)
            produced[id(y)] = (y, m, x, p)  # y kept alive: its id stays unique
            return y
        if isinstance(m, L.BatchNorm):
            hit = produced.get(id(x))
            if hit is not None and hit[0] is x:
                _, cm, cx, cp = hit
                scale, shift = bn_affine(dict(m.variables["params"]), epsilon=m.epsilon)
                return _conv_layer(cm, cx, cp, scale, shift)
        return next_fun(*args, **kwargs)

    return hook


def apply(spec, params: dict, x: jax.Array, *, softmax: bool = False) -> jax.Array:
    """:func:`paper_repro.feedforward.models.apply` with batch norm folded and fast ops.

    ``spec``: a :class:`~paper_repro.feedforward.models.ModelSpec`; ``params``: its unfolded
    params tree (float or quantized); ``x (N, H, W, 3)`` preprocessed float32 -> ``(N,
    classes)`` logits (softmax probabilities with ``softmax=True``), or the feature output
    without the top.
    """
    with nn.intercept_methods(_interceptor()):
        y = spec.module.apply({"params": params}, x)
    if softmax and spec.include_top:
        y = jax.nn.softmax(y, axis=-1)
    return y


def apply_chunked(spec, params: dict, x: jax.Array, *, chunk: int, softmax: bool = False):
    """:func:`apply` on ``x (N, H, W, 3)`` in consecutive chunks of ``chunk`` images, one
    after another inside one XLA loop (the last chunk zero-padded; the padding is dropped).
    Same per-image results as one call on the whole batch: images never mix."""
    n = x.shape[0]
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    if n <= chunk:
        return apply(spec, params, x, softmax=softmax)
    k = -(-n // chunk)
    if k * chunk != n:
        x = jnp.concatenate([x, jnp.zeros((k * chunk - n,) + x.shape[1:], x.dtype)])
    y = lax.map(lambda xb: apply(spec, params, xb, softmax=softmax),
                x.reshape((k, chunk) + x.shape[1:]))
    return y.reshape((k * chunk,) + y.shape[2:])[:n]


@functools.lru_cache(maxsize=32)
def make_eval_apply(spec, *, softmax: bool = False, chunk: int | None = CHUNK
                    ) -> Callable[[dict, jax.Array], jax.Array]:
    """A jitted ``f(params, x)`` equal to :func:`apply` (one object per spec and options, so
    evaluation steps built on it compile once per input shape). ``chunk``: images per inner
    step (:func:`apply_chunked`); ``None``: the whole batch at once."""
    if chunk is None:
        return jax.jit(functools.partial(apply, spec, softmax=softmax))
    return jax.jit(functools.partial(apply_chunked, spec, chunk=chunk, softmax=softmax))
