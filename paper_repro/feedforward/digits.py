"""The embedded default model: a small CNN on scikit-learn's 8x8 handwritten digits.

A stand-in for the ImageNet networks of docs/theory.md, section 1 that needs no download: the
same post-training pipeline (fit levels to each ``kernel``, dequantize, evaluate top-1 /
top-5 with :func:`paper_repro.feedforward.imagenet.evaluate`) runs on it in seconds on a CPU, so
examples, notebooks and tests exercise the whole path without ImageNet.

- Data: ``sklearn.datasets.load_digits`` (1797 images, 8x8, grey levels 0..16, 10 classes),
  split once into train / test by a seeded permutation (:func:`load_data`). Images are
  stored as uint8 ``(N, 8, 8, 1)``; the float step is :func:`preprocess` (``x / 16``).
- Model (:class:`CNN`): conv 3x3 (8) - ReLU - conv 3x3 (16) - ReLU - max-pool 2 - dense (32)
  - ReLU - dense (10) logits. Parameters are a nested dict with Keras-like layer names,
  ``{'conv1': {'kernel', 'bias'}, 'conv2': ..., 'fc1': ..., 'dense': ...}``, so the
  quantizer's default ``select=r".*kernel"`` picks the four weight matrices and leaves the
  biases in float (docs/theory.md, unknown 7, default scope).
- Training (:func:`train`): Adam, minibatches shuffled by keys derived from one seed;
  deterministic on a given platform. A checkpoint trained with the default
  :class:`TrainConfig` ships as ``data/digits_cnn.npz``; :func:`load_or_train` loads it
  (or retrains when it is absent or was made with another config).

Example::

    params = digits.load_or_train()
    res = digits.evaluate(params)          # held-out split, same evaluate() as ImageNet
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from paper_repro.feedforward import imagenet

__all__ = [
    "DEFAULT_PATH",
    "INPUT_SIZE",
    "NUM_CLASSES",
    "TrainConfig",
    "Conv3x3",
    "CNN",
    "load_data",
    "preprocess",
    "apply",
    "init",
    "train",
    "save",
    "load",
    "load_or_train",
    "evaluate",
]

DEFAULT_PATH = Path(__file__).resolve().parents[2] / "data" / "digits_cnn.npz"
INPUT_SIZE = 8
NUM_CLASSES = 10


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines the trained parameters.

    Attributes:
      seed: seed of initialization and minibatch order.
      split_seed: seed of the train / test split (kept apart so the test set never moves).
      test_fraction: share of the 1797 images held out.
      epochs, batch_size, learning_rate: Adam training schedule (constant rate).
      widths: channels of conv1, conv2 and units of fc1.
    """

    seed: int = 0
    split_seed: int = 0
    test_fraction: float = 0.25
    epochs: int = 30
    batch_size: int = 64
    learning_rate: float = 3e-3
    widths: tuple[int, int, int] = (8, 16, 32)

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["widths"] = list(self.widths)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TrainConfig:
        d = dict(d)
        d["widths"] = tuple(d["widths"])
        return cls(**d)


def load_data(
    *, split_seed: int = 0, test_fraction: float = 0.25
) -> tuple[imagenet.Images, imagenet.Images]:
    """The digits as ``(train, test)`` :class:`paper_repro.feedforward.imagenet.Images`.

    Returns:
      Two ``Images`` with ``images: (N, 8, 8, 1)`` uint8 in 0..16 and ``labels: (N,)`` int32;
      the test set has ``round(1797 * test_fraction)`` images.
    """
    from sklearn.datasets import load_digits

    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    d = load_digits()
    x = d.images.astype(np.uint8)[..., None]
    y = d.target.astype(np.int32)
    perm = np.random.default_rng(split_seed).permutation(len(y))
    n_test = int(round(len(y) * test_fraction))
    te, tr = np.sort(perm[:n_test]), np.sort(perm[n_test:])
    return (
        imagenet.Images.from_arrays(x[tr], y[tr], ids=[f"digits[{i}]" for i in tr], split="train"),
        imagenet.Images.from_arrays(x[te], y[te], ids=[f"digits[{i}]" for i in te], split="test"),
    )


def preprocess(x: Any) -> Any:
    """Float step of the digits model: grey levels 0..16 -> 0..1 (``x`` float32)."""
    return x / 16.0


class Conv3x3(nn.Module):
    """3x3 'SAME' convolution as one matmul over the 9 shifted copies (im2col).

    Same parameters (``kernel: (3, 3, C_in, C_out)``, ``bias: (C_out,)``) and result as
    ``nn.Conv(features, (3, 3))``; on a CPU its gradient is several times faster than XLA's
    convolution for these 8x8 images.
    """

    features: int

    @nn.compact
    def __call__(self, x):
        cin = x.shape[-1]
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (3, 3, cin, self.features))
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
        h, w = x.shape[1], x.shape[2]
        xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
        cols = jnp.concatenate(
            [xp[:, i : i + h, j : j + w, :] for i in range(3) for j in range(3)], axis=-1
        )
        return cols @ kernel.reshape(9 * cin, self.features) + bias


class CNN(nn.Module):
    """``(B, 8, 8, 1)`` float -> ``(B, 10)`` logits."""

    widths: tuple[int, int, int] = (8, 16, 32)

    @nn.compact
    def __call__(self, x):
        c1, c2, f1 = self.widths
        x = nn.relu(Conv3x3(c1, name="conv1")(x))
        x = nn.relu(Conv3x3(c2, name="conv2")(x))
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(f1, name="fc1")(x))
        return nn.Dense(NUM_CLASSES, name="dense")(x)


