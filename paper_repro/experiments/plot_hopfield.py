"""Hopfield figures: one function per figure, arrays in, matplotlib Figure out (SCIENCE.md §3).

Each ``plot_*`` takes the dict returned by the matching
``experiments_hopfield.compute_*`` (or loaded from ``results/hopfield/<figure>/data.npz``)
and computes nothing beyond summary statistics of those arrays.
"""

from __future__ import annotations

from collections.abc import Mapping

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from paper_repro.hopfield import theory as ht  # noqa: E402

_COLORS = {
    "float": "black", "sign": "tab:red", "linear": "tab:blue", "linear_midrise": "tab:cyan",
    "exponential": "tab:green", "exponential_nozero": "tab:olive", "pow2": "tab:brown",
    "lloyd_max": "tab:purple",
}


def _color(lab: str) -> str:
    return _COLORS.get(lab.split("-")[0].split(" ")[0], "gray")


def _style(lab: str) -> dict:
    ls = "--" if lab.endswith(" max") else "-"
    bits = lab.split("-")[1].split(" ")[0] if "-" in lab else ""
    marker = {"2": "s", "3": "^", "4": "D", "5": "v"}.get(bits, "o")
    return {"color": _color(lab), "ls": ls, "marker": marker}


def _s(x) -> list[str]:
    return [str(v) for v in np.asarray(x)]


def plot_r_vs_bits(d: Mapping[str, np.ndarray]):
    """Figure 1: r between ``T`` and ``Q(T)`` vs bits; one panel per fit, one line per scheme."""
    schemes, fits, bits = _s(d["schemes"]), _s(d["fits"]), np.asarray(d["bits"])
    fig, axes = plt.subplots(1, len(fits), figsize=(5.2 * len(fits), 4.2), sharey=True,
                             squeeze=False)
    for j, (ax, fit) in enumerate(zip(axes[0], fits, strict=True)):
        for i, sch in enumerate(schemes):
            c = _COLORS.get(sch, "gray")
            ax.plot(bits, 1 - d["r_sim"][i, j], "o", color=c, label=f"{sch} (Hebbian T)")
            ax.plot(bits, 1 - d["r_theory"][i, j], "-", color=c, alpha=0.7,
                    label=f"{sch} (Gaussian theory)")
        ax.set_yscale("log")
        ax.set_xlabel("bits per coupling (sign included)")
        ax.set_title(f"fit = {fit}" + (" (top level = max|T|)" if fit == "max" else
                                       " (maximize r)"))
        ax.set_xticks(bits)
        ax.grid(alpha=0.3, which="both")
    axes[0, 0].set_ylabel("1 - r   (r = corr(T, Q(T)))")
    h, lab = axes[0, -1].get_legend_handles_labels()
    axes[0, -1].legend(h, lab, fontsize=6.5, ncol=2, loc="lower left")
    fig.suptitle(f"Correlation of quantized Hebbian couplings (N={int(d['N'])}, M={int(d['M'])}); "
                 "points: measured, lines: Gaussian density", fontsize=10)
    fig.tight_layout()
    return fig


def plot_overlap_vs_alpha(d: Mapping[str, np.ndarray]):
    """Figure 2: mean final overlap vs load with seed error bars and RS theory curves."""
    labels = _s(d["labels"])
    fig, ax = plt.subplots(figsize=(7.5, 5))
    n_seeds = d["m"].shape[-1]
    for i, lab in enumerate(labels):
        st = {**_style(lab), "color": _color(lab) if lab in ("float", "sign") else
              plt.cm.tab10((i + 2) % 10)}
        mean = np.nanmean(d["m"][i], -1)
        err = np.nanstd(d["m"][i], -1, ddof=1) / np.sqrt(n_seeds) if n_seeds > 1 else None
        ax.errorbar(d["alpha"], mean, yerr=err, color=st["color"], marker=st["marker"],
                    ls="none", ms=4, capsize=2, label=f"{lab} (r²={d['r_theory'][i] ** 2:.3f})")
        mt = d["m_theory"][i]
        ok = np.isfinite(mt)
        ax.plot(d["alpha_fine"][ok], mt[ok], color=st["color"], ls=st["ls"], lw=1, alpha=0.8)
        if ok.any():
            ac = d["alpha_c_theory"][i]
            ax.plot([ac, ac], [mt[ok][-1], 0.35], color=st["color"], ls=":", lw=0.8)
    ax.set_xlabel("load alpha = M / N")
    ax.set_ylabel("mean final overlap m")
    ax.set_ylim(0.3, 1.01)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    ax.set_title(f"Retrieval from stored patterns, N={int(d['N'])}, synchronous T=0 dynamics, "
                 f"{n_seeds} seeds\nlines: replica-symmetric theory with static noise "
                 "1/r² - 1 (dotted: capacity)", fontsize=9)
    fig.tight_layout()
    return fig


