"""Tests of the figures' visual language (paper_repro.experiments.style and every plot module).

Each plot function runs on small synthetic data; the test asserts that its series carry the
colour of their scheme, the line style / marker fill of their fit and the marker of their
granularity as defined in style.py, that every labelled series is named in a legend, that
error bars say what they are and that every axis is labelled.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys

import matplotlib

matplotlib.use("Agg")

import matplotlib.colors as mcolors  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.container import ErrorbarContainer  # noqa: E402
from matplotlib.legend import Legend  # noqa: E402

from paper_repro.core import stats  # noqa: E402
from paper_repro.experiments import style as S  # noqa: E402


@pytest.fixture(autouse=True)
def _no_show(monkeypatch):
    """A plot function never shows a figure; figures are closed after each test."""
    def boom(*a, **k):
        raise AssertionError("plot functions must not call plt.show")
    monkeypatch.setattr(plt, "show", boom)
    yield
    plt.close("all")


# --- helpers ------------------------------------------------------------------------------------


def rgba(c):
    return mcolors.to_rgba(c)


def same_color(a, b) -> bool:
    return np.allclose(rgba(a)[:3], rgba(b)[:3], atol=1e-6)


def legend_texts(fig) -> list[str]:
    return [t.get_text() for leg in fig.findobj(Legend) for t in leg.get_texts()]


def data_axes(fig):
    return [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]


def labelled_artists(ax):
    """Artists that carry a legend label (an unlabelled patch has label None)."""
    out = [a for a in ax.lines if not a.get_label().startswith("_")]
    out += [c for c in ax.containers if not str(c.get_label()).startswith("_")]
    out += [c for c in ax.collections if not str(c.get_label()).startswith("_")]
    out += [p for p in ax.patches if p.get_label() is not None
            and not str(p.get_label()).startswith("_")]
    return out


def check_figure(fig):
    """Every labelled series is named in a legend; every axis has x and y labels (or shares
    them with a labelled sibling); returns the legend texts."""
    texts = legend_texts(fig)
    assert texts, "figure has no legend"
    joined = "\n".join(texts)
    for ax in data_axes(fig):
        for a in labelled_artists(ax):
            assert a.get_label() in joined, f"series {a.get_label()!r} not named in a legend"
        xs = [ax] + list(ax.get_shared_x_axes().get_siblings(ax))
        ys = [ax] + list(ax.get_shared_y_axes().get_siblings(ax))
        assert any(a.get_xlabel().strip() for a in xs), f"axis {ax.get_title()!r}: no x label"
        assert any(a.get_ylabel().strip() for a in ys), f"axis {ax.get_title()!r}: no y label"
    return texts


def containers(ax) -> dict[str, ErrorbarContainer]:
    return {str(c.get_label()): c for c in ax.containers if isinstance(c, ErrorbarContainer)}


def lines(ax) -> dict[str, object]:
    return {ln.get_label(): ln for ln in ax.lines}


def assert_style(line, *, scheme, fit=None, granularity=None, bits=None, bits_range=None,
                 check_ls=True):
    want = S.series_style(scheme=scheme, fit=fit, granularity=granularity, bits=bits,
                          bits_range=bits_range)
    assert same_color(line.get_color(), want["color"]), (line.get_label(), line.get_color())
    assert line.get_marker() == want["marker"], (line.get_label(), line.get_marker())
    if fit == "max":
        assert line.get_markerfacecolor() == "none", line.get_label()
    else:
        assert same_color(line.get_markerfacecolor(), want["color"]), line.get_label()
    if check_ls:
        assert line.get_linestyle() == want["ls"], (line.get_label(), line.get_linestyle())


# --- style.py -----------------------------------------------------------------------------------


def test_style_dicts_one_entry_per_scheme_fit_granularity():
    schemes = ("linear", "linear_midrise", "exponential", "exponential_nozero", "pow2",
               "lloyd_max", "sign", "ternary", "float", "qwix", "exponential+lloyd_max")
    cols = [rgba(S.SCHEME_COLORS[s]) for s in schemes]
    assert len({c for c in cols}) == len(schemes)  # every scheme its own colour
    assert S.FIT_LINESTYLES["corr"] == "-" and S.FIT_LINESTYLES["max"] == "--"
    assert S.FIT_FILLS["corr"] == "full" and S.FIT_FILLS["max"] == "none"
    assert S.GRANULARITY_MARKERS["tensor"] == "o" and S.GRANULARITY_MARKERS["channel"] == "s"
    st = S.series_style(scheme="exponential", fit="max", granularity="channel")
    assert st["ls"] == "--" and st["marker"] == "s" and st["mfc"] == "none"
    assert same_color(st["color"], "tab:red") and same_color(st["mec"], "tab:red")
    assert S.series_style(scheme="linear", fit="corr", line=False)["ls"] == "none"
    with pytest.raises(ValueError, match="SCHEME_COLORS"):
        S.scheme_color("bogus")
    with pytest.raises(ValueError, match="choose one of"):
        S.series_style(scheme="linear", fit="mse")
    assert S.series_label(scheme="linear", fit="corr", granularity="channel", bits=4) == \
        "linear 4b, corr fit, per channel"
    assert S.series_label(scheme=None) == "float"
    assert S.bits_note([2, 3, 4, 5, 6, 8]) == "; 7 not computed"
    assert S.bits_note([2, 3]) == ""


def test_shade_orders_bit_widths_light_to_dark():
    import colorsys

    light = [colorsys.rgb_to_hls(*S.shade("tab:blue", b, (2, 4)))[1] for b in (2, 3, 4)]
    assert light[0] > light[1] > light[2]
    assert light[0] == pytest.approx(S.SHADE_RANGE[0]) and \
        light[2] == pytest.approx(S.SHADE_RANGE[1])
    assert S.shade("tab:blue", 3, (3, 3)) == "tab:blue"  # one width: the scheme colour
    assert S.shade("tab:blue", None, (2, 4)) == "tab:blue"


def test_legend_for_styles_explains_every_encoding():
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1], **S.series_style(scheme="linear", fit="corr"), label="my series")
    ax.plot([0, 1], [1, 0], label="_hidden")
    leg = S.legend_for_styles(ax, schemes=["linear", "exponential"], fits=["corr", "max"],
                              granularities=["tensor", "channel"], bits=[2, 4],
                              note=["bars: 1 s.e.", "second note"])
    t = [x.get_text() for x in leg.get_texts()]
    for want in ("my series", "colour = scheme", "linear", "exponential", "line = fit",
                 "corr fit (maximize r)", "max fit (top level = max|w|)",
                 "marker = granularity", "per tensor", "per channel", "shade = bits",
                 "2 bits", "4 bits", "bars: 1 s.e.", "second note"):
        assert any(want == x or x.startswith(want) for x in t), want
    assert "_hidden" not in t
    handles = {h.get_label(): h for h in leg.legend_handles}
    assert handles["max fit (top level = max|w|)"].get_linestyle() == "--"
    assert handles["per channel"].get_marker() == "s"
    assert same_color(handles["exponential"].get_color(), "tab:red")


def test_hopfield_label_parse():
    assert S.hopfield_label("linear-3 corr") == {"scheme": "linear", "bits": 3, "fit": "corr"}
    assert S.hopfield_label("sign") == {"scheme": "sign", "bits": None, "fit": None}
    assert S.hopfield_label("lloyd_max-2 max")["scheme"] == "lloyd_max"


def test_no_backend_selected_on_import():
    code = ("import matplotlib\n"
            "from paper_repro.experiments import plot_hopfield, plot_imagenet, plot_explorer, "
            "plot_quantizers, plot_storage, plot_datafree, style\n"
            "print(matplotlib.get_backend())")
    env = {**os.environ, "MPLBACKEND": "svg"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=300, check=True)
    assert out.stdout.strip().lower() == "svg", out.stdout + out.stderr


# --- Hopfield -----------------------------------------------------------------------------------


def test_hopfield_field_agreement_styles():
    from paper_repro.experiments import plot_hopfield as ph

    labels = ["sign", "linear-2 corr", "linear-2 max", "linear-4 corr", "exponential-3 corr"]
    r = np.array([0.8, 0.9, 0.45, 0.99, 0.96])
    d = {"labels": np.array(labels), "r": r, "agreement": 1 - np.arccos(r) / np.pi,
         "agreement_se": np.full(5, 1e-3), "sheppard": 1 - np.arccos(r) / np.pi,
         "r_curve": np.linspace(0, 1, 11), "sheppard_curve": 1 - np.arccos(np.linspace(0, 1, 11)) / np.pi}
    fig = ph.plot_field_agreement(d)
    texts = check_figure(fig)
    ax = fig.axes[0]
    c = containers(ax)
    assert set(labels) <= set(c)
    for lab in labels:
        p = S.hopfield_label(lab)
        assert_style(c[lab].lines[0], scheme=p["scheme"], fit=p["fit"], bits=p["bits"],
                     bits_range=(2, 4), check_ls=False)
        assert len(c[lab].lines[2]) == 1  # an error bar
    # corr and max of the same width: same colour, different fill; 2 vs 4 bits: other shade
    assert c["linear-2 corr"].lines[0].get_markerfacecolor() != \
        c["linear-2 max"].lines[0].get_markerfacecolor()
    assert not same_color(c["linear-2 corr"].lines[0].get_color(),
                          c["linear-4 corr"].lines[0].get_color())
    assert "bars: 1 binomial s.e." in texts
    assert any("shade = bits" in t for t in texts)


def test_hopfield_capacity_styles():
    from paper_repro.experiments import plot_hopfield as ph

    labels = ["float", "sign", "linear-2 corr", "linear-3 corr", "linear-3 max",
              "exponential-3 corr"]
    n = len(labels)
    d = {"labels": np.array(labels),
         "schemes": np.array(["float", "sign", "linear", "linear", "linear", "exponential"]),
         "fits": np.array(["", "", "corr", "corr", "max", "corr"]),
         "bits": np.array([0, 1, 2, 3, 3, 3]), "Ns": np.array([500, 1000, 2000]),
         "alpha_c_N": np.linspace(0.11, 0.15, 3 * n).reshape(n, 3),
         "alpha_c_inf": np.linspace(0.10, 0.13, n), "alpha_c_inf_err": np.full(n, 0.002),
         "slope": np.full(n, 0.5), "alpha_c_theory": np.linspace(0.1, 0.135, n),
         "alpha_c_naive": np.linspace(0.09, 0.13, n), "threshold": np.array(0.8)}
    fig = ph.plot_capacity_vs_bits(d)
    texts = check_figure(fig)
    c = containers(fig.axes[0])
    assert_style(c["linear, corr fit: simulation N→∞"].lines[0], scheme="linear", fit="corr")
    assert_style(c["linear, max fit: simulation N→∞"].lines[0], scheme="linear", fit="max")
    assert_style(c["exponential, corr fit: simulation N→∞"].lines[0], scheme="exponential",
                 fit="corr")
    assert_style(c["sign: simulation N→∞"].lines[0], scheme="sign")
    assert any("bars: 1 s.e." in t for t in texts)
    right = lines(fig.axes[1])
    assert not same_color(right["linear-2 corr"].get_color(), right["linear-3 corr"].get_color())
    assert same_color(right["float"].get_color(), "black")


def test_hopfield_overlap_basins_r_vs_bits():
    from paper_repro.experiments import plot_hopfield as ph

    labels = ["float", "sign", "linear-2 corr", "linear-4 corr"]
    rng = np.random.default_rng(0)
    mt = np.tile(np.linspace(1, 0.9, 20), (4, 1)).astype(float)
    mt[:, 15:] = np.nan
    d = {"labels": np.array(labels), "alpha": np.linspace(0.05, 0.2, 4),
         "m": rng.uniform(0.4, 1, (4, 4, 3)), "alpha_fine": np.linspace(0, 0.2, 20),
         "m_theory": mt, "r_theory": np.array([1, 0.8, 0.9, 0.99]),
         "alpha_c_theory": np.array([0.138, 0.1, 0.12, 0.135]), "N": np.array(500)}
    fig = ph.plot_overlap_vs_alpha(d)
    texts = check_figure(fig)
    c = containers(fig.axes[0])
    lab = next(k for k in c if k.startswith("linear-2 corr"))
    assert_style(c[lab].lines[0], scheme="linear", fit="corr", bits=2, bits_range=(2, 4),
                 check_ls=False)
    assert "bars: 1 s.e. over 3 seeds" in texts
    assert "s.e." in fig.axes[0].get_ylabel()

    b = {"labels": np.array(labels), "alphas": np.array([0.05, 0.1]),
         "m0": np.linspace(0.1, 1, 5), "m_mean": rng.uniform(0, 1, (4, 2, 5)),
         "m_q10": np.zeros((4, 2, 5)), "m_q90": np.ones((4, 2, 5))}
    fig = ph.plot_basins(b)
    texts = check_figure(fig)
    ln = lines(fig.axes[0])
    assert_style(ln["linear-4 corr"], scheme="linear", fit="corr", bits=4, bits_range=(2, 4))
    assert "bands: 10-90 % of trials" in texts

    r = {"schemes": np.array(["linear", "pow2"]), "fits": np.array(["max", "corr"]),
         "bits": np.array([1, 2, 3]), "r_sim": rng.uniform(0.5, 0.99, (2, 2, 3)),
         "r_theory": rng.uniform(0.5, 0.99, (2, 2, 3)), "N": np.array(100), "M": np.array(10)}
    fig = ph.plot_r_vs_bits(r)
    check_figure(fig)
    for j, fit in enumerate(("max", "corr")):
        ln = lines(fig.axes[j])
        assert_style(ln["pow2: measured"], scheme="pow2", fit=fit, check_ls=False)
        assert ln["pow2: Gaussian theory"].get_linestyle() == S.FIT_LINESTYLES[fit]


# --- sweeps (ImageNet / digits) -----------------------------------------------------------------


def sweep_rows():
    rows = [{"scheme": None, "fit": "corr", "granularity": "tensor", "bits": 0, "top1": 78.0,
             "top1_low": 76.0, "top1_high": 80.0, "top5": 94.0, "top5_low": 93.0,
             "top5_high": 95.0, "n_images": 1300, "compression_ratio": 1.0}]
    for s in ("linear", "exponential"):
        for f in ("corr", "max"):
            for g in ("tensor", "channel"):
                for b in (2, 3, 4):
                    t = 20.0 * b
                    rows.append({"scheme": s, "fit": f, "granularity": g, "bits": b,
                                 "top1": t, "top1_low": t - 2, "top1_high": t + 2,
                                 "top5": t + 10, "top5_low": t + 8, "top5_high": t + 12,
                                 "n_images": 1300, "compression_ratio": 32 / b})
    return rows


def test_plot_sweep_styles_and_intervals():
    from paper_repro.experiments import plot_imagenet as P

    fig = P.plot_sweep(sweep_rows(), title="t")
    texts = check_figure(fig)
    assert "bars: Wilson 95 % interval over 1300 images" in texts
    assert "float 78.0 (band: Wilson 95 %)" in texts
    for ax in data_axes(fig):
        g = "tensor" if "per tensor" in ax.get_title() else "channel"
        c = containers(ax)
        for s in ("linear", "exponential"):
            for f in ("corr", "max"):
                e = c[S.series_label(scheme=s, fit=f, granularity=g)]
                assert_style(e.lines[0], scheme=s, fit=f, granularity=g)
                seg = e.lines[2][0].get_segments()
                assert np.allclose([abs(x[1][1] - x[0][1]) for x in seg], 4.0)  # Wilson bars
        assert "%" in ax.get_ylabel()
        assert list(ax.get_xticks()) == [2, 3, 4]
    assert [ax.get_title().endswith("per tensor") for ax in fig.axes[:2]] == [True, False]


# --- quantizers and storage ---------------------------------------------------------------------


def test_plot_quantizers_styles():
    from paper_repro.experiments import plot_quantizers as P

    schemes = ["linear", "exponential", "lloyd_max"]
    grid = np.linspace(-5, 5, 101)
    data = {"bits": np.array([2, 3, 4]), "grid": grid,
            "pdf_gaussian": np.exp(-grid ** 2 / 2) / np.sqrt(2 * np.pi),
            "r_theory": np.full((1, 3, 3), 0.95), "r_corr": np.full((1, 3, 3), 0.96),
            "r_max": np.array([[[0.8, 0.9, 0.95], [0.85, 0.92, 0.96],
                                [np.nan, np.nan, np.nan]]])}
    for s in schemes:
        data[f"levels_gaussian_{s}_corr"] = np.array([0.5, 1.0, 1.5])
        if s != "lloyd_max":
            data[f"levels_gaussian_{s}_max"] = np.array([0.7, 1.4, 2.1])
    cfg = {"densities": ["gaussian"], "schemes": schemes, "show_bits": 3, "n_samples": 1000}
    fig = P.plot_quantizers(data, cfg)
    check_figure(fig)
    top, mid, bot = fig.axes
    assert "density" in top.get_ylabel()
    assert same_color(lines(top)["exponential"].get_color(), "tab:red")
    ln = lines(bot)
    for s in schemes:
        assert_style(ln[f"{s}, corr fit"], scheme=s, fit="corr")
    assert_style(ln["linear, max fit"], scheme="linear", fit="max")
    assert "lloyd_max, max fit" not in ln
    m = lines(mid)
    assert_style(m["lloyd_max: Monte-Carlo sample"], scheme="lloyd_max", fit="corr",
                 check_ls=False)


def test_plot_storage_styles():
    from paper_repro.experiments import plot_storage as P

    rows = [(s, g, b) for s in ("linear", "exponential") for g in ("tensor", "channel")
            for b in (2, 4, 8)]
    n = len(rows)
    data = {"scheme": np.array([r[0] for r in rows]), "granularity": np.array([r[1] for r in rows]),
            "bits": np.array([r[2] for r in rows]),
            "ratio": np.array([32 / r[2] * 0.9 for r in rows]),
            "ratio_parametric_codebook": np.array([32 / r[2] * 0.85 for r in rows]),
            "codes_bytes": np.full(n, 1000), "codebook_bytes": np.full(n, 10),
            "float_kept_bytes": np.full(n, 100), "header_bytes": np.full(n, 5),
            "float_bytes": np.full(n, 40000)}
    fig = P.plot_storage(data, {"model": "m", "fit": "corr", "source": {}}, mark_bits=4)
    texts = check_figure(fig)
    ln = lines(fig.axes[0])
    assert_style(ln["exponential, corr fit, per channel"], scheme="exponential", fit="corr",
                 granularity="channel")
    assert ln["linear, corr fit, per tensor"].get_marker() == "o"
    assert "hatched: per channel" in texts and "marker = granularity" in texts
    for patch in fig.axes[1].patches:  # the file parts are greys, never a scheme colour
        r, g, b, _ = patch.get_facecolor()
        assert abs(r - g) < 1e-6 and abs(g - b) < 1e-6


# --- explorer -----------------------------------------------------------------------------------


def explorer_rows():
    paths = ["conv1/kernel", "conv_dw_1/depthwise_kernel", "conv_pw_1/kernel"]
    r_rows, summary = [], []
    for s in ("linear", "exponential"):
        for f in ("max", "corr"):
            for g in ("tensor", "channel"):
                for b in (2, 3, 4, 6):
                    for i, p in enumerate(paths):
                        r = 1 - 0.3 * 2.0 ** -b * (1.5 if s == "linear" else 1) * (i + 1) * \
                            (2 if f == "max" else 1) * (0.5 if g == "channel" else 1)
                        r_rows.append({"index": i, "path": p, "scheme": s, "fit": f,
                                       "granularity": g, "bits": b, "r": r})
                    summary.append({"scheme": s, "fit": f, "granularity": g, "bits": b,
                                    "noise_sum": 0.3 * 2.0 ** -b})
    stats_rows = [{"index": i, "path": p, "kurtosis": 3.0 + i, "max_over_std": 5.0 + 2 * i,
                   "channel_spread": 10.0 ** i} for i, p in enumerate(paths)]
    return r_rows, summary, stats_rows


def test_explorer_r_vs_bits_and_per_layer():
    from paper_repro.experiments import plot_explorer as P

    r_rows, summary, stats_rows = explorer_rows()
    fig = P.plot_r_vs_bits(r_rows, summary, layer="conv1/kernel")
    check_figure(fig)
    for ax in fig.axes:
        g = "tensor" if "per tensor" in ax.get_title() else "channel"
        ln = lines(ax)
        assert_style(ln["linear, max fit"], scheme="linear", fit="max", granularity=g)
        assert_style(ln["exponential, corr fit"], scheme="exponential", fit="corr",
                     granularity=g)
        assert list(ax.get_xticks()) == [2, 3, 4, 6]
    assert fig.axes[2].get_xlabel().endswith("; 5 not computed)")
    fig = P.plot_r_per_layer(r_rows, stats_rows, bits=4, granularity="channel")
    check_figure(fig)
    assert_style(lines(fig.axes[0])["linear, max fit, per channel"], scheme="linear", fit="max",
                 granularity="channel")


def test_explorer_layer_stats_two_labelled_panels():
    from paper_repro.experiments import plot_explorer as P

    r_rows, _, stats_rows = explorer_rows()
    fig = P.plot_layer_stats(stats_rows, r_rows, bits=4)
    check_figure(fig)
    ylabels = [ax.get_ylabel() for ax in fig.axes]
    assert "excess kurtosis" in ylabels and "max|w| / std(w)" in ylabels
    kurt = fig.axes[ylabels.index("excess kurtosis")]
    mos = fig.axes[ylabels.index("max|w| / std(w)")]
    assert kurt is not mos
    assert np.allclose([p.get_height() for p in kurt.patches], [3, 4, 5])
    assert np.allclose(lines(mos)["max|w| / std"].get_ydata(), [5, 7, 9])
    scat = lines(fig.axes[2])
    mx = scat["max fit (top level = max|w|), per tensor"]
    assert mx.get_markerfacecolor() == "none" and mx.get_marker() == "o"


def test_explorer_layer_tensor_vs_channel_cva_baselines():
    from paper_repro.experiments import plot_explorer as P
    from paper_repro.feedforward import explorer as X

    rng = np.random.default_rng(0)
    w = rng.laplace(size=500)
    view = {"path": "conv1/kernel", "w": w, "w_hat": np.round(w), "levels": np.arange(-3, 4.0),
            "stats": {"kurtosis": 3.0, "max_over_std": 5.0}, "scheme": "linear", "fit": "max",
            "granularity": "tensor", "bits": 3, "r": 0.97}
    fig = P.plot_layer(view)
    check_figure(fig)
    lv = [ln for ln in fig.axes[0].lines if ln.get_label().startswith("levels")][0]
    assert same_color(lv.get_color(), "tab:blue") and lv.get_linestyle() == "--"

    r_rows, _, stats_rows = explorer_rows()
    fig = P.plot_tensor_vs_channel(r_rows, stats_rows, bits=4)
    check_figure(fig)

    rows = []
    for s in ("linear", "exponential"):
        for f in ("corr", "max"):
            for g in ("tensor", "channel"):
                for b in (2, 4, 6):
                    noise = 10.0 ** (1 - b) * (2 if f == "max" else 1)
                    rows.append({"scheme": s, "fit": f, "granularity": g, "bits": b,
                                 "top1_drop": 78 / (1 + np.exp(-3 * (np.log10(noise) + 1))),
                                 "noise_sum": noise, "r_mean": 1 - noise / 10,
                                 "r_min": 1 - noise / 5})
    fig = P.plot_correlation_vs_accuracy(rows, X.correlation_vs_accuracy(rows))
    texts = check_figure(fig)
    pts = {ln.get_label(): ln for ln in fig.axes[0].lines if ln.get_label().startswith("_")}
    key = "_" + S.series_label(scheme="exponential", fit="max", granularity="channel", bits=2)
    assert_style(pts[key], scheme="exponential", fit="max", granularity="channel", bits=2,
                 bits_range=(2, 6), check_ls=False)
    for want in ("colour = scheme", "per tensor", "per channel", "2 bits", "6 bits"):
        assert want in texts

    base = [{"method": "float", "bits": 32, "top1": 78.0, "r_mean": 1.0}]
    for b in (4, 6, 8):
        for m in ("qwix int per-channel absmax", "ours linear corr per-channel",
                  "ours exponential corr per-channel"):
            base.append({"method": m, "bits": b, "top1": 10.0 * b, "r_mean": 1 - 2.0 ** -b,
                         "top1_drop": 78 - 10.0 * b, "top1_drop_low": 77 - 10.0 * b,
                         "top1_drop_high": 80 - 10.0 * b})
    fig = P.plot_baselines(base)
    texts = check_figure(fig)
    c = containers(fig.axes[0])
    q = c["qwix int, per-channel absmax (max fit)"]
    assert_style(q.lines[0], scheme="qwix", fit="max", granularity="channel")
    assert_style(c["ours exponential, corr fit, per channel"].lines[0], scheme="exponential",
                 fit="corr", granularity="channel")
    seg = q.lines[2][0].get_segments()  # float - [drop_high, drop_low] around the top-1
    assert [(round(s[0][1], 6), round(s[1][1], 6)) for s in seg] == [(38.0, 41.0),
                                                                      (58.0, 61.0),
                                                                      (78.0, 81.0)]
    assert "bars: 95 % paired-bootstrap CI of the drop vs float" in texts


# --- data-free repairs --------------------------------------------------------------------------


def datafree_rows():
    """Typed and CSV-string values mixed, as rows arrive from a sweep or a table.csv."""
    return [
        {"label": "float", "scheme": "", "fit": "corr", "bits": "0", "granularity": "tensor",
         "top1": "98.0", "top1_low": "97.0", "top1_high": "99.0", "n_images": "400"},
        {"label": "linear/corr/channel/4b", "scheme": "linear", "fit": "corr", "bits": 4,
         "granularity": "channel", "top1": 97.5, "top1_drop": 0.5, "top1_drop_low": -0.25,
         "top1_drop_high": 1.5, "n_images": 400},
        {"label": "exponential/max/tensor/3b", "scheme": "exponential", "fit": "max",
         "bits": "3", "granularity": "tensor", "top1": "96.0", "top1_drop_low": "",
         "top1_drop_high": "", "n_images": "400"},
        {"label": "linear/corr/channel/2b", "scheme": "linear", "fit": "corr", "bits": 2,
         "granularity": "channel", "top1": 60.0, "top1_drop_low": float("nan"),
         "top1_drop_high": None},
    ]


def test_plot_datafree_intervals_styles_zoom():
    from paper_repro.experiments import plot_datafree as PD

    rows = datafree_rows()
    fig = PD.plot_datafree(rows, title="t")
    texts = check_figure(fig)
    assert len(fig.axes) == 2  # 60 % is far from float, two rows near it: a zoom panel
    ax, zoom = fig.axes
    assert [t.get_text() for t in ax.get_yticklabels()] == [r["label"] for r in rows[1:]]
    eb = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert len(eb) == 3
    # paired: 98 - [1.5, -0.25] around 97.5, with caps
    seg = eb[0].lines[2][0].get_segments()[0]
    assert np.allclose([seg[0][0], seg[1][0]], [96.5, 98.25])
    assert len(eb[0].lines[1]) == 2
    assert_style(eb[0].lines[0], scheme="linear", fit="corr", granularity="channel", bits=4,
                 bits_range=(2, 4), check_ls=False)
    # no paired interval: Wilson 95 % of 384/400, no caps, dashed bar for the max fit
    lo, hi = stats.wilson_interval(384, 400)
    seg = eb[1].lines[2][0].get_segments()[0]
    assert np.allclose([seg[0][0], seg[1][0]], [100 * lo, 100 * hi])
    assert len(eb[1].lines[1]) == 0
    assert eb[1].lines[2][0].get_linestyle()[0][1] is not None  # dashed
    assert eb[1].lines[0].get_markerfacecolor() == "none"
    assert eb[1].lines[0].get_marker() == "o"
    # neither: no bar
    assert len(eb[2].lines[2]) == 0
    # float marked, axis zoomed to the data, zoom panel around float
    assert any(np.allclose(ln.get_xdata(), 98.0) for ln in ax.lines)
    assert 50 < ax.get_xlim()[0] < 60 and ax.get_xlim()[1] <= 100
    assert zoom.get_xlim()[0] > 90
    for want in ("float 98.00", "float: Wilson 95 % band", "colour = scheme", "per channel",
                 "per tensor", "2 bits", "4 bits", "no bar: no interval in the row"):
        assert want in texts, want
    assert any(t.startswith("bars with caps: 95 % paired-bootstrap CI") for t in texts)
    assert any(t.startswith("bars without caps: Wilson 95 % CI") for t in texts)
    assert ax.get_xlabel() == "top-1 accuracy (%)"


def test_plot_datafree_single_panel_and_errors():
    from paper_repro.experiments import plot_datafree as PD

    rows = datafree_rows()[:3]
    fig = PD.plot_datafree(rows)
    assert len(fig.axes) == 1
    lo, hi = fig.axes[0].get_xlim()
    assert lo > 90 and hi <= 100  # 96-99.5 % zoomed, not 0-100
    with pytest.raises(ValueError, match="at least one quantized row"):
        PD.plot_datafree(rows[:1])


def test_figures_are_deterministic():
    from paper_repro.experiments import plot_datafree as PD
    from paper_repro.experiments import plot_imagenet as P

    def png(fig):
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=60, metadata={"Software": None})
        plt.close(fig)
        return buf.getvalue()

    assert png(PD.plot_datafree(datafree_rows())) == png(PD.plot_datafree(datafree_rows()))
    assert png(P.plot_sweep(sweep_rows(), title="t")) == png(P.plot_sweep(sweep_rows(),
                                                                          title="t"))
