"""Plot the quantizer figure from :func:`paper_repro.experiments.quantizers.quantizer_curves`."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

COLORS = {"linear": "tab:blue", "exponential": "tab:red", "pow2": "tab:orange",
          "lloyd_max": "tab:green"}


def plot_quantizers(data: dict, config: dict):
    """Three rows: level sets over the densities; r vs bits (theory + Monte-Carlo);
    max-anchored vs correlation-fitted. Returns a matplotlib Figure."""
    dens, schemes = config["densities"], config["schemes"]
    bits = data["bits"]
    fig, axes = plt.subplots(3, len(dens), figsize=(5.2 * len(dens), 11), squeeze=False)
    for i, d in enumerate(dens):
        ax = axes[0, i]
        ax.fill_between(data["grid"], data[f"pdf_{d}"], color="0.85", label=f"{d} density")
        for j, s in enumerate(schemes):
            key = f"levels_{d}_{s}_corr"
            if key not in data:
                continue
            p = data[key]
            lv = np.concatenate([-p[::-1], p])
            y = 0.62 - 0.1 * j
            ax.plot(lv, np.full_like(lv, y), "|", ms=14, mew=2, color=COLORS[s],
                    label=f"{s} (corr fit)")
            if s != "lloyd_max" and f"levels_{d}_{s}_max" in data:
                pm = data[f"levels_{d}_{s}_max"]
                lm = np.concatenate([-pm[::-1], pm])
                ax.plot(lm, np.full_like(lm, y - 0.04), "|", ms=8, color=COLORS[s], alpha=0.45)
        ax.set_xlim(-5, 5)
        ax.set_title(f"{d}: levels at {config['show_bits']} bits (faint: top = max|w|)")
        ax.set_xlabel("w / std(w)")
        ax.legend(fontsize=7, loc="upper right")

        ax = axes[1, i]
        for j, s in enumerate(schemes):
            ax.plot(bits, 1 - data["r_theory"][i, j] ** 2, "-", color=COLORS[s], label=f"{s} theory")
            ax.plot(bits, 1 - data["r_corr"][i, j] ** 2, "o", color=COLORS[s], mfc="none",
                    label=f"{s} sample")
        ax.set_yscale("log")
        ax.set_xlabel("bits per weight (incl. sign)")
        ax.set_ylabel("1 - r^2  (relative error after best gain)")
        ax.set_title(f"{d}: correlation-fitted, theory vs Monte-Carlo")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)

        ax = axes[2, i]
        for j, s in enumerate(schemes):
            ax.plot(bits, data["r_corr"][i, j], "-o", color=COLORS[s], ms=4, label=f"{s} corr fit")
            if not np.all(np.isnan(data["r_max"][i, j])):
                ax.plot(bits, data["r_max"][i, j], "--s", color=COLORS[s], ms=4, alpha=0.7,
                        label=f"{s} top = max|w|")
        ax.set_ylim(0.7, 1.002)
        ax.set_xlabel("bits per weight (incl. sign)")
        ax.set_ylabel("r = corr(w, Q(w))")
        ax.set_title(f"{d}: max-anchored (P1) vs correlation-fitted (P2)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"Quantizers on {config['n_samples']:,} samples per density", y=1.0)
    fig.tight_layout()
    return fig
