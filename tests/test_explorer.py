"""Correlation explorer: loading any model, per-layer statistics, r tables, the accuracy fit."""

from __future__ import annotations

import numpy as np
import pytest

from paper_repro.core import quantize as Q
from paper_repro.feedforward import explorer as X


@pytest.fixture(scope="module")
def synthetic():
    return X.load_model("synthetic", seed=0)


def test_synthetic_layers_have_the_intended_tails(synthetic):
    stats = {r["path"]: r for r in X.layer_stats(synthetic.params)}
    assert set(stats) == {"gauss_conv/kernel", "laplace_conv/kernel",
                          "gauss_dw/depthwise_kernel", "laplace_dense/kernel"}
    # Per-channel scales (log-normal, sigma 0.5) fatten every tail; Laplace layers still have
    # clearly heavier tails than the Gaussian ones (excess kurtosis 3 vs 0 before scaling).
    assert stats["laplace_dense/kernel"]["kurtosis"] > stats["gauss_conv/kernel"]["kurtosis"] + 2
    assert all(r["channel_spread"] > 1.5 for r in stats.values())
    assert stats["gauss_dw/depthwise_kernel"]["kind"] == "depthwise"


def test_synthetic_is_deterministic_and_never_mutated(synthetic):
    again = X.synthetic_params(seed=0)
    for layer, d in again.items():
        for var, a in d.items():
            np.testing.assert_array_equal(a, synthetic.params[layer][var])
    assert not np.array_equal(X.synthetic_params(seed=1)["gauss_conv"]["kernel"],
                              again["gauss_conv"]["kernel"])


@pytest.fixture(scope="module")
def rows(synthetic):
    # One grid shared by the tests below, so each (scheme, fit, bits) compiles once.
    return (X.r_table(synthetic.params, schemes=("linear", "exponential"), fits=("corr",),
                      bits=(3, 4), granularities=("tensor",))
            + X.r_table(synthetic.params, schemes=("linear",), fits=("max",), bits=(3,),
                        granularities=("tensor",))
            + X.r_table(synthetic.params, schemes=("linear",), fits=("corr",),
                        bits=(4,), granularities=("channel",)))


def test_numpy_coding_matches_quantize_encode_decode(synthetic, rows):
    w = synthetic.params["gauss_dw"]["depthwise_kernel"]
    for s, g in (("exponential", "tensor"), ("linear", "channel")):
        w_hat, q = X.quantize_layer(w, path="gauss_dw/depthwise_kernel", scheme=s,
                                    fit="corr", bits=4, granularity=g)
        ref = np.asarray(Q.decode(Q.encode(w, q), q))
        np.testing.assert_array_equal(w_hat, ref)  # same thresholds, same side: exact


def test_r_table_rows_and_order(synthetic, rows):
    assert len(rows) == 4 * (2 * 2 + 1 + 1)  # layers x combinations
    # lloyd_max refuses fit="max": such combinations are skipped, not errors.
    assert X.r_table(synthetic.params, schemes=("lloyd_max",), fits=("max",), bits=(3,)) == []
    sel = {(x["path"], x["scheme"], x["fit"], x["granularity"], x["bits"]): x["r"] for x in rows}
    for (p, s, f, g, b), r in sel.items():
        if b == 3 and f == "corr":
            assert r < sel[(p, s, f, g, 4)] <= 1.0  # more bits, higher r
        if f == "max":
            # corr fit never loses to the max-anchored one (fitted on a 2048-bin histogram,
            # judged on the sample: 1e-3)
            assert sel[(p, s, "corr", g, b)] >= r - 1e-3, p
    lap = ("laplace_dense/kernel", "tensor", 4)
    # Laplace-like layer at 4 bits: exponential beats linear (docs/theory.md §2: 0.9902 vs 0.9862
    # on the density; the log-normal channel scales fatten the tails further).
    assert sel[(lap[0], "exponential", "corr", *lap[1:])] > sel[(lap[0], "linear", "corr",
                                                                 *lap[1:])]


def test_per_channel_beats_per_tensor_with_channel_scales(rows):
    r = {x["granularity"]: x["r"] for x in rows if x["path"] == "gauss_conv/kernel"
         and x["scheme"] == "linear" and x["fit"] == "corr" and x["bits"] == 4}
    assert r["channel"] > r["tensor"]


def test_network_summary_matches_correlation_summary(rows):
    from paper_repro.feedforward import sweep as E

    sub = [x for x in rows if (x["scheme"], x["fit"], x["granularity"], x["bits"])
           == ("linear", "corr", "tensor", 3)]
    (s,) = [x for x in X.network_summary(rows) if (x["scheme"], x["fit"], x["granularity"],
                                                   x["bits"]) == ("linear", "corr", "tensor", 3)]
    ref = E.correlation_summary([{"r": x["r"], "size": x["size"], "zero_fraction": 0.0}
                                 for x in sub])
    for k in ("r_mean", "r_min", "noise_sum"):
        assert s[k] == pytest.approx(ref[k], rel=1e-9)


