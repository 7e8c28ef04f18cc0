"""Tests for paper_repro.feedforward.models: registry, params layout, preprocessing, and the Flax ports
against Keras 3 (JAX backend) as an oracle.

Oracle tests build each ``keras.applications`` model with random weights and random
batch-norm statistics, write it as a legacy .h5 file the way Keras 3 does, load that file
into the port, and compare outputs on the same random inputs. Small odd input sizes exercise
the asymmetric "same"/ZeroPadding rules of strided layers on both parities.
"""

from __future__ import annotations

import keras_oracle as ko
import numpy as np
import pytest

from paper_repro.feedforward import fast_eval, models
from paper_repro.feedforward import weights as W

# float32 through ~50-100 layers; both sides run the same XLA ops on CPU, so the agreement
# is usually exact, but op fusion may reorder sums: 1e-4 relative to the output scale.
RTOL = 1e-4

pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)

# Keras-applications parameter counts (keras.io / model.count_params()).
PARAM_COUNTS = {
    ("vgg16", None): 138_357_544,
    ("resnet50", None): 25_636_712,
    ("xception", None): 22_910_480,
    ("inception_v3", None): 23_851_784,
    ("mobilenet_v2", 1.0): 3_538_984,
    ("mobilenet", 1.0): 4_253_864,
    ("mobilenet", 0.75): 2_601_976,
}


@pytest.fixture(autouse=True)
def _grouped_depthwise(monkeypatch):
    """Oracle comparisons use the grouped convolution Keras itself runs (bit-identical);
    the fast shift-and-add depthwise path is checked against it separately."""
    from paper_repro.feedforward.models import layers

    monkeypatch.setattr(layers, "DEPTHWISE", "grouped")


@pytest.mark.parametrize("strides,padding,mult", [(1, "same", 1), (2, "same", 1),
                                                  (2, "valid", 2), (1, ((1, 2), (0, 1)), 1)])
def test_shift_depthwise_equals_grouped(strides, padding, mult):
    import jax

    from paper_repro.feedforward.models import layers

    k1, k2 = jax.random.split(jax.random.key(0))
    x = jax.random.normal(k1, (2, 9, 8, 5))
    kern = jax.random.normal(k2, (3, 3, 5, mult))
    want = layers._depthwise_grouped(x, kern, strides, padding)
    layers.DEPTHWISE = "shift"  # restored by the monkeypatch fixture
    got = layers._depthwise(x, kern, strides, padding)
    assert got.shape == want.shape
    # same products, another summation order: float32 rounding only
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


def n_params(tree):
    return sum(int(np.prod(s)) for d in tree.values() for s in d.values())


@pytest.mark.parametrize(("name", "alpha"), list(PARAM_COUNTS))
def test_param_counts_match_keras(name, alpha):
    spec = models.get(name, alpha)
    assert n_params(spec.param_shapes()) == PARAM_COUNTS[(name, alpha)]


def test_registry_metadata():
    assert models.names() == [
        "inception_v3", "mobilenet", "mobilenet_v2", "resnet50", "vgg16", "xception",
    ]  # fmt: skip
    sizes = {n: models.get(n).input_size for n in models.names()}
    assert sizes == {
        "inception_v3": 299, "mobilenet": 224, "mobilenet_v2": 224,
        "resnet50": 224, "vgg16": 224, "xception": 299,
    }  # fmt: skip
    modes = {n: models.get(n).preprocess_mode for n in models.names()}
    assert {n for n, m in modes.items() if m == "caffe"} == {"vgg16", "resnet50"}
    m = models.get("mobilenet", alpha=0.75)
    assert m.weights.file_name == "mobilenet_7_5_224_tf.h5"
    assert m.weights.url.endswith("/keras-applications/mobilenet/mobilenet_7_5_224_tf.h5")
    v = models.get("vgg16")
    assert v.weights.file_name == "vgg16_weights_tf_dim_ordering_tf_kernels.h5"
    assert v.weights.hash == "64373286793e3c8b2b4e3219cbf3544b"
    assert v.weights.hash_algorithm == "md5"
    assert models.get("mobilenet_v2").weights.file_name == (
        "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5"
    )
    assert models.get("resnet50", include_top=False).weights.file_name.endswith("_notop.h5")
    assert models.get("InceptionV3").name == "inception_v3"
    with pytest.raises(ValueError, match="unknown model"):
        models.get("alexnet")
    with pytest.raises(ValueError, match="no width multiplier"):
        models.get("vgg16", alpha=0.5)


