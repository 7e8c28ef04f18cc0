"""Xception, exact to ``keras.applications.xception`` (docs/theory.md, section 1; 'tf', 299x299).

Batch norm epsilon 1e-3 (Keras default). Keras leaves the four strided 1x1 shortcut
convolutions and their batch norms unnamed; here they carry the names Keras 2 gave them in
the official weight file, ``conv2d_1..4`` and ``batch_normalization_1..4`` (the weight loader
matches such auto-generated names by creation order, whatever their numbering in a file).
"""

from __future__ import annotations

import flax.linen as nn

from paper_repro.feedforward.models.layers import (
    BatchNorm,
    Conv2D,
    Dense,
    SeparableConv2D,
    global_avg_pool,
    max_pool,
    pool_features,
    relu,
)


def _sep_bn(x, filters, name):
    x = SeparableConv2D(filters, 3, padding="same", use_bias=False, name=name)(x)
    return BatchNorm(name=f"{name}_bn")(x)


class Xception(nn.Module):
    """Xception: ``x (N, H, W, 3)`` tf-preprocessed (in [-1, 1]) -> logits ``(N, classes)``."""

    include_top: bool = True
    pooling: str | None = None
    classes: int = 1000

    @nn.compact
    def __call__(self, x):
        n_res = 0

        def residual(x, filters):
            nonlocal n_res
            n_res += 1
            r = Conv2D(
                filters, 1, strides=2, padding="same", use_bias=False, name=f"conv2d_{n_res}"
            )(x)
            return BatchNorm(name=f"batch_normalization_{n_res}")(r)

        x = Conv2D(32, 3, strides=2, use_bias=False, name="block1_conv1")(x)
        x = relu(BatchNorm(name="block1_conv1_bn")(x))
        x = Conv2D(64, 3, use_bias=False, name="block1_conv2")(x)
        x = relu(BatchNorm(name="block1_conv2_bn")(x))

        res = residual(x, 128)
        x = relu(_sep_bn(x, 128, "block2_sepconv1"))
        x = _sep_bn(x, 128, "block2_sepconv2")
        x = max_pool(x, 3, 2, "same") + res

        for block, filters in ((3, 256), (4, 728)):
            res = residual(x, filters)
            x = _sep_bn(relu(x), filters, f"block{block}_sepconv1")
            x = _sep_bn(relu(x), filters, f"block{block}_sepconv2")
            x = max_pool(x, 3, 2, "same") + res

        for i in range(8):
            res = x
            prefix = f"block{i + 5}"
            for j in (1, 2, 3):
                x = _sep_bn(relu(x), 728, f"{prefix}_sepconv{j}")
            x = x + res

        res = residual(x, 1024)
        x = _sep_bn(relu(x), 728, "block13_sepconv1")
        x = _sep_bn(relu(x), 1024, "block13_sepconv2")
        x = max_pool(x, 3, 2, "same") + res

        x = relu(_sep_bn(x, 1536, "block14_sepconv1"))
        x = relu(_sep_bn(x, 2048, "block14_sepconv2"))
        if not self.include_top:
            return pool_features(x, self.pooling)
        return Dense(self.classes, name="predictions")(global_avg_pool(x))
