"""One visual language for every figure of the package: colour = scheme, line = fit,
marker = granularity, shade = bit width.

Defined once here and used by every ``plot_*`` module:

- :data:`SCHEME_COLORS`: one colour per quantization scheme (and for the Hopfield couplings
  ``sign`` / ``ternary`` / ``float`` and the library baseline ``qwix``).
- :data:`FIT_LINESTYLES` and :data:`FIT_FILLS`: one line style per fit (``corr`` solid,
  ``max`` dashed); where points stand alone (no line), the fit is the marker fill (``corr``
  filled, ``max`` hollow).
- :data:`GRANULARITY_MARKERS`: one marker per granularity (``tensor`` o, ``channel`` s).
- :func:`shade`: several bit widths of one scheme in one panel are lighter (fewer bits) to
  darker (more bits) versions of the scheme colour.
- :data:`REFERENCE`: theory curves, ideals and other references are thin and dotted, in
  greys unless they belong to one scheme.

:func:`series_style` turns (scheme, fit, granularity, bits) into keyword arguments for
``Axes.plot`` / ``Axes.errorbar``; :func:`series_label` names the series the same way
everywhere; :func:`legend_for_styles` adds a legend that names the series drawn and adds proxy
entries saying what colour, line, marker and shade mean. Nothing here selects a backend or
shows a figure.
"""

from __future__ import annotations

import colorsys
from collections.abc import Iterable, Sequence

import matplotlib.colors as mcolors
from matplotlib.lines import Line2D

SCHEME_COLORS: dict[str, str] = {
    "linear": "tab:blue",
    "linear_midrise": "tab:cyan",
    "exponential": "tab:red",
    "exponential_nozero": "tab:orange",
    "pow2": "tab:brown",
    "lloyd_max": "tab:purple",
    "sign": "tab:olive",
    "ternary": "tab:pink",
    "float": "black",
    "qwix": "tab:green",
    # a family per layer, chosen by the allocation (the data-free recipes)
    "exponential+lloyd_max": "gold",
}
"""Scheme -> colour. Unknown schemes raise (see :func:`scheme_color`)."""

FIT_LINESTYLES: dict[str | None, str] = {"corr": "-", "max": "--", None: "-"}
"""Fit -> line style: ``corr`` (levels fitted to maximize r) solid, ``max`` (top level at
max|w|) dashed; no fit (float, sign) solid."""

FIT_FILLS: dict[str | None, str] = {"corr": "full", "max": "none", None: "full"}
"""Fit -> marker fill: ``corr`` filled, ``max`` hollow."""

FIT_NAMES: dict[str | None, str] = {"corr": "corr fit (maximize r)",
                                    "max": "max fit (top level = max|w|)", None: "no fit"}

GRANULARITY_MARKERS: dict[str | None, str] = {"tensor": "o", "channel": "s", None: "o"}
"""Granularity -> marker: one codebook per tensor o, one per output channel s (a Hopfield
coupling matrix is one tensor)."""

REFERENCE: dict = {"color": "0.35", "ls": ":", "lw": 1.0}
"""Theory curves, ideals, references: thin dotted grey."""

FLOAT_STYLE: dict = {"color": "black", "lw": 1.0}
"""The float (unquantized) result as a horizontal or vertical line."""

FLOAT_BAND: dict = {"color": "0.88", "lw": 0}
"""The interval of the float result as a band."""

SHADE_RANGE: tuple[float, float] = (0.70, 0.32)
"""HLS lightness of the fewest and of the most bits (see :func:`shade`)."""


def scheme_color(scheme: str | None) -> str:
    """The colour of ``scheme`` (``None`` is float). Raises ValueError for an unknown one."""
    key = "float" if scheme in (None, "", "None") else str(scheme)
    if key not in SCHEME_COLORS:
        raise ValueError(f"no colour for scheme {scheme!r}; add it to "
                         f"paper_repro.experiments.style.SCHEME_COLORS")
    return SCHEME_COLORS[key]


def _key(d: dict, value, what: str):
    v = None if value in (None, "", "None") else value
    if v not in d:
        raise ValueError(f"no {what} for {value!r}; choose one of "
                         f"{', '.join(str(k) for k in d if k is not None)}")
    return d[v]


def shade(color, bits: int | float | None, bits_range: Sequence[float] | None):
    """``color`` lightened (fewest bits of ``bits_range``) to darkened (most bits).

    ``bits_range``: ``(lo, hi)`` bit widths drawn in the panel; with ``bits`` None or
    ``lo == hi`` the colour is returned unchanged. Returns an RGB tuple (or ``color``).
    """
    if bits is None or bits_range is None:
        return color
    lo, hi = float(min(bits_range)), float(max(bits_range))
    if hi <= lo:
        return color
    t = min(max((float(bits) - lo) / (hi - lo), 0.0), 1.0)
    h, _, s = colorsys.rgb_to_hls(*mcolors.to_rgb(color))
    light = SHADE_RANGE[0] + (SHADE_RANGE[1] - SHADE_RANGE[0]) * t
    return colorsys.hls_to_rgb(h, light, s)


