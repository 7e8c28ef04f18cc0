"""Keras-exact inference layers as small Flax (linen) modules (docs/theory.md, section 1).

Each module owns the variables of one Keras layer, under the Keras variable names and in
the Keras tensor layouts, so that a model's params are a plain nested dict
``{keras_layer_name: {keras_var_name: array}}``:

- ``Conv2D``          ``kernel (kh, kw, in, out)``, ``bias (out,)``
- ``DepthwiseConv2D`` ``depthwise_kernel (kh, kw, in, mult)``, ``bias (in*mult,)``
- ``SeparableConv2D`` ``depthwise_kernel (kh, kw, in, mult)``, ``pointwise_kernel (1, 1, in*mult, out)``
- ``Dense``           ``kernel (in, out)``, ``bias (out,)``
- ``BatchNorm``       ``gamma, beta, moving_mean, moving_variance`` (each ``(C,)``; ``gamma``
  absent when ``scale=False``, ``beta`` absent when ``center=False``), inference mode only.

Variables are created in Keras's legacy weight order (the order of the ``.h5`` files).
Inputs and outputs are NHWC float32. Padding ``"same"`` follows TensorFlow: for stride 2 on an
even size the extra zero row/column goes at the bottom/right.
"""

from __future__ import annotations

import math
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

_DN = ("NHWC", "HWIO", "NHWC")


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def _padding(p):
    if isinstance(p, str):
        p = p.upper()
        if p not in ("SAME", "VALID"):
            raise ValueError(f"padding must be 'same' or 'valid', got {p!r}")
        return p
    return tuple(tuple(q) for q in p)


def _glorot(key, shape, dtype=jnp.float32):
    # Keras default kernel initializer (glorot_uniform) with Keras's fan computation.
    receptive = math.prod(shape[:-2]) if len(shape) > 2 else 1
    fan_in, fan_out = shape[-2] * receptive, shape[-1] * receptive
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return jax.random.uniform(key, shape, dtype, -limit, limit)


def _zeros(key, shape, dtype=jnp.float32):
    return jnp.zeros(shape, dtype)


def _ones(key, shape, dtype=jnp.float32):
    return jnp.ones(shape, dtype)


class Conv2D(nn.Module):
    """Keras ``Conv2D``: ``x (N, H, W, in) -> (N, H', W', features)``."""

    features: int
    kernel_size: int | tuple[int, int] = 3
    strides: int | tuple[int, int] = 1
    padding: str = "valid"
    use_bias: bool = True

    @nn.compact
    def __call__(self, x):
        kh, kw = _pair(self.kernel_size)
        kernel = self.param("kernel", _glorot, (kh, kw, x.shape[-1], self.features))
        y = lax.conv_general_dilated(
            x, kernel, _pair(self.strides), _padding(self.padding), dimension_numbers=_DN
        )
        if self.use_bias:
            y = y + self.param("bias", _zeros, (self.features,))
        return y


def _depthwise_grouped(x, kernel, strides, padding):
    kh, kw, cin, mult = kernel.shape
    return lax.conv_general_dilated(
        x,
        kernel.reshape(kh, kw, 1, cin * mult),
        _pair(strides),
        _padding(padding),
        dimension_numbers=_DN,
        feature_group_count=cin,
    )


def _same_pads(size: int, k: int, s: int) -> tuple[int, int]:
    """TensorFlow 'SAME' padding (extra row/column at the end) for one spatial axis."""
    total = max((math.ceil(size / s) - 1) * s + k - size, 0)
    return total // 2, total - total // 2


# How depthwise convolutions run: "shift" (default; fast on CPU) or "grouped" (the same XLA
# grouped convolution Keras uses, bit-identical to Keras on the JAX backend). Read at trace
# time; set PAPER_REPRO_DEPTHWISE=grouped to change it for a process.
DEPTHWISE = os.environ.get("PAPER_REPRO_DEPTHWISE", "shift")


def _depthwise(x, kernel, strides, padding):
    """Depthwise convolution ``(N, H, W, C) -> (N, H', W', C * mult)``.

    ``DEPTHWISE == "shift"``: a sum of ``kh * kw`` shifted, scaled copies of ``x`` -- the
    same sums as a grouped ``conv_general_dilated`` in another order (float32 rounding
    differs, about 1e-6 relative per layer), but XLA on CPU runs grouped convolutions several
    times slower than these multiply-adds (MobileNet 0.75, 100 images: about 3.5x faster).
    """
    if DEPTHWISE == "grouped":
        return _depthwise_grouped(x, kernel, strides, padding)
    if DEPTHWISE != "shift":
        raise ValueError(f"PAPER_REPRO_DEPTHWISE must be 'shift' or 'grouped', got {DEPTHWISE!r}")
    return _depthwise_shift(x, kernel, strides, padding)


def _depthwise_shift(x, kernel, strides, padding):
    """Depthwise convolution as a sum of ``kh * kw`` shifted, scaled copies of ``x``:
    ``x (N, H, W, C)``, ``kernel (kh, kw, C, mult)`` -> ``(N, H', W', C * mult)``."""
    kh, kw, cin, mult = kernel.shape
    sh, sw = _pair(strides)
    if mult > 1:
        x = jnp.repeat(x, mult, axis=-1)  # output channel c*mult+m reads input channel c
    k = kernel.reshape(kh, kw, cin * mult)
    p = _padding(padding)
    if p == "SAME":
        pads = (_same_pads(x.shape[1], kh, sh), _same_pads(x.shape[2], kw, sw))
    elif p == "VALID":
        pads = ((0, 0), (0, 0))
    else:
        pads = p
    x = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    n, hp, wp, c = x.shape
    ho, wo = (hp - kh) // sh + 1, (wp - kw) // sw + 1
    out = None
    for i in range(kh):
        for j in range(kw):
            xs = lax.slice(x, (0, i, j, 0), (n, i + sh * (ho - 1) + 1, j + sw * (wo - 1) + 1, c),
                           (1, sh, sw, 1))
            out = xs * k[i, j] if out is None else out + xs * k[i, j]
    return out


