"""MobileNet (v1) and MobileNetV2, exact to ``keras.applications.mobilenet`` and
``keras.applications.mobilenet_v2`` (docs/theory.md, section 1; 'tf' preprocessing, 224x224).

Batch norm epsilon 1e-3, ReLU6, bias-free convolutions. Strided depthwise convolutions use an
explicit ``ZeroPadding2D`` then ``"valid"`` as Keras does (v1: always ``((0, 1), (0, 1))``;
v2: ``imagenet_utils.correct_pad``, which depends on the parity of the input size).
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from paper_repro.feedforward.models.layers import (
    BatchNorm,
    Conv2D,
    Dense,
    DepthwiseConv2D,
    global_avg_pool,
    pool_features,
    relu6,
    zero_pad,
)

# (pointwise filters, stride) of MobileNet v1 depthwise blocks 1..13
_V1_BLOCKS = (
    (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
    (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1),
)  # fmt: skip

# (filters, stride, expansion) of MobileNetV2 inverted residual blocks 0..16
_V2_BLOCKS = (
    (16, 1, 1), (24, 2, 6), (24, 1, 6), (32, 2, 6), (32, 1, 6), (32, 1, 6),
    (64, 2, 6), (64, 1, 6), (64, 1, 6), (64, 1, 6), (96, 1, 6), (96, 1, 6), (96, 1, 6),
    (160, 2, 6), (160, 1, 6), (160, 1, 6), (320, 1, 6),
)  # fmt: skip


def make_divisible(v, divisor=8, min_value=None):
    """Keras ``mobilenet_v2._make_divisible``: round ``v`` to a multiple of ``divisor``."""
    if min_value is None:
        min_value = divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def correct_pad(size_hw, kernel_size=3):
    """Keras ``imagenet_utils.correct_pad`` for a spatial size ``(H, W)``."""
    adjust = (1 - size_hw[0] % 2, 1 - size_hw[1] % 2)
    c = kernel_size // 2
    return ((c - adjust[0], c), (c - adjust[1], c))


class MobileNet(nn.Module):
    """MobileNet v1: ``x (N, H, W, 3)`` tf-preprocessed -> logits ``(N, classes)``.

    Head (``include_top``): global average pool -> (N, 1, 1, C) -> dropout (identity at
    inference) -> 1x1 ``conv_preds`` with bias -> reshape (N, classes); Keras then applies
    softmax, here the logits are returned.
    """

    alpha: float = 1.0
    depth_multiplier: int = 1
    include_top: bool = True
    pooling: str | None = None
    classes: int = 1000

    @nn.compact
    def __call__(self, x):
        a = self.alpha
        x = Conv2D(int(32 * a), 3, strides=2, padding="same", use_bias=False, name="conv1")(x)
        x = relu6(BatchNorm(name="conv1_bn")(x))
        for i, (filters, stride) in enumerate(_V1_BLOCKS, start=1):
            if stride != 1:
                x = zero_pad(x, ((0, 1), (0, 1)))
            x = DepthwiseConv2D(
                3,
                strides=stride,
                padding="same" if stride == 1 else "valid",
                depth_multiplier=self.depth_multiplier,
                use_bias=False,
                name=f"conv_dw_{i}",
            )(x)
            x = relu6(BatchNorm(name=f"conv_dw_{i}_bn")(x))
            x = Conv2D(int(filters * a), 1, padding="same", use_bias=False, name=f"conv_pw_{i}")(x)
            x = relu6(BatchNorm(name=f"conv_pw_{i}_bn")(x))
        if not self.include_top:
            return pool_features(x, self.pooling)
        x = global_avg_pool(x, keepdims=True)
        x = Conv2D(self.classes, 1, padding="same", name="conv_preds")(x)
        return jnp.reshape(x, (x.shape[0], self.classes))


class MobileNetV2(nn.Module):
    """MobileNetV2: ``x (N, H, W, 3)`` tf-preprocessed -> logits ``(N, classes)``."""

    alpha: float = 1.0
    include_top: bool = True
    pooling: str | None = None
    classes: int = 1000

    @nn.compact
    def __call__(self, x):
        a = self.alpha
        x = Conv2D(
            make_divisible(32 * a, 8), 3, strides=2, padding="same", use_bias=False, name="Conv1"
        )(x)
        x = relu6(BatchNorm(name="bn_Conv1")(x))
        for block_id, (filters, stride, expansion) in enumerate(_V2_BLOCKS):
            inputs = x
            in_channels = x.shape[-1]
            pointwise = make_divisible(int(filters * a), 8)
            if block_id:
                prefix = f"block_{block_id}_"
                x = Conv2D(
                    expansion * in_channels, 1, padding="same", use_bias=False,
                    name=f"{prefix}expand",
                )(x)  # fmt: skip
                x = relu6(BatchNorm(name=f"{prefix}expand_BN")(x))
            else:
                prefix = "expanded_conv_"
            if stride == 2:
                x = zero_pad(x, correct_pad(x.shape[1:3], 3))
            x = DepthwiseConv2D(
                3,
                strides=stride,
                padding="same" if stride == 1 else "valid",
                use_bias=False,
                name=f"{prefix}depthwise",
            )(x)
            x = relu6(BatchNorm(name=f"{prefix}depthwise_BN")(x))
            x = Conv2D(pointwise, 1, padding="same", use_bias=False, name=f"{prefix}project")(x)
            x = BatchNorm(name=f"{prefix}project_BN")(x)
            if in_channels == pointwise and stride == 1:
                x = inputs + x
        last = make_divisible(1280 * a, 8) if a > 1.0 else 1280
        x = Conv2D(last, 1, use_bias=False, name="Conv_1")(x)
        x = relu6(BatchNorm(name="Conv_1_bn")(x))
        if not self.include_top:
            return pool_features(x, self.pooling)
        return Dense(self.classes, name="predictions")(global_avg_pool(x))
