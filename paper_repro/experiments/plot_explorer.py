"""Figures of the correlation explorer (arrays/rows -> matplotlib Figure).

Inputs come from :mod:`paper_repro.feedforward.explorer`: :func:`~paper_repro.feedforward.explorer.layer_view`
(one layer, one quantizer), :func:`~paper_repro.feedforward.explorer.r_table` rows,
:func:`~paper_repro.feedforward.explorer.layer_stats` rows and
:func:`~paper_repro.feedforward.explorer.correlation_vs_accuracy`. :func:`interactive_layer` is the one
function that computes (through the explorer) and plots: it is the target of
``ipywidgets.interact`` in ``notebooks/explorer.ipynb``. Colours, line styles, markers and
shades follow :mod:`paper_repro.experiments.style` (colour = scheme, line / marker fill = fit,
marker = granularity, shade = bits).
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib
import matplotlib.pyplot as plt
import matplotlib.ticker
import numpy as np

from paper_repro.experiments import style as S


def _levels_for_plot(view: dict) -> tuple[np.ndarray, str]:
    lv = np.asarray(view["levels"])
    if lv.ndim == 1:
        return lv, "levels"
    tops = np.abs(lv).max(axis=1)
    c = int(np.argsort(tops)[len(tops) // 2])
    return lv[c], f"levels of channel {c} (median top level of {lv.shape[0]})"


def plot_layer(view: dict, *, title: str | None = None) -> plt.Figure:
    """Two panels for one layer: the weight density (log scale) with the fitted levels drawn
    on it, and original vs quantized weights (a scatter of a subsample)."""
    w, w_hat = np.asarray(view["w"]), np.asarray(view["w_hat"])
    st = view["stats"]
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(11, 4))
    lv, what = _levels_for_plot(view)
    lim = max(float(np.abs(w).max()), float(np.abs(lv).max())) * 1.05
    col = S.scheme_color(view["scheme"])
    ax0.hist(w, bins=161, range=(-lim, lim), density=True, color="0.75", log=True,
             label="weights (histogram)")
    std = float(np.std(w))
    x = np.linspace(-lim, lim, 400)
    ax0.plot(x, np.exp(-0.5 * (x / std) ** 2) / (std * np.sqrt(2 * np.pi)), color="k",
             ls=":", lw=1, label="Gaussian, same std")
    b = std / np.sqrt(2)
    ax0.plot(x, np.exp(-np.abs(x) / b) / (2 * b), color="k", ls="-.", lw=0.8,
             label="Laplace, same std")
    for i, v in enumerate(lv):
        ax0.axvline(v, color=col, ls=S.FIT_LINESTYLES[view["fit"]], lw=0.8, alpha=0.8,
                    label=f"{what}: {S.series_label(scheme=view['scheme'], fit=view['fit'], granularity=view['granularity'], bits=view['bits'])}"
                    if i == 0 else None)
    lo = 0.5 / (len(w) * (2 * lim / 161))
    ax0.set_ylim(bottom=lo)
    ax0.set_xlabel("weight w")
    ax0.set_ylabel("probability density of w (log scale)")
    ax0.legend(fontsize=7, loc="upper right")
    ax0.set_title(f"{view['path']}: kurtosis {st['kurtosis']:.1f}, max/std "
                  f"{st['max_over_std']:.1f}", fontsize=9)
    n = min(len(w), 20000)
    ax1.scatter(w[:n], w_hat[:n], s=2, alpha=0.3, color=col, rasterized=True,
                label=f"{n} weights" + (" (first 20000)" if len(w) > n else ""))
    ax1.plot([-lim, lim], [-lim, lim], "k-", lw=0.5, label="Q(w) = w")
    ax1.legend(fontsize=7, loc="upper left", markerscale=4)
    ax1.set_xlabel("original w")
    ax1.set_ylabel("quantized Q(w)")
    ax1.set_title(f"{view['scheme']} / {view['fit']} / {view['granularity']} / "
                  f"{view['bits']} bits: r = {view['r']:.5f}", fontsize=9)
    fig.suptitle(title or view["path"], fontsize=10)
    fig.tight_layout()
    return fig


def _sel(rows, **kw):
    return [r for r in rows if all(r.get(k) == v for k, v in kw.items())]


def _combos(rows):
    seen = []
    for r in rows:
        c = (r["scheme"], r["fit"])
        if c not in seen:
            seen.append(c)
    return seen


def plot_r_vs_bits(r_rows: list[dict], summary_rows: list[dict], *, layer: str | None = None,
                   title: str = "") -> plt.Figure:
    """r vs bits per scheme and fit: one layer's ``1 - r`` (log) and the network's predicted
    noise ``sum (1 - r^2)/r^2``, per tensor (left) and per channel (right) in each panel.

    ``r_rows``: :func:`~paper_repro.feedforward.explorer.r_table` rows (``path``, ``scheme``,
    ``fit``, ``granularity``, ``bits``, ``r``); ``summary_rows``:
    :func:`~paper_repro.feedforward.explorer.network_summary` rows (``noise_sum``).
    """
    layer = layer or r_rows[0]["path"]
    grans = sorted({r["granularity"] for r in r_rows}, reverse=True)
    bits = sorted({int(r["bits"]) for r in r_rows})
    fig, axes = plt.subplots(2, len(grans), figsize=(5.6 * len(grans), 8), squeeze=False,
                             sharey="row")
    for j, g in enumerate(grans):
        for s, f in _combos(r_rows):
            st = S.series_style(scheme=s, fit=f, granularity=g, ms=3.5)
            lab = S.series_label(scheme=s, fit=f)
            rs = sorted(_sel(r_rows, path=layer, scheme=s, fit=f, granularity=g),
                        key=lambda r: r["bits"])
            if rs:
                axes[0, j].semilogy([r["bits"] for r in rs], [1 - r["r"] for r in rs], **st,
                                    label=lab)
            ss = sorted(_sel(summary_rows, scheme=s, fit=f, granularity=g),
                        key=lambda r: r["bits"])
            if ss:
                axes[1, j].semilogy([r["bits"] for r in ss], [r["noise_sum"] for r in ss],
                                    **st, label=lab)
        axes[0, j].set_title(f"{layer}, per {g}", fontsize=9)
        axes[1, j].set_title(f"whole network, per {g}", fontsize=9)
        for ax in axes[:, j]:
            ax.set_xlabel(f"bits per weight (sign included{S.bits_note(bits)})")
            ax.set_xticks(bits)
            ax.grid(alpha=0.3, which="both")
        S.legend_for_styles(axes[0, j], fits=[f for _, f in _combos(r_rows)],
                            granularities=[g], loc="lower left", handlelength=4)
    axes[0, 0].set_ylabel("1 - r of the layer (log scale)")
    axes[1, 0].set_ylabel("predicted noise  sum over layers (1 - r²)/r²  (log scale)")
    fig.suptitle(title or "correlation vs bits", fontsize=10)
    fig.tight_layout()
    return fig


def plot_r_per_layer(r_rows: list[dict], stats_rows: list[dict], *, bits: int,
                     granularity: str = "tensor", title: str = "") -> plt.Figure:
    """``1 - r`` per layer (log) at one width, one line per scheme and fit, layer kinds on
    the x axis labels."""
    fig, ax = plt.subplots(figsize=(max(7, 0.3 * len(stats_rows) + 3), 4.4))
    combos = _combos(r_rows)
    for s, f in combos:
        rs = sorted(_sel(r_rows, bits=bits, scheme=s, fit=f, granularity=granularity),
                    key=lambda r: r["index"])
        if rs:
            ax.semilogy([r["index"] for r in rs], [1 - r["r"] for r in rs],
                        **S.series_style(scheme=s, fit=f, granularity=granularity, ms=3.5),
                        label=S.series_label(scheme=s, fit=f, granularity=granularity))
    ax.set_xticks([r["index"] for r in stats_rows])
    ax.set_xticklabels([r["path"].split("/")[0] for r in stats_rows], rotation=90, fontsize=6)
    ax.set_xlabel("layer (input to output)")
    ax.set_ylabel("1 - r of the layer (log scale)")
    ax.set_title(title or f"correlation per layer, {bits} bits, per {granularity}", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    S.legend_for_styles(ax, fits=[f for _, f in combos], granularities=[granularity],
                        loc="upper left", ncol=2, handlelength=4)
    fig.tight_layout()
    return fig


def gain_ratio(r_rows: list[dict], *, bits: int, fit: str, granularity: str = "tensor"
               ) -> dict[str, float]:
    """Per layer: ``(1 - r_linear) / (1 - r_exponential)`` (> 1: exponential levels help)."""
    lin = {r["path"]: r["r"] for r in _sel(r_rows, bits=bits, fit=fit, scheme="linear",
                                            granularity=granularity)}
    exp = {r["path"]: r["r"] for r in _sel(r_rows, bits=bits, fit=fit, scheme="exponential",
                                            granularity=granularity)}
    return {p: (1 - lin[p]) / max(1 - exp[p], 1e-12) for p in lin if p in exp}


def plot_layer_stats(stats_rows: list[dict], r_rows: list[dict], *, bits: int,
                     title: str = "") -> plt.Figure:
    """Why exponential levels help: per-layer excess kurtosis and max|w|/std (two panels,
    each with its own axis), and the gain ``(1 - r_lin)/(1 - r_exp)`` per tensor against
    kurtosis and against max/std (fit max hollow, fit corr filled)."""
    fig = plt.figure(figsize=(16, 5.6))
    gs = fig.add_gridspec(2, 3, width_ratios=(1.25, 1, 1))
    ax_k = fig.add_subplot(gs[0, 0])
    ax_m = fig.add_subplot(gs[1, 0], sharex=ax_k)
    idx = [r["index"] for r in stats_rows]
    ax_k.bar(idx, [r["kurtosis"] for r in stats_rows], color="0.6", label="excess kurtosis")
    ax_k.axhline(3, **{**S.REFERENCE, "color": "k"}, label="Laplace (3)")
    ax_k.axhline(0, color="k", lw=0.6, label="_Gaussian (0)")
    ax_k.set_ylabel("excess kurtosis")
    ax_k.set_title("tails per layer", fontsize=9)
    ax_k.legend(fontsize=7, loc="upper right")
    ax_k.tick_params(labelbottom=False)
    ax_m.plot(idx, [r["max_over_std"] for r in stats_rows], color="0.25", marker="o", ms=3,
              lw=1, label="max|w| / std")
    ax_m.axhline(np.sqrt(3), **{**S.REFERENCE, "color": "k"}, label="uniform (sqrt 3)")
    ax_m.set_ylabel("max|w| / std(w)")
    ax_m.set_xlabel("layer (input to output)")
    ax_m.legend(fontsize=7, loc="upper left")
    ax_m.set_xticks(idx)
    ax_m.set_xticklabels([r["path"].split("/")[0] for r in stats_rows], rotation=90,
                         fontsize=6)
    for ax in (ax_k, ax_m):
        ax.grid(alpha=0.3, axis="y")
    st = {r["path"]: r for r in stats_rows}
    for k, (key, lab) in enumerate((("kurtosis", "excess kurtosis of the layer"),
                                    ("max_over_std", "max|w| / std(w) of the layer"))):
        ax = fig.add_subplot(gs[:, 1 + k])
        for fit in ("max", "corr"):
            g = gain_ratio(r_rows, bits=bits, fit=fit)
            if g:
                ax.plot([st[p][key] for p in g], list(g.values()), alpha=0.8,
                        **{**S.series_style(scheme="exponential", fit=fit,
                                            granularity="tensor", ms=5, line=False)},
                        label=f"{S.FIT_NAMES[fit]}, per tensor")
        ax.axhline(1, color="k", lw=0.6, label="no gain (= 1)")
        ax.set_yscale("log")
        ax.set_xlabel(lab)
        ax.set_ylabel(f"gain (1 - r_linear) / (1 - r_exponential) at {bits} bits (log)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, loc="upper left")
        ax.set_title("> 1: exponential levels closer to the weights", fontsize=9)
    fig.suptitle(title or "layer statistics that explain the exponential gain", fontsize=10)
    fig.tight_layout()
    return fig


def plot_tensor_vs_channel(r_rows: list[dict], stats_rows: list[dict], *, bits: int,
                           title: str = "") -> plt.Figure:
    """Per tensor vs per channel: ``1 - r`` of each layer with one codebook (x) and one per
    output channel (y), coloured by the spread of the channel scales; below the diagonal,
    per-channel fits help."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), squeeze=False)
    spread = {r["path"]: r["channel_spread"] for r in stats_rows}
    for ax, scheme in zip(axes[0], ("linear", "exponential"), strict=True):
        t = {r["path"]: r["r"] for r in _sel(r_rows, bits=bits, fit="corr", scheme=scheme,
                                              granularity="tensor")}
        c = {r["path"]: r["r"] for r in _sel(r_rows, bits=bits, fit="corr", scheme=scheme,
                                              granularity="channel")}
        ps = [p for p in t if p in c]
        if not ps:
            ax.set_title(f"{scheme}: no per-channel rows", fontsize=9)
            continue
        x = np.array([1 - t[p] for p in ps])
        y = np.array([1 - c[p] for p in ps])
        col = np.log10(np.clip([spread.get(p, 1.0) for p in ps], 1.0, 1e3))
        sc = ax.scatter(x, y, c=col, cmap="viridis", s=22, vmin=0, vmax=3)
        ax.plot([], [], "o", color="0.5", ms=5, ls="none",
                label=f"one layer each ({len(ps)}), colour: channel spread")
        lo, hi = min(x.min(), y.min()) * 0.8, max(x.max(), y.max()) * 1.2
        ax.plot([lo, hi], [lo, hi], "k-", lw=0.6, label="equal (y = x)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("1 - r, per tensor (log scale)")
        ax.set_ylabel("1 - r, per channel (log scale)")
        ax.set_title(f"{S.series_label(scheme=scheme, fit='corr', bits=bits)}", fontsize=9,
                     color=S.scheme_color(scheme))
        ax.legend(fontsize=7, loc="upper left", title="below the line: per channel closer",
                  title_fontsize=7)
        fig.colorbar(sc, ax=ax, label="log10 channel-std spread (p95/p5, capped 1e3)")
    fig.suptitle(title or "per tensor vs per channel", fontsize=10)
    fig.tight_layout()
    return fig


RECIPE_MARKERS = {"datafree": "*", "datafree-opt": "D"}


def plot_correlation_vs_accuracy(rows: list[dict], fit: dict, *, title: str = "",
                                 extra: Sequence[dict] = ()) -> plt.Figure:
    """Measured top-1 drop vs the network's predicted noise ``sum (1 - r^2)/r^2`` (log) with
    the logistic and isotonic fits, and vs the size-weighted mean r; quality in the legend.
    Points: colour = scheme (shade = bits), fill = fit, marker = granularity. ``extra``:
    points the fits did not see (:func:`paper_repro.feedforward.explorer.recipe_points`),
    drawn large and black-edged, a marker per recipe, labelled with their average width."""
    from sklearn.isotonic import IsotonicRegression

    from paper_repro.feedforward.explorer import logistic

    y = fit["y"]
    x = fit["log10_noise"]
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.4))
    ax = axes[0]
    all_bits = sorted({int(r["bits"]) for r in rows})
    br = (all_bits[0], all_bits[-1]) if all_bits else None
    groups: dict[tuple, list[int]] = {}
    for i, r in enumerate(rows):
        groups.setdefault((r["scheme"], r["fit"], r.get("granularity"), int(r["bits"])),
                          []).append(i)
    for (s, f, g, b), ii in sorted(groups.items(), key=lambda kv: kv[1][0]):
        ax.plot(x[ii], y[ii], alpha=0.85,
                **S.series_style(scheme=s, fit=f, granularity=g, bits=b, bits_range=br,
                                 ms=6, line=False),
                label=f"_{S.series_label(scheme=s, fit=f, granularity=g, bits=b)}")
    xs = np.linspace(x.min() - 0.2, x.max() + 0.2, 300)
    lg = fit["logistic"]
    if lg["params"]:
        ax.plot(xs, logistic(xs, **lg["params"]), "k-", lw=1,
                label=f"logistic fit: R² = {lg['r2']:.3f}, RMSE {lg['rmse']:.2f} pts")
    iso = IsotonicRegression(out_of_bounds="clip").fit(x, y)
    ax.plot(xs, iso.predict(xs), color="0.4", ls=(0, (4, 1, 1, 1)), lw=1,
            label=f"isotonic: leave-one-out R² = {fit['isotonic_loo_r2']:.3f}")
    p = fit["predictors"]["noise_sum"]
    ax.plot([], [], " ", label=f"Spearman rho = {p['spearman_rho']:.3f} "
                               f"(p = {p['spearman_p']:.1e}), n = {fit['n']}")
    for group in dict.fromkeys(r["group"] for r in extra):
        rs = [r for r in extra if r["group"] == group]
        for r in rs:
            xr = np.log10(max(float(r["noise_sum"]), 1e-12))
            ax.plot(xr, r["top1_drop"], ls="none", marker=RECIPE_MARKERS.get(group, "X"),
                    ms=11 if group == "datafree" else 8, mec="k", mew=1.0,
                    color=S.scheme_color(r["scheme"]), zorder=5)
            ax.annotate(f"{float(r['bits']):g}", (xr, r["top1_drop"]), fontsize=6,
                        xytext=(5, -9), textcoords="offset points", zorder=6)
        ax.plot([], [], ls="none", marker=RECIPE_MARKERS.get(group, "X"), ms=8, mec="k",
                color="0.8", label=f"recipe {group} (not fitted; label: average bits)")
    schemes = list(dict.fromkeys([r["scheme"] for r in rows] + [r["scheme"] for r in extra]))
    S.legend_for_styles(ax, schemes=schemes, fits=list(dict.fromkeys(r["fit"] for r in rows)),
                        granularities=[g for g in S.GRANULARITY_MARKERS
                                       if any(r.get("granularity") == g for r in rows)],
                        bits=all_bits, loc="center right", fontsize=6, ncol=1)
    ax.set_xlabel("log10 predicted noise  sum over layers (1 - r²)/r²")
    ax.set_ylabel("measured top-1 drop vs float (percentage points)")
    ax.grid(alpha=0.3)
    ax = axes[1]
    for name, mk, col in (("r_mean", "P", "0.15"), ("r_min", "x", "0.55")):
        d = fit["predictors"][name]
        ax.plot(1 - d["x"], y, marker=mk, ls="none", ms=5, color=col, alpha=0.75,
                label=f"1 - {name}: Spearman rho = {-d['spearman_rho']:.3f}")
    ax.set_xscale("log")
    ax.set_xlabel("1 - r  (size-weighted mean / min over layers, log scale)")
    ax.set_ylabel("measured top-1 drop vs float (percentage points)")
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(alpha=0.3, which="both")
    fig.suptitle(title or "does correlation predict accuracy?", fontsize=10)
    fig.tight_layout()
    return fig


