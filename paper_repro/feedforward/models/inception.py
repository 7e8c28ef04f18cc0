"""InceptionV3, exact to ``keras.applications.inception_v3`` (docs/theory.md, section 1; 'tf', 299).

Every convolution is ``Conv2D(use_bias=False)`` + ``BatchNormalization(scale=False)``
(epsilon 1e-3; no ``gamma``) + ReLU. Keras leaves these layers unnamed; here they carry the
names Keras 2 gave them in the official weight file, ``conv2d_1..94`` and
``batch_normalization_1..94`` in creation order (the weight loader matches auto-generated
names by creation order, whatever their numbering in a file).
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from paper_repro.feedforward.models.layers import (
    BatchNorm,
    Conv2D,
    Dense,
    avg_pool,
    global_avg_pool,
    max_pool,
    pool_features,
    relu,
)


class InceptionV3(nn.Module):
    """InceptionV3: ``x (N, H, W, 3)`` tf-preprocessed -> logits ``(N, classes)``."""

    include_top: bool = True
    pooling: str | None = None
    classes: int = 1000

    @nn.compact
    def __call__(self, x):
        n = 0

        def cbn(x, filters, rows, cols, strides=1, padding="same"):
            nonlocal n
            n += 1
            x = Conv2D(
                filters,
                (rows, cols),
                strides=strides,
                padding=padding,
                use_bias=False,
                name=f"conv2d_{n}",
            )(x)
            x = BatchNorm(scale=False, name=f"batch_normalization_{n}")(x)
            return relu(x)

        def cat(*xs):
            return jnp.concatenate(xs, axis=-1)

        def pool_same(x):
            return avg_pool(x, 3, 1, "same")

        x = cbn(x, 32, 3, 3, strides=2, padding="valid")
        x = cbn(x, 32, 3, 3, padding="valid")
        x = cbn(x, 64, 3, 3)
        x = max_pool(x, 3, 2)
        x = cbn(x, 80, 1, 1, padding="valid")
        x = cbn(x, 192, 3, 3, padding="valid")
        x = max_pool(x, 3, 2)

        # mixed0, mixed1, mixed2: 35 x 35
        for pool_filters in (32, 64, 64):
            b1 = cbn(x, 64, 1, 1)
            b5 = cbn(x, 48, 1, 1)
            b5 = cbn(b5, 64, 5, 5)
            b3 = cbn(x, 64, 1, 1)
            b3 = cbn(b3, 96, 3, 3)
            b3 = cbn(b3, 96, 3, 3)
            bp = cbn(pool_same(x), pool_filters, 1, 1)
            x = cat(b1, b5, b3, bp)

        # mixed3: 17 x 17
        b3 = cbn(x, 384, 3, 3, strides=2, padding="valid")
        bd = cbn(x, 64, 1, 1)
        bd = cbn(bd, 96, 3, 3)
        bd = cbn(bd, 96, 3, 3, strides=2, padding="valid")
        x = cat(b3, bd, max_pool(x, 3, 2))

        # mixed4..mixed7
        for width in (128, 160, 160, 192):
            b1 = cbn(x, 192, 1, 1)
            b7 = cbn(x, width, 1, 1)
            b7 = cbn(b7, width, 1, 7)
            b7 = cbn(b7, 192, 7, 1)
            bd = cbn(x, width, 1, 1)
            bd = cbn(bd, width, 7, 1)
            bd = cbn(bd, width, 1, 7)
            bd = cbn(bd, width, 7, 1)
            bd = cbn(bd, 192, 1, 7)
            bp = cbn(pool_same(x), 192, 1, 1)
            x = cat(b1, b7, bd, bp)

        # mixed8: 8 x 8
        b3 = cbn(x, 192, 1, 1)
        b3 = cbn(b3, 320, 3, 3, strides=2, padding="valid")
        b7 = cbn(x, 192, 1, 1)
        b7 = cbn(b7, 192, 1, 7)
        b7 = cbn(b7, 192, 7, 1)
        b7 = cbn(b7, 192, 3, 3, strides=2, padding="valid")
        x = cat(b3, b7, max_pool(x, 3, 2))

        # mixed9, mixed10
        for _ in range(2):
            b1 = cbn(x, 320, 1, 1)
            b3 = cbn(x, 384, 1, 1)
            b3 = cat(cbn(b3, 384, 1, 3), cbn(b3, 384, 3, 1))
            bd = cbn(x, 448, 1, 1)
            bd = cbn(bd, 384, 3, 3)
            bd = cat(cbn(bd, 384, 1, 3), cbn(bd, 384, 3, 1))
            bp = cbn(pool_same(x), 192, 1, 1)
            x = cat(b1, b3, bd, bp)

        if not self.include_top:
            return pool_features(x, self.pooling)
        return Dense(self.classes, name="predictions")(global_avg_pool(x))
