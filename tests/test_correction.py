"""Data-free repairs: moments, bias correction, mean-preserving rounding, folding,
equalization, bit allocation, and their switches in sweeps and the evaluate command."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from paper_repro import cli

from paper_repro.feedforward import models
from paper_repro.feedforward import repairs as C
from paper_repro.feedforward import sweep as E
from paper_repro.core import quantize as Q


@pytest.fixture(scope="module")
def digits():
    return E.digits_task()


@pytest.fixture(scope="module")
def tiny_mobilenet():
    """MobileNet v1 (alpha 0.25) at 32x32 with random kernels and random batch-norm statistics,
    two channels made dead (variance 1e-30) as in the real weights."""
    spec = models.get("mobilenet", 0.25)
    params = spec.init(jax.random.key(0), input_size=32)
    rng = np.random.default_rng(1)
    for layer in params.values():
        if "moving_variance" in layer:
            c = layer["moving_variance"].shape[0]
            layer["moving_variance"] = rng.uniform(0.05, 2.0, c).astype(np.float32)
            layer["moving_mean"] = rng.normal(0, 0.3, c).astype(np.float32)
            layer["gamma"] = rng.uniform(0.3, 1.5, c).astype(np.float32)
            layer["beta"] = rng.normal(0.5, 1.0, c).astype(np.float32)
    params["conv_pw_2_bn"]["moving_variance"][:2] = 1e-30
    params["conv_pw_2_bn"]["beta"][:2] = -1.0
    x = jnp.asarray(rng.uniform(-1, 1, (4, 32, 32, 3)).astype(np.float32))
    apply = models.make_apply(spec)
    return params, C.topology(params, input_size=32), x, apply


def test_clipped_gaussian_moments_match_monte_carlo():
    m = np.array([0.5, -1.0, 3.0, 7.0])
    s = np.array([1.0, 2.0, 0.0, 2.0])
    z = np.random.default_rng(0).normal(size=(400_000, 1))
    x = np.clip(m + s * z, 0.0, 6.0)
    mean, var = C.clipped_gaussian_moments(m, s, lo=0.0, hi=6.0)
    # Monte Carlo standard error with 4e5 draws is below 0.004 for these spreads
    np.testing.assert_allclose(mean, x.mean(0), atol=0.01)
    np.testing.assert_allclose(var, x.var(0), atol=0.02)
    relu_mean, _ = C.clipped_gaussian_moments(np.array([0.0]), np.array([1.0]))
    np.testing.assert_allclose(relu_mean, 1 / np.sqrt(2 * np.pi), rtol=1e-6)


def test_expected_shift_matches_sampled_inputs():
    """Batch norm -> ReLU6 -> dense: the analytic shift equals the mean over sampled inputs."""
    rng = np.random.default_rng(0)
    a = C.Layer("a", "kernel", "dense", "a_bn", "relu6", None)
    b = C.Layer("b", "kernel", "dense", None, "linear", "a")
    params = {"a": {"kernel": rng.normal(size=(3, 5)).astype(np.float32)},
              "a_bn": {"gamma": rng.uniform(0.5, 2, 5), "beta": rng.normal(1, 2, 5),
                       "moving_mean": np.zeros(5), "moving_variance": np.ones(5)},
              "b": {"kernel": rng.normal(size=(5, 4)).astype(np.float32), "bias": np.zeros(4)}}
    mom = C.layer_moments(params, [a, b], in_mean=np.zeros(3), in_std=np.ones(3))
    dw = rng.normal(0, 0.1, (5, 4)).astype(np.float32)
    shift = C.expected_shift(b, params["b"]["kernel"], params["b"]["kernel"] + dw,
                             mom["b"]["in_mean"])
    mu, spread = C.bn_moments(params["a_bn"])
    x = np.clip(mu + spread * rng.normal(size=(200_000, 5)), 0, 6)
    np.testing.assert_allclose(shift, (x @ dw).mean(0), atol=0.01)  # MC error ~ 0.002


def test_border_shift_counts_missing_taps():
    """A 3x3 'same' conv on a constant input: the corner/edge outputs see 4/6 of 9 taps."""
    layer = C.Layer("c", "kernel", "conv", None, "linear", None, padding="SAME", in_hw=(3, 3))
    w = np.zeros((3, 3, 1, 1), np.float32)
    shift = C.expected_shift(layer, w, w + 1.0, np.ones(1))
    # output sums over 3x3 positions: 4 corners x 4 + 4 edges x 6 + centre x 9 = 49 taps
    np.testing.assert_allclose(shift, [49 / 9], rtol=1e-6)


def test_bias_correction_recentres_digits_layer(digits):
    """Quantizing conv1 of the digits CNN at 2 bits shifts its mean output; the correction,
    computed from the training mean image only, brings the test-set mean back."""
    p = digits.params
    topo = C.topology(p)
    qp, report, _ = C.quantize_model(p, paths=["conv1/kernel"], scheme="linear", bits=2,
                                     fit="max")
    cp, _, info = C.quantize_model(p, paths=["conv1/kernel"], scheme="linear", bits=2,
                                   fit="max", bias_correction=True)
    x = jnp.asarray(np.asarray(digits.data.images, np.float32) / 16.0)

    def conv1_mean(params):
        lyr = topo[0]
        y = C._conv(x, jnp.asarray(params["conv1"]["kernel"]), lyr) + params["conv1"]["bias"]
        return np.asarray(y).mean((0, 1, 2))

    ref = conv1_mean(p)
    err_q = np.abs(conv1_mean(qp) - ref).mean()
    err_c = np.abs(conv1_mean(cp) - ref).mean()
    assert info["max_abs_shift"] > 0
    assert err_c < 0.3 * err_q  # train/test mean images differ slightly: not exactly 0


def test_mean_preserving_codes_keep_channel_sums():
    w = jax.random.normal(jax.random.key(0), (3, 3, 16, 8)) * jnp.arange(1, 9) / 8
    q = Q.fit(w, scheme="linear", bits=3, granularity="channel", channel_axis=-1)
    codes = Q.encode(w, q)
    new = C.mean_preserving_codes(w, codes, q, channel_axis=-1)
    before = np.abs(np.asarray(Q.decode(codes, q) - w).sum((0, 1, 2)))
    after = np.abs(np.asarray(Q.decode(new, q) - w).sum((0, 1, 2)))
    step = np.asarray(q.levels[:, -1] - q.levels[:, -2])
    assert np.all(after <= before + 1e-6) and np.all(after <= step)  # within one level step
    assert new.dtype == codes.dtype
    assert np.abs(new.astype(int) - np.asarray(codes, int)).max() <= 1  # adjacent levels only
    r_old = float(np.corrcoef(np.ravel(w), np.ravel(Q.decode(codes, q)))[0, 1])
    r_new = float(np.corrcoef(np.ravel(w), np.ravel(Q.decode(new, q)))[0, 1])
    assert r_new > r_old - 0.01


def test_fold_and_equalize_are_exact(tiny_mobilenet):
    params, topo, x, apply = tiny_mobilenet
    y0 = np.asarray(apply(params, x))
    folded = C.fold_bn(params, topo)
    np.testing.assert_allclose(np.asarray(apply(folded, x)), y0, rtol=1e-4, atol=1e-4)
    mom = C.layer_moments(params, topo, in_mean=np.zeros(3), in_std=np.ones(3))
    eq, scales = C.equalize(folded, topo, mom)
    np.testing.assert_allclose(np.asarray(apply(eq, x)), y0, rtol=1e-4, atol=1e-4)
    assert any(np.any(s != 1) for s in scales.values())
    assert params["conv1"]["kernel"] is not folded["conv1"]["kernel"]  # inputs not mutated
    # a pair's channel ranges move toward each other (equal where the clip allows)
    def mismatch(q):
        r_a = C._channel_range(q["conv_dw_1"]["depthwise_kernel"], -2)
        r_b = C._channel_range(q["conv_pw_1"]["kernel"], -2)
        return np.abs(np.log(r_a / r_b)).mean()

    assert mismatch(eq) < mismatch(folded)


def test_bias_correction_absorbs_into_batch_norm(tiny_mobilenet):
    params, topo, x, apply = tiny_mobilenet
    paths = [t.path for t in topo[:9]]  # the first four blocks: enough, and fast
    qp, _, _ = C.quantize_model(params, paths=paths, scheme="linear", bits=3, fit="corr")
    cp, _, info = C.quantize_model(params, paths=paths, scheme="linear", bits=3, fit="corr",
                                   bias_correction=True)
    for t in topo[:9]:  # kernels identical, only the moving means move
        np.testing.assert_array_equal(qp[t.name][t.var], cp[t.name][t.var])
    moved = [t.bn for t in topo if t.bn and not np.array_equal(
        qp[t.bn]["moving_mean"], cp[t.bn]["moving_mean"])]
    assert len(moved) >= 8 and info["max_abs_shift"] > 0
    np.testing.assert_array_equal(qp["conv1_bn"]["gamma"], cp["conv1_bn"]["gamma"])


def test_allocate_bits_respects_budget_and_prefers_noisy_layers():
    costs = []
    for path, size, scale in (("big", 1000, 1.0), ("small", 10, 1.0), ("hard", 1000, 4.0)):
        for b in range(2, 9):
            costs.append({"path": path, "bits": b, "size": size, "noise": scale * 4.0 ** -b,
                          "storage_bits": size * b + 32})
    for avg in (3.0, 4.0, 5.0):
        bits = C.allocate_bits(costs, avg_bits=avg)
        used = sum(c["storage_bits"] for c in costs if bits[c["path"]] == c["bits"])
        assert used <= avg * 2010
        assert bits["hard"] >= bits["big"]  # more noise per bit: more bits
        assert bits["small"] >= bits["big"]  # cheap to widen
    with pytest.raises(ValueError, match="below the narrowest"):
        C.allocate_bits(costs, avg_bits=1.0)


def test_quant_config_keys_unchanged_by_default():
    cfg = E.QuantConfig(scheme="linear", bits=4)
    assert not set(cfg.key()) & {"bias_correction", "avg_bits", "fold_bn", "equalize",
                                 "mean_preserving"}
    on = E.QuantConfig(scheme="linear", bits=4, bias_correction=True, avg_bits=4.0)
    assert on.key()["bias_correction"] is True and on.label().endswith("avg4b+bc")


def test_repaired_sweep_on_digits(digits, tmp_path):
    from paper_repro.results import ResultsTable

    base = dict(scheme="linear", fit="corr", bits=2, granularity="channel", gain=True)
    configs = [E.QuantConfig(**base), E.QuantConfig(**base, bias_correction=True)]
    rows = E.run_sweep(digits, configs, ResultsTable(tmp_path / "s.csv"), progress=False,
                       log=lambda *_: None)
    _, plain, corrected = rows
    assert corrected["top1"] > plain["top1"] + 5  # 2-bit digits: correction recovers a lot
    # the packed format stores a linear codebook as one scale: both accountings agree
    assert corrected["compression_ratio"] == pytest.approx(
        corrected["compression_ratio_param_codebooks"])


def test_evaluate_command_switches(capsys):
    with pytest.raises(SystemExit):
        cli.main(["evaluate", "--help"])
    text = capsys.readouterr().out
    for flag in ("--bias-correction", "--mean-preserving", "--fold-bn", "--equalize",
                 "--avg-bits"):
        assert flag in text
    assert cli.main(["evaluate", "--model", "digits_cnn", "--scheme", "linear", "--avg-bits",
                     "3", "--granularity", "channel", "--bias-correction", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["bias_correction"] is True and out["avg_bits"] == 3.0
    assert out["code_bits_per_weight"] <= 3.0  # the budget includes the codebook scales
    assert out["compression_ratio_param_codebooks"] >= 32 / 3.0 * 0.9  # biases stay float


@pytest.mark.shared_data
def test_real_mobilenet_fold_equalize_exact(shared_data):
    from paper_repro.feedforward import weights as W

    spec = models.get("mobilenet", 0.75)
    params = W.load(spec, shared_data / "keras-weights" / "mobilenet_7_5_224_tf.h5")
    topo = C.topology(params)
    x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (2, 224, 224, 3)), jnp.float32)
    apply = models.make_apply(spec)
    y0 = np.asarray(apply(params, x))
    mom = C.layer_moments(params, topo, in_mean=np.zeros(3), in_std=np.full(3, 0.5))
    eq, _ = C.equalize(C.fold_bn(params, topo), topo, mom)
    np.testing.assert_allclose(np.asarray(apply(eq, x)), y0, atol=1e-3 * np.abs(y0).max())
    dead = np.asarray(params["conv1_bn"]["moving_variance"]) < 1e-10
    assert dead.sum() == 10  # the dead channels the bias correction is about