def plot_baselines(rows: Sequence[dict], *, title: str = "") -> plt.Figure:
    """Library int-b (qwix) vs ours: top-1 (bars: 95 % paired-bootstrap interval of the drop
    vs float, drawn around the top-1) and mean ``1 - r`` per method and width."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    fl = next((r for r in rows if r["method"] == "float"), None)
    groups = {"qwix": ("qwix", "max", "qwix int, per-channel absmax (max fit)"),
              "ours linear": ("linear", "corr", "ours linear, corr fit, per channel"),
              "ours exponential": ("exponential", "corr",
                                   "ours exponential, corr fit, per channel")}
    bits_all: set[int] = set()
    has_ci = False
    for key, (scheme, f, lab) in groups.items():
        rs = sorted((r for r in rows if r["method"].startswith(key)), key=lambda r: r["bits"])
        if rs:
            b = [int(r["bits"]) for r in rs]
            bits_all.update(b)
            st = S.series_style(scheme=scheme, fit=f, granularity="channel", ms=5)
            top1 = np.array([float(r["top1"]) for r in rs])
            err = None
            if fl is not None and all(r.get("top1_drop_low") not in (None, "") for r in rs):
                ft = float(fl["top1"])
                lo = ft - np.array([float(r["top1_drop_high"]) for r in rs])
                hi = ft - np.array([float(r["top1_drop_low"]) for r in rs])
                err = [np.maximum(top1 - lo, 0), np.maximum(hi - top1, 0)]
                has_ci = True
            axes[0].errorbar(b, top1, yerr=err, capsize=2, **st, label=lab)
            axes[1].semilogy(b, [1 - float(r["r_mean"]) for r in rs], **st, label=lab)
    if fl is not None:
        axes[0].axhline(float(fl["top1"]), **S.FLOAT_STYLE,
                        label=f"float {float(fl['top1']):.2f}")
    axes[0].set_ylabel("top-1 accuracy (%)")
    axes[1].set_ylabel("1 - mean r (size-weighted over layers, log scale)")
    note = "bars: 95 % paired-bootstrap CI of the drop vs float" if has_ci else None
    for k, ax in enumerate(axes):
        ax.set_xlabel("bits per weight (incl. sign)")
        ax.set_xticks(sorted(bits_all))
        ax.grid(alpha=0.3, which="both")
        S.legend_for_styles(ax, fits=["max", "corr"] if k == 0 else [],
                            granularities=["channel"] if k == 0 else [],
                            note=note if k == 0 else None,
                            loc="lower right" if k == 0 else "upper right")
    fig.suptitle(title or "library baseline vs correlation-fitted levels", fontsize=10)
    fig.tight_layout()
    return fig


def interactive_layer(model: str = "synthetic", layer: int = 0, scheme: str = "exponential",
                      fit: str = "corr", bits: int = 4, granularity: str = "tensor"):
    """Load ``model`` (an :func:`paper_repro.feedforward.explorer.available_models` name, cached),
    quantize layer number ``layer`` and draw :func:`plot_layer`; the target of
    ``ipywidgets.interact``. Settings a scheme refuses are shown as a message."""
    from paper_repro.feedforward import explorer as X

    m = X.load_model(model)
    ks = X.kernels(m.params)
    i = min(max(int(layer), 0), len(ks) - 1)
    try:
        view = X.layer_view(m.params, i, scheme=scheme, fit=fit, bits=int(bits),
                            granularity=granularity)
    except ValueError as e:
        print(f"not available: {e}")
        return None
    fig = plot_layer(view, title=f"{m.name}: layer {i} of {len(ks)}")
    try:  # inside a notebook/widget: render now (works with any matplotlib backend)
        from IPython import get_ipython
        from IPython.display import display

        if get_ipython() is not None:
            display(fig)
            plt.close(fig)
    except ImportError:
        pass
    return fig
