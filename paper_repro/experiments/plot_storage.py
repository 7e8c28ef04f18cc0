"""Plot the storage figure from :func:`paper_repro.core.storage.storage_rows` (SCIENCE.md 1).

Compression ratio of the packed file against bits (codebooks, float-kept parameters and the
header included), per tensor and per channel, next to the ideal ``32 / b``; and where the
bytes go.
"""

from __future__ import annotations

from collections.abc import Mapping

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

COLORS = {"linear": "tab:blue", "exponential": "tab:red", "pow2": "tab:orange",
          "lloyd_max": "tab:green", "linear_midrise": "tab:purple",
          "exponential_nozero": "tab:brown", "sign": "tab:gray"}
STYLES = {"tensor": ("-", "o"), "channel": ("--", "s")}
PARTS = (("codes_bytes", "codes", "tab:blue"), ("codebook_bytes", "codebooks", "tab:orange"),
         ("float_kept_bytes", "float kept (BN, biases)", "tab:green"),
         ("header_bytes", "header", "tab:gray"))


def plot_storage(data: Mapping[str, np.ndarray], config: Mapping, *, mark_bits: int = 5):
    """Left: ratio (float32 bytes / file bytes) vs bits for each scheme x granularity, the
    ideal ``32 / b`` and the ``mark_bits`` point annotated. Right: bytes per part of the
    file for each granularity (first scheme). ``data``: columns of the storage rows.
    Returns a matplotlib Figure."""
    scheme = np.asarray(data["scheme"]).astype(str)
    gran = np.asarray(data["granularity"]).astype(str)
    bits = np.asarray(data["bits"]).astype(int)
    ratio = np.asarray(data["ratio"], float)
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 5))

    b_all = np.unique(bits)
    ax.plot(b_all, 32 / b_all, ":", color="k", label="ideal 32 / b (codes only)")
    for s in dict.fromkeys(scheme):
        for g in dict.fromkeys(gran):
            m = (scheme == s) & (gran == g)
            if not m.any():
                continue
            o = np.argsort(bits[m])
            ls, mk = STYLES.get(g, ("-", "o"))
            first = s == scheme[0]  # hollow and wide, so coinciding curves stay visible
            ax.plot(bits[m][o], ratio[m][o], ls, marker=mk, color=COLORS.get(s, None),
                    mfc="none" if first else None, ms=10 if first else 4,
                    lw=3 if first else 1.3, alpha=0.55 if first else 1.0,
                    label=f"{s}, per {g}")
            if g == "channel" and "ratio_parametric_codebook" in data:
                rp = np.asarray(data["ratio_parametric_codebook"], float)[m][o]
                ax.plot(bits[m][o], rp, ":", color=COLORS.get(s, None), alpha=0.5, lw=1,
                        label=f"{s}, per channel, codebook as (c, a, gain) (estimate)")
    at = bits == mark_bits
    if at.any():
        best = np.argmax(np.where(at, ratio, -np.inf))
        ax.axvline(mark_bits, color="0.7", lw=0.8)
        ax.annotate(f"{mark_bits} bits: {ratio[best]:.2f}x\n({scheme[best]}, per {gran[best]};"
                    f" ideal {32 / mark_bits:.1f}x)",
                    (mark_bits, ratio[best]), xytext=(12, 25), textcoords="offset points",
                    arrowprops=dict(arrowstyle="->"), fontsize=8)
    ax.text(0.98, 0.98, "same bits and codebook sizes give the same file size\n"
            "for every scheme: the curves of the schemes coincide",
            transform=ax.transAxes, ha="right", va="top", fontsize=7, color="0.3")
    ax.set_xlabel("bits per quantized weight (incl. sign)")
    ax.set_ylabel("compression ratio  float32 bytes / file bytes")
    src = config.get("source", {})
    ax.set_title(f"{config.get('model')} {config.get('alpha') or ''}: packed file vs float32"
                 f"\n({'official weights' if src.get('kind') == 'keras' else 'synthetic weights'}"
                 f", kernels quantized, fit={config.get('fit')})", fontsize=10)
    ax.set_yscale("log", base=2)
    ax.set_yticks([1, 2, 4, 8, 16])
    ax.set_yticklabels(["1x", "2x", "4x", "8x", "16x"])
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)

    s0 = next(iter(dict.fromkeys(scheme)))
    grans = list(dict.fromkeys(gran))
    width = 0.8 / len(grans)
    for j, g in enumerate(grans):
        m = (scheme == s0) & (gran == g)
        o = np.argsort(bits[m])
        x = bits[m][o] + (j - (len(grans) - 1) / 2) * width
        bottom = np.zeros(m.sum())
        for key, label, color in PARTS:
            v = np.asarray(data[key], float)[m][o] / 2**20
            bx.bar(x, v, width * 0.95, bottom=bottom, color=color,
                   label=label if j == 0 else None, hatch="" if j == 0 else "//",
                   edgecolor="white" if j == 0 else "k", lw=0.3)
            bottom += v
        for xi, top in zip(x, bottom, strict=True):
            bx.text(xi, top, g[0], ha="center", va="bottom", fontsize=7)
    fb = float(np.asarray(data["float_bytes"])[0]) / 2**20
    bx.axhline(fb, color="k", ls=":", lw=1, label=f"float32 model {fb:.1f} MiB")
    bx.set_xlabel("bits per quantized weight")
    bx.set_ylabel("MiB")
    bx.set_title(f"where the bytes go ({s0}; t = per tensor, c = per channel, hatched)",
                 fontsize=10)
    bx.legend(fontsize=7)
    fig.tight_layout()
    return fig
