"""ResNet50 (v1), exact to ``keras.applications.resnet`` (docs/theory.md, section 1; 'caffe').

Batch norm epsilon 1.001e-5; convolutions with bias; the stride of a stage's first block is on
its first 1x1 convolution (the Keras/Caffe v1 variant).
"""

from __future__ import annotations

import flax.linen as nn

from paper_repro.feedforward.models.layers import (
    BatchNorm,
    Conv2D,
    Dense,
    global_avg_pool,
    max_pool,
    pool_features,
    relu,
    zero_pad,
)

EPS = 1.001e-5


def _block(x, filters, *, stride=1, conv_shortcut=True, name):
    if conv_shortcut:
        shortcut = Conv2D(4 * filters, 1, strides=stride, name=f"{name}_0_conv")(x)
        shortcut = BatchNorm(EPS, name=f"{name}_0_bn")(shortcut)
    else:
        shortcut = x
    x = Conv2D(filters, 1, strides=stride, name=f"{name}_1_conv")(x)
    x = relu(BatchNorm(EPS, name=f"{name}_1_bn")(x))
    x = Conv2D(filters, 3, padding="same", name=f"{name}_2_conv")(x)
    x = relu(BatchNorm(EPS, name=f"{name}_2_bn")(x))
    x = Conv2D(4 * filters, 1, name=f"{name}_3_conv")(x)
    x = BatchNorm(EPS, name=f"{name}_3_bn")(x)
    return relu(shortcut + x)


def _stack(x, filters, blocks, *, stride1=2, name):
    x = _block(x, filters, stride=stride1, name=f"{name}_block1")
    for i in range(2, blocks + 1):
        x = _block(x, filters, conv_shortcut=False, name=f"{name}_block{i}")
    return x


class ResNet50(nn.Module):
    """ResNet50 v1: ``x (N, H, W, 3)`` caffe-preprocessed -> logits ``(N, classes)``."""

    include_top: bool = True
    pooling: str | None = None
    classes: int = 1000

    @nn.compact
    def __call__(self, x):
        x = zero_pad(x, ((3, 3), (3, 3)))
        x = Conv2D(64, 7, strides=2, name="conv1_conv")(x)
        x = relu(BatchNorm(EPS, name="conv1_bn")(x))
        x = zero_pad(x, ((1, 1), (1, 1)))
        x = max_pool(x, 3, 2)
        x = _stack(x, 64, 3, stride1=1, name="conv2")
        x = _stack(x, 128, 4, name="conv3")
        x = _stack(x, 256, 6, name="conv4")
        x = _stack(x, 512, 3, name="conv5")
        if not self.include_top:
            return pool_features(x, self.pooling)
        return Dense(self.classes, name="predictions")(global_avg_pool(x))
