"""Tests of paper_repro.feedforward.digits: data split, CNN, deterministic training, shipped checkpoint."""

from __future__ import annotations

import re

import jax
import numpy as np
import pytest

from paper_repro.feedforward import digits, imagenet


@pytest.fixture(scope="module")
def retrained():
    """Train once with the default config (the one the shipped checkpoint was made with)."""
    return digits.train(digits.TrainConfig())


def test_split_is_fixed_and_disjoint():
    tr, te = digits.load_data()
    assert len(tr) + len(te) == 1797 and len(te) == 449
    assert tr.images.shape[1:] == (8, 8, 1) and tr.images.dtype == np.uint8
    assert tr.images.max() == 16 and set(np.unique(te.labels)) == set(range(10))
    assert not set(tr.ids) & set(te.ids)
    tr2, te2 = digits.load_data()
    assert te2.ids == te.ids
    assert digits.load_data(split_seed=1)[1].ids != te.ids


def test_params_have_keras_like_names():
    params = digits.init(jax.random.PRNGKey(0))
    assert set(params) == {"conv1", "conv2", "fc1", "dense"}
    assert params["conv1"]["kernel"].shape == (3, 3, 1, 8)
    assert params["dense"]["kernel"].shape == (32, 10)
    paths = ["/".join(str(k.key) for k in p) for p, _ in jax.tree_util.tree_leaves_with_path(params)]
    kernels = [p for p in paths if re.fullmatch(r".*kernel", p)]
    assert sorted(kernels) == ["conv1/kernel", "conv2/kernel", "dense/kernel", "fc1/kernel"]


def test_conv_matches_flax_conv():
    """The im2col 3x3 convolution equals flax's nn.Conv with the same parameters."""
    import flax.linen as nn

    params = digits.init(jax.random.PRNGKey(1))
    x = np.random.default_rng(0).random((3, 8, 8, 1)).astype(np.float32)
    _, state = digits.CNN(widths=(8, 16, 32)).apply(
        {"params": params}, x, capture_intermediates=True, mutable=["intermediates"]
    )
    ours = state["intermediates"]["conv1"]["__call__"][0]
    ref = nn.Conv(8, (3, 3)).apply({"params": params["conv1"]}, x)
    # Same float32 products summed in another order: agreement to a few ulps of O(1) values.
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_retraining_reproduces_the_shipped_checkpoint(retrained):
    saved, meta = digits.load(digits.DEFAULT_PATH)
    assert digits.TrainConfig.from_json(meta["config"]) == digits.TrainConfig()
    res = digits.evaluate(retrained)
    # The test accuracy is reproduced exactly (same images right and wrong).
    assert int(res.correct1.sum()) == meta["n_correct"]
    assert res.top1 == pytest.approx(meta["test_top1"], abs=0)
    # Parameters: bitwise on the platform that wrote the file; a different CPU / XLA build may
    # reorder float32 sums, so allow drift far below the weights' scale (~0.1-1).
    for a, b in zip(jax.tree.leaves(saved), jax.tree.leaves(retrained), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-3)


def test_training_is_deterministic():
    cfg = digits.TrainConfig(epochs=2)
    once, again = digits.train(cfg), digits.train(cfg)
    for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(once), strict=True):
        np.testing.assert_array_equal(a, b)


def test_evaluate_is_the_imagenet_evaluate():
    params = digits.load_or_train()
    res = digits.evaluate(params)
    assert isinstance(res, imagenet.EvalResult)
    assert res.n_images == 449 and res.n_errors == 0
    assert res.top1 > 0.97 and res.top5 > 0.995  # a trained digits CNN; checkpoint gives 98.7 %
    assert res.top1_ci[0] < res.top1 < res.top1_ci[1]
    train_res = digits.evaluate(params, split="train")
    assert train_res.n_images == 1348


def test_load_or_train_writes_and_reuses(tmp_path, monkeypatch):
    cfg = digits.TrainConfig(epochs=2)
    path = tmp_path / "d.npz"
    p1 = digits.load_or_train(path, config=cfg)
    assert path.is_file()
    monkeypatch.setattr(digits, "train", lambda *a, **k: 1 / 0)  # must load, not train
    p2 = digits.load_or_train(path, config=cfg)
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p2), strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ZeroDivisionError):  # another config is not taken from the file
        digits.load_or_train(path, config=digits.TrainConfig(epochs=3))
