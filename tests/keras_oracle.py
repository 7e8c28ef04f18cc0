"""Keras 3 (JAX backend) as an oracle for the Flax ports: build a ``keras.applications``
model with random weights (batch-norm statistics randomized too, so batch norm matters),
write it as a legacy ``.h5`` weight file, and run it.

Test helper only: Keras is not a dependency of the package.
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import contextlib  # noqa: E402

import numpy as np  # noqa: E402

KERAS_CONSTRUCTORS = {
    "vgg16": "VGG16",
    "resnet50": "ResNet50",
    "xception": "Xception",
    "inception_v3": "InceptionV3",
    "mobilenet": "MobileNet",
    "mobilenet_v2": "MobileNetV2",
}


def keras():
    """Import Keras 3 with the JAX backend (skip the calling test if unavailable)."""
    import pytest

    k = pytest.importorskip("keras")
    if k.backend.backend() != "jax":
        pytest.skip(f"Keras backend is {k.backend.backend()!r}, the oracle needs 'jax'")
    return k


@contextlib.contextmanager
def _cheap_initializers():
    """Draw Keras's initial weights with numpy instead of jax.random: every weight is
    redrawn by :func:`build` anyway, and jax.random compiles once per tensor shape (tens
    of seconds per model)."""
    from keras.src.backend.jax import random as jr

    rng = np.random.default_rng(0)
    saved = {n: getattr(jr, n) for n in ("uniform", "normal", "truncated_normal")}

    def draw(shape, *args, dtype=None, **kwargs):
        return np.asarray(rng.uniform(-0.05, 0.05, tuple(shape)), dtype=dtype or "float32")

    try:
        for n in saved:
            setattr(jr, n, draw)
        yield
    finally:
        for n, f in saved.items():
            setattr(jr, n, f)


def build(
    name: str,
    *,
    input_size: int,
    include_top: bool = False,
    classes: int = 10,
    alpha: float | None = None,
    seed: int = 0,
    classifier_activation=None,
):
    """A ``keras.applications`` model with weights=None and randomized weights/statistics.

    Every kernel and bias is redrawn (std matched to fan-in so activations stay O(1)); batch
    norm gets gamma ~ U(0.5, 1.5), beta ~ N(0, 0.1), moving_mean ~ N(0, 0.1), moving_variance
    ~ U(0.5, 1.5). ``seed`` fixes the draw (numpy Generator, not global state).
    """
    k = keras()
    kwargs = dict(
        weights=None,
        include_top=include_top,
        input_shape=(input_size, input_size, 3),
    )
    if include_top:
        kwargs.update(classes=classes, classifier_activation=classifier_activation)
    if alpha is not None:
        kwargs["alpha"] = alpha
    with _cheap_initializers():
        model = getattr(k.applications, KERAS_CONSTRUCTORS[name])(**kwargs)
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        for v in layer.weights:
            shape, var = tuple(v.shape), v.path.rsplit("/", 1)[-1]
            if var in ("kernel", "depthwise_kernel", "pointwise_kernel"):
                fan_in = int(np.prod(shape[:-1])) if var != "depthwise_kernel" else int(
                    np.prod(shape[:2])
                )
                value = rng.normal(0.0, np.sqrt(2.0 / fan_in), shape)
            elif var == "bias":
                value = rng.normal(0.0, 0.1, shape)
            elif var == "gamma":
                value = rng.uniform(0.5, 1.5, shape)
            elif var in ("beta", "moving_mean"):
                value = rng.normal(0.0, 0.1, shape)
            elif var == "moving_variance":
                value = rng.uniform(0.5, 1.5, shape)
            else:
                continue
            v.assign(value.astype(np.float32))
    return model


def save_legacy_h5(model, path, *, full_model: bool = False) -> str:
    """Write ``model``'s weights in the legacy ``.h5`` layout as Keras 3 writes it
    (``legacy_h5_format.save_weights_to_hdf5_group``: names without ``:0``). With
    ``full_model=True`` writes ``model.save(path)`` (weights under ``model_weights``)."""
    import h5py

    path = str(path)
    if full_model:
        model.save(path)
        return path
    from keras.src.legacy.saving import legacy_h5_format

    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)
    return path


def run(model, x: np.ndarray) -> np.ndarray:
    """Inference-mode output of the Keras model on ``x (N, H, W, 3)`` float32, as numpy
    (``model.predict``: one jitted program, much faster to compile than op-by-op calls)."""
    return np.asarray(model.predict(x, batch_size=len(x), verbose=0))