def plot_capacity_vs_bits(d: Mapping[str, np.ndarray]):
    """Figure 3: capacity vs bits (simulation extrapolated, theory, naive, published), and
    the finite-size extrapolation ``alpha_c(N)`` vs ``1/sqrt(N)``."""
    labels, schemes, fits = _s(d["labels"]), _s(d["schemes"]), _s(d["fits"])
    bits = np.asarray(d["bits"])
    ac_float = float(ht.capacity(1.0))
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 5))
    fl = labels.index("float") if "float" in labels else None
    sg = labels.index("sign") if "sign" in labels else None
    families = [(sch, fit) for sch, fit in dict.fromkeys(zip(schemes, fits, strict=True))
                if sch not in ("float", "sign")]
    for k, (sch, fit) in enumerate(families):
        idx = [i for i in range(len(labels)) if schemes[i] == sch and fits[i] == fit]
        if sg is not None and fit == "corr":
            idx = [sg] + idx
        idx = sorted(idx, key=lambda i: bits[i])
        x = bits[idx] + (k - len(families) / 2) * 0.03
        c, ls = _COLORS.get(sch, "gray"), ("--" if fit == "max" else "-")
        ax.errorbar(x, d["alpha_c_inf"][idx], yerr=d["alpha_c_inf_err"][idx], color=c,
                    marker="o", ls=ls, ms=4, capsize=2, label=f"{sch} {fit}: simulation N→∞")
        ax.plot(bits[idx], d["alpha_c_theory"][idx], color=c, ls=ls, lw=0.8, marker="x",
                alpha=0.6, label=f"{sch} {fit}: static-noise theory")
    lm = [i for i in range(len(labels)) if schemes[i] == "lloyd_max"]
    if lm:
        lm = ([sg] if sg is not None else []) + sorted(lm, key=lambda i: bits[i])
        ax.plot(bits[lm], d["alpha_c_naive"][lm], color="gray", ls="-.", lw=1,
                label="naive 0.138 r² (Lloyd-Max)")
    pb = np.array(sorted(ht.PUBLISHED_FRACTIONS))
    ax.plot(pb, [ac_float * ht.PUBLISHED_FRACTIONS[b] for b in pb], "k*", ms=10,
            label="published fraction x 0.1379 (Knoblauch 2016)")
    ax.axhline(ac_float, color="black", lw=0.8, label="float, AGS theory 0.1379")
    if fl is not None:
        ax.axhspan(d["alpha_c_inf"][fl] - d["alpha_c_inf_err"][fl],
                   d["alpha_c_inf"][fl] + d["alpha_c_inf_err"][fl], color="black", alpha=0.1,
                   label=f"float simulation N→∞ {d['alpha_c_inf'][fl]:.4f}")
    ax.set_xlabel("bits per coupling (sign included; 1 bit = sign)")
    ax.set_ylabel("capacity alpha_c")
    ax.set_xticks(sorted(set(bits[bits > 0].tolist())))
    ax.set_ylim(0.06, 0.16)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=2, loc="lower right")
    ax.set_title("Capacity vs bits", fontsize=10)
    Ns = np.asarray(d["Ns"], float)
    xs = np.linspace(0, Ns.min() ** -0.5 * 1.05, 50)
    for i, lab in enumerate(labels):
        if fits[i] == "max":
            continue
        st = _style(lab)
        ax2.plot(Ns ** -0.5, d["alpha_c_N"][i], color=st["color"], marker=st["marker"],
                 ls="none", ms=4, label=lab)
        ax2.plot(xs, d["alpha_c_inf"][i] + d["slope"][i] * xs, color=st["color"], lw=0.7)
    ax2.set_xlabel("1 / sqrt(N)")
    ax2.set_ylabel(f"alpha_c(N) (mean overlap < {float(d['threshold'])})")
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=6.5, ncol=2)
    ax2.set_title("Finite-size extrapolation alpha_c(N) = a + b/sqrt(N) (corr fits)",
                  fontsize=10)
    fig.tight_layout()
    return fig


