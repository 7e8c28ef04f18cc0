"""Hopfield figures: one function per figure, arrays in, matplotlib Figure out.

Each ``plot_*`` takes the dict returned by the matching
``experiments_hopfield.compute_*`` (or loaded from ``results/hopfield/<figure>/data.npz``)
and computes nothing beyond summary statistics of those arrays. Colours, line styles,
markers and shades follow :mod:`paper_repro.experiments.style` (colour = scheme, shade = bits,
line / marker fill = fit); every error bar says what it is.
"""

from __future__ import annotations

from collections.abc import Mapping

import matplotlib.pyplot as plt
import numpy as np

from paper_repro.experiments import style as S
from paper_repro.hopfield import theory as ht


def _s(x) -> list[str]:
    return [str(v) for v in np.asarray(x)]


def _bits_range(labels: list[str]) -> tuple[int, int] | None:
    """Bit widths of the quantized couplings in ``labels`` (float and sign left out)."""
    bs = [S.hopfield_label(lab)["bits"] for lab in labels]
    bs = [b for b in bs if b is not None]
    return (min(bs), max(bs)) if bs else None


def _style(lab: str, bits_range, *, line: bool = False, ms: float = 5.0) -> dict:
    """Series style of a coupling label: colour = scheme (shaded by bits), fill = fit."""
    p = S.hopfield_label(lab)
    return S.series_style(scheme=p["scheme"], fit=p["fit"], bits=p["bits"],
                          bits_range=bits_range, line=line, ms=ms)


def _key_kw(labels: list[str]) -> dict:
    """Keyword arguments of :func:`style.legend_for_styles` for the labels drawn."""
    ps = [S.hopfield_label(lab) for lab in labels]
    return {"fits": [p["fit"] for p in ps if p["fit"]],
            "bits": [p["bits"] for p in ps if p["bits"] is not None]}


def plot_r_vs_bits(d: Mapping[str, np.ndarray]):
    """Figure 1: ``1 - r`` between ``T`` and ``Q(T)`` vs bits; one panel per fit, per scheme
    the measured points (Hebbian ``T``, ``N x N``) and the Gaussian-density theory line.

    ``d``: ``schemes: (S,)``, ``fits: (F,)``, ``bits: (B,)``, ``r_sim``/``r_theory``:
    ``(S, F, B)``, ``N``, ``M``.
    """
    schemes, fits, bits = _s(d["schemes"]), _s(d["fits"]), np.asarray(d["bits"])
    fig, axes = plt.subplots(1, len(fits), figsize=(5.6 * len(fits), 4.4), sharey=True,
                             squeeze=False)
    for j, (ax, fit) in enumerate(zip(axes[0], fits, strict=True)):
        for i, sch in enumerate(schemes):
            st = S.series_style(scheme=sch, fit=fit)
            ax.plot(bits, 1 - d["r_sim"][i, j], **{**st, "ls": "none"},
                    label=f"{sch}: measured")
            ax.plot(bits, 1 - d["r_theory"][i, j], color=st["color"], ls=st["ls"], lw=1,
                    alpha=0.8, label=f"{sch}: Gaussian theory")
        ax.set_yscale("log")
        ax.set_xlabel("bits per coupling (sign included)")
        ax.set_title(S.FIT_NAMES[fit].replace("|w|", "|T|"), fontsize=10)
        ax.set_xticks(bits)
        ax.grid(alpha=0.3, which="both")
        S.legend_for_styles(ax, fits=[fit], ncol=2, loc="lower left",
                            note="points: measured on T; lines: theory")
    axes[0, 0].set_ylabel("1 - r   (r = corr(T, Q(T)), log scale)")
    fig.suptitle(f"Correlation of quantized Hebbian couplings (N={int(d['N'])}, "
                 f"M={int(d['M'])})", fontsize=10)
    fig.tight_layout()
    return fig


