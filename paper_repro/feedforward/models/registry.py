"""Registry of the Keras-applications ImageNet models (docs/theory.md, section 1).

``get(name, alpha=None, ...)`` returns a :class:`ModelSpec`: the Flax module, the input size,
the Keras preprocessing mode and the official weight file (name, URL, checksum).

Params are a plain nested dict ``{keras_layer_name: {keras_var_name: array}}`` in Keras
layouts (conv ``(kh, kw, in, out)``, depthwise ``(kh, kw, in, mult)``, dense ``(in, out)``;
batch norm ``gamma, beta, moving_mean, moving_variance``), so weights can be selected by
regex on ``"<layer>/<var>"`` paths. :func:`apply` returns **pre-softmax logits** for
``include_top=True`` (the Keras models end in a softmax; top-k is the same).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from paper_repro.feedforward.models.inception import InceptionV3
from paper_repro.feedforward.models.mobilenet import MobileNet, MobileNetV2
from paper_repro.feedforward.models.resnet import ResNet50
from paper_repro.feedforward.models.vgg import VGG16
from paper_repro.feedforward.models.xception import Xception

KERAS_BASE_URL = "https://storage.googleapis.com/tensorflow/keras-applications/"

CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


@dataclasses.dataclass(frozen=True)
class WeightsFile:
    """An official Keras-applications weight file.

    ``hash`` is the checksum Keras's own source gives (md5 if 32 hex digits, sha256 if 64);
    ``None`` where Keras publishes none (MobileNet, MobileNetV2).
    """

    file_name: str
    url: str
    hash: str | None = None

    @property
    def hash_algorithm(self) -> str | None:
        if self.hash is None:
            return None
        return {32: "md5", 64: "sha256"}[len(self.hash)]


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """One Keras-applications architecture with its metadata.

    Attributes:
      name: registry name (``"mobilenet"``, ...).
      module: the Flax ``nn.Module``; ``module.apply({"params": params}, x)``.
      input_size: ImageNet input side (224, or 299 for Xception/InceptionV3).
      preprocess_mode: ``"caffe"`` or ``"tf"`` (Keras ``imagenet_utils.preprocess_input``).
      weights: the official :class:`WeightsFile` for this configuration.
      alpha: width multiplier (MobileNets), else ``None``.
      keras_name: the ``keras.applications`` constructor name.
    """

    name: str
    module: nn.Module = dataclasses.field(compare=False)
    input_size: int
    preprocess_mode: str
    weights: WeightsFile
    alpha: float | None = None
    keras_name: str = ""
    include_top: bool = True
    pooling: str | None = None
    classes: int = 1000

    def init(self, key: jax.Array, input_size: int | None = None) -> dict:
        """Random params as numpy float32, in Keras weight-file order, with Keras's default
        initializers: kernels glorot-uniform, biases and ``beta`` 0, ``gamma`` 1, moving mean
        0, moving variance 1 (batch norm the identity).

        ``key``: a JAX PRNG key; the draw is a numpy Generator seeded from its bits (no XLA
        compilation, deterministic per key).
        """
        rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().tolist())
        params = {}
        for layer, shapes in self.param_shapes(input_size).items():
            params[layer] = {}
            for var, shape in shapes.items():
                if var.endswith("kernel"):
                    receptive = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
                    limit = np.sqrt(6.0 / ((shape[-2] + shape[-1]) * receptive))
                    value = rng.uniform(-limit, limit, shape)
                elif var in ("gamma", "moving_variance"):
                    value = np.ones(shape)
                else:
                    value = np.zeros(shape)
                params[layer][var] = value.astype(np.float32)
        return params

    def param_shapes(self, input_size: int | None = None) -> dict[str, dict[str, tuple]]:
        """``{layer: {var: shape}}`` in creation (= Keras weight-file) order; no compute."""
        s = input_size or self.input_size
        tree = jax.eval_shape(
            self.module.init, jax.random.key(0), jax.ShapeDtypeStruct((1, s, s, 3), jnp.float32)
        )["params"]
        order = self.layer_order(s)
        return {k: {v: tuple(a.shape) for v, a in _sorted_vars(tree[k])} for k in order}

    def layer_order(self, input_size: int | None = None) -> list[str]:
        """Names of the layers with weights, in the order the model creates (calls) them."""
        return _layer_order(self.module, input_size or self.input_size)


# Keras legacy per-layer weight order (trainable first, then the moving statistics).
_VAR_ORDER = (
    "depthwise_kernel", "pointwise_kernel", "kernel", "bias",
    "gamma", "beta", "moving_mean", "moving_variance",
)  # fmt: skip


def _sorted_vars(d) -> list[tuple[str, Any]]:
    rank = {v: i for i, v in enumerate(_VAR_ORDER)}
    return sorted(d.items(), key=lambda kv: rank.get(kv[0], len(rank)))


@functools.lru_cache(maxsize=64)
def _layer_order(module: nn.Module, size: int) -> list[str]:
    # Flax sorts param dict keys; record the call order of the named layer modules instead.
    order: list[str] = []

    def record(next_fun, args, kwargs, context):
        m = context.module
        if context.method_name == "__call__" and m.name is not None and m.name not in order:
            order.append(m.name)
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        # a fresh function, so that no cached trace of module.init skips the interceptor
        tree = jax.eval_shape(
            lambda k, x: module.init(k, x),
            jax.random.key(0),
            jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32),
        )["params"]
    return [name for name in order if name in tree]


def _alpha_text_v1(alpha: float) -> str:
    table = {1.0: "1_0", 0.75: "7_5", 0.5: "5_0", 0.25: "2_5"}
    return table.get(float(alpha), f"{alpha}")


_WEIGHTS: dict[str, Callable[[float | None, bool], WeightsFile]] = {
    "vgg16": lambda a, top: WeightsFile(
        f"vgg16_weights_tf_dim_ordering_tf_kernels{'' if top else '_notop'}.h5",
        f"{KERAS_BASE_URL}vgg16/vgg16_weights_tf_dim_ordering_tf_kernels{'' if top else '_notop'}.h5",
        "64373286793e3c8b2b4e3219cbf3544b" if top else "6d6bbae143d832006294945121d1f1fc",
    ),
    "resnet50": lambda a, top: WeightsFile(
        f"resnet50_weights_tf_dim_ordering_tf_kernels{'' if top else '_notop'}.h5",
        f"{KERAS_BASE_URL}resnet/resnet50_weights_tf_dim_ordering_tf_kernels{'' if top else '_notop'}.h5",
        "2cb95161c43110f7111970584f804107" if top else "4d473c1dd8becc155b73f8504c6f6626",
    ),
    "xception": lambda a, top: WeightsFile(
        f"xception_weights_tf_dim_ordering_tf_kernels{'' if top else '_notop'}.h5",
        f"{KERAS_BASE_URL}xception/xception_weights_tf_dim_ordering_tf_kernels{'' if top else '_notop'}.h5",
        "0a58e3b7378bc2990ea3b43d5981f1f6" if top else "b0042744bf5b25fce3cb969f33bebb97",
    ),
    "inception_v3": lambda a, top: WeightsFile(
        f"inception_v3_weights_tf_dim_ordering_tf_kernels{'' if top else '_notop'}.h5",
        f"{KERAS_BASE_URL}inception_v3/inception_v3_weights_tf_dim_ordering_tf_kernels{'' if top else '_notop'}.h5",
        "9a0d58056eeedaa3f26cb7ebd46da564" if top else "bcbd6486424b2319ff4ef7d526e38f63",
    ),
    "mobilenet_v2": lambda a, top: WeightsFile(
        f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{float(a)}_224{'' if top else '_no_top'}.h5",
        f"{KERAS_BASE_URL}mobilenet_v2/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{float(a)}_224{'' if top else '_no_top'}.h5",
    ),
    "mobilenet": lambda a, top: WeightsFile(
        f"mobilenet_{_alpha_text_v1(a)}_224_tf{'' if top else '_no_top'}.h5",
        f"{KERAS_BASE_URL}mobilenet/mobilenet_{_alpha_text_v1(a)}_224_tf{'' if top else '_no_top'}.h5",
    ),
}

# name -> (module class, input size, preprocess mode, keras constructor, has alpha, alphas with weights)
_TABLE: dict[str, tuple[type, int, str, str, tuple[float, ...] | None]] = {
    "vgg16": (VGG16, 224, "caffe", "VGG16", None),
    "resnet50": (ResNet50, 224, "caffe", "ResNet50", None),
    "xception": (Xception, 299, "tf", "Xception", None),
    "inception_v3": (InceptionV3, 299, "tf", "InceptionV3", None),
    "mobilenet_v2": (MobileNetV2, 224, "tf", "MobileNetV2", (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)),
    "mobilenet": (MobileNet, 224, "tf", "MobileNet", (0.25, 0.5, 0.75, 1.0)),
}

_ALIASES = {
    "inceptionv3": "inception_v3",
    "mobilenetv2": "mobilenet_v2",
    "mobilenet_v1": "mobilenet",
    "resnet50v1": "resnet50",
}


def names() -> list[str]:
    """Registry names, e.g. ``["inception_v3", "mobilenet", ...]``."""
    return sorted(_TABLE)


def get(
    name: str,
    alpha: float | None = None,
    *,
    include_top: bool = True,
    pooling: str | None = None,
    classes: int = 1000,
) -> ModelSpec:
    """The :class:`ModelSpec` for ``name`` (case-insensitive; see :func:`names`).

    ``alpha`` is the MobileNet/MobileNetV2 width multiplier (default 1.0); other models refuse
    it. ``include_top=False`` gives the feature extractor (optionally ``pooling="avg"|"max"``)
    and the official ``notop`` weight file.
    """
    key = name.lower().replace("-", "_")
    key = _ALIASES.get(key, key)
    if key not in _TABLE:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(names())}")
    cls, size, mode, keras_name, alphas = _TABLE[key]
    if pooling not in (None, "avg", "max"):
        raise ValueError(f"pooling must be None, 'avg' or 'max', got {pooling!r}")
    kwargs: dict[str, Any] = dict(include_top=include_top, pooling=pooling, classes=classes)
    if alphas is None:
        if alpha is not None:
            raise ValueError(f"model {key!r} has no width multiplier; pass alpha=None")
    else:
        alpha = 1.0 if alpha is None else float(alpha)
        if alpha <= 0:
            raise ValueError(f"alpha must be positive, got {alpha}")
        kwargs["alpha"] = alpha
    return ModelSpec(
        name=key,
        module=cls(**kwargs),
        input_size=size,
        preprocess_mode=mode,
        weights=_WEIGHTS[key](alpha, include_top),
        alpha=alpha,
        keras_name=keras_name,
        include_top=include_top,
        pooling=pooling,
        classes=classes,
    )


def apply(spec: ModelSpec, params: dict, x: jax.Array, *, softmax: bool = False) -> jax.Array:
    """Run the model: ``x (N, H, W, 3)`` preprocessed float32 -> ``(N, classes)`` logits.

    Pre-softmax logits by default (Keras outputs ``softmax(logits)``; ``softmax=True`` gives
    that). Pure and jit-friendly: ``jax.jit(functools.partial(apply, spec))``, or use
    :func:`make_apply`. Without the top, returns the feature map or pooled features.
    """
    y = spec.module.apply({"params": params}, x)
    if softmax and spec.include_top:
        y = jax.nn.softmax(y, axis=-1)
    return y


def make_apply(spec: ModelSpec, *, softmax: bool = False) -> Callable[[dict, jax.Array], jax.Array]:
    """A jitted ``f(params, x)`` equivalent to ``apply(spec, params, x, softmax=softmax)``."""
    return jax.jit(functools.partial(apply, spec, softmax=softmax))


def preprocess(x_uint8_rgb, mode: str) -> jax.Array:
    """Keras ``imagenet_utils.preprocess_input`` on RGB pixels ``(..., H, W, 3)`` in [0, 255].

    ``"caffe"``: RGB -> BGR, subtract the ImageNet BGR means ``(103.939, 116.779, 123.68)``.
    ``"tf"``: ``x / 127.5 - 1`` (to [-1, 1]). ``"torch"``: ``(x / 255 - mean) / std``.
    Returns float32.
    """
    x = jnp.asarray(x_uint8_rgb).astype(jnp.float32)
    if x.shape[-1] != 3:
        raise ValueError(f"expected RGB images with a last axis of 3, got shape {x.shape}")
    if mode == "tf":
        return x / 127.5 - 1.0
    if mode == "caffe":
        return x[..., ::-1] - jnp.asarray(CAFFE_MEAN_BGR, jnp.float32)
    if mode == "torch":
        mean = jnp.asarray((0.485, 0.456, 0.406), jnp.float32)
        std = jnp.asarray((0.229, 0.224, 0.225), jnp.float32)
        return (x / 255.0 - mean) / std
    raise ValueError(f"preprocess mode must be 'caffe', 'tf' or 'torch', got {mode!r}")
