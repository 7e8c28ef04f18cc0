"""VGG16, exact to ``keras.applications.vgg16`` (docs/theory.md, section 1; 'caffe' preprocessing)."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from paper_repro.feedforward.models.layers import Conv2D, Dense, max_pool, pool_features, relu

_BLOCKS = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))


class VGG16(nn.Module):
    """VGG16: ``x (N, H, W, 3)`` caffe-preprocessed -> logits ``(N, classes)`` (pre-softmax).

    With ``include_top=False`` returns the ``block5_pool`` map, or its global pool.
    ``include_top=True`` needs 224x224 inputs for the 1000-class ImageNet weights.
    """

    include_top: bool = True
    pooling: str | None = None
    classes: int = 1000

    @nn.compact
    def __call__(self, x):
        for b, (filters, n) in enumerate(_BLOCKS, start=1):
            for i in range(1, n + 1):
                x = relu(Conv2D(filters, 3, padding="same", name=f"block{b}_conv{i}")(x))
            x = max_pool(x, 2, 2)
        if not self.include_top:
            return pool_features(x, self.pooling)
        x = jnp.reshape(x, (x.shape[0], -1))
        x = relu(Dense(4096, name="fc1")(x))
        x = relu(Dense(4096, name="fc2")(x))
        return Dense(self.classes, name="predictions")(x)
