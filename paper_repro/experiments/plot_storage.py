"""Plot the storage figure from :func:`paper_repro.experiments.storage.storage_rows`.

Compression ratio of the packed file against bits (codebooks, float-kept parameters and the
header included), per tensor and per channel, next to the ideal ``32 / b``; and where the
bytes go. Styles from :mod:`paper_repro.experiments.style` (colour = scheme, marker =
granularity, line = fit); the parts of the file are greys, so no part reads as a scheme.
"""

from __future__ import annotations

from collections.abc import Mapping

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Patch

from paper_repro.experiments import style as S

PARTS = (("codes_bytes", "codes", "0.3"), ("codebook_bytes", "codebooks", "0.55"),
         ("float_kept_bytes", "float kept (BN, biases)", "0.75"),
         ("header_bytes", "header", "0.92"))


def plot_storage(data: Mapping[str, np.ndarray], config: Mapping, *, mark_bits: int = 5):
    """Left: ratio (float32 bytes / file bytes) vs bits for each scheme x granularity, the
    ideal ``32 / b`` and the ``mark_bits`` point annotated. Right: bytes per part of the
    file for each granularity (first scheme). ``data``: columns of the storage rows.
    ``config``: ``model``, ``alpha``, ``fit``, ``source``. Returns a matplotlib Figure."""
    scheme = np.asarray(data["scheme"]).astype(str)
    gran = np.asarray(data["granularity"]).astype(str)
    bits = np.asarray(data["bits"]).astype(int)
    ratio = np.asarray(data["ratio"], float)
    coding = (np.asarray(data["coding"]).astype(str) if "coding" in data
              else np.full(len(bits), "fixed"))
    ans = coding == "ans"
    fit = config.get("fit")
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(13.5, 5.4))

    b_all = np.unique(bits)
    ax.plot(b_all, 32 / b_all, **{**S.REFERENCE, "color": "k"}, label="ideal 32 / b (codes only)")
    for s in dict.fromkeys(scheme):
        for g in dict.fromkeys(gran):
            if ((scheme == s) & (gran == g) & ans).any():
                ma = (scheme == s) & (gran == g) & ans
                oa = np.argsort(bits[ma])
                sta = S.series_style(scheme=s, fit=fit, granularity=g, ms=4)
                sta.update(ls="-.", mfc="white", lw=1.2)
                ax.plot(bits[ma][oa], ratio[ma][oa], **sta,
                        label=S.series_label(scheme=s, fit=fit, granularity=g)
                        + ", entropy-coded (ANS)")
            m = (scheme == s) & (gran == g) & ~ans
            if not m.any():
                continue
            o = np.argsort(bits[m])
            st = S.series_style(scheme=s, fit=fit, granularity=g, ms=4)
            if s == scheme[0]:  # big, hollow and wide, so coinciding curves stay visible
                st.update(ms=10, mfc="none", lw=3, alpha=0.5)
            ax.plot(bits[m][o], ratio[m][o], **st,
                    label=S.series_label(scheme=s, fit=fit, granularity=g))
            if g == "channel" and "ratio_parametric_codebook" in data:
                rp = np.asarray(data["ratio_parametric_codebook"], float)[m][o]
                ax.plot(bits[m][o], rp, color=st["color"], ls=":", marker="x", ms=4,
                        alpha=0.6, lw=1,
                        label=f"{s}, per channel, codebook as (c, a, gain) (estimate)")
    at = (bits == mark_bits) & ~ans
    if at.any():
        best = np.argmax(np.where(at, ratio, -np.inf))
        ax.axvline(mark_bits, color="0.7", lw=0.8)
        ax.annotate(f"{mark_bits} bits: {ratio[best]:.2f}x\n({scheme[best]}, per {gran[best]};"
                    f" ideal {32 / mark_bits:.1f}x)",
                    (mark_bits, ratio[best]), xytext=(12, 25), textcoords="offset points",
                    arrowprops=dict(arrowstyle="->"), fontsize=8)
    ax.text(0.98, 0.98, "bit-packed: same bits and codebook sizes give the same file size\n"
            "for every scheme (the curves coincide); dash-dot: codes entropy-coded (ANS)",
            transform=ax.transAxes, ha="right", va="top", fontsize=7, color="0.3")
    ax.set_xlabel("bits per quantized weight (incl. sign)")
    ax.set_ylabel("compression ratio = float32 bytes / file bytes (x)")
    src = config.get("source", {})
    ax.set_title(f"{config.get('model')} {config.get('alpha') or ''}: packed file vs float32"
                 f"\n({'official weights' if src.get('kind') == 'keras' else 'synthetic weights'}"
                 f", kernels quantized, fit={config.get('fit')})", fontsize=10)
    ax.set_yscale("log", base=2)
    ax.set_yticks([1, 2, 4, 8, 16])
    ax.set_yticklabels(["1x", "2x", "4x", "8x", "16x"])
    ax.grid(alpha=0.3, which="both")
    S.legend_for_styles(ax, fits=[fit] if fit else [], granularities=list(dict.fromkeys(gran)),
                        loc="lower left")

    s0 = next(iter(dict.fromkeys(scheme)))
    grans = list(dict.fromkeys(gran))
    width = 0.8 / len(grans)
    for j, g in enumerate(grans):
        m = (scheme == s0) & (gran == g) & ~ans
        o = np.argsort(bits[m])
        x = bits[m][o] + (j - (len(grans) - 1) / 2) * width
        bottom = np.zeros(m.sum())
        for key, label, color in PARTS:
            v = np.asarray(data[key], float)[m][o] / 2**20
            bx.bar(x, v, width * 0.95, bottom=bottom, color=color,
                   label=label if j == 0 else None, hatch="" if j == 0 else "//",
                   edgecolor="k", lw=0.3)
            bottom += v
        for xi, top in zip(x, bottom, strict=True):
            bx.text(xi, top, g[0], ha="center", va="bottom", fontsize=7)
    fb = float(np.asarray(data["float_bytes"])[0]) / 2**20
    bx.axhline(fb, color="k", ls=":", lw=1, label=f"float32 model {fb:.1f} MiB")
    bx.set_xlabel("bits per quantized weight (incl. sign)")
    bx.set_ylabel("file size (MiB)")
    bx.set_title(f"where the bytes go ({s0}; t = per tensor, c = per channel, hatched)",
                 fontsize=10)
    handles, labels = bx.get_legend_handles_labels()
    if len(grans) > 1:
        handles.append(Patch(facecolor="white", edgecolor="k", hatch="//", lw=0.3))
        labels.append(f"hatched: per {grans[1]}")
    bx.legend(handles, labels, fontsize=7, loc="center right")
    fig.tight_layout()
    return fig
