"""Plot the quantizer figure from :func:`paper_repro.experiments.quantizers.quantizer_curves`.

Styles from :mod:`paper_repro.experiments.style`: colour = scheme, line and marker fill = fit
(corr solid / filled, max dashed / hollow), theory curves thin lines, Monte-Carlo samples
markers.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from paper_repro.experiments import style as S


def plot_quantizers(data: dict, config: dict):
    """Three rows, one column per density: the level sets drawn over the density (unit
    variance); ``1 - r^2`` vs bits (theory lines, Monte-Carlo points) for the correlation
    fit; ``r`` vs bits for the max-anchored and correlation-fitted levels.

    ``data``: ``bits: (B,)``, ``grid``/``pdf_<density>: (G,)``,
    ``levels_<density>_<scheme>_<fit>``: positive levels, ``r_theory``/``r_corr``/``r_max``:
    ``(densities, schemes, B)``. ``config``: ``densities``, ``schemes``, ``show_bits``,
    ``n_samples``. Returns a matplotlib Figure.
    """
    dens, schemes = config["densities"], config["schemes"]
    bits = data["bits"]
    fig, axes = plt.subplots(3, len(dens), figsize=(5.6 * len(dens), 12), squeeze=False)
    for i, d in enumerate(dens):
        ax = axes[0, i]
        ax.fill_between(data["grid"], data[f"pdf_{d}"], color="0.85",
                        label=f"{d} density (unit variance)")
        top = float(np.max(data[f"pdf_{d}"]))
        for j, s in enumerate(schemes):
            key = f"levels_{d}_{s}_corr"
            if key not in data:
                continue
            c = S.scheme_color(s)
            p = data[key]
            lv = np.concatenate([-p[::-1], p])
            y = -top * (0.14 + 0.16 * j)  # a rug row per scheme below the density
            ax.plot(lv, np.full_like(lv, y), "|", ms=14, mew=2, color=c, label=s)
            if f"levels_{d}_{s}_max" in data:
                pm = data[f"levels_{d}_{s}_max"]
                lm = np.concatenate([-pm[::-1], pm])
                ax.plot(lm, np.full_like(lm, y - top * 0.06), "|", ms=8, mew=1, color=c,
                        alpha=0.5, label=f"_{s} max")
        ax.set_xlim(-5, 5)
        ax.set_ylim(-top * (0.1 + 0.16 * len(schemes)), top * 1.5)
        ax.set_yticks([t for t in ax.get_yticks() if 0 <= t <= top * 1.05])
        ax.axhline(0, color="0.5", lw=0.6)
        ax.set_title(f"{d}: levels at {config['show_bits']} bits", fontsize=10)
        ax.set_xlabel("w / std(w)")
        ax.set_ylabel("probability density of w / std(w)\n(below 0: levels, one row per scheme)")
        tall = plt.Line2D([], [], color="0.3", marker="|", ms=12, mew=2, ls="none",
                          label="tall ticks: corr fit")
        short = plt.Line2D([], [], color="0.3", marker="|", ms=7, mew=1, alpha=0.5,
                           ls="none", label="short faint ticks: max fit")
        S.legend_for_styles(ax, extra=[tall, short], note="colour = scheme", loc="upper right",
                            ncol=2)

        ax = axes[1, i]
        for j, s in enumerate(schemes):
            st = S.series_style(scheme=s, fit="corr", ms=4.5)
            ax.plot(bits, 1 - data["r_theory"][i, j] ** 2, color=st["color"], ls=st["ls"],
                    lw=1.2, label=f"{s}: Gaussian/Laplace theory")
            ax.plot(bits, 1 - data["r_corr"][i, j] ** 2, **{**st, "ls": "none"},
                    label=f"{s}: Monte-Carlo sample")
        ax.set_yscale("log")
        ax.set_xticks(bits)
        ax.set_xlabel("bits per weight (incl. sign)")
        ax.set_ylabel("1 - r²  (relative error after best gain, log scale)")
        ax.set_title(f"{d}: correlation-fitted, theory (lines) vs Monte-Carlo (points)",
                     fontsize=10)
        ax.grid(alpha=0.3, which="both")
        S.legend_for_styles(ax, fits=["corr"], fontsize=6.5)

        ax = axes[2, i]
        for j, s in enumerate(schemes):
            ax.plot(bits, data["r_corr"][i, j], **S.series_style(scheme=s, fit="corr", ms=4),
                    label=S.series_label(scheme=s, fit="corr"))
            if not np.all(np.isnan(data["r_max"][i, j])):
                ax.plot(bits, data["r_max"][i, j], **S.series_style(scheme=s, fit="max", ms=4),
                        label=S.series_label(scheme=s, fit="max"))
        ax.set_ylim(0.7, 1.002)
        ax.set_xticks(bits)
        ax.set_xlabel("bits per weight (incl. sign)")
        ax.set_ylabel("r = corr(w, Q(w))")
        ax.set_title(f"{d}: max-anchored (P1) vs correlation-fitted (P2)", fontsize=10)
        ax.grid(alpha=0.3)
        S.legend_for_styles(ax, fits=["corr", "max"], fontsize=6.5, loc="lower right")
    fig.suptitle(f"Quantizers on {config['n_samples']:,} samples per density", y=1.0)
    fig.tight_layout()
    return fig