def plot_basins(d: Mapping[str, np.ndarray]):
    """Figure 4: final vs initial overlap (mean with 10-90 % band), one panel per load."""
    labels = _s(d["labels"])
    alphas = np.asarray(d["alphas"])
    fig, axes = plt.subplots(1, len(alphas), figsize=(5.5 * len(alphas), 4.5), squeeze=False,
                             sharey=True)
    for a, ax in enumerate(axes[0]):
        for i, lab in enumerate(labels):
            st = _style(lab)
            ax.plot(d["m0"], d["m_mean"][i, a], color=st["color"], ls=st["ls"],
                    marker=st["marker"], ms=4, label=lab)
            ax.fill_between(d["m0"], d["m_q10"][i, a], d["m_q90"][i, a], color=st["color"],
                            alpha=0.08)
        ax.plot([0, 1], [0, 1], color="gray", lw=0.6, ls=":")
        ax.set_xlabel("initial overlap m0")
        ax.set_title(f"alpha = {alphas[a]:g}", fontsize=10)
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("final overlap m (mean; band 10-90 %)")
    axes[0, 0].legend(fontsize=7, loc="lower right")
    fig.suptitle("Basins of attraction (synchronous T=0 dynamics from corrupted patterns)",
                 fontsize=10)
    fig.tight_layout()
    return fig


def plot_field_agreement(d: Mapping[str, np.ndarray]):
    """Figure 5: local-field sign agreement vs r with Sheppard's curve."""
    labels = _s(d["labels"])
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.5))
    ax.plot(d["r_curve"], d["sheppard_curve"], "k-", lw=1, label="Sheppard 1 - arccos(r)/pi")
    for i, lab in enumerate(labels):
        st = _style(lab)
        ax.errorbar(d["r"][i], d["agreement"][i], yerr=d["agreement_se"][i],
                    color=st["color"], marker=st["marker"], ls="none", ms=5, label=lab)
        ax2.errorbar(d["r"][i], d["agreement"][i] - d["sheppard"][i],
                     yerr=d["agreement_se"][i], color=st["color"], marker=st["marker"],
                     ls="none", ms=5)
    ax.set_xlim(0.4, 1.0)
    ax.set_ylim(0.6, 1.0)
    ax.set_xlabel("r = corr(T, Q(T))")
    ax.set_ylabel("P(sign h_T = sign h_Q) at random states")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6.5)
    ax2.axhline(0, color="k", lw=0.8)
    ax2.set_xlabel("r")
    ax2.set_ylabel("measured - Sheppard")
    ax2.grid(alpha=0.3)
    fig.suptitle("Local-field sign agreement of T and its quantized copy", fontsize=10)
    fig.tight_layout()
    return fig


PLOTS = {
    "hopfield/r_vs_bits": plot_r_vs_bits,
    "hopfield/overlap_vs_alpha": plot_overlap_vs_alpha,
    "hopfield/capacity_vs_bits": plot_capacity_vs_bits,
    "hopfield/basins": plot_basins,
    "hopfield/field_agreement": plot_field_agreement,
}
