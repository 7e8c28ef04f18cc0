"""The data-free repairs figure: top-1 of each configuration with its interval, float marked.

Takes the rows that the ``datafree/*`` experiments (:mod:`paper_repro.experiments.datafree`) writes to
``results/datafree/<name>/table.csv`` (typed sweep rows, or the same columns read back as
strings): ``label``, ``scheme`` (empty for the float row), ``fit``, ``granularity``,
``bits``, ``top1`` (%), and where present ``top1_drop_low`` / ``top1_drop_high`` (95 %
paired-bootstrap interval of the drop vs float, points), ``top1_low`` / ``top1_high`` and
``n_images``.

One dot per configuration, styled by :mod:`paper_repro.experiments.style` (colour = scheme,
shade = bits, marker = granularity, fill and bar line = fit). Bars: the paired interval of the
drop, drawn around the top-1 as ``float - [drop_high, drop_low]``; a row without it gets the
Wilson 95 % interval of its own top-1 from ``n_images`` (said in the legend), a row with
neither gets no bar. The axis is zoomed to the data; when the rows spread far while several
sit near float, a second panel zooms on float +- ``zoom_within`` points.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np

from paper_repro.core import stats
from paper_repro.experiments import style as S

_NONE = (None, "", "None", "nan")

REPAIRS = ("labels: scheme/fit/granularity/bits, then repairs:", "+bc: bias correction",
           "+mp: mean-preserving codes", "+fold+eq: batch norm folded, equalized",
           "avgNb: mixed widths, N bits on average")
"""How the configuration labels read (legend lines)."""


def _num(v) -> float | None:
    """A float from a typed or CSV value; None for empty / None / NaN."""
    if v in _NONE:
        return None
    x = float(v)
    return None if math.isnan(x) else x


def _is_float_row(r: Mapping) -> bool:
    return r.get("scheme") in _NONE


def _interval(r: Mapping, float_top1: float | None) -> tuple[float, float, str] | None:
    """``(low, high, kind)`` of a row's top-1 in %: ``"paired"`` from the drop interval,
    ``"wilson"`` from ``n_images``; None when the row has neither."""
    dl, dh = _num(r.get("top1_drop_low")), _num(r.get("top1_drop_high"))
    if dl is not None and dh is not None and float_top1 is not None:
        return float_top1 - dh, float_top1 - dl, "paired"
    n = _num(r.get("n_images"))
    if n is not None and n > 0:
        k = int(round(float(r["top1"]) / 100.0 * n))
        lo, hi = stats.wilson_interval(k, int(n))
        return 100.0 * lo, 100.0 * hi, "wilson"
    return None


def _float_band(base: Mapping) -> tuple[float, float] | None:
    lo, hi = _num(base.get("top1_low")), _num(base.get("top1_high"))
    if lo is not None and hi is not None:
        return lo, hi
    iv = _interval({k: v for k, v in base.items() if not k.startswith("top1_drop")}, None)
    return None if iv is None else (iv[0], iv[1])


def plot_datafree(rows: Sequence[Mapping], *, title: str = "",
                  zoom_within: float | None = 5.0):
    """Top-1 (%) per configuration, one dot each with its interval, float as a line with its
    Wilson band.

    ``rows``: table rows (see the module docstring), drawn top to bottom in the given order;
    the float row (empty ``scheme``) is the reference, not a dot. ``zoom_within``: points
    around float shown in a second, zoomed panel when the rows span more than three times
    that (None: never). Returns a matplotlib Figure. Raises ValueError without quantized
    rows.
    """
    base = next((r for r in rows if _is_float_row(r)), None)
    qrows = [r for r in rows if not _is_float_row(r)]
    if not qrows:
        raise ValueError("plot_datafree needs at least one quantized row (non-empty scheme)")
    ft = _num(base.get("top1")) if base is not None else None
    band = _float_band(base) if base is not None else None
    top1 = np.array([float(r["top1"]) for r in qrows])
    ivs = [_interval(r, ft) for r in qrows]
    lows = np.array([iv[0] if iv else t for iv, t in zip(ivs, top1, strict=True)])
    highs = np.array([iv[1] if iv else t for iv, t in zip(ivs, top1, strict=True)])
    bits = [int(float(r["bits"])) for r in qrows]
    br = (min(bits), max(bits))

    lo_all = min(lows.min(), band[0] if band else np.inf, ft if ft is not None else np.inf)
    hi_all = max(highs.max(), band[1] if band else -np.inf, ft if ft is not None else -np.inf)
    near = (np.abs(top1 - ft) <= zoom_within) if (ft is not None and zoom_within) else None
    zoom = (near is not None and near.sum() >= 2 and hi_all - lo_all > 3 * zoom_within)
    n = len(qrows)
    fig, axes = plt.subplots(1, 2 if zoom else 1, figsize=(12.5 if zoom else 8.5,
                                                           0.27 * n + 1.9),
                             sharey=True, squeeze=False,
                             gridspec_kw={"width_ratios": (1, 1)} if zoom else None)
    axes = list(axes[0])
    y = np.arange(n)
    kinds = {iv[2] for iv in ivs if iv}
    pad = 0.04 * max(hi_all - lo_all, 1.0)
    ranges = [(max(lo_all - pad, 0.0), min(hi_all + pad, 100.0))]
    if zoom:
        zlo = min(lows[near].min(), ft - zoom_within)
        zhi = max(highs[near].max(), band[1] if band else ft)
        zpad = 0.04 * (zhi - zlo)
        ranges.append((max(zlo - zpad, 0.0), min(zhi + zpad, 100.0)))
    for k, ax in enumerate(axes):
        xlo, xhi = ranges[k]
        if band is not None:
            ax.axvspan(band[0], band[1], **S.FLOAT_BAND,
                       label="float: Wilson 95 % band" if k == 0 else "_nolegend_")
        if ft is not None:
            ax.axvline(ft, **S.FLOAT_STYLE, label=f"float {ft:.2f}" if k == 0 else "_nolegend_")
        for i, r in enumerate(qrows):
            st = S.series_style(scheme=r["scheme"], fit=r.get("fit"),
                                granularity=r.get("granularity"), bits=bits[i],
                                bits_range=br, ms=5.5, line=False)
            iv = ivs[i]
            err = None if iv is None else [[max(top1[i] - iv[0], 0.0)],
                                           [max(iv[1] - top1[i], 0.0)]]
            eb = ax.errorbar([top1[i]], [y[i]], xerr=err, capsize=2.5 if
                             (iv and iv[2] == "paired") else 0, elinewidth=1.1,
                             label=f"_{r['label']}", **st)
            for line in eb.lines[2]:
                line.set_linestyle(S.FIT_LINESTYLES.get(r.get("fit"), "-"))
            if not xlo <= top1[i] <= xhi:  # off this panel: say where it is
                ax.annotate(f"◀ {top1[i]:.1f}" if top1[i] < xlo else f"{top1[i]:.1f} ▶",
                            (0.0 if top1[i] < xlo else 1.0, y[i]),
                            xycoords=("axes fraction", "data"), va="center",
                            ha="left" if top1[i] < xlo else "right", fontsize=6.5,
                            color=st["color"], bbox={"fc": "white", "ec": "none", "pad": 0.3})
        ax.set_xlim(xlo, xhi)
        ax.set_xlabel("top-1 accuracy (%)")
        ax.grid(alpha=0.3, axis="x")
        if k == 1:
            ax.set_title(f"zoom: float ± {zoom_within:g} points", fontsize=9)
    ax0 = axes[0]
    ax0.set_yticks(y, [str(r["label"]) for r in qrows], fontsize=7)
    ax0.set_ylabel("configuration")
    ax0.set_ylim(n - 0.4, -0.6)
    ax0.set_title(title, fontsize=9, loc="left" if zoom else "center")
    notes = []
    if "paired" in kinds:
        notes.append("bars with caps: 95 % paired-bootstrap CI\nof the drop vs float")
    if "wilson" in kinds:
        notes.append("bars without caps: Wilson 95 % CI of the\ntop-1 (row has no paired CI)")
    if any(iv is None for iv in ivs):
        notes.append("no bar: no interval in the row")
    S.legend_for_styles(
        axes[-1], series=False, extra=ax0.get_legend_handles_labels()[0],
        schemes=list(dict.fromkeys(r["scheme"] for r in qrows)),
        fits=list(dict.fromkeys(r.get("fit") for r in qrows if r.get("fit") not in _NONE)),
        granularities=list(dict.fromkeys(r.get("granularity") for r in qrows
                                         if r.get("granularity") not in _NONE)),
        bits=bits, note=notes + list(REPAIRS), loc="upper left", bbox_to_anchor=(1.02, 1.0),
        borderaxespad=0.0, fontsize=7)
    fig.tight_layout()
    return fig