def test_params_are_keras_named_dicts_in_keras_layouts():
    shapes = models.get("mobilenet", 0.75).param_shapes()
    assert list(shapes)[:4] == ["conv1", "conv1_bn", "conv_dw_1", "conv_dw_1_bn"]
    assert shapes["conv1"] == {"kernel": (3, 3, 3, 24)}
    assert shapes["conv_dw_1"] == {"depthwise_kernel": (3, 3, 24, 1)}
    assert list(shapes["conv1_bn"]) == ["gamma", "beta", "moving_mean", "moving_variance"]
    assert shapes["conv_preds"] == {"kernel": (1, 1, 768, 1000), "bias": (1000,)}
    inc = models.get("inception_v3").param_shapes()
    assert inc["batch_normalization_1"] == {
        k: (32,) for k in ("beta", "moving_mean", "moving_variance")
    }
    xc = models.get("xception").param_shapes()
    assert list(xc["block2_sepconv1"]) == ["depthwise_kernel", "pointwise_kernel"]
    assert xc["predictions"] == {"kernel": (2048, 1000), "bias": (1000,)}
    assert models.get("resnet50").param_shapes()["conv1_conv"] == {
        "kernel": (7, 7, 3, 64), "bias": (64,),
    }  # fmt: skip


def test_preprocess_modes():
    x = np.array([[[[0, 128, 255]]]], dtype=np.uint8)
    np.testing.assert_allclose(
        models.preprocess(x, "tf"), [[[[-1.0, 128 / 127.5 - 1, 1.0]]]], atol=1e-6
    )  # float32 rounding of 128 / 127.5
    np.testing.assert_allclose(
        models.preprocess(x, "caffe"),
        [[[[255 - 103.939, 128 - 116.779, 0 - 123.68]]]],
        rtol=1e-6,
    )
    assert models.preprocess(x, "tf").dtype == np.float32
    with pytest.raises(ValueError, match="preprocess mode"):
        models.preprocess(x, "bgr")


@pytest.mark.oracle
@pytest.mark.parametrize("mode", ["caffe", "tf"])
def test_preprocess_matches_keras(mode):
    k = ko.keras()
    x = np.random.default_rng(0).integers(0, 256, (2, 5, 7, 3)).astype(np.uint8)
    want = k.applications.imagenet_utils.preprocess_input(x.astype(np.float32), mode=mode)
    np.testing.assert_allclose(models.preprocess(x, mode), want, rtol=1e-6, atol=1e-5)


def test_init_is_keras_like():
    import jax

    spec = models.get("mobilenet", 0.25, include_top=False)
    params = spec.init(jax.random.key(0), 32)
    assert list(params) == list(spec.param_shapes())
    assert params["conv1_bn"]["moving_variance"].tolist() == [1.0] * 8
    assert params["conv1_bn"]["beta"].tolist() == [0.0] * 8
    k = params["conv_pw_1"]["kernel"]  # glorot uniform, limit sqrt(6 / (8 + 16))
    assert k.shape == (1, 1, 8, 16) and 0 < np.abs(k).max() <= 0.5


