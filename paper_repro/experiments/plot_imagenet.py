"""Accuracy-vs-bits figures of quantization sweeps (rows from experiments_imagenet.run_sweep)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

STYLE = {
    ("linear", "max"): dict(color="tab:blue", ls="--", marker="s"),
    ("linear", "corr"): dict(color="tab:blue", ls="-", marker="o"),
    ("exponential", "max"): dict(color="tab:red", ls="--", marker="s"),
    ("exponential", "corr"): dict(color="tab:red", ls="-", marker="o"),
    ("lloyd_max", "corr"): dict(color="tab:green", ls="-", marker="^"),
    ("pow2", "corr"): dict(color="tab:orange", ls="-", marker="v"),
    ("pow2", "max"): dict(color="tab:orange", ls="--", marker="v"),
}


def plot_sweep(rows: list[dict], *, title: str, paper_top5: dict | None = None):
    """Top-1 and top-5 vs bits, one column per granularity; float as a grey band (Wilson CI);
    the papers' top-5 points (exponential) as stars; compression ratio on the top axis."""
    base = next((r for r in rows if r.get("scheme") is None), None)
    grans = sorted({r["granularity"] for r in rows if r.get("scheme") is not None})
    fig, axes = plt.subplots(2, max(1, len(grans)), figsize=(6.0 * max(1, len(grans)), 8.5),
                             squeeze=False, sharey="row")
    for j, g in enumerate(grans):
        for i, metric in enumerate(("top1", "top5")):
            ax = axes[i, j]
            if base is not None:
                ax.axhspan(base[f"{metric}_low"], base[f"{metric}_high"], color="0.88")
                ax.axhline(base[metric], color="0.4", lw=1, label=f"float {base[metric]:.1f}")
            keys = sorted({(r["scheme"], r["fit"]) for r in rows
                           if r.get("scheme") is not None and r["granularity"] == g})
            for s, f in keys:
                rs = sorted((r for r in rows if r.get("scheme") == s and r["fit"] == f
                             and r["granularity"] == g), key=lambda r: int(r["bits"]))
                b = np.array([int(r["bits"]) for r in rs])
                y = np.array([r[metric] for r in rs])
                lo = np.array([r[f"{metric}_low"] for r in rs])
                hi = np.array([r[f"{metric}_high"] for r in rs])
                st = STYLE.get((s, f), dict(color="k", ls=":", marker="x"))
                ax.errorbar(b, y, yerr=[y - lo, hi - y], capsize=2, ms=4, lw=1.3,
                            label=f"{s}, {'top=max|w|' if f == 'max' else 'corr fit'}", **st)
            if metric == "top5" and paper_top5:
                for paper, pts in paper_top5.items():
                    for bits, v in pts.items():
                        ax.plot([bits], [v], "*", ms=13, mfc="gold", mec="k",
                                label=f"{paper} exponential (paper, 50k)")
            ax.set_ylim(-2, 102)
            ax.set_xlabel("bits per weight (incl. sign)")
            ax.set_ylabel(f"{metric} accuracy (%)")
            ax.set_title(f"{title}: {metric}, per {g}")
            ax.grid(alpha=0.3)
            handles, labels = ax.get_legend_handles_labels()
            uniq = dict(zip(labels, handles, strict=True))
            ax.legend(uniq.values(), uniq.keys(), fontsize=7, loc="lower right")
            ratios = {int(r["bits"]): r["compression_ratio"] for r in rows
                      if r.get("scheme") == "linear" and r["granularity"] == g}
            if ratios and i == 0:
                top = ax.secondary_xaxis("top")
                bs = sorted(ratios)
                top.set_xticks(bs, [f"x{ratios[b]:.1f}" for b in bs])
                top.tick_params(labelsize=7)
                top.set_xlabel("compression vs float32 (codebooks and float biases/BN included)",
                               fontsize=8)
    fig.tight_layout()
    return fig