def plot_overlap_vs_alpha(d: Mapping[str, np.ndarray]):
    """Figure 2: mean final overlap vs load (bars: 1 s.e. over seeds) with the
    replica-symmetric theory curves and capacities.

    ``d``: ``labels: (S,)``, ``alpha: (A,)``, ``m: (S, A, seeds)``, ``alpha_fine: (F,)``,
    ``m_theory: (S, F)``, ``r_theory``/``alpha_c_theory: (S,)``, ``N``.
    """
    labels = _s(d["labels"])
    br = _bits_range(labels)
    fig, ax = plt.subplots(figsize=(8.5, 5.2))
    n_seeds = d["m"].shape[-1]
    for i, lab in enumerate(labels):
        st = _style(lab, br, ms=4.5)
        mean = np.nanmean(d["m"][i], -1)
        err = np.nanstd(d["m"][i], -1, ddof=1) / np.sqrt(n_seeds) if n_seeds > 1 else None
        ax.errorbar(d["alpha"], mean, yerr=err, capsize=2, **st,
                    label=f"{lab} (r²={d['r_theory'][i] ** 2:.3f})")
        mt = d["m_theory"][i]
        ok = np.isfinite(mt)
        line = S.FIT_LINESTYLES[S.hopfield_label(lab)["fit"]]
        ax.plot(d["alpha_fine"][ok], mt[ok], color=st["color"], ls=line, lw=1, alpha=0.8)
        if ok.any():
            ac = d["alpha_c_theory"][i]
            ax.plot([ac, ac], [mt[ok][-1], 0.35], color=st["color"], ls=":", lw=0.8)
    ax.set_xlabel("load alpha = M / N (patterns per neuron)")
    ax.set_ylabel("final overlap m (mean over seeds; bars: 1 s.e.)")
    ax.set_ylim(0.3, 1.01)
    ax.grid(alpha=0.3)
    bars = "bars: 1 s.e. over" if n_seeds > 1 else "no bars: 1"
    S.legend_for_styles(ax, loc="lower left", **_key_kw(labels),
                        extra=[plt.Line2D([], [], color="0.3", lw=1,
                                          label="lines: replica-symmetric theory"),
                               plt.Line2D([], [], color="0.3", ls=":", lw=0.8,
                                          label="dotted: theory capacity")],
                        note=f"{bars} {n_seeds} seed{'s' if n_seeds > 1 else ''}")
    ax.set_title(f"Retrieval from stored patterns, N={int(d['N'])}, synchronous T=0 dynamics, "
                 f"{n_seeds} seeds\ntheory: static noise 1/r² - 1 added to the float network",
                 fontsize=9)
    fig.tight_layout()
    return fig


def plot_capacity_vs_bits(d: Mapping[str, np.ndarray]):
    """Figure 3: capacity vs bits (simulation extrapolated to N -> inf with 1 s.e. bars,
    static-noise theory, naive, published), and the finite-size extrapolation
    ``alpha_c(N)`` vs ``1/sqrt(N)`` (corr fits).

    ``d``: ``labels``/``schemes``/``fits``/``bits: (S,)``, ``Ns: (K,)``,
    ``alpha_c_N: (S, K)``, ``alpha_c_inf``/``alpha_c_inf_err``/``slope``/``alpha_c_theory``/
    ``alpha_c_naive: (S,)``, ``threshold``.
    """
    labels, schemes, fits = _s(d["labels"]), _s(d["schemes"]), _s(d["fits"])
    bits = np.asarray(d["bits"])
    ac_float = float(ht.capacity(1.0))
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(14, 5.6))
    fl = labels.index("float") if "float" in labels else None
    sg = labels.index("sign") if "sign" in labels else None
    families = [(sch, fit) for sch, fit in dict.fromkeys(zip(schemes, fits, strict=True))
                if sch not in ("float", "sign")]
    for k, (sch, fit) in enumerate(families):
        idx = sorted((i for i in range(len(labels)) if schemes[i] == sch and fits[i] == fit),
                     key=lambda i: bits[i])
        x = bits[idx] + (k - len(families) / 2) * 0.03
        st = S.series_style(scheme=sch, fit=fit, ms=4.5)
        ax.errorbar(x, d["alpha_c_inf"][idx], yerr=d["alpha_c_inf_err"][idx], capsize=2,
                    **st, label=f"{sch}, {fit} fit: simulation N→∞")
        ax.plot(bits[idx], d["alpha_c_theory"][idx], color=st["color"], ls=st["ls"], lw=0.8,
                marker="x", alpha=0.6, label=f"{sch}, {fit} fit: static-noise theory")
    if sg is not None:
        ax.errorbar([1], d["alpha_c_inf"][[sg]], yerr=d["alpha_c_inf_err"][[sg]], capsize=2,
                    **S.series_style(scheme="sign", ms=4.5), label="sign: simulation N→∞")
        ax.plot([1], d["alpha_c_theory"][[sg]], color=S.scheme_color("sign"), marker="x",
                ls="none", alpha=0.6, label="sign: static-noise theory")
    lm = [i for i in range(len(labels)) if schemes[i] == "lloyd_max"]
    if lm:
        lm = ([sg] if sg is not None else []) + sorted(lm, key=lambda i: bits[i])
        ax.plot(bits[lm], d["alpha_c_naive"][lm], color=S.scheme_color("lloyd_max"), ls=":",
                lw=1, label="naive 0.138 r² (Lloyd-Max)")
    pb = np.array(sorted(ht.PUBLISHED_FRACTIONS))
    ax.plot(pb, [ac_float * ht.PUBLISHED_FRACTIONS[b] for b in pb], "*", color="k", ms=10,
            ls="none", label="published fraction x 0.1379 (Knoblauch 2016)")
    ax.axhline(ac_float, **S.FLOAT_STYLE, label="float, AGS theory 0.1379")
    if fl is not None:
        ax.axhspan(d["alpha_c_inf"][fl] - d["alpha_c_inf_err"][fl],
                   d["alpha_c_inf"][fl] + d["alpha_c_inf_err"][fl], **S.FLOAT_BAND,
                   label=f"float simulation N→∞ {d['alpha_c_inf'][fl]:.4f} ± 1 s.e.")
    ax.set_xlabel("bits per coupling (sign included; 1 bit = sign)")
    ax.set_ylabel("capacity alpha_c = M / N at N→∞ (bars: 1 s.e.)")
    ax.set_xticks(sorted(set(bits[bits > 0].tolist())))
    ax.set_ylim(0.06, 0.16)
    ax.grid(alpha=0.3)
    S.legend_for_styles(ax, fits=[f for _, f in families], ncol=2, loc="lower right",
                        fontsize=6, note="bars: 1 s.e. of the N→∞ intercept (least squares)")
    ax.set_title("Capacity vs bits", fontsize=10)

    Ns = np.asarray(d["Ns"], float)
    xs = np.linspace(0, Ns.min() ** -0.5 * 1.05, 50)
    corr = [i for i in range(len(labels)) if fits[i] != "max"]
    br = _bits_range([labels[i] for i in corr])
    for i in corr:
        st = _style(labels[i], br, ms=4.5)
        ax2.plot(Ns ** -0.5, d["alpha_c_N"][i], **st, label=labels[i])
        ax2.plot(xs, d["alpha_c_inf"][i] + d["slope"][i] * xs, color=st["color"], lw=0.7)
    ax2.set_xlabel("1 / sqrt(N)   (N neurons)")
    ax2.set_ylabel(f"alpha_c(N) = M / N where mean overlap < {float(d['threshold'])}")
    ax2.grid(alpha=0.3)
    S.legend_for_styles(ax2, ncol=2, loc="upper left", **_key_kw([labels[i] for i in corr]),
                        extra=[plt.Line2D([], [], color="0.3", lw=0.7,
                                          label="lines: least-squares a + b/sqrt(N)")])
    ax2.set_title("Finite-size extrapolation alpha_c(N) = a + b/sqrt(N) (corr fits)",
                  fontsize=10)
    fig.tight_layout()
    return fig