def test_layer_view_shapes(synthetic):
    v = X.layer_view(synthetic.params, "laplace_dense/kernel", scheme="linear", fit="corr",
                     bits=4, granularity="channel", max_points=1000)
    assert v["w"].shape == v["w_hat"].shape == (1000,)
    assert v["levels"].shape == (64, 15)
    assert 0.9 < v["r"] < 1.0
    with pytest.raises(ValueError, match="out of range"):
        X.layer_view(synthetic.params, 99, scheme="linear", fit="corr", bits=4)


def test_load_model_from_h5_and_from_flax_params(tmp_path, synthetic):
    from paper_repro.feedforward import weights as W

    path = W.save_h5(synthetic.params, tmp_path / "any.h5")
    m = X.load_model("h5", path=path)
    assert [p for p, _ in X.kernels(m.params)] == [p for p, _ in X.kernels(synthetic.params)]
    flax_vars = {"params": {"Dense_0": {"kernel": np.ones((3, 2), np.float32),
                                        "bias": np.zeros(2, np.float32)}}}
    m = X.load_model("mine", params=flax_vars)
    assert [p for p, _ in X.kernels(m.params)] == ["Dense_0/kernel"]
    with pytest.raises(ValueError, match="needs a weight file"):
        X.load_model("resnet50")
    with pytest.raises(ValueError, match="matches no array"):
        X.kernels(m.params, select=r".*nothing")


def test_rows_roundtrip_through_arrays(synthetic):
    rows = X.layer_stats(synthetic.params)
    back = X.arrays_to_rows(X.rows_to_arrays(rows, "s/"), "s/")
    assert back == rows


def _fake_rows(n=24, seed=0):
    rng = np.random.default_rng(seed)
    noise = 10 ** rng.uniform(-2, 1.5, n)
    drop = 70 / (1 + np.exp(-2.5 * (np.log10(noise) - 0.3))) + rng.normal(0, 1.0, n)
    return [{"scheme": "linear" if i % 2 else "exponential", "fit": "corr",
             "granularity": "tensor", "bits": 2 + i % 5, "noise_sum": float(noise[i]),
             "r_mean": float(1 / np.sqrt(1 + noise[i] / 20)),
             "r_min": float(1 / np.sqrt(1 + noise[i] / 10)), "top1_drop": float(drop[i])}
            for i in range(n)]


def test_correlation_vs_accuracy_recovers_a_logistic_law():
    fit = X.correlation_vs_accuracy(_fake_rows())
    assert fit["predictors"]["noise_sum"]["spearman_rho"] > 0.9
    assert fit["predictors"]["r_mean"]["spearman_rho"] < -0.9
    assert fit["logistic"]["r2"] > 0.95  # noise sd 1 point on a 70-point range
    assert fit["isotonic_loo_r2"] > 0.9
    rows = X.fit_summary_rows(fit)
    assert rows[0]["predictor"] == "noise_sum" and len(rows) == 4
    with pytest.raises(ValueError, match="at least 4"):
        X.correlation_vs_accuracy(_fake_rows()[:3])


def test_recipes_are_checked_against_the_law_out_of_sample():
    """Recipe rows become points of their own group, the law is fitted without them, and each
    gets the drop the law predicts from its noise (residual = measured - predicted)."""
    table = [{"model": "m", "recipe": "float", "top1_drop": None, "noise_sum": None},
             {"model": "other", "recipe": "datafree", "scheme": "linear", "avg_bits": 4.0,
              "top1_drop": 1.0, "noise_sum": 0.1, "r_mean": 0.9},
             *({"model": "m", "recipe": rec, "scheme": "exponential", "avg_bits": b,
                "top1": 70.0, "top1_drop": drop, "noise_sum": ns, "r_mean": 0.99}
               for rec, b, drop, ns in (("datafree", 5.0, 0.1, 0.05), ("datafree", 4.0, 2.0, 0.2),
                                        ("datafree-opt", 4.0, 1.0, 0.3)))]
    extra = X.recipe_points(table, model="m")
    assert [(r["group"], r["bits"]) for r in extra] == [("datafree", 5.0), ("datafree", 4.0),
                                                         ("datafree-opt", 4.0)]
    fake = _fake_rows()
    fitted, checked = X.split_points(X.accuracy_points(fake) + extra)
    assert len(fitted) == len(fake) and checked == extra
    fit = X.correlation_vs_accuracy(fitted)
    out = X.predicted_drops(fit, checked)
    lg = fit["logistic"]["params"]
    for r, e in zip(out, extra, strict=True):
        want = X.logistic(np.log10(e["noise_sum"]), **lg)
        assert r["predicted_drop"] == pytest.approx(want)
        assert r["residual"] == pytest.approx(e["top1_drop"] - want)
    # the fake law (midpoint at log10 N = 0.3) predicts a few points at N = 0.05..0.3
    assert all(r["residual"] < 0 for r in out)
    summ = X.predicted_summary(out)
    assert summ["n"] == 3 and summ["spearman_rho"] == pytest.approx(0.5)
    assert summ["max_abs_residual"] == pytest.approx(max(abs(r["residual"]) for r in out))
    from paper_repro.experiments import plot_explorer as P

    fig = P.plot_correlation_vs_accuracy(fitted, fit, extra=checked)
    pts = _points(fig.axes[0])
    assert {(float(np.log10(e["noise_sum"])), e["top1_drop"]) for e in extra} <= pts
    assert any(h.get_label().startswith("recipe datafree-opt") for h in fig.axes[0].get_lines())