class DepthwiseConv2D(nn.Module):
    """Keras ``DepthwiseConv2D``: ``x (N, H, W, C) -> (N, H', W', C * depth_multiplier)``."""

    kernel_size: int | tuple[int, int] = 3
    strides: int | tuple[int, int] = 1
    padding: str = "valid"
    depth_multiplier: int = 1
    use_bias: bool = True

    @nn.compact
    def __call__(self, x):
        kh, kw = _pair(self.kernel_size)
        cin = x.shape[-1]
        kernel = self.param("depthwise_kernel", _glorot, (kh, kw, cin, self.depth_multiplier))
        y = _depthwise(x, kernel, self.strides, self.padding)
        if self.use_bias:
            y = y + self.param("bias", _zeros, (cin * self.depth_multiplier,))
        return y


class SeparableConv2D(nn.Module):
    """Keras ``SeparableConv2D``: depthwise then 1x1 pointwise, ``-> (N, H', W', features)``."""

    features: int
    kernel_size: int | tuple[int, int] = 3
    strides: int | tuple[int, int] = 1
    padding: str = "valid"
    depth_multiplier: int = 1
    use_bias: bool = True

    @nn.compact
    def __call__(self, x):
        kh, kw = _pair(self.kernel_size)
        cin = x.shape[-1]
        dk = self.param("depthwise_kernel", _glorot, (kh, kw, cin, self.depth_multiplier))
        pk = self.param(
            "pointwise_kernel", _glorot, (1, 1, cin * self.depth_multiplier, self.features)
        )
        y = _depthwise(x, dk, self.strides, self.padding)
        y = lax.conv_general_dilated(y, pk, (1, 1), "VALID", dimension_numbers=_DN)
        if self.use_bias:
            y = y + self.param("bias", _zeros, (self.features,))
        return y


class Dense(nn.Module):
    """Keras ``Dense``: ``x (..., in) -> (..., features)``."""

    features: int
    use_bias: bool = True

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", _glorot, (x.shape[-1], self.features))
        y = jnp.matmul(x, kernel)
        if self.use_bias:
            y = y + self.param("bias", _zeros, (self.features,))
        return y


class BatchNorm(nn.Module):
    """Keras ``BatchNormalization`` in inference mode over the last axis.

    ``y = x * inv + (beta - moving_mean * inv)``, ``inv = gamma / sqrt(moving_variance + epsilon)``,
    evaluated in the same order as Keras's JAX backend.
    """

    epsilon: float = 1e-3
    center: bool = True
    scale: bool = True

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        gamma = self.param("gamma", _ones, (c,)) if self.scale else None
        beta = self.param("beta", _zeros, (c,)) if self.center else None
        mean = self.param("moving_mean", _zeros, (c,))
        var = self.param("moving_variance", _ones, (c,))
        inv = lax.rsqrt(var + self.epsilon)
        if gamma is not None:
            inv = inv * gamma
        res = -mean * inv
        if beta is not None:
            res = res + beta
        return x * inv + res


def relu(x):
    return jnp.maximum(x, 0.0)


def relu6(x):
    """Keras ``ReLU(6.0)``."""
    return jnp.minimum(jnp.maximum(x, 0.0), 6.0)


def zero_pad(x, padding):
    """Keras ``ZeroPadding2D(((top, bottom), (left, right)))`` on NHWC."""
    (top, bottom), (left, right) = padding
    return jnp.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))


def max_pool(x, pool_size, strides=None, padding="valid"):
    """Keras ``MaxPooling2D`` (padding ``"same"`` pads with -inf)."""
    ph, pw = _pair(pool_size)
    sh, sw = _pair(strides if strides is not None else pool_size)
    return lax.reduce_window(
        x, -jnp.inf, lax.max, (1, ph, pw, 1), (1, sh, sw, 1), _padding(padding)
    )


def avg_pool(x, pool_size, strides=None, padding="valid"):
    """Keras ``AveragePooling2D``; with ``"same"`` it averages over the valid pixels only."""
    ph, pw = _pair(pool_size)
    sh, sw = _pair(strides if strides is not None else pool_size)
    window, stride, pad = (1, ph, pw, 1), (1, sh, sw, 1), _padding(padding)
    summed = lax.reduce_window(x, 0.0, lax.add, window, stride, pad)
    if pad == "VALID":
        return summed / (ph * pw)
    ones = jnp.ones((1, x.shape[1], x.shape[2], 1), x.dtype)
    return summed / lax.reduce_window(ones, 0.0, lax.add, window, stride, pad)


def global_avg_pool(x, keepdims=False):
    """Keras ``GlobalAveragePooling2D``: ``(N, H, W, C) -> (N, C)`` (or ``(N, 1, 1, C)``)."""
    return jnp.mean(x, axis=(1, 2), keepdims=keepdims)


def global_max_pool(x):
    """Keras ``GlobalMaxPooling2D``: ``(N, H, W, C) -> (N, C)``."""
    return jnp.max(x, axis=(1, 2))


def pool_features(x, pooling):
    """The ``include_top=False`` output: feature map, or its global ``"avg"``/``"max"`` pool."""
    if pooling is None:
        return x
    if pooling == "avg":
        return global_avg_pool(x)
    if pooling == "max":
        return global_max_pool(x)
    raise ValueError(f"pooling must be None, 'avg' or 'max', got {pooling!r}")
