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

    Every kernel is redrawn N(0, 2 / fan_in), bias N(0, 0.1); batch norm gets gamma ~
    U(0.5, 1.5), beta ~ N(0, 0.1) and moving statistics calibrated on random inputs then
    jittered (see ``_calibrate_batch_norm``). ``seed`` fixes every draw (numpy Generator).
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
                fan_in = int(np.prod(shape[:2] if var == "depthwise_kernel" else shape[:-1]))
                value = rng.normal(0.0, np.sqrt(2.0 / fan_in), shape)
            elif var == "bias":
                value = rng.normal(0.0, 0.1, shape)
            elif var == "gamma":
                value = rng.uniform(0.5, 1.5, shape)
            elif var == "beta":
                value = rng.normal(0.0, 0.1, shape)
            else:
                continue
            v.assign(value.astype(np.float32))
    _calibrate_batch_norm(model, rng.normal(size=(4, input_size, input_size, 3)), rng)
    return model


def _calibrate_batch_norm(model, x, rng) -> None:
    """Set every batch norm's moving statistics to its batch statistics on ``x`` (one jitted
    training-mode pass with momentum 0), then jitter them: activations stay O(1) through the
    whole random network (no saturation, outputs depend on the input), and the statistics
    are still arbitrary numbers that the port must use exactly."""
    import jax

    k = keras()
    bns = [layer for layer in model.layers if isinstance(layer, k.layers.BatchNormalization)]
    if not bns:
        return
    for layer in bns:
        layer.momentum = 0.0
    trainable = [v.value for v in model.trainable_variables]
    non_trainable = [v.value for v in model.non_trainable_variables]
    step = jax.jit(lambda t, n, x: model.stateless_call(t, n, x, training=True)[1])
    values = step(trainable, non_trainable, x)
    for v, value in zip(model.non_trainable_variables, values, strict=True):
        v.assign(value)
    for layer in bns:
        var = np.asarray(layer.moving_variance)
        mean = np.asarray(layer.moving_mean) + rng.normal(0.0, 0.1, var.shape) * np.sqrt(var)
        layer.moving_mean.assign(mean.astype(np.float32))
        layer.moving_variance.assign((var * rng.uniform(0.7, 1.4, var.shape)).astype(np.float32))


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