def test_sweep_rows_filters_float_and_repaired(tmp_path):
    from paper_repro.results import ResultsTable

    t = ResultsTable(tmp_path / "sweep.csv")
    t.append({"a": 0}, {"scheme": None, "top1": 70.0})
    t.append({"a": 1}, {"scheme": "linear", "top1_drop": 1.0, "noise_sum": 0.1})
    t.append({"a": 2}, {"scheme": "linear", "top1_drop": 1.0, "noise_sum": 0.1,
                        "bias_correction": True})
    assert len(X.sweep_rows(tmp_path / "sweep.csv")) == 1


def _points(ax) -> set[tuple[float, float]]:
    """Every (x, y) drawn as a line or marker on ``ax``."""
    return {(float(x), float(y)) for line in ax.get_lines()
            for x, y in zip(*line.get_data(), strict=True)}


def test_plots_show_their_data(synthetic, rows):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from paper_repro.experiments import plot_explorer as P

    stats = X.layer_stats(synthetic.params)
    # One layer: the scatter is the weights against their quantized copy.
    view = X.layer_view(synthetic.params, 0, scheme="linear", fit="corr", bits=4,
                        granularity="channel")
    fig = P.plot_layer(view)
    ax0, ax1 = fig.axes[:2]
    w, w_hat = np.ravel(view["w"]), np.ravel(view["w_hat"])
    xy = ax1.collections[0].get_offsets()
    n = min(len(w), 20000)
    np.testing.assert_array_equal(np.asarray(xy[:, 0]), w[:n])
    np.testing.assert_array_equal(np.asarray(xy[:, 1]), w_hat[:n])
    assert (ax0.get_xlabel(), ax1.get_xlabel(), ax1.get_ylabel()) == (
        "weight w", "original w", "quantized Q(w)")
    assert f"r = {view['r']:.5f}" in ax1.get_title()
    # Per layer: exactly the rows' 1 - r at that width, on a log axis.
    fig = P.plot_r_per_layer(rows, stats, bits=4)
    ax = fig.axes[0]
    want = {(float(r["index"]), float(1 - r["r"])) for r in rows
            if r["bits"] == 4 and r["granularity"] == "tensor"}
    assert len(want) == 2 * len(stats)  # linear and exponential, every layer
    assert _points(ax) == want
    assert ax.get_yscale() == "log" and "1 - r" in ax.get_ylabel()
    assert [t.get_text() for t in ax.get_xticklabels()] == [r["path"].split("/")[0]
                                                            for r in stats]
    # Correlation vs accuracy: the points are the fit's inputs.
    fake = _fake_rows()
    fit = X.correlation_vs_accuracy(fake)
    fig = P.plot_correlation_vs_accuracy(fake, fit)
    ax = fig.axes[0]
    pts = {(float(x), float(y)) for x, y in zip(fit["log10_noise"], fit["y"], strict=True)}
    assert len(pts) == len(fake) and pts <= _points(ax)
    np.testing.assert_allclose(sorted(fit["log10_noise"]),
                               sorted(np.log10([r["noise_sum"] for r in fake])))
    assert "top-1 drop" in ax.get_ylabel()
    # The remaining figures build with labelled axes.
    summ = X.network_summary(rows)
    for f in (P.plot_r_vs_bits(rows, summ), P.plot_layer_stats(stats, rows, bits=4),
              P.plot_tensor_vs_channel(rows, stats, bits=4)):
        assert all(a.get_xlabel() or a.get_ylabel() for a in f.axes if a.has_data())
        assert any(a.has_data() for a in f.axes)
    plt.close("all")


@pytest.mark.shared_data
def test_real_mobilenet_layers(shared_data, monkeypatch):
    monkeypatch.setenv("PAPER_REPRO_SHARED_DATA", str(shared_data))
    m = X.load_model("mobilenet_0.75")
    ks = X.kernels(m.params)
    assert len(ks) == 28 and ks[0][0] == "conv1/kernel"  # model order, not sorted
    (row,) = X.layer_stats(m.params, layers=["conv_pw_13/kernel"])
    assert row["size"] == 768 * 768 and row["kind"] == "pointwise"