def plot_basins(d: Mapping[str, np.ndarray]):
    """Figure 4: final vs initial overlap (mean with 10-90 % band), one panel per load.

    ``d``: ``labels: (S,)``, ``alphas: (A,)``, ``m0: (K,)``, ``m_mean``/``m_q10``/``m_q90``:
    ``(S, A, K)``.
    """
    labels = _s(d["labels"])
    br = _bits_range(labels)
    alphas = np.asarray(d["alphas"])
    fig, axes = plt.subplots(1, len(alphas), figsize=(5.8 * len(alphas), 4.8), squeeze=False,
                             sharey=True)
    for a, ax in enumerate(axes[0]):
        for i, lab in enumerate(labels):
            st = _style(lab, br, line=True, ms=4)
            ax.plot(d["m0"], d["m_mean"][i, a], **st, label=lab)
            ax.fill_between(d["m0"], d["m_q10"][i, a], d["m_q90"][i, a], color=st["color"],
                            alpha=0.08)
        ax.plot([0, 1], [0, 1], **{**S.REFERENCE, "lw": 0.6})
        ax.set_xlabel("initial overlap m0 with the stored pattern")
        ax.set_title(f"alpha = M / N = {alphas[a]:g}", fontsize=10)
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("final overlap m (mean; band: 10-90 % of trials)")
    S.legend_for_styles(axes[0, 0], loc="lower right", **_key_kw(labels),
                        extra=[plt.Line2D([], [], **{**S.REFERENCE, "lw": 0.6},
                                          label="m = m0")],
                        note="bands: 10-90 % of trials")
    fig.suptitle("Basins of attraction (synchronous T=0 dynamics from corrupted patterns)",
                 fontsize=10)
    fig.tight_layout()
    return fig


def plot_field_agreement(d: Mapping[str, np.ndarray]):
    """Figure 5: local-field sign agreement vs r with Sheppard's curve (bars: 1 binomial
    s.e.), and the difference measured - Sheppard.

    ``d``: ``labels``/``r``/``agreement``/``agreement_se``/``sheppard: (S,)``,
    ``r_curve``/``sheppard_curve: (C,)``.
    """
    labels = _s(d["labels"])
    br = _bits_range(labels)
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 5))
    ax.plot(d["r_curve"], d["sheppard_curve"], "k-", lw=1, label="Sheppard 1 - arccos(r)/pi")
    for i, lab in enumerate(labels):
        st = _style(lab, br, ms=5.5)
        ax.errorbar(d["r"][i], d["agreement"][i], yerr=d["agreement_se"][i], capsize=2, **st,
                    label=lab)
        ax2.errorbar(d["r"][i], d["agreement"][i] - d["sheppard"][i],
                     yerr=d["agreement_se"][i], capsize=2, **st)
    ax.set_xlim(0.4, 1.0)
    ax.set_ylim(0.6, 1.0)
    ax.set_xlabel("r = corr(T, Q(T))")
    ax.set_ylabel("P(sign h_T = sign h_Q) at random states")
    ax.grid(alpha=0.3)
    S.legend_for_styles(ax, ncol=2, loc="lower right", **_key_kw(labels),
                        note="bars: 1 binomial s.e.")
    ax2.axhline(0, color="k", lw=0.8)
    ax2.set_xlabel("r = corr(T, Q(T))")
    ax2.set_ylabel("measured - Sheppard (probability; bars: 1 s.e.)")
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
