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

from paper_repro.feedforward import models
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


def _compare(spec, params, x, want, softmax=False, min_sensitivity=1e-2):
    got = np.asarray(models.make_apply(spec, softmax=softmax)(params, x))
    assert got.shape == want.shape
    scale = np.max(np.abs(want))
    # a random network must not be saturated: its output has to depend on the input
    assert scale > 0 and np.std(want, axis=0).mean() > min_sensitivity * scale, "degenerate oracle"
    np.testing.assert_allclose(got, want, rtol=0, atol=RTOL * scale)
    return got


@pytest.mark.oracle
@pytest.mark.parametrize(("name", "alpha", "size"), ORACLE_CASES, ids=lambda v: v if isinstance(v, str) else None)
def test_port_matches_keras_with_top(tmp_path, name, alpha, size):
    model = ko.build(name, input_size=size, include_top=True, classes=10, alpha=alpha, seed=1)
    path = ko.save_legacy_h5(model, tmp_path / f"{name}.h5")
    x = np.random.default_rng(2).normal(size=(2, size, size, 3)).astype(np.float32)
    want = ko.run(model, x)
    spec = models.get(name, alpha, classes=10)
    params = W.load(spec, path, input_size=size)
    _compare(spec, params, x, want)
    # the loaded values matter: shifting the first moving mean (or bias) changes the output
    layer, var = next((k, v) for k, d in params.items() for v in ("moving_mean", "bias") if v in d)
    moved = {**params, layer: {**params[layer], var: params[layer][var] + 1.0}}
    assert not np.allclose(
        models.make_apply(spec)(moved, x), want, atol=RTOL * np.max(np.abs(want))
    )


@pytest.mark.oracle
def test_port_matches_keras_full_model_file_without_top(tmp_path):
    """A file from ``model.save('x.h5')`` (weights under ``model_weights``), feature output."""
    model = ko.build("mobilenet_v2", input_size=32, include_top=False, alpha=0.5, seed=3)
    path = ko.save_legacy_h5(model, tmp_path / "full.h5", full_model=True)
    x = np.random.default_rng(4).normal(size=(2, 32, 32, 3)).astype(np.float32)
    spec = models.get("mobilenet_v2", 0.5, include_top=False)
    _compare(spec, W.load(spec, path), x, ko.run(model, x))


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