def series_style(*, scheme: str | None, fit: str | None = None,
                 granularity: str | None = None, bits: int | None = None,
                 bits_range: Sequence[float] | None = None, ms: float = 5.0,
                 line: bool = True) -> dict:
    """Keyword arguments for ``Axes.plot`` / ``Axes.errorbar`` of one series.

    ``color`` from the scheme (shaded by ``bits`` within ``bits_range``), ``ls`` from the fit
    (``"none"`` when ``line`` is False), ``marker`` from the granularity, ``mfc`` from the fit
    (``"none"``: hollow), ``mec`` the series colour, ``ms`` the marker size.
    """
    color = shade(scheme_color(scheme), bits, bits_range)
    fill = _key(FIT_FILLS, fit, "fill")
    return {"color": color, "ls": _key(FIT_LINESTYLES, fit, "line style") if line else "none",
            "marker": _key(GRANULARITY_MARKERS, granularity, "marker"),
            "mfc": "none" if fill == "none" else color, "mec": color, "ms": ms}


def series_label(*, scheme: str | None, fit: str | None = None,
                 granularity: str | None = None, bits: int | None = None) -> str:
    """The series name used in every legend: ``"linear 4b, corr fit, per channel"``; the parts
    left as None are left out (``"float"`` for no scheme)."""
    if scheme in (None, "", "None"):
        return "float"
    parts = [f"{scheme}" + (f" {int(bits)}b" if bits is not None else "")]
    if fit not in (None, "", "None"):
        parts.append(f"{fit} fit")
    if granularity not in (None, "", "None"):
        parts.append(f"per {granularity}")
    return ", ".join(parts)


def _header(text: str) -> Line2D:
    h = Line2D([], [], ls="none", marker="none")
    h.set_label(text)
    return h


def style_handles(*, schemes: Iterable[str] = (), fits: Iterable[str] = (),
                  granularities: Iterable[str] = (), bits: Iterable[int] = (),
                  bits_scheme: str | None = None) -> list[Line2D]:
    """Proxy legend entries explaining the encodings in use (each group with a header line):
    colour = scheme, line = fit (solid/dashed, filled/hollow), marker = granularity,
    shade = bits (lighter = fewer; drawn in the colour of ``bits_scheme``, grey if None)."""
    out: list[Line2D] = []
    schemes, fits = list(dict.fromkeys(schemes)), list(dict.fromkeys(fits))
    grans, bits = list(dict.fromkeys(granularities)), sorted(set(int(b) for b in bits))
    if schemes:
        out.append(_header("colour = scheme"))
        out += [Line2D([], [], color=scheme_color(s), lw=6, label=s) for s in schemes]
    if fits:
        out.append(_header("line = fit (marker fill)"))
        for f in fits:
            out.append(Line2D([], [], color="0.3", ls=_key(FIT_LINESTYLES, f, "line style"),
                              marker="o", mfc="0.3" if FIT_FILLS.get(f) != "none" else "none",
                              mec="0.3", label=FIT_NAMES.get(f, f"{f} fit")))
    if grans:
        out.append(_header("marker = granularity"))
        out += [Line2D([], [], color="0.3", ls="none",
                       marker=_key(GRANULARITY_MARKERS, g, "marker"), label=f"per {g}")
                for g in grans]
    if len(bits) > 1:
        base = scheme_color(bits_scheme) if bits_scheme else "0.45"
        out.append(_header("shade = bits (light: fewer)"))
        out += [Line2D([], [], color=shade(base, b, (bits[0], bits[-1])), lw=6,
                       label=f"{b} bits") for b in bits]
    return out


def legend_for_styles(ax, *, schemes: Iterable[str] = (), fits: Iterable[str] = (),
                      granularities: Iterable[str] = (), bits: Iterable[int] = (),
                      bits_scheme: str | None = None, series: bool = True,
                      extra: Sequence = (), note: str | Sequence[str] | None = None,
                      **legend_kw):
    """Add one legend to ``ax``: the labelled series drawn on it (``series``), ``extra``
    handles, then proxy entries explaining colour = scheme, line = fit, marker = granularity
    and shade = bits for the values given, and closing ``note`` lines (e.g. what the error
    bars are; a string or a sequence of strings). Returns the Legend; an existing legend of ``ax`` is kept as an artist."""
    handles, labels = ([], [])
    if series:
        handles, labels = ax.get_legend_handles_labels()
    uniq = dict(zip(labels, handles, strict=True))
    hs = list(uniq.values()) + list(extra)
    hs += style_handles(schemes=schemes, fits=fits, granularities=granularities, bits=bits,
                        bits_scheme=bits_scheme)
    for line in ([note] if isinstance(note, str) else list(note or ())):
        hs.append(_header(line))
    labs = [h.get_label() for h in hs]
    old = ax.get_legend()
    if old is not None:
        ax.add_artist(old)
    kw = {"fontsize": 6.5, "handlelength": 3.0, "framealpha": 0.92}
    kw.update(legend_kw)
    return ax.legend(hs, labs, **kw)


def hopfield_label(label: str) -> dict:
    """Parse a Hopfield coupling label (``"float"``, ``"sign"``, ``"linear-3 corr"``) into
    ``{"scheme", "bits", "fit"}`` (bits and fit None where absent)."""
    parts = str(label).split()
    head, fit = parts[0], (parts[1] if len(parts) > 1 else None)
    scheme, _, b = head.partition("-")
    return {"scheme": scheme, "bits": int(b) if b else None, "fit": fit}


def bits_note(bits: Sequence[int]) -> str:
    """``"; 7 not computed"`` for the widths missing between the smallest and the largest of
    ``bits`` (for an axis label next to ticks at the measured widths); ``""`` when none."""
    bs = sorted(set(int(b) for b in bits))
    missing = [b for b in range(bs[0], bs[-1] + 1) if b not in bs] if bs else []
    return f"; {', '.join(str(b) for b in missing)} not computed" if missing else ""