def _widths(params: dict[str, Any]) -> tuple[int, int, int]:
    return tuple(int(np.shape(params[k]["kernel"])[-1]) for k in ("conv1", "conv2", "fc1"))


def apply(params: dict[str, Any], x: Any) -> Any:
    """Logits ``(B, 10)`` of the CNN for preprocessed ``x: (B, 8, 8, 1)`` float32."""
    return CNN(widths=_widths(params)).apply({"params": params}, x)


def init(key: Any, *, widths: tuple[int, int, int] = (8, 16, 32)) -> dict[str, Any]:
    """Fresh parameters ``{'conv1': {'kernel': (3,3,1,c1), 'bias': (c1,)}, ...}`` from ``key``."""
    variables = CNN(widths=widths).init(key, jnp.zeros((1, INPUT_SIZE, INPUT_SIZE, 1)))
    return {k: dict(v) for k, v in variables["params"].items()}


def train(config: TrainConfig = TrainConfig()) -> dict[str, Any]:
    """Train the CNN on the train split; deterministic given ``config`` (and the platform).

    Returns:
      params as a nested dict of float32 ``np.ndarray`` (see :func:`init`).
    """
    import jax
    import optax

    train_set, _ = load_data(split_seed=config.split_seed, test_fraction=config.test_fraction)
    x = jnp.asarray(preprocess(train_set.images.astype(np.float32)))
    y = jnp.asarray(train_set.labels)
    key = jax.random.PRNGKey(config.seed)
    key_init, key_data = jax.random.split(key)
    params = init(key_init, widths=config.widths)
    opt = optax.adam(config.learning_rate)
    opt_state = opt.init(params)
    n = x.shape[0]
    steps = n // config.batch_size

    def loss_fn(p, xb, yb):
        logits = apply(p, xb)
        return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

    @jax.jit
    def epoch(carry, k):
        p, s = carry
        perm = jax.random.permutation(k, n)[: steps * config.batch_size]
        batches = perm.reshape(steps, config.batch_size)

        def step(c, b):
            p, s = c
            g = jax.grad(loss_fn)(p, x[b], y[b])
            upd, s = opt.update(g, s, p)
            return (optax.apply_updates(p, upd), s), None

        return jax.lax.scan(step, (p, s), batches)[0]

    for e in range(config.epochs):
        params, opt_state = epoch((params, opt_state), jax.random.fold_in(key_data, e))
    return jax.tree.map(lambda a: np.asarray(a, np.float32), params)


def save(params: dict[str, Any], path: str | os.PathLike, *, meta: dict[str, Any]) -> Path:
    """Write params (``layer/var`` keys) and ``meta`` (JSON) to an ``.npz``, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {f"{layer}/{var}": np.asarray(v) for layer, d in params.items() for var, v in d.items()}
    arrays["__meta__"] = np.array(json.dumps(meta, sort_keys=True))
    tmp = path.with_name(f".{path.name}.tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
    return path


def load(path: str | os.PathLike = DEFAULT_PATH) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read a checkpoint written by :func:`save`: ``(params, meta)``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no digits checkpoint at {path}; call digits.load_or_train()")
    params: dict[str, dict[str, np.ndarray]] = {}
    with np.load(path) as z:
        meta = json.loads(str(z["__meta__"]))
        for key in z.files:
            if key == "__meta__":
                continue
            layer, var = key.split("/")
            params.setdefault(layer, {})[var] = z[key]
    return params, meta


def load_or_train(
    path: str | os.PathLike | None = None,
    *,
    config: TrainConfig = TrainConfig(),
    retrain: bool = False,
    save_to_disk: bool | None = None,
) -> dict[str, Any]:
    """Parameters for ``config``: loaded from ``path`` if it holds that config, else trained.

    Args:
      path: checkpoint (default ``data/digits_cnn.npz`` in the repository).
      config: training config; a checkpoint made with another config is not used.
      retrain: train even when a matching checkpoint exists.
      save_to_disk: write the trained params to ``path``; default: only when no file is there
        (an existing checkpoint is never overwritten unless asked).
    """
    path = Path(path) if path is not None else DEFAULT_PATH
    if path.is_file() and not retrain:
        params, meta = load(path)
        if TrainConfig.from_json(meta["config"]) == config:
            return params
    existed = path.is_file()
    params = train(config)
    if save_to_disk if save_to_disk is not None else not existed:
        res = evaluate(params, config=config, progress=False)
        save(params, path, meta=_meta(config, res))
    return params


def _meta(config: TrainConfig, res: imagenet.EvalResult) -> dict[str, Any]:
    import flax
    import jax
    import optax

    return {
        "config": config.to_json(),
        "test_top1": res.top1,
        "test_top5": res.top5,
        "n_test": res.n_images,
        "n_correct": int(res.correct1.sum()),
        "versions": {"jax": jax.__version__, "flax": flax.__version__, "optax": optax.__version__},
    }


def evaluate(
    params: dict[str, Any],
    *,
    config: TrainConfig = TrainConfig(),
    split: str = "test",
    batch_size: int = 256,
    progress: bool = False,
) -> imagenet.EvalResult:
    """Top-1 / top-5 on the held-out (or train) split, via :func:`paper_repro.feedforward.imagenet.evaluate`."""
    train_set, test_set = load_data(split_seed=config.split_seed, test_fraction=config.test_fraction)
    data = {"train": train_set, "test": test_set}.get(split)
    if data is None:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return imagenet.evaluate(
        apply, params, data, batch_size=batch_size, preprocess_mode=preprocess, progress=progress
    )
