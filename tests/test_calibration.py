"""Tests of synthetic calibration and learned rounding (paper_repro.feedforward.calibration)."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from paper_repro.core import quantize as Q
from paper_repro.feedforward import calibration as C
from paper_repro.feedforward import digits, repairs
from paper_repro.feedforward import graph as G
from paper_repro.feedforward import rounding as RD
from paper_repro.feedforward.models import layers as L

SIZE = 12
IN_MEAN, IN_STD = np.array([0.1, -0.1, 0.0]), np.array([0.5, 0.4, 0.6])
IN_LO, IN_HI = np.full(3, -1.0), np.full(3, 1.0)


class TinyBN(nn.Module):
    """conv 3x3 - BN - ReLU6 - depthwise 3x3 (stride 2) - BN - ReLU6 - conv 1x1 - BN - ReLU6
    - global average - dense."""

    @nn.compact
    def __call__(self, x):
        x = L.Conv2D(8, 3, padding="same", use_bias=False, name="conv1")(x)
        x = L.relu6(L.BatchNorm(name="conv1_bn")(x))
        x = L.DepthwiseConv2D(3, strides=2, padding="same", use_bias=False, name="dw")(x)
        x = L.relu6(L.BatchNorm(name="dw_bn")(x))
        x = L.Conv2D(16, 1, use_bias=False, name="pw")(x)
        x = L.relu6(L.BatchNorm(name="pw_bn")(x))
        x = L.global_avg_pool(x)
        return L.Dense(10, name="fc")(x)


def _apply(params, x):
    return TinyBN().apply({"params": params}, x)


@pytest.fixture(scope="module")
def tiny():
    """A TinyBN whose batch norms hold the statistics of smooth random images (so that
    the statistics are reachable), its graph, and a few such images."""
    model = TinyBN()
    x0 = jnp.zeros((1, SIZE, SIZE, 3))
    params = jax.tree_util.tree_map(np.asarray, model.init(jax.random.PRNGKey(0), x0)["params"])
    params = jax.tree_util.tree_map(lambda a: a, params)
    rng = np.random.default_rng(0)
    noise = rng.normal(size=(64, SIZE // 3, SIZE // 3, 3))
    imgs = np.repeat(np.repeat(noise, 3, 1), 3, 2) * IN_STD + IN_MEAN  # blocky images
    imgs = np.clip(imgs, -1, 1).astype(np.float32)
    params = {k: dict(v) for k, v in params.items()}
    g = G.trace(_apply, params, (1, SIZE, SIZE, 3))
    for node in g.nodes:  # set each batch norm's statistics to those of its input
        if node.op != "bn":
            continue
        _, env = g.apply(params, jnp.asarray(imgs), capture=True)
        a = np.asarray(env[node.inputs[0]], np.float64)
        params[node.group]["moving_mean"] = a.mean((0, 1, 2)).astype(np.float32)
        params[node.group]["moving_variance"] = a.var((0, 1, 2)).astype(np.float32)
        params[node.group]["gamma"] = rng.uniform(0.5, 1.5, a.shape[-1]).astype(np.float32)
        params[node.group]["beta"] = rng.uniform(0.0, 1.0, a.shape[-1]).astype(np.float32)
    g = G.trace(_apply, params, (1, SIZE, SIZE, 3))
    return params, g, imgs


def _stats():
    return dict(in_mean=IN_MEAN, in_std=IN_STD, in_lo=IN_LO, in_hi=IN_HI)


def test_graph_sees_the_batch_norms(tiny):
    params, g, _ = tiny
    kind, targets = C.targets_for(g, params, in_mean=IN_MEAN, in_std=IN_STD)
    assert kind == "bn"
    assert [t.node for t in targets] == ["conv1", "dw", "pw"]
    np.testing.assert_allclose(targets[0].mean, params["conv1_bn"]["moving_mean"], rtol=1e-6)


def test_synthetic_images_match_bn_statistics_better_than_their_start(tiny):
    params, g, _ = tiny
    _, targets = C.targets_for(g, params, in_mean=IN_MEAN, in_std=IN_STD)
    start, h0 = C.synthesize(g, params, targets, n_images=6, steps=0, lr=0.1, seed=3,
                             chunk=4, **_stats())
    imgs, hist = C.synthesize(g, params, targets, n_images=6, steps=40, lr=0.1, seed=3,
                              chunk=4, **_stats())
    assert imgs.shape == (6, SIZE, SIZE, 3) and imgs.dtype == np.float32
    assert len(hist) == 41 and hist[0] == pytest.approx(h0[0])
    m0 = C.target_mismatch(g, params, targets, start)
    m1 = C.target_mismatch(g, params, targets, imgs)
    assert m0 == pytest.approx(hist[0], rel=1e-4)
    assert m1 == pytest.approx(hist[-1], rel=1e-4)
    assert m1 < 0.5 * m0
    assert imgs.min() >= -1.0 and imgs.max() <= 1.0  # kept in the input's range
    again, _ = C.synthesize(g, params, targets, n_images=6, steps=40, lr=0.1, seed=3,
                            chunk=3, **_stats())  # other chunking: same objective
    np.testing.assert_allclose(again, imgs, atol=1e-4)
    same, _ = C.synthesize(g, params, targets, n_images=6, steps=40, lr=0.1, seed=3,
                           chunk=4, **_stats())
    assert same.tobytes() == imgs.tobytes()  # deterministic


def test_a_diverging_synthesis_stops_and_keeps_its_best_images(tiny):
    """Steps far too large for the statistics: the loss leaves its start and stays above it;
    the synthesis stops after ``patience`` such steps with the images of its lowest loss."""
    params, g, _ = tiny
    _, targets = C.targets_for(g, params, in_mean=IN_MEAN, in_std=IN_STD)
    kw = dict(n_images=6, lr=50.0, seed=3, chunk=4, **_stats())
    imgs, hist = C.synthesize(g, params, targets, steps=40, patience=5, **kw)
    assert 6 <= len(hist) < 41  # stopped early
    assert all(h > hist[0] for h in hist[-5:])  # five steps in a row above the start
    assert C.target_mismatch(g, params, targets, imgs) == pytest.approx(min(hist), rel=1e-4)
    out = C.synthesis_outcome(hist, 40)
    assert out == {"loss_end": min(hist), "diverged_at": len(hist) - 1}
    full, hist_full = C.synthesize(g, params, targets, steps=40, patience=0, **kw)
    assert len(hist_full) == 41 and hist_full[:len(hist)] == hist  # same path, not stopped
    assert C.synthesis_outcome(hist_full, 40) == {"loss_end": hist_full[-1]}
    # a converging synthesis is never stopped: the same images with and without the rule
    a, ha = C.synthesize(g, params, targets, steps=20, **dict(kw, lr=0.1))
    b, hb = C.synthesize(g, params, targets, steps=20, patience=0, **dict(kw, lr=0.1))
    assert len(ha) == 21 and a.tobytes() == b.tobytes()


def test_a_synthesis_that_turns_to_nan_stops_at_once_with_its_start(tiny):
    """A step that makes the images NaN (here a NaN rate) stops the synthesis at once, and
    the images returned are the last finite ones, not NaN."""
    params, g, _ = tiny
    _, targets = C.targets_for(g, params, in_mean=IN_MEAN, in_std=IN_STD)
    kw = dict(n_images=6, seed=3, chunk=4, **_stats())
    start, h0 = C.synthesize(g, params, targets, steps=0, lr=0.1, **kw)
    imgs, hist = C.synthesize(g, params, targets, steps=20, lr=float("nan"), **kw)
    assert len(hist) == 2 and hist[0] == h0[0] and not np.isfinite(hist[1])
    assert imgs.tobytes() == start.tobytes()
    assert C.synthesis_outcome(hist, 20) == {"loss_end": hist[0], "diverged_at": 1}
    assert C.synthesis_outcome([float("nan")], 0) == {"loss_end": None, "diverged_at": 0}


def test_moment_targets_without_batch_norm():
    """The digits CNN has no batch norm: targets come from the analytic moments."""
    params = digits.load_or_train()
    g = G.trace(digits.apply, params, (1, 8, 8, 1))
    mean, std, lo, hi = repairs.input_statistics(None, model="digits_cnn")
    kind, targets = C.targets_for(g, params, in_mean=mean, in_std=std)
    assert kind == "moments"
    assert [t.node for t in targets] == [n.name for n in g.layers[:-1]]
    start, _ = C.synthesize(g, params, targets, n_images=8, steps=0, lr=0.1, seed=0,
                            in_mean=mean, in_std=std, in_lo=lo, in_hi=hi)
    imgs, hist = C.synthesize(g, params, targets, n_images=8, steps=30, lr=0.1, seed=0,
                              in_mean=mean, in_std=std, in_lo=lo, in_hi=hi)
    assert hist[-1] < hist[0]
    assert C.target_mismatch(g, params, targets, imgs) < C.target_mismatch(
        g, params, targets, start)


def test_layer_forms_reproduce_the_layers(tiny):
    params, g, imgs = tiny
    values = {k: jnp.asarray(v) for k, v in G.flat_values(params).items()}
    _, env = g.apply(params, jnp.asarray(imgs[:3]), capture=True)
    env["input"] = jnp.asarray(imgs[:3])
    for node in g.layers:
        w = np.asarray(values[node.kernels[0]])
        form = C.layer_form(g, node, w, out_axis=Q.default_channel_axis(node.kernels[0], w))
        assert form.op == {"conv1": "conv", "dw": "depthwise", "pw": "conv", "fc": "dense"}[
            node.name]
        np.testing.assert_array_equal(form.from_rows(form.to_rows(w)), w)
        C._check_form(g, node, form, values, env[node.inputs[0]])  # raises on a mismatch
    # a wrong output axis is caught
    node = g["conv1"]
    w = np.asarray(values["conv1/kernel"])
    with pytest.raises(ValueError, match="HWIO"):
        C.layer_form(g, node, w, out_axis=-2)


def test_learned_rounding_lowers_the_layer_output_error(tiny):
    params, g, _ = tiny
    _, targets = C.targets_for(g, params, in_mean=IN_MEAN, in_std=IN_STD)
    imgs, _ = C.synthesize(g, params, targets, n_images=12, steps=30, lr=0.1, seed=0,
                           **_stats())
    qp, report = Q.quantize_tree(params, scheme="linear", bits=3, granularity="channel",
                                 gain=True)
    cfg = C.OptConfig(round_steps=200, bias_correction="synthetic")
    new, rep, layers = C.learn_rounding(g, params, qp, report, imgs, config=cfg,
                                        in_mean=IN_MEAN, in_std=IN_STD)
    assert [r["layer"] for r in layers] == ["conv1", "dw", "pw", "fc"]
    for r in layers:  # held-out images pick the candidate: never worse than the start there
        assert r["heldout"][r["kept"]] <= r["heldout"]["start"] + 1e-12
    assert sum(r["learned"] for r in layers) < sum(r["nearest"] for r in layers)
    assert sum(r["heldout"][r["kept"]] for r in layers) < sum(
        r["heldout"]["nearest"] for r in layers)
    assert any("learned" in r["kept"] and r["learned"] < 0.9 * r["nearest"] for r in layers)
    flat = dict(Q.tree_paths(new))
    flat_f = dict(Q.tree_paths(params))
    for r in rep:  # only neighbouring levels; tree and report agree
        w = np.asarray(flat_f[r["path"]])
        lo, hi = RD.neighbour_codes(w, r["quantizer"],
                                    out_axis=Q.default_channel_axis(r["path"], w))
        c = np.asarray(r["codes"])
        assert np.all((c == lo) | (c == hi))
        np.testing.assert_array_equal(flat[r["path"]],
                                      np.asarray(Q.decode(c, r["quantizer"])))
    # the synthetic bias correction moved the batch norms' means, nothing else changed
    for p, x in Q.tree_paths(params):
        if p.endswith("kernel"):
            continue
        moved = not np.array_equal(np.asarray(flat[p]), np.asarray(x))
        assert moved == (p.endswith("moving_mean") or p == "fc/bias"), p


class TinySeparable(nn.Module):
    """conv 3x3 - BN - ReLU - separable 3x3 (depthwise and pointwise kernels in one layer) -
    BN - ReLU - global average - dense."""

    @nn.compact
    def __call__(self, x):
        x = L.relu(L.BatchNorm(name="conv1_bn")(L.Conv2D(8, 3, padding="same", use_bias=False,
                                                         name="conv1")(x)))
        x = L.SeparableConv2D(12, 3, padding="same", use_bias=False, name="sep")(x)
        x = L.relu(L.BatchNorm(name="sep_bn")(x))
        return L.Dense(10, name="fc")(L.global_avg_pool(x))


def test_a_layer_the_rounding_cannot_learn_keeps_its_start_and_its_shift_is_absorbed():
    """A separable convolution (two kernels in one traced layer) cannot be written as patches
    times one kernel: it keeps its starting codes, its mean output shift on the calibration
    images still goes into the next batch norm, the layers around it are learned, and the
    summary names it with the reason."""
    model = TinySeparable()
    params = jax.tree_util.tree_map(np.asarray, model.init(
        jax.random.PRNGKey(1), jnp.zeros((1, SIZE, SIZE, 3)))["params"])
    params = {k: dict(v) for k, v in params.items()}
    g = G.trace(lambda p, x: TinySeparable().apply({"params": p}, x), params,
                (1, SIZE, SIZE, 3))
    imgs = np.random.default_rng(0).uniform(-1, 1, (12, SIZE, SIZE, 3)).astype(np.float32)
    qp, report = Q.quantize_tree(params, scheme="linear", bits=3, granularity="channel",
                                 gain=True)
    cfg = C.OptConfig(round_steps=50, bias_correction="synthetic")
    new, rep, layers = C.learn_rounding(g, params, qp, report, imgs, config=cfg)
    by = {r["layer"]: r for r in layers}
    assert list(by) == ["conv1", "sep", "fc"]
    assert by["sep"]["kept"] == "start" and "2 kernels in one layer" in by["sep"]["not_learned"]
    assert "not_learned" not in by["conv1"] and "not_learned" not in by["fc"]
    start = {r["path"]: np.asarray(r["codes"]) for r in report}
    for r in rep:
        if r["path"].startswith("sep/"):
            np.testing.assert_array_equal(np.asarray(r["codes"]), start[r["path"]])
    assert not np.array_equal(new["sep_bn"]["moving_mean"], params["sep_bn"]["moving_mean"])
    assert by["sep"]["max_abs_shift"] > 0
    summ = C.summary({"layers": layers})
    assert list(summ["not_learned"]) == ["sep"] and summ["layers"] == 2


def test_optimize_is_cached_and_identical(tiny, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PAPER_REPRO_CACHE", str(tmp_path))
    params, g, _ = tiny
    qp, report = Q.quantize_tree(params, scheme="exponential", bits=3,
                                 granularity="channel", gain=True)
    cfg = C.OptConfig(n_images=4, synth_steps=5, round_steps=20, chunk=2)
    a, ra, ia = C.optimize(params, qp, report, graph=g, config=cfg, **_stats())
    assert not ia["cached"] and not ia["synthesis"]["cached"]
    assert len(list((tmp_path / "datafree-opt").glob("*.npz"))) == 2
    b, rb, ib = C.optimize(params, qp, report, graph=g, config=cfg, **_stats())
    assert ib["cached"] and ib["cache_key"] == ia["cache_key"]
    fa, fb = dict(Q.tree_paths(a)), dict(Q.tree_paths(b))
    assert fa.keys() == fb.keys()
    for k in fa:
        assert np.asarray(fa[k]).tobytes() == np.asarray(fb[k]).tobytes(), k
        assert np.asarray(fa[k]).dtype == np.asarray(fb[k]).dtype
    for x, y in zip(ra, rb):
        assert np.array_equal(np.asarray(x["codes"]), np.asarray(y["codes"]))
        assert x["r"] == y["r"]
    # a corrupt entry (one flipped byte in each file) is computed again, with a note, and
    # gives the same result; the entry is replaced by a readable one
    for f in (tmp_path / "datafree-opt").glob("*.npz"):
        raw = bytearray(f.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        f.write_bytes(bytes(raw))
    c, rc, ic = C.optimize(params, qp, report, graph=g, config=cfg, **_stats())
    assert not ic["cached"] and not ic["synthesis"]["cached"]
    assert capsys.readouterr().err.count("is not used") == 2
    fc = dict(Q.tree_paths(c))
    for k in fa:
        assert np.asarray(fa[k]).tobytes() == np.asarray(fc[k]).tobytes(), k
    assert C.optimize(params, qp, report, graph=g, config=cfg, **_stats())[2]["cached"]
    # another width reuses the synthetic images but not the result
    qp4, report4 = Q.quantize_tree(params, scheme="exponential", bits=4,
                                   granularity="channel", gain=True)
    _, _, i4 = C.optimize(params, qp4, report4, graph=g, config=cfg, **_stats())
    assert not i4["cached"] and i4["synthesis"]["cached"]
    # without learning: SQuant flips and the analytic bias correction, no images
    _, rs, i0 = C.optimize(params, qp, report, graph=g, config=C.OptConfig(learn=False),
                           cache=False, **_stats())
    assert "synthesis" not in i0
    for r0, r1 in zip(report, rs):
        w = np.asarray(dict(Q.tree_paths(params))[r0["path"]])
        ax = Q.default_channel_axis(r0["path"], w)
        want = RD.squant_codes(w, np.asarray(r0["codes"]), r0["quantizer"], out_axis=ax)
        assert np.array_equal(np.asarray(r1["codes"]), want)
    # synthetic images that miss their targets are not trusted: the same as no learning
    strict = dataclasses.replace(cfg, synth_tolerance=0.0)
    qs, rss, iss = C.optimize(params, qp, report, graph=g, config=strict, cache=False,
                              **_stats())
    assert "statistic loss" in iss["learn_skipped"] and "layers" not in iss
    assert "learn_skipped" in C.summary(iss)
    q0, _, _ = C.optimize(params, qp, report, graph=g, config=C.OptConfig(learn=False),
                          cache=False, **_stats())
    for a, b in zip(rss, rs):
        assert np.array_equal(np.asarray(a["codes"]), np.asarray(b["codes"]))
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for (_, x), (_, y) in
               zip(Q.tree_paths(qs), Q.tree_paths(q0)))
    # a diverging synthesis (a rate far too large, stopped after 10 steps above its start):
    # the reason names the step, and the codes are those of no learning
    wild = dataclasses.replace(cfg, synth_steps=40, synth_lr=50.0, synth_tolerance=1e-9)
    qd, rd, idv = C.optimize(params, qp, report, graph=g, config=wild, cache=False,
                             **_stats())
    assert idv["synthesis"]["diverged_at"] == C.DIVERGED_AFTER
    assert "the synthesis diverged at step 10" in idv["learn_skipped"]
    for a, b in zip(rd, rs):
        assert np.array_equal(np.asarray(a["codes"]), np.asarray(b["codes"]))


def test_config_is_checked():
    with pytest.raises(ValueError, match="bias_correction"):
        C.OptConfig(bias_correction="data")
    with pytest.raises(ValueError, match=">= 1"):
        C.OptConfig(n_images=0)


def test_recipe_datafree_opt_on_the_command_line(tmp_path, monkeypatch, capsys):
    """``evaluate --recipe datafree-opt`` on the digits CNN (no batch norm: analytic
    moments): JSON with the recipe, its options and the run's summary; a second run is read
    from the cache and prints the same numbers."""
    import json

    from paper_repro import cli

    monkeypatch.setenv("PAPER_REPRO_CACHE", str(tmp_path))
    argv = ["evaluate", "--model", "digits_cnn", "--recipe", "datafree-opt", "--avg-bits", "4",
            "--json", "--no-progress"]
    assert cli.main(argv) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["recipe"] == "datafree-opt"
    assert row["recipe_options"] == C.OptConfig().as_dict()
    assert "optimized rounding" in row["recipe_switches"]
    opt = row["datafree_opt"]
    assert opt["cached"] is False and opt["synthesis"]["targets"] == "moments"
    assert opt["layers"] == 4 and sum(opt["kept"].values()) == 4
    assert opt["error_learned"] <= opt["error_start"]
    assert row["top1_drop"] < 5.0  # 4 bits on average: close to float
    assert cli.main(argv) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["datafree_opt"]["cached"] is True
    assert again["top1"] == row["top1"] and again["r_mean"] == row["r_mean"]
    # the recipe's switches cannot be given too
    assert cli.main(argv + ["--scheme", "linear"]) == 2
    assert "--recipe datafree-opt sets --scheme" in capsys.readouterr().err


def test_pack_datafree_opt_reads_back_as_evaluated(tmp_path, monkeypatch, capsys):
    """``pack --recipe datafree-opt`` writes the optimized codes: evaluating the packed file
    gives the top-1 of ``evaluate --recipe datafree-opt`` (same cache entry)."""
    import json

    from paper_repro import cli

    monkeypatch.setenv("PAPER_REPRO_CACHE", str(tmp_path))
    out = tmp_path / "digits_opt.prq"
    assert cli.main(["pack", "--model", "digits_cnn", "--recipe", "datafree-opt",
                     "--avg-bits", "4", "--out", str(out), "--json"]) == 0
    packed = json.loads(capsys.readouterr().out)
    assert packed["roundtrip_exact"] is True
    assert packed["meta"]["recipe"] == "datafree-opt"
    assert packed["meta"]["datafree_opt"]["layers"] == 4
    assert cli.main(["evaluate", "--model", "digits_cnn", "--weights", str(out), "--json",
                     "--no-progress"]) == 0
    from_file = json.loads(capsys.readouterr().out)
    assert cli.main(["evaluate", "--model", "digits_cnn", "--recipe", "datafree-opt",
                     "--avg-bits", "4", "--json", "--no-progress"]) == 0
    direct = json.loads(capsys.readouterr().out)
    assert direct["datafree_opt"]["cached"] is True
    assert from_file["top1"] == direct["top1"]
    # packing again (now from the cache) writes the same bytes: no timings in the header
    again = tmp_path / "digits_opt_again.prq"
    assert cli.main(["pack", "--model", "digits_cnn", "--recipe", "datafree-opt",
                     "--avg-bits", "4", "--out", str(again), "--json"]) == 0
    capsys.readouterr()
    assert again.read_bytes() == out.read_bytes()
    assert "seconds" not in json.dumps(packed["meta"]["datafree_opt"])
    # the evaluation of the file says what it holds: the recipe, its width, its families
    assert from_file["recipe"] == "datafree-opt" and from_file["avg_bits"] == 4.0
    assert from_file["label"] == f"datafree-opt/{from_file['levels']}/avg4b (packed)"
    assert set(from_file["levels"].split("+")) == {"exponential",
                                                   *packed["meta"]["layer_schemes"].values()}
    assert cli.main(["evaluate", "--model", "digits_cnn", "--weights", str(out),
                     "--no-progress"]) == 0
    assert f"digits_cnn datafree-opt/{from_file['levels']}/avg4b (packed): " in \
        capsys.readouterr().out
