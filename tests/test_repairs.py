"""Data-free repairs on traced graphs: moments against Gaussian inputs on every architecture,
bias correction (batch norm or not), mean-preserving rounding, folding, equalization, bit
allocation, the named recipe, and their switches in sweeps and the commands."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from paper_repro import cli
from paper_repro.core import quantize as Q
from paper_repro.feedforward import graph as G
from paper_repro.feedforward import models
from paper_repro.feedforward import repairs as C
from paper_repro.feedforward import sweep as E


@pytest.fixture(scope="module")
def digits():
    task = E.digits_task()
    C.attach_task(task)
    return task


def randomize_bn(params, rng, *, var, beta, mean_sd=None, gamma=None, bias_sd=None):
    """Random batch-norm statistics in place (as trained ones, unlike a fresh init's): moving
    variance uniform in ``var``, beta normal ``(mean, sd) = beta``, and optionally the moving
    mean (normal, sd ``mean_sd``), gamma (uniform in ``gamma``) and every bias (sd ``bias_sd``).
    Draws in the order variance, mean, gamma, beta per layer, then the bias."""
    for layer in params.values():
        if "moving_variance" in layer:
            c = layer["moving_variance"].shape[0]
            layer["moving_variance"] = rng.uniform(*var, c).astype(np.float32)
            if mean_sd is not None:
                layer["moving_mean"] = rng.normal(0, mean_sd, c).astype(np.float32)
            if gamma is not None:
                layer["gamma"] = rng.uniform(*gamma, c).astype(np.float32)
            layer["beta"] = rng.normal(*beta, c).astype(np.float32)
        if bias_sd is not None and "bias" in layer:
            layer["bias"] = rng.normal(0, bias_sd, layer["bias"].shape).astype(np.float32)


@pytest.fixture(scope="module")
def tiny_mobilenet():
    """MobileNet v1 (alpha 0.25) at 32x32 with random kernels and random batch-norm statistics,
    two channels made dead (variance 1e-30) as in the real weights."""
    spec = models.get("mobilenet", 0.25)
    params = spec.init(jax.random.key(0), input_size=32)
    rng = np.random.default_rng(1)
    randomize_bn(params, rng, var=(0.05, 2.0), mean_sd=0.3, gamma=(0.3, 1.5), beta=(0.5, 1.0))
    params["conv_pw_2_bn"]["moving_variance"][:2] = 1e-30
    params["conv_pw_2_bn"]["beta"][:2] = -1.0
    x = rng.uniform(-1, 1, (4, 32, 32, 3))
    graph = G.trace(models.make_apply(spec), params, (1, 32, 32, 3))
    return params, graph, x


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


def test_max_pool_moments_match_monte_carlo():
    """ReLU then 2x2 max pool of independent Gaussians: the exact maximum's moments."""
    rng = np.random.default_rng(0)
    m = rng.normal(0, 1, (4, 4, 3))
    s = rng.uniform(0.5, 2, (4, 4, 3))

    def window_sum(x):
        return G.np_reduce_window(x[None], 0.0, np.add, (1, 2, 2, 1), (1, 2, 2, 1),
                                  ((0, 0),) * 4)[0]

    mean, var = C._max_of_gaussians(m, s, 0.0, 6.0, window_sum)
    x = np.clip(m + s * rng.normal(size=(200_000, 4, 4, 3)), 0, 6)
    y = x.reshape(-1, 2, 2, 2, 2, 3).max((2, 4))
    np.testing.assert_allclose(mean, y.mean(0), atol=0.02)
    np.testing.assert_allclose(var, y.var(0), atol=0.05)


# --- Analytic shift vs measured shift on Gaussian inputs ----------------------------------------


def _shift_check(graph1, graph_b, params, qparams, mean, std, *, batches, batch, bn_stats,
                 seed=0):
    """Predicted expected output shift of every layer (from the propagated moments) against
    the measured one: the same layers run on the mean of their sampled inputs (the shift is
    affine in the input, so its sample mean is the layer's shift at the sample mean), over
    ``batches`` independent batches of Gaussian inputs with the preprocessing statistics.
    Returns ``(error, size, noise)``: root-sum-square over layers of the prediction error,
    the measured shift, and the measured shift's standard error."""
    mom = C.propagate(graph1, params, in_mean=mean, in_std=std, bn_stats=bn_stats)
    vf, vq = G.flat_values(params), G.flat_values(qparams)
    layers = graph1.layers
    pred = C.layer_shifts(graph1, vf, vq, {n.name: mom[n.inputs[0]].mean for n in layers})
    shape = graph1.input_shape[1:]
    m = C._channel_map(mean, shape, graph1.channel_axis)
    s = C._channel_map(std, shape, graph1.channel_axis)
    rng = np.random.default_rng(seed)
    per_batch = []
    for _ in range(batches):
        x = m + s * rng.standard_normal((batch,) + shape)
        _, env = graph_b.apply(params, x, capture=True)
        env["input"] = x
        means = {n.name: np.asarray(env[n.inputs[0]]).mean(0) for n in layers}
        per_batch.append(C.layer_shifts(graph1, vf, vq, means))
    err = size = noise = 0.0
    for n in layers:
        arr = np.stack([b[n.name] for b in per_batch])
        meas = arr.mean(0)
        err += float(np.sum((pred[n.name] - meas) ** 2))
        size += float(np.sum(meas**2))
        noise += float(np.sum(arr.var(0, ddof=1) / batches))
    return err**0.5, size**0.5, noise**0.5


def _quantized(params, graph, bits=3):
    select = "|".join(map(__import__("re").escape, graph.kernel_paths()))
    qp, _ = Q.quantize_tree(params, select=select, scheme="linear", bits=bits, fit="corr",
                            granularity="channel")
    return qp


# (name, alpha, input side): every Keras port with random weights at a small input
SHIFT_PORTS = [("vgg16", None, 32), ("resnet50", None, 32), ("xception", None, 71),
               ("inception_v3", None, 75), ("mobilenet_v2", 0.35, 32), ("mobilenet", 0.25, 32)]


@pytest.mark.parametrize("name,alpha,size", SHIFT_PORTS, ids=[p[0] for p in SHIFT_PORTS])
def test_shift_prediction_matches_gaussian_inputs(name, alpha, size):
    """The analytic expected shift of every quantized layer (moments propagated from the
    preprocessing's input statistics through the whole graph, batch norms as affine maps)
    is within 10 % of the shift measured on Gaussian inputs with those statistics."""
    spec = models.get(name, alpha)
    params = spec.init(jax.random.key(0), input_size=size)
    apply = models.make_apply(spec)
    g1 = G.trace(apply, params, (1, size, size, 3))
    gb = G.trace(apply, params, (16, size, size, 3))
    mean, std, _, _ = C.input_statistics(spec.preprocess_mode)
    err, size_, noise = _shift_check(g1, gb, params, _quantized(params, g1), mean, std,
                                     batches=4, batch=16, bn_stats=False)
    assert size_ > 10 * noise  # the measured shift is well resolved
    assert err <= 0.10 * size_ + 2 * noise, (err / size_, noise / size_)


def test_shift_prediction_matches_gaussian_inputs_digits(digits):
    g1 = C.attached(digits.params).graph
    gb = G.trace(digits.apply_fn, digits.params, (64, 8, 8, 1))
    mean, std, _, _ = C.input_statistics(None, model="digits_cnn")
    err, size, noise = _shift_check(g1, gb, digits.params, _quantized(digits.params, g1, 2),
                                     mean, std, batches=4, batch=64, bn_stats=False)
    assert err <= 0.10 * size + 2 * noise, (err / size, noise / size)


def _glorot_like(params, seed):
    """The same tree with Keras-default random weights: kernels glorot-uniform
    (``(*k, in, out)`` fans), biases zero."""
    rng = np.random.default_rng(seed)
    out = {}
    for layer, d in params.items():
        out[layer] = {}
        for var, v in d.items():
            shape = np.shape(v)
            if var == "kernel":
                receptive = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
                lim = np.sqrt(6.0 / ((shape[-2] + shape[-1]) * receptive))
                out[layer][var] = rng.uniform(-lim, lim, shape).astype(np.float32)
            else:
                out[layer][var] = np.zeros(shape, np.float32)
    return out


def test_shift_prediction_matches_gaussian_inputs_shufflenet(shared_data):
    """The ShuffleNetV2 graph read from ONNX (56 convolutions, channel splits and shuffles,
    a max pool; no batch norm: every moment is propagated from the torch preprocessing
    statistics), with random weights like the Keras ports above."""
    from paper_repro.feedforward import onnx_model

    m = onnx_model.load_onnx(shared_data / "onnx" / "shufflenet_v2_x0_5_fp16.onnx")
    g = G.from_onnx(m)
    params = _glorot_like(m.params, 0)
    mean, std, _, _ = C.input_statistics("torch")
    err, size, noise = _shift_check(g, g, params, _quantized(params, g), mean, std,
                                    batches=3, batch=8, bn_stats=False)
    assert size > 10 * noise
    assert err <= 0.10 * size + 2 * noise, (err / size, noise / size)


def _calibrate_bn(graph, params, x):
    """Set every batch norm's moving statistics to its input's batch statistics (in graph
    order, as training would), so that batch-norm statistics describe these inputs."""
    vals = {k: np.asarray(v, np.float64) for k, v in G.flat_values(params).items()}
    env = {"input": x}
    for n in graph.nodes:
        if n.op == "bn":
            h = env[n.inputs[0]]
            bv = C.bn_vars(n)
            vals[bv["mean"]] = h.mean((0, 1, 2))
            vals[bv["var"]] = h.var((0, 1, 2))
        env[n.name] = n.fn(vals, *(env[i] for i in n.inputs))
    new = C._copy_tree(params)
    for n in graph.nodes:
        if n.op == "bn":
            for k in ("mean", "var"):
                p = C.bn_vars(n)[k]
                C._set(new, p, vals[p].astype(np.float32))
    return new


def test_shift_prediction_from_batch_norm_statistics():
    """With batch-norm statistics that describe the inputs, the moments restart from them at
    every batch norm; the predicted shifts again match the measured ones."""
    spec = models.get("mobilenet_v2", 0.35)
    params = spec.init(jax.random.key(3), input_size=32)
    apply = models.make_apply(spec)
    mean, std, _, _ = C.input_statistics("tf")
    rng = np.random.default_rng(5)
    x = mean + std * rng.standard_normal((1024, 32, 32, 3))  # deep maps are 1x1: many samples
    params = _calibrate_bn(G.trace(apply, params, x.shape), params, x)
    gb = G.trace(apply, params, (64, 32, 32, 3))
    g1 = G.trace(apply, params, (1, 32, 32, 3))
    err, size, noise = _shift_check(g1, gb, params, _quantized(params, g1), mean, std,
                                    batches=4, batch=64, bn_stats=True, seed=7)
    assert err <= 0.10 * size + 2 * noise, (err / size, noise / size)


def test_border_shift_counts_missing_taps():
    """A 3x3 'same' conv on a constant input: the corner/edge outputs see 4/6 of 9 taps."""
    import flax.linen as nn

    net = nn.Conv(1, (3, 3), use_bias=False, name="c")
    params = {"c": {"kernel": np.zeros((3, 3, 1, 1), np.float32)}}
    graph = G.trace(lambda p, x: net.apply({"params": p["c"]}, x), params, (1, 3, 3, 1))
    node = graph.layers[0]
    q = {"c/kernel": np.ones((3, 3, 1, 1))}
    shift = C.expected_shift(graph, node, G.flat_values(params), q, np.ones((3, 3, 1)))
    # output sums over 3x3 positions: 4 corners x 4 + 4 edges x 6 + centre x 9 = 49 taps
    np.testing.assert_allclose(shift, [49 / 9], rtol=1e-6)


def test_bias_correction_recentres_digits_layer(digits):
    """Quantizing conv1 of the digits CNN at 2 bits shifts its mean output; the correction,
    computed from the training mean image only, brings the test-set mean back."""
    p = digits.params
    graph = C.attached(p).graph
    qp, _, _ = C.quantize_model(p, paths=["conv1/kernel"], scheme="linear", bits=2, fit="max")
    cp, _, info = C.quantize_model(p, paths=["conv1/kernel"], scheme="linear", bits=2,
                                   fit="max", bias_correction=True)
    x = np.asarray(digits.data.images, np.float64)[..., :] / 16.0
    conv1 = graph["conv1"]

    def conv1_mean(params):
        return np.asarray(conv1.fn(G.flat_values(params), x)).mean((0, 1, 2))

    ref = conv1_mean(p)
    err_q = np.abs(conv1_mean(qp) - ref).mean()
    err_c = np.abs(conv1_mean(cp) - ref).mean()
    assert info["max_abs_shift"] > 0
    assert err_c < 0.3 * err_q  # train/test mean images differ slightly: not exactly 0


def test_bias_correction_without_batch_norm_on_onnx():
    """A graph with no batch norm after a layer (ONNX, biases in the convolutions): the
    shift goes into the layer's own bias, from the propagated preprocessing statistics."""
    from test_graph import _tiny_onnx

    from paper_repro.feedforward import onnx_model

    m = onnx_model.load_onnx(_tiny_onnx())
    g = G.from_onnx(m)
    w = C.Wiring(g, *C.input_statistics("torch"))
    paths = g.kernel_paths()
    qp, _, _ = C.quantize_model(m.params, paths=paths, scheme="linear", bits=2, fit="max",
                                wiring=w)
    cp, _, info = C.quantize_model(m.params, paths=paths, scheme="linear", bits=2, fit="max",
                                   bias_correction=True, bias_scope="all", wiring=w)
    d2 = g.layers[2]  # the depthwise convolution: a bias, no batch norm after it
    assert d2.op == "depthwise" and G.follow(g, d2.name)[0] is None
    assert not np.array_equal(qp[d2.group]["bias"], cp[d2.group]["bias"])
    mom = C.propagate(g, m.params, in_mean=w.in_mean, in_std=w.in_std)
    # the corrected layer's output mean equals the float one's (on the float input mean)
    vf, vc = G.flat_values(m.params), G.flat_values(cp)
    mean_in = mom[d2.inputs[0]].mean
    y_f = C._run(d2, C._f64(vf), mean_in)
    y_c = C._run(d2, C._f64(vc), mean_in)
    np.testing.assert_allclose(C._per_channel(y_c, 1), C._per_channel(y_f, 1), atol=1e-5)


def test_bias_correction_leaves_a_layer_with_nowhere_to_go_uncorrected():
    """A layer with no bias, no batch norm and a model that reads no bias it lacks keeps its
    shift; the run goes on, says so, and records the layer (shift_sink alone refuses)."""
    import flax.linen as nn

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.relu(nn.Conv(4, (3, 3), use_bias=False, name="a")(x))
            return nn.Dense(2, name="b")(x.reshape(x.shape[0], -1))

    params = Net().init(jax.random.key(0), jnp.zeros((1, 4, 4, 1)))["params"]
    g = G.trace(lambda p, x: Net().apply({"params": p}, x), params, (1, 4, 4, 1))
    w = C.Wiring(g, np.full(1, 0.5), np.full(1, 0.3), np.zeros(1), np.ones(1))
    with pytest.warns(UserWarning, match="left uncorrected: a$"):
        qp, _, info = C.quantize_model(params, paths=["a/kernel"], scheme="linear", bits=2,
                                       fit="max", bias_correction=True, wiring=w)
    assert info["uncorrected_layers"] == ["a"] and info["corrected_layers"] == 0
    assert set(qp) == set(params) and set(qp["a"]) == {"kernel"}  # no bias was invented
    with pytest.raises(ValueError, match="no bias and no batch norm"):
        C.shift_sink(g, g["a"], G.flat_values(qp))


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
    params, graph, x = tiny_mobilenet
    y0 = graph.apply(params, x)
    folded = C.fold_bn(graph, params)
    np.testing.assert_allclose(graph.apply(folded, x), y0, rtol=1e-4, atol=1e-4)
    eq, scales = C.equalize(graph, folded, in_lo=-np.ones(3), in_hi=np.ones(3))
    np.testing.assert_allclose(graph.apply(eq, x), y0, rtol=1e-4, atol=1e-4)
    assert any(np.any(s != 1) for s in scales.values())
    assert params["conv1"]["kernel"] is not folded["conv1"]["kernel"]  # inputs not mutated

    # a pair's channel ranges move toward each other (equal where the clip allows)
    def mismatch(q):
        r_a = C._channel_range(q["conv_dw_1"]["depthwise_kernel"], -2)
        r_b = C._channel_range(q["conv_pw_1"]["kernel"], -2)
        return np.abs(np.log(r_a / r_b)).mean()

    assert mismatch(eq) < mismatch(folded)


def test_fold_and_equalize_are_exact_on_resnet_and_onnx():
    """Convolutions with biases before batch norms (ResNet50) and a graph without batch
    norms whose layers meet through ReLU (ONNX): folding and equalization keep the output."""
    from test_graph import _tiny_onnx

    from paper_repro.feedforward import onnx_model

    spec = models.get("resnet50")
    params = spec.init(jax.random.key(1), input_size=32)
    rng = np.random.default_rng(0)
    randomize_bn(params, rng, var=(0.5, 2.0), beta=(0.0, 0.5), bias_sd=0.1)
    g = G.trace(models.make_apply(spec), params, (1, 32, 32, 3))
    x = rng.uniform(-120, 130, (1, 32, 32, 3))
    y0 = g.apply(params, x)
    lo, hi = C.PREPROCESS_STATS["caffe"][2:]
    eq, scales = C.equalize(g, C.fold_bn(g, params), in_lo=lo, in_hi=hi)
    assert scales
    np.testing.assert_allclose(g.apply(eq, x), y0, rtol=1e-3, atol=1e-3 * np.abs(y0).max())
    m = onnx_model.load_onnx(_tiny_onnx())
    go = G.from_onnx(m)
    xo = rng.standard_normal((2, 3, 16, 16))
    lo, hi = C.PREPROCESS_STATS["torch"][2:]
    eqo, so = C.equalize(go, C.fold_bn(go, m.params), in_lo=lo, in_hi=hi)
    assert so
    np.testing.assert_allclose(go.apply(eqo, xo), go.apply(m.params, xo), rtol=1e-4, atol=1e-5)


def test_bias_correction_absorbs_into_batch_norm(tiny_mobilenet):
    params, graph, _ = tiny_mobilenet
    w = C.Wiring(graph, *C.input_statistics("tf"))
    paths = [n.kernels[0] for n in graph.layers[:9]]  # the first four blocks: enough, fast
    qp, _, _ = C.quantize_model(params, paths=paths, scheme="linear", bits=3, fit="corr",
                                wiring=w)
    cp, _, info = C.quantize_model(params, paths=paths, scheme="linear", bits=3, fit="corr",
                                   bias_correction=True, wiring=w)
    for p in paths:  # kernels identical, only the moving means move
        layer, var = p.split("/")
        np.testing.assert_array_equal(qp[layer][var], cp[layer][var])
    moved = [n.name for n in graph.nodes if n.op == "bn" and not np.array_equal(
        qp[n.name]["moving_mean"], cp[n.name]["moving_mean"])]
    assert len(moved) >= 8 and info["max_abs_shift"] > 0
    np.testing.assert_array_equal(qp["conv1_bn"]["gamma"], cp["conv1_bn"]["gamma"])


def test_quantize_model_needs_a_graph():
    params = {"d": {"kernel": np.ones((3, 2), np.float32), "bias": np.zeros(2, np.float32)}}
    with pytest.raises(ValueError, match="attach_task"):
        C.quantize_model(params, paths=["d/kernel"], scheme="linear", bits=3,
                         bias_correction=True)


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


def test_allocate_chooses_a_level_family_per_layer():
    """Options of two families: a layer takes the family with less noise per stored bit;
    an option with more storage and no less noise than another is never taken; the budget
    holds; one family alone gives what allocate_bits always gave."""
    costs = []
    for path, size in (("a", 1000), ("b", 1000)):
        for b in range(2, 9):
            # family "exp" is better on layer a, "lm" on layer b (lm stores 2^(b-1) levels)
            good, bad = 4.0 ** -b, 3.0 * 4.0 ** -b
            for fam, noise, books in (("exp", good if path == "a" else bad, 2),
                                      ("lm", good if path == "b" else bad, 2 ** (b - 1))):
                costs.append({"path": path, "bits": b, "size": size, "noise": noise,
                              "scheme": fam, "storage_bits": size * b + 32 * books})
    costs.append({"path": "a", "bits": 9, "size": 1000, "noise": 1.0, "scheme": "bad",
                  "storage_bits": 1000 * 2 + 64})  # dominated: as cheap as exp 2b, noisier
    for avg in (3.0, 4.0, 5.0):
        pick = C.allocate(costs, avg_bits=avg)
        assert pick["a"]["scheme"] == "exp" and pick["b"]["scheme"] == "lm"
        assert sum(c["storage_bits"] for c in pick.values()) <= avg * 2000
    one = [c for c in costs if c["scheme"] == "exp"]
    assert C.allocate_bits(one, avg_bits=4.0) == {p: c["bits"] for p, c in
                                                   C.allocate(one, avg_bits=4.0).items()}
    with pytest.raises(ValueError, match="below the narrowest"):
        C.allocate(costs, avg_bits=1.5)


def test_quantize_model_with_a_family_per_layer(digits, capsys):
    """families=: each layer is quantized with the family the allocation chose (its codebook
    says so), the budget holds, and the predicted noise is no larger than with one family."""
    from paper_repro.core import storage as S

    paths = [f"{k}/kernel" for k in digits.params]
    kw = dict(paths=paths, scheme="exponential", avg_bits=3.0, fit="corr",
              granularity="channel", gain=True)
    qp, rep, info = C.quantize_model(digits.params, families=("lloyd_max",), **kw)
    assert set(info["schemes"]) == set(paths)
    assert set(info["schemes"].values()) <= {"exponential", "lloyd_max"}
    for r in rep:
        assert r["quantizer"].scheme == info["schemes"][r["path"]]
        assert r["bits"] == info["bits"][r["path"]]
    assert [r["path"] for r in rep] == paths  # report in tree order, as one family gives
    assert S.packed_nbytes(qp, rep)["code_bits_per_weight"] <= 3.0 + 1e-9
    qp1, rep1, info1 = C.quantize_model(digits.params, **kw)
    assert "schemes" not in info1
    flat = dict(Q.tree_paths(digits.params))

    def noise(report):
        return sum(C.channel_noise(flat[r["path"]], Q.decode(r["codes"], r["quantizer"]),
                                   channel_axis=r["quantizer"].channel_axis) for r in report)

    assert noise(rep) < noise(rep1)  # Lloyd-Max levels win somewhere at 3 bits
    C._COST_CACHE.clear()  # fitted again, with a bar per family on stderr
    C.quantize_model(digits.params, families=("lloyd_max",), progress=True, **kw)
    err = capsys.readouterr().err
    assert "fitting exponential levels" in err and "fitting lloyd_max levels" in err
    with pytest.raises(ValueError, match="needs avg_bits"):
        C.quantize_model(digits.params, paths=paths, scheme="exponential", bits=3,
                         families=("lloyd_max",))
    with pytest.raises(ValueError, match="unknown scheme"):
        C.quantize_model(digits.params, families=("nope",), **kw)


def test_allocation_experiment_reports_what_the_recipe_quantizes(digits):
    """datafree/allocation's rows are the widths and families quantize_model uses for the
    recipe; the summary adds up to every layer and every weight; the figure draws one bar
    per layer in its family's colour."""
    from matplotlib.colors import same_color

    from paper_repro.experiments import recipes as X
    from paper_repro.experiments import style as S
    from paper_repro.experiments.base import Context
    from paper_repro.feedforward import digits as D

    cfg = X._allocation_config(True)
    rows = X.arrays_rows(X._allocation_compute(cfg, Context(inputs={}, dir=None)))
    paths = [f"{k}/kernel" for k in digits.params]
    recipe = C.RECIPES["datafree"].config(avg_bits=3.0)
    _, _, info = C.quantize_model(
        digits.params, paths=paths, scheme=recipe.scheme, families=recipe.families,
        avg_bits=3.0, fit=recipe.fit, granularity=recipe.granularity, gain=recipe.gain)
    graph = G.trace(D.apply, digits.params, (1, D.INPUT_SIZE, D.INPUT_SIZE, 1))
    assert [r["path"] for r in rows] == graph.kernel_paths()  # network order
    assert {r["path"]: int(r["bits"]) for r in rows} == info["bits"]
    assert {r["path"]: r["scheme"] for r in rows} == info["schemes"]
    summary = X.allocation_summary(rows)
    assert sum(s["layers"] for s in summary) == len(paths)
    assert abs(sum(s["weight_share"] for s in summary) - 1) < 1e-12
    fig = X.plot_allocation(rows)
    bars = fig.axes[0].patches
    assert len(bars) == len(paths)
    for bar, r in zip(bars, rows, strict=True):
        assert bar.get_height() == int(r["bits"])
        assert same_color(bar.get_facecolor(), S.scheme_color(r["scheme"]))


def test_families_flag_on_evaluate(capsys):
    assert cli.main(["evaluate", "--model", "digits_cnn", "--scheme", "exponential",
                     "--granularity", "channel", "--avg-bits", "3", "--families",
                     "lloyd_max", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["families"] == ["lloyd_max"] and "exponential+lloyd_max/" in out["label"]
    assert cli.main(["evaluate", "--model", "digits_cnn", "--scheme", "exponential",
                     "--bits", "3", "--families", "lloyd_max"]) == 2
    assert "--families (a level family per layer) needs --avg-bits" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["evaluate", "--model", "digits_cnn", "--scheme", "exponential",
                  "--avg-bits", "3", "--families", "exponential,cubic"])
    assert "expected comma-separated level families" in capsys.readouterr().err


def test_coded_budget_counts_the_entropy_coded_codes(digits):
    """coded_budget=: each option costs the ANS model and stream of its nearest-level codes
    (never more than the fixed width) plus its codebook; the chosen allocation keeps the
    budget in those bits, so it affords wider codes than a fixed-width budget, and the
    quantized model's entropy-coded codes and codebooks fit the average."""
    from paper_repro.core import storage

    paths = [f"{k}/kernel" for k in digits.params]
    fit = dict(granularity="channel", gain=True)
    coded = C.choose_levels(digits.params, paths, scheme="exponential", families=("lloyd_max",),
                            avg_bits=3.0, coded_budget=True, **fit)
    fixed = C.choose_levels(digits.params, paths, scheme="exponential", families=("lloyd_max",),
                            avg_bits=3.0, **fit)
    n = sum(c["size"] for c in coded.values())
    assert sum(c["storage_bits"] for c in coded.values()) <= 3.0 * n
    assert all(c["storage_bits"] <= c["fixed_bits"] for c in coded.values())
    assert sum(c["fixed_bits"] for c in coded.values()) > sum(
        c["storage_bits"] for c in fixed.values())  # the coded budget buys wider codes
    qp, report, info = C.quantize_model(digits.params, paths=paths, scheme="exponential",
                                        families=("lloyd_max",), avg_bits=3.0,
                                        coded_budget=True, **fit)
    assert info["bits"] == {p: c["bits"] for p, c in coded.items()}
    for row in report:
        codes = np.asarray(row["codes"])
        ans = storage.codes_nbytes(codes.size, row["n_levels"], codes=codes, coding="ans")
        assert coded[row["path"]]["storage_bits"] == 8 * ans + 32 * C.codebook_floats(
            row["quantizer"])
    sizes = storage.packed_nbytes(qp, report, coding="ans")
    assert 8 * (sizes["codes_bytes"] + sizes["codebook_bytes"]) / sizes["n_quantized"] <= 3.0
    with pytest.raises(ValueError, match="needs avg_bits"):
        C.quantize_model(digits.params, paths=paths, scheme="exponential", bits=3,
                         coded_budget=True)


def test_coded_budget_on_pack_and_evaluate(tmp_path, capsys):
    """--coded-budget: pack --entropy-coding writes a file whose entropy-coded codes and
    codebooks average at most the budget (up to the few codes the recipe's re-rounding
    moves), records it, and evaluate reads back the model that evaluate --coded-budget
    quantizes; refused in one line where it means nothing."""
    out = tmp_path / "c.prq"
    assert cli.main(["pack", "--model", "digits_cnn", "--recipe", "datafree", "--avg-bits",
                     "3", "--coded-budget", "--entropy-coding", "--out", str(out),
                     "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["meta"]["coded_budget"] is True
    assert 8 * (info["codes_bytes"] + info["codebook_bytes"]) / info["n_quantized"] <= 3.0 * 1.02
    assert cli.main(["evaluate", "--model", "digits_cnn", "--weights", str(out), "--json"]) == 0
    packed = json.loads(capsys.readouterr().out)
    assert packed["label"] == "datafree/exponential+lloyd_max/avg3b-coded (packed)"
    assert cli.main(["evaluate", "--model", "digits_cnn", "--recipe", "datafree", "--avg-bits",
                     "3", "--coded-budget", "--json"]) == 0
    direct = json.loads(capsys.readouterr().out)
    assert direct["label"].endswith("avg3b-coded+mp+bc") and direct["coded_budget"] is True
    assert direct["top1"] == packed["top1"]
    assert direct["coded_bits_per_weight_with_codebooks"] <= 3.0 * 1.02
    for argv, message in (
            (["pack", "--model", "digits_cnn", "--recipe", "datafree", "--avg-bits", "3",
              "--coded-budget", "--out", str(out)], "--coded-budget counts entropy-coded bits"),
            (["pack", "--model", "digits_cnn", "--scheme", "linear", "--bits", "4",
              "--coded-budget", "--out", str(out)], "--coded-budget is for --recipe"),
            (["evaluate", "--model", "digits_cnn", "--scheme", "exponential", "--bits", "3",
              "--coded-budget"], "--coded-budget (entropy-coded bits counted) needs --avg-bits")):
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err


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
    # no batch norm: the pipeline corrects only conv1 (its input mean is the known mean
    # image); every layer from the propagated moments recovers much more on this small CNN
    assert corrected["top1"] > plain["top1"] + 1
    qp, _, info = C.quantize_model(digits.params, paths=[f"{k}/kernel" for k in digits.params],
                                   bias_correction=True, bias_scope="all", **base)
    full = E.evaluate_params(digits, qp, progress=False)
    assert info["corrected_layers"] == 4 and 100 * full.top1 > corrected["top1"] + 10


def test_evaluate_command_switches(capsys):
    with pytest.raises(SystemExit):
        cli.main(["evaluate", "--help"])
    text = capsys.readouterr().out
    for flag in ("--bias-correction", "--mean-preserving", "--fold-bn", "--equalize",
                 "--avg-bits", "--recipe"):
        assert flag in text
    switches = C.RECIPES["datafree"].flags().split(" (")[0]
    assert "".join(switches.split()) in "".join(text.split())  # the help lists the recipe
    assert cli.main(["evaluate", "--model", "digits_cnn", "--scheme", "linear", "--avg-bits",
                     "3", "--granularity", "channel", "--bias-correction", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["bias_correction"] is True and out["avg_bits"] == 3.0
    assert out["code_bits_per_weight"] <= 3.0  # the budget includes the codebook scales


def test_recipe_on_evaluate_records_its_switches(capsys):
    assert cli.main(["evaluate", "--model", "digits_cnn", "--recipe", "datafree",
                     "--avg-bits", "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    settings = C.RECIPES["datafree"].settings
    assert out["recipe"] == "datafree"
    assert out["recipe_switches"].endswith("--avg-bits 3")
    for k, v in settings.items():
        assert out[k] == (list(v) if isinstance(v, tuple) else v), k
    assert out["avg_bits"] == 3.0 and out["top1"] > 80  # digits float: ~98
    # a switch the recipe sets, or a fixed width, is refused (one line, exit 2)
    assert cli.main(["evaluate", "--model", "digits_cnn", "--recipe", "datafree",
                     "--avg-bits", "3", "--scheme", "linear"]) == 2
    assert "--recipe datafree sets --scheme" in capsys.readouterr().err
    assert cli.main(["evaluate", "--model", "digits_cnn", "--recipe", "datafree"]) == 2
    assert "needs --avg-bits" in capsys.readouterr().err


def test_recipe_on_pack_writes_the_repaired_weights(tmp_path, capsys, digits):
    from paper_repro.core import storage

    out = tmp_path / "d.prq"
    assert cli.main(["pack", "--model", "digits_cnn", "--recipe", "datafree", "--avg-bits",
                     "3", "--out", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["meta"]["recipe"] == "datafree" and info["roundtrip_exact"]
    loaded, meta = storage.load_packed(out)
    assert set(meta["layer_bits"]) == {"conv1/kernel", "conv2/kernel", "fc1/kernel",
                                       "dense/kernel"}
    assert set(meta["layer_schemes"]) == set(meta["layer_bits"])  # a family per layer
    # the packed model is the recipe's model: same predictions as evaluating the recipe
    cfg = C.RECIPES["datafree"].config(avg_bits=3.0)
    qp, _ = E.quantize_params(digits.params, cfg)
    for layer, d in qp.items():
        for var, v in d.items():
            np.testing.assert_array_equal(np.asarray(loaded[layer][var]), np.asarray(v))
    assert cli.main(["pack", "--model", "digits_cnn", "--scheme", "linear", "--out",
                     str(out)]) == 2
    assert "--bits required" in capsys.readouterr().err
    assert cli.main(["pack", "--model", "digits_cnn", "--scheme", "linear", "--bits", "4",
                     "--families", "lloyd_max", "--out", str(out)]) == 2
    assert "--families is for --recipe" in capsys.readouterr().err
    assert cli.main(["pack", "--model", "digits_cnn", "--recipe", "datafree", "--avg-bits",
                     "3", "--families", "linear", "--out", str(out)]) == 2
    assert "--recipe datafree sets --families" in capsys.readouterr().err


@pytest.mark.shared_data
def test_real_mobilenet_fold_equalize_exact(shared_data):
    from paper_repro.feedforward import weights as W

    spec = models.get("mobilenet", 0.75)
    params = W.load(spec, shared_data / "keras-weights" / "mobilenet_7_5_224_tf.h5")
    graph = G.trace(models.make_apply(spec), params, (1, 224, 224, 3))
    x = np.random.default_rng(0).uniform(-1, 1, (1, 224, 224, 3))
    y0 = graph.apply(params, x)
    eq, _ = C.equalize(graph, C.fold_bn(graph, params), in_lo=-np.ones(3), in_hi=np.ones(3))
    np.testing.assert_allclose(graph.apply(eq, x), y0, atol=1e-3 * np.abs(y0).max())
    dead = np.asarray(params["conv1_bn"]["moving_variance"]) < 1e-10
    assert dead.sum() == 10  # the dead channels the bias correction is about


def test_anchoring_follows_known_statistics(tiny_mobilenet):
    """Batch-norm networks: every layer's expected input is anchored in statistics. Without
    batch norms, only what follows linearly from the preprocessing constants is."""
    from test_graph import _tiny_onnx

    from paper_repro.feedforward import onnx_model

    params, graph, _ = tiny_mobilenet
    mom = C.propagate(graph, params, in_mean=np.zeros(3), in_std=np.ones(3))
    assert all(mom[n.inputs[0]].anchored for n in graph.layers)
    assert not C.propagate(graph, params, in_mean=np.zeros(3), in_std=np.ones(3),
                           bn_stats=False)[graph.layers[1].inputs[0]].anchored
    m = onnx_model.load_onnx(_tiny_onnx())
    g = G.from_onnx(m)
    anchored = C.anchoring(g, m.params)
    # conv -> batch norm (statistics) -> ReLU6 -> max pool: anchored until the max pool
    assert [anchored[n.inputs[0]][0] for n in g.layers] == [True, False, False, False]
    w = C.Wiring(g, *C.input_statistics("torch"))
    _, _, info = C.quantize_model(m.params, paths=g.kernel_paths(), scheme="linear", bits=3,
                                  bias_correction=True, wiring=w)
    assert info["corrected_layers"] == 1


def test_recipes_command_lists_every_recipe_and_its_switches(capsys):
    assert cli.main(["recipes"]) == 0
    text = capsys.readouterr().out
    for r in C.RECIPES.values():
        assert text.count(f"{r.name}: {r.flags()}") == 1
    assert cli.main(["recipes", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == set(C.RECIPES)
    assert out["datafree"]["optimizer"] is None
    assert out["datafree-opt"]["optimizer"]["round_steps"] > 0
    assert out["datafree"]["settings"]["bias_correction"] is True


def test_fold_into_codebooks_keeps_the_quantized_network(tiny_mobilenet):
    """Batch norms folded into per-channel codebooks (negative scales mirror the codes): same
    outputs to float32 rounding, the file rebuilds the folded tree bit for bit and is smaller;
    a per-tensor layer is left as it is."""
    import copy

    from paper_repro.core import storage as S

    params, g, x = tiny_mobilenet
    params = copy.deepcopy(params)
    params["conv_pw_3_bn"]["gamma"][::2] *= -1  # negative scales: codes mirrored
    w = C.Wiring(g, *C.input_statistics("tf"))
    paths = [p for p, _ in Q.tree_paths(params) if p.endswith("kernel")]
    apply = models.make_apply(models.get("mobilenet", 0.25))
    for scheme in ("exponential", "lloyd_max"):
        qp, rep, _ = C.quantize_model(params, paths=paths, scheme=scheme, bits=5,
                                      mean_preserving=True, bias_correction=True, wiring=w,
                                      fit="corr", granularity="channel", gain=True)
        fp, frep, folded = C.fold_into_codebooks(g, qp, rep)
        assert len(folded) == 27  # every conv but the classifier, which has no batch norm
        y0, y1 = np.asarray(apply(qp, x)), np.asarray(apply(fp, x))
        assert np.abs(y1 - y0).max() <= 1e-5 * np.abs(y0).max()
        assert np.all(fp["conv_pw_3_bn"]["gamma"] == 1) and np.all(fp["conv_pw_3_bn"]["moving_mean"] == 0)
        before = {r["path"]: np.asarray(r["codes"]) for r in rep}
        after = {r["path"]: np.asarray(r["codes"]) for r in frep}
        k = after["conv_pw_3/kernel"]
        L = frep[[r["path"] for r in frep].index("conv_pw_3/kernel")]["quantizer"].n_levels
        np.testing.assert_array_equal(k[..., ::2], L - 1 - before["conv_pw_3/kernel"][..., ::2])
        np.testing.assert_array_equal(k[..., 1::2], before["conv_pw_3/kernel"][..., 1::2])
        packed = S.pack_tree(fp, frep, fill=True)
        back = S.unpack_tree(S.PackedModel.from_bytes(packed.to_bytes()))
        assert S.trees_equal(back, {k: dict(v) for k, v in fp.items()})
        saved = S.packed_nbytes(qp, rep)["packed_bytes"] - S.sizes(packed)["packed_bytes"]
        n_bn = sum(np.size(v) for k, v in Q.tree_paths(params) if "moving_mean" in k)
        assert saved >= 3 * 4 * n_bn - 4096  # gamma, mean, variance: 3 floats a channel, less the header
    qt, rt = Q.quantize_tree(params, select="conv_pw_1/kernel", scheme="linear", bits=4)
    assert C.fold_into_codebooks(g, qt, rt)[2] == []  # one codebook per tensor: not folded
