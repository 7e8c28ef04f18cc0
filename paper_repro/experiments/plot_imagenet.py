"""Accuracy-vs-bits figures of quantization sweeps (rows from
:func:`paper_repro.feedforward.sweep.run_sweep`, or the same columns read back from a
``table.csv``).

Styles from :mod:`paper_repro.experiments.style`: colour = scheme, line and marker fill = fit,
marker = granularity (one column of panels per granularity); bars are the Wilson 95 %
intervals of the accuracy over the evaluated images, the float result is a line with its
Wilson band.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from paper_repro.experiments import style as S

_NONE = (None, "", "None")


def _grans(rows: list[dict]) -> list[str]:
    present = {r["granularity"] for r in rows if r.get("scheme") not in _NONE}
    order = [g for g in S.GRANULARITY_MARKERS if g in present]
    return order + sorted(present - set(order))


def plot_sweep(rows: list[dict], *, title: str, paper_top5: dict | None = None):
    """Top-1 and top-5 (%) vs bits, one column per granularity (tensor, channel); float as a
    line with its Wilson 95 % band; bars: Wilson 95 % intervals over the images (series
    shifted by a few hundredths of a bit so coinciding ones stay visible); the papers'
    top-5 points (exponential) as stars; compression ratio on the top axis.

    ``rows``: dicts with ``scheme`` (None/"" for the float row), ``fit``, ``granularity``,
    ``bits``, ``top1``/``top5`` and ``*_low``/``*_high`` in percent, ``compression_ratio``,
    ``n_images``. Returns a matplotlib Figure.
    """
    base = next((r for r in rows if r.get("scheme") in _NONE), None)
    grans = _grans(rows)
    n_img = next((int(float(r["n_images"])) for r in rows if r.get("n_images") not in _NONE),
                 None)
    fig, axes = plt.subplots(2, max(1, len(grans)), figsize=(6.4 * max(1, len(grans)), 9.5),
                             squeeze=False, sharey="row")
    for j, g in enumerate(grans):
        qrows = [r for r in rows if r.get("scheme") not in _NONE and r["granularity"] == g]
        keys = list(dict.fromkeys((r["scheme"], r["fit"]) for r in qrows))
        keys = sorted(keys, key=lambda k: (list(S.SCHEME_COLORS).index(k[0])
                                           if k[0] in S.SCHEME_COLORS else 99, k[1] != "corr"))
        bits_all = sorted({int(float(r["bits"])) for r in qrows})
        for i, metric in enumerate(("top1", "top5")):
            ax = axes[i, j]
            if base is not None:
                ax.axhspan(float(base[f"{metric}_low"]), float(base[f"{metric}_high"]),
                           **S.FLOAT_BAND)
                ax.axhline(float(base[metric]), **S.FLOAT_STYLE,
                           label=f"float {float(base[metric]):.1f} (band: Wilson 95 %)")
            for k, (s, f) in enumerate(keys):
                rs = sorted((r for r in qrows if r["scheme"] == s and r["fit"] == f),
                            key=lambda r: int(float(r["bits"])))
                b = np.array([int(float(r["bits"])) for r in rs])
                y = np.array([float(r[metric]) for r in rs])
                lo = np.array([float(r[f"{metric}_low"]) for r in rs])
                hi = np.array([float(r[f"{metric}_high"]) for r in rs])
                dx = (k - (len(keys) - 1) / 2) * 0.04  # coinciding series stay visible
                ax.errorbar(b + dx, y, yerr=[y - lo, hi - y], capsize=2, lw=1.3,
                            **S.series_style(scheme=s, fit=f, granularity=g, ms=4.5),
                            label=S.series_label(scheme=s, fit=f, granularity=g))
            if metric == "top5" and paper_top5:
                for paper, pts in paper_top5.items():
                    for bits, v in pts.items():
                        ax.plot([bits], [v], "*", ms=13, mfc="gold", mec="k", ls="none",
                                label=f"{paper} exponential (paper, 50k)")
            ax.set_ylim(-2, 102)
            ax.set_xticks(bits_all)
            ax.set_xlabel("bits per weight (incl. sign)")
            ax.set_ylabel(f"{metric.replace('top', 'top-')} accuracy (%)")
            ax.set_title(f"{title}: {metric.replace('top', 'top-')}, per {g}", fontsize=10)
            ax.grid(alpha=0.3)
            note = "bars: Wilson 95 % interval" + (f" over {n_img} images" if n_img else "")
            if i == 0:  # the key once per column; below, the series and the float line
                S.legend_for_styles(ax, fits=[f for _, f in keys], granularities=[g],
                                    loc="best", note=note)
            else:
                S.legend_for_styles(ax, loc="best", note=note)
            ratios = {int(float(r["bits"])): float(r["compression_ratio"]) for r in qrows
                      if r["scheme"] == "linear"}
            if ratios and i == 0:
                top = ax.secondary_xaxis("top")
                bs = sorted(ratios)
                top.set_xticks(bs, [f"x{ratios[b]:.1f}" for b in bs])
                top.tick_params(labelsize=7)
                top.set_xlabel("compression vs float32 (codebooks and float biases/BN included)",
                               fontsize=8)
    fig.tight_layout()
    return fig