def test_feature_outputs_and_pooling():
    spec = models.get("mobilenet", 0.25, include_top=False)
    rng = np.random.default_rng(0)
    params = {
        layer: {v: rng.uniform(0.5, 1.0, s).astype(np.float32) for v, s in d.items()}
        for layer, d in spec.param_shapes().items()
    }
    x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
    fmap = np.asarray(models.apply(spec, params, x))
    assert fmap.shape == (2, 1, 1, 256)
    avg = models.get("mobilenet", 0.25, include_top=False, pooling="avg")
    mx = models.get("mobilenet", 0.25, include_top=False, pooling="max")
    np.testing.assert_allclose(models.apply(avg, params, x), fmap[:, 0, 0], rtol=1e-6)
    np.testing.assert_allclose(models.apply(mx, params, x), fmap[:, 0, 0], rtol=1e-6)


# ----------------------------------------------------------------------------- fast evaluation


def _bn_randomized(spec, size, seed=0):
    """Random params whose batch norms are far from the identity and calibrated (as the Keras
    oracle does, without Keras): one training-mode pass on random inputs sets each batch
    norm's moving statistics to its batch statistics, then they are jittered. Activations
    stay O(1), so the output depends on the input and on every statistic."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from paper_repro.feedforward.models import layers

    params = spec.init(jax.random.key(seed), size)
    rng = np.random.default_rng(seed)
    for d in params.values():
        if "moving_variance" in d:
            c = d["moving_variance"].shape[0]
            if "gamma" in d:
                d["gamma"] = rng.uniform(0.5, 1.5, c).astype(np.float32)
            if "beta" in d:
                d["beta"] = rng.normal(0.0, 0.1, c).astype(np.float32)

    def batch_stats(params, x):
        stats = {}

        def hook(next_fun, args, kwargs, context):
            m = context.module
            if not isinstance(m, layers.BatchNorm) or context.method_name != "__call__":
                return next_fun(*args, **kwargs)
            h = args[0]
            mean, var = jnp.mean(h, axis=(0, 1, 2)), jnp.var(h, axis=(0, 1, 2))
            stats[m.name] = (mean, var)
            p = m.variables["params"]
            return (h - mean) * jax.lax.rsqrt(var + m.epsilon) * p.get("gamma", 1.0) + p.get(
                "beta", 0.0)

        with nn.intercept_methods(hook):
            spec.module.apply({"params": params}, x)
        return stats

    x = rng.normal(size=(4, size, size, 3)).astype(np.float32)
    for name, (mean, var) in jax.jit(batch_stats)(params, x).items():
        var = np.asarray(var, np.float64)
        params[name]["moving_mean"] = (np.asarray(mean) + rng.normal(0.0, 0.1, var.shape)
                                       * np.sqrt(var)).astype(np.float32)
        params[name]["moving_variance"] = (var * rng.uniform(0.7, 1.4, var.shape)).astype(np.float32)
    return params


def test_fast_eval_folds_batchnorm_into_matmuls():
    """MobileNet: the folded function equals the reference port, and its compiled program is
    the 15 matmuls of the folded stem, pointwise and classifier layers and no convolution: the
    unfolded convolutions a folded batch norm replaces are not computed."""
    import re

    import jax

    spec = models.get("mobilenet", 0.25, classes=10)
    params = _bn_randomized(spec, 35)
    x = np.random.default_rng(1).normal(size=(3, 35, 35, 3)).astype(np.float32)
    want = np.asarray(models.make_apply(spec)(params, x))
    assert np.std(want, axis=0).mean() > 1e-2 * np.abs(want).max(), "degenerate network"
    f = fast_eval.make_eval_apply(spec, chunk=None)
    got = np.asarray(f(params, x))
    np.testing.assert_allclose(got, want, rtol=0, atol=RTOL * np.abs(want).max())
    hlo = jax.jit(lambda p, x: fast_eval.apply(spec, p, x)).lower(params, x).compile().as_text()
    assert len(re.findall(r" dot\(", hlo)) == 15
    assert " convolution(" not in hlo
    # the folding reads the batch norm's values: another moving variance, another output
    moved = {**params, "conv_pw_3_bn": {**params["conv_pw_3_bn"],
                                        "moving_variance": params["conv_pw_3_bn"]["moving_variance"] * 4}}
    np.testing.assert_allclose(np.asarray(f(moved, x)), np.asarray(models.make_apply(spec)(moved, x)),
                               rtol=0, atol=RTOL * np.abs(want).max())
    assert not np.allclose(np.asarray(f(moved, x)), got, atol=1e-3 * np.abs(want).max())


def test_fast_eval_chunks_keep_images_apart():
    """7 images in chunks of 3 (the last one padded): each image's logits as when it runs
    alone; ``chunk`` must be positive."""
    spec = models.get("mobilenet", 0.25, classes=10)
    params = _bn_randomized(spec, 33, seed=2)
    x = np.random.default_rng(3).normal(size=(7, 33, 33, 3)).astype(np.float32)
    got = np.asarray(fast_eval.make_eval_apply(spec, chunk=3)(params, x))
    alone = fast_eval.make_eval_apply(spec, chunk=None)
    want = np.concatenate([np.asarray(alone(params, x[i:i + 1])) for i in range(7)])
    assert got.shape == (7, 10)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())
    assert np.abs(got[0] - got[1]).max() > 1e-3 * np.abs(want).max()  # images differ
    with pytest.raises(ValueError, match="chunk must be >= 1"):
        fast_eval.apply_chunked(spec, params, x, chunk=0)


def test_bn_affine_is_the_batchnorm_formula():
    bn = {"gamma": np.array([2.0, 0.5], np.float32), "beta": np.array([1.0, -1.0], np.float32),
          "moving_mean": np.array([0.5, 3.0], np.float32),
          "moving_variance": np.array([3.999, 0.249], np.float32)}
    scale, shift = fast_eval.bn_affine(bn, epsilon=1e-3)
    np.testing.assert_allclose(scale, [1.0, 1.0], rtol=1e-6)
    np.testing.assert_allclose(shift, [0.5, -4.0], rtol=1e-6)
    no_scale = {k: v for k, v in bn.items() if k != "gamma"}  # Inception: scale=False
    np.testing.assert_allclose(fast_eval.bn_affine(no_scale, epsilon=1e-3)[0], [0.5, 2.0],
                               rtol=1e-6)


# ----------------------------------------------------------------------------- oracle

# (registry name, alpha, input size): small sizes Keras accepts; odd sizes make strided
# "same"/ZeroPadding layers see both parities.
ORACLE_CASES = [
    ("vgg16", None, 32),
    ("resnet50", None, 35),
    ("xception", None, 71),
    pytest.param("inception_v3", None, 75, marks=pytest.mark.slow),
    ("mobilenet_v2", 0.35, 35),
    ("mobilenet", 0.75, 35),
]


def _compare(spec, params, x, want, softmax=False, min_sensitivity=1e-2, fast=False):
    """The reference port against the Keras output ``want``; with ``fast``, also the
    batch-norm-folded evaluation function (in chunks of one image, so chunking runs too)."""
    got = np.asarray(models.make_apply(spec, softmax=softmax)(params, x))
    assert got.shape == want.shape
    scale = np.max(np.abs(want))
    # a random network must not be saturated: its output has to depend on the input
    assert scale > 0 and np.std(want, axis=0).mean() > min_sensitivity * scale, "degenerate oracle"
    np.testing.assert_allclose(got, want, rtol=0, atol=RTOL * scale)
    if fast:
        _check_folded(spec, params, x, got, softmax=softmax)
    return got


def _check_folded(spec, params, x, ref32, *, softmax=False):
    """The folded evaluation is the same function as the reference port (equal in float64 to
    1e-9 of the output scale: folding is exact algebra) and as accurate in float32: its
    distance to the float64 output is at most 3x the reference port's (other summation
    orders; the oracle networks have batch norms with scales of 40 and more, which amplify
    float32 rounding) or ``RTOL``. Returns the float32 folded output."""
    import functools

    import jax

    folded = np.asarray(fast_eval.make_eval_apply(spec, softmax=softmax, chunk=1)(params, x))
    with jax.enable_x64(True):
        p64 = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
        x64 = np.asarray(x, np.float64)
        ref64 = np.asarray(jax.jit(functools.partial(models.apply, spec, softmax=softmax))(p64, x64))
        fold64 = np.asarray(jax.jit(functools.partial(
            fast_eval.apply_chunked, spec, chunk=1, softmax=softmax))(p64, x64))
    assert ref64.dtype == fold64.dtype == np.float64
    scale = np.max(np.abs(ref64))
    np.testing.assert_allclose(fold64, ref64, rtol=0, atol=1e-9 * scale)
    err_ref = np.abs(ref32 - ref64).max()
    err_fold = np.abs(folded - ref64).max()
    assert err_fold <= max(3 * err_ref, RTOL * scale), (err_fold, err_ref, scale)
    return folded


@pytest.mark.oracle
@pytest.mark.parametrize(("name", "alpha", "size"), ORACLE_CASES, ids=lambda v: v if isinstance(v, str) else None)
def test_port_matches_keras_with_top(tmp_path, name, alpha, size):
    model = ko.build(name, input_size=size, include_top=True, classes=10, alpha=alpha, seed=1)
    path = ko.save_legacy_h5(model, tmp_path / f"{name}.h5")
    x = np.random.default_rng(2).normal(size=(2, size, size, 3)).astype(np.float32)
    want = ko.run(model, x)
    spec = models.get(name, alpha, classes=10)
    params = W.load(spec, path, input_size=size)
    _compare(spec, params, x, want, fast=True)
    # the loaded values matter: shifting the first moving mean (or bias) changes the output,
    # of the reference port and of the folded evaluation alike
    layer, var = next((k, v) for k, d in params.items() for v in ("moving_mean", "bias") if v in d)
    moved = {**params, layer: {**params[layer], var: params[layer][var] + 1.0}}
    for f in (models.make_apply(spec), fast_eval.make_eval_apply(spec, chunk=1)):
        assert not np.allclose(f(moved, x), want, atol=RTOL * np.max(np.abs(want)))


@pytest.mark.oracle
def test_port_matches_keras_full_model_file_without_top(tmp_path):
    """A file from ``model.save('x.h5')`` (weights under ``model_weights``), feature output."""
    model = ko.build("mobilenet_v2", input_size=32, include_top=False, alpha=0.5, seed=3)
    path = ko.save_legacy_h5(model, tmp_path / "full.h5", full_model=True)
    x = np.random.default_rng(4).normal(size=(2, 32, 32, 3)).astype(np.float32)
    spec = models.get("mobilenet_v2", 0.5, include_top=False)
    _compare(spec, W.load(spec, path), x, ko.run(model, x), fast=True)


@pytest.mark.oracle
@pytest.mark.slow
def test_mobilenet_full_size_softmax_matches_keras(tmp_path):
    """MobileNet alpha 0.75 at 224 with the 1000-class ImageNet head, Keras 2 (':0') names."""
    model = ko.build(
        "mobilenet", input_size=224, include_top=True, classes=1000, alpha=0.75, seed=5,
        classifier_activation="softmax",
    )  # fmt: skip
    path = tmp_path / "mobilenet_7_5_224_tf.h5"
    spec = models.get("mobilenet", 0.75)
    keras_params = {
        layer.name: {v.path.rsplit("/", 1)[-1]: np.asarray(v) for v in layer.weights}
        for layer in model.layers
        if layer.weights
    }
    W.save_h5(keras_params, path)  # the Keras 2 layout of the official files
    x = np.random.default_rng(6).normal(size=(2, 224, 224, 3)).astype(np.float32)
    want = ko.run(model, x)
    # 1000-way softmax of a random network: probabilities near 1/1000, less spread
    got = _compare(spec, W.load(spec, path), x, want, softmax=True, min_sensitivity=1e-3)
    np.testing.assert_allclose(got.sum(-1), 1.0, rtol=1e-5)
    assert (got.argmax(-1) == want.argmax(-1)).all()


# ----------------------------------------------------------------------------- real data


def _shared_data():
    root = W.shared_data_dir()
    if (
        root is None
        or not (root / "keras-weights" / "mobilenet_7_5_224_tf.h5").is_file()
        or not (root / "imagenet-val-1300" / "labels.txt").is_file()
    ):
        pytest.skip(
            "real data absent: set PAPER_REPRO_SHARED_DATA to the folder holding "
            "keras-weights/ and imagenet-val-1300/"
        )
    return root


def _centre_crops(root, n, size=224):
    from PIL import Image

    rows = [
        line.split()
        for line in (root / "imagenet-val-1300" / "labels.txt").read_text().splitlines()
        if line.strip()
    ][:n]
    images = []
    for file_name, _ in rows:
        im = np.asarray(
            Image.open(root / "imagenet-val-1300" / "images" / file_name).convert("RGB")
        )
        t, left = (im.shape[0] - size) // 2, (im.shape[1] - size) // 2
        images.append(im[t : t + size, left : left + size])
    return np.stack(images), np.array([int(c) for _, c in rows])


@pytest.mark.shared_data
@pytest.mark.oracle
@pytest.mark.slow
def test_real_mobilenet_agrees_with_keras_on_imagenet_images():
    """First 100 images of imagenet-val-1300: centre crop 224 of 227, 'tf' preprocessing."""
    root = _shared_data()
    k = ko.keras()
    path = root / "keras-weights" / "mobilenet_7_5_224_tf.h5"
    images, labels = _centre_crops(root, 100)
    spec = models.get("mobilenet", alpha=0.75)
    x = np.asarray(models.preprocess(images, spec.preprocess_mode))
    logits = np.asarray(models.make_apply(spec)(W.load(spec, path), x))

    with ko._cheap_initializers():
        model = k.applications.MobileNet(alpha=0.75, weights=None)
    model.load_weights(str(path))
    probs = model.predict(
        k.applications.mobilenet.preprocess_input(images.astype(np.float32)),
        batch_size=50,
        verbose=0,
    )

    agree = np.mean(logits.argmax(-1) == probs.argmax(-1))
    assert agree >= 0.99
    np.testing.assert_allclose(
        np.exp(logits - logits.max(-1, keepdims=True)) / np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True),
        probs, atol=1e-4,
    )  # fmt: skip
    # sanity: the real model is accurate on these images (Keras reference 78.08 % on all 1300)
    assert np.mean(logits.argmax(-1) == labels) > 0.6


@pytest.mark.shared_data
@pytest.mark.slow
def test_real_mobilenet_folded_evaluation_keeps_the_accuracy(tmp_path):
    """All 1300 images, centre crop 224 ('crop'): the batch-norm-folded evaluation gives the
    Keras reference top-1 / top-5 (78.08 / 94.62 %) and the reference port's predictions on
    the first 100 images."""
    from paper_repro.feedforward import imagenet

    root = _shared_data()
    spec = models.get("mobilenet", alpha=0.75)
    params = W.load(spec, root / "keras-weights" / "mobilenet_7_5_224_tf.h5")
    src = imagenet.from_ground_truth(root / "imagenet-val-1300" / "images",
                                     root / "imagenet-val-1300" / "labels.txt")
    data = imagenet.load(src, size=224, policy="crop", cache_dir=tmp_path, progress=False)
    res = imagenet.evaluate(fast_eval.make_eval_apply(spec), params, data, batch_size=50,
                            preprocess_mode="tf", progress=False)
    assert res.n_images == 1300 and res.n_errors == 0
    assert abs(100 * res.top1 - 78.08) <= 0.2 and abs(100 * res.top5 - 94.62) <= 0.2, str(res)
    ref = imagenet.evaluate(models.make_apply(spec), params, data, batch_size=50,
                            preprocess_mode="tf", limit=100, progress=False)
    assert (res.pred[ref.indices, 0] == ref.pred[:, 0]).mean() >= 0.99
