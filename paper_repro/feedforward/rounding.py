"""Data-free, Hessian-free optimized rounding on a fixed codebook (SQuant-style flips).

Nearest-level rounding makes every weight's error as small as it can be, but the errors of
the weights that are summed together by a convolution do not cancel: a ``k x k`` kernel whose
nine weights all round up shifts its output by nine half-steps at worst. SQuant (Guo et al.,
ICLR 2022) keeps the rounding of each weight to one of its two neighbouring levels (the
element constraint) and flips a few weights to the *other* neighbour so that the accumulated
error

- over each **kernel** (the ``k x k`` spatial slice of one input channel feeding one output
  channel; a whole depthwise filter; one weight of a dense layer), and
- over each **output channel** (everything feeding one output: ``k x k x C_in``)

stays within half a step. No data, no Hessian: the flips are chosen by the rounding residual
alone (the weights nearest to the midpoint between two levels cost the least to flip).

Here the levels are the papers' fitted codebook (linear, exponential, per tensor or per
channel); only *which* level each weight takes changes. With non-uniform levels a flip moves a
weight to the adjacent level and the step is the local level gap: with ``e = Q(w) - w`` and
``g`` the gap to the adjacent level on the other side of ``w``, a flip changes ``e`` by
``-sign(e) g`` and costs least where ``|e| / g`` is largest. Per group (kernel, then channel)
the flips that reduce the accumulated error are taken in that order and the prefix that brings
the group's sum closest to zero is kept, which for uniform levels is SQuant's
``round(|E| / step)`` flips. The channel stage flips one more weight in each of the kernels
whose own residual points the same way as the channel's (largest first). This generalises the
mean-preserving re-rounding of :func:`paper_repro.feedforward.repairs.mean_preserving_codes`
(the channel stage alone).

- :func:`kernel_rows`: a kernel as ``(C_out, C_in, S)`` rows (``S`` spatial taps) and back.
- :func:`squant_codes`: the flips on one kernel's codes (NumPy, vectorised over kernels).
- :func:`accumulated_errors`: ``|sum e|`` per kernel and per output channel, in local steps.
- :func:`neighbour_codes`: the two codebook levels around each weight (the candidates of
  learned rounding, :mod:`paper_repro.feedforward.calibration`).
- :func:`apply_squant`: re-round every leaf of a
  :func:`~paper_repro.core.quantize.quantize_tree` result.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import jax.numpy as jnp
import numpy as np

from paper_repro.core import correlation as corr_mod
from paper_repro.core import quantize as Q


def kernel_rows(w, *, out_axis: int) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]:
    """View a kernel as ``(C_out, C_in, S)`` rows: output channel, input channel, spatial tap.

    Layouts: ``ndim >= 3`` kernels keep their spatial axes first and the input / output
    channels on the last two axes (``HWIO``, Keras depthwise ``(kh, kw, C, mult)`` with
    ``out_axis=-2``, ONNX depthwise ``(kh, kw, 1, C)`` with ``out_axis=-1``); ``ndim == 2``
    is a dense ``(C_in, C_out)`` (or ``(C_out, C_in)`` with ``out_axis=0``) and has ``S = 1``.
    Returns ``(rows, back)`` with ``back(rows)`` the array in ``w``'s layout again.
    Raises ``ValueError`` for a 1-D array or an output axis among the spatial axes.
    """
    w = np.asarray(w)
    nd = w.ndim
    if nd < 2:
        raise ValueError(f"a kernel needs 2 or more axes, got shape {w.shape}")
    oa = out_axis % nd
    if nd >= 3 and oa < nd - 2:
        raise ValueError(f"output axis {out_axis} of a {w.shape} kernel is a spatial axis: "
                         "kernels must have their channels on the last two axes")
    ia = (nd - 1 if oa == nd - 2 else nd - 2) if nd >= 3 else 1 - oa
    spatial = tuple(range(nd - 2)) if nd >= 3 else ()
    perm = (oa, ia) + spatial
    moved = np.transpose(w, perm)
    shape = moved.shape
    rows = moved.reshape(shape[0], shape[1], -1)
    inv = np.argsort(perm)

    def back(r: np.ndarray) -> np.ndarray:
        return np.transpose(np.asarray(r).reshape(shape), inv)

    return rows, back


def _row_levels(q: Q.Quantizer, n_out: int, out_axis: int, nd: int) -> np.ndarray:
    """``(C_out, L)`` codebook per output channel (a per-tensor codebook repeated)."""
    levels = np.asarray(q.levels, np.float64)
    if levels.ndim == 1:
        return np.broadcast_to(levels, (n_out, levels.shape[0]))
    if q.channel_axis % nd != out_axis % nd:
        raise ValueError("a per-channel codebook on another axis than the output channels: "
                         "fit per tensor or per output channel")
    return levels


def _flip(w, c, lv):
    """For current codes ``c``: error ``e = lv[c] - w``, the code ``c'`` of a flip (adjacent
    level on the other side of ``w``), its change ``d = lv[c'] - lv[c]`` (0 where no flip
    exists) and its cost per unit of accumulated error removed, ``|d| - 2 |e|`` (the added
    squared error ``(|d| - |e|)^2 - e^2`` over ``|d|``; ``inf`` where no flip exists)."""
    L = lv.shape[-1]
    qv = np.take_along_axis(lv, c.reshape(c.shape[0], -1), 1).reshape(c.shape)
    e = qv - w
    step = np.where(e > 0, -1, 1)
    cn = c + step
    ok = (e != 0) & (cn >= 0) & (cn <= L - 1)
    cn = np.clip(cn, 0, L - 1)
    qn = np.take_along_axis(lv, cn.reshape(c.shape[0], -1), 1).reshape(c.shape)
    d = np.where(ok, qn - qv, 0.0)
    ok &= np.sign(d) == -np.sign(e)  # the adjacent level lies on w's other side
    d = np.where(ok, d, 0.0)
    cost = np.where(ok, np.abs(d) - 2 * np.abs(e), np.inf)
    return e, cn, d, cost, ok


def _best_prefix(target, deltas):
    """``k`` per row: the prefix of ``deltas`` (rows, n) whose sum brings ``target`` (rows,)
    closest to zero (the shortest such prefix)."""
    cum = np.concatenate([np.zeros((deltas.shape[0], 1)), np.cumsum(deltas, 1)], 1)
    return np.argmin(np.abs(target[:, None] + cum), 1)


def squant_codes(w, codes, q: Q.Quantizer, *, out_axis: int = -1, kernel: bool = True,
                 channel: bool = True) -> np.ndarray:
    """Re-round ``codes`` (nearest levels of ``w`` under ``q``) by SQuant flips.

    ``w``: a kernel (see :func:`kernel_rows` for layouts), ``codes`` same shape; ``q`` its
    :class:`~paper_repro.core.quantize.Quantizer` (per tensor, or per output channel on
    ``out_axis``). ``kernel`` / ``channel``: run the kernel stage (accumulated error of each
    ``S``-tap kernel within half a local step) and the channel stage (each output channel's
    accumulated error within half a step, one extra flip in each of the kernels whose residual
    points the same way, largest first). Every code moves at most once per stage to the
    adjacent level on the other side of its weight, so each weight stays on one of its two
    neighbouring levels. Returns new codes (``codes``' dtype and shape).
    """
    w = np.asarray(w, np.float64)
    codes = np.asarray(codes)
    if w.shape != codes.shape:
        raise ValueError(f"weights {w.shape} and codes {codes.shape} differ in shape")
    rows_w, back = kernel_rows(w, out_axis=out_axis)
    c = kernel_rows(codes, out_axis=out_axis)[0].astype(np.int64)
    O, I, S = rows_w.shape
    lv = _row_levels(q, O, out_axis, w.ndim)
    if kernel and S > 1:
        e, cn, d, cost, ok = _flip(rows_w, c, lv)
        E = e.sum(2)  # (O, I)
        cand = ok & (np.sign(e) == np.sign(E)[..., None])
        order = np.argsort(np.where(cand, cost, np.inf), axis=2, kind="stable")
        ds = np.take_along_axis(np.where(cand, d, 0.0), order, 2)
        k = _best_prefix(E.reshape(-1), ds.reshape(O * I, S)).reshape(O, I)
        take = np.arange(S)[None, None, :] < k[..., None]
        moved = np.zeros_like(take)
        np.put_along_axis(moved, order, take, 2)
        c = np.where(moved & cand, cn, c)
    if channel:
        e, cn, d, cost, ok = _flip(rows_w, c, lv)
        E = e.sum(2)  # (O, I) kernel residuals
        C = E.sum(1)  # (O,) channel residuals
        sgn = np.sign(C)[:, None, None]
        cand = ok & (np.sign(e) == sgn)
        ecost = np.where(cand, cost, np.inf)
        pick = np.argmin(ecost, axis=2)  # (O, I): each kernel's cheapest flip toward C
        has = np.take_along_axis(cand, pick[..., None], 2)[..., 0]
        kres = E * np.sign(C)[:, None]
        kcand = has & (kres > 0)
        dk = np.take_along_axis(d, pick[..., None], 2)[..., 0]
        # element cost plus the kernel's: (|d| - 2|e|) + (|d| - 2 E_k), halved
        kcost = np.take_along_axis(ecost, pick[..., None], 2)[..., 0] / 2 + np.abs(dk) / 2 \
            - kres
        korder = np.argsort(np.where(kcand, kcost, np.inf), axis=1, kind="stable")
        ds = np.take_along_axis(np.where(kcand, dk, 0.0), korder, 1)
        k = _best_prefix(C, ds)
        take = np.arange(I)[None, :] < k[:, None]
        kmoved = np.zeros_like(take)
        np.put_along_axis(kmoved, korder, take, 1)
        kmoved &= kcand
        sel = np.zeros(c.shape, bool)
        np.put_along_axis(sel, pick[..., None], kmoved[..., None], 2)
        c = np.where(sel, cn, c)
    return back(c).astype(codes.dtype)


def accumulated_errors(w, w_hat, q: Q.Quantizer | None = None, *, out_axis: int = -1
                       ) -> dict[str, np.ndarray]:
    """``|sum (w_hat - w)|`` over each kernel ``(C_out, C_in)`` and each output channel
    ``(C_out,)``; with ``q`` also divided by the group's mean local level gap (``kernel_steps``,
    ``channel_steps``: the error in steps, what SQuant bounds by one half)."""
    rows_w, _ = kernel_rows(np.asarray(w, np.float64), out_axis=out_axis)
    rows_q, _ = kernel_rows(np.asarray(w_hat, np.float64), out_axis=out_axis)
    e = rows_q - rows_w
    out = {"kernel": np.abs(e.sum(2)), "channel": np.abs(e.sum((1, 2)))}
    if q is not None:
        O = rows_w.shape[0]
        lv = _row_levels(q, O, out_axis, np.ndim(w))
        lo, hi = neighbour_codes(w, q, out_axis=out_axis)
        lo_r = kernel_rows(lo, out_axis=out_axis)[0]
        hi_r = kernel_rows(hi, out_axis=out_axis)[0]
        gap = (np.take_along_axis(lv, hi_r.reshape(O, -1), 1)
               - np.take_along_axis(lv, lo_r.reshape(O, -1), 1)).reshape(rows_w.shape)
        live = gap > 0  # weights between two levels (not beyond the codebook's ends)
        gk = np.where(live, gap, 0.0).sum(2) / np.maximum(live.sum(2), 1)
        gc = np.where(live, gap, 0.0).sum((1, 2)) / np.maximum(live.sum((1, 2)), 1)
        out["kernel_steps"] = out["kernel"] / np.where(gk > 0, gk, np.inf)
        out["channel_steps"] = out["channel"] / np.where(gc > 0, gc, np.inf)
    return out


def neighbour_codes(w, q: Q.Quantizer, *, out_axis: int = -1) -> tuple[np.ndarray, np.ndarray]:
    """``(lo, hi)`` codes of the levels around each weight: ``levels[lo] <= w < levels[hi]``,
    ``hi = lo + 1``; ``lo = hi`` (the end level) for weights outside the codebook's range.
    Same shape as ``w``, int32."""
    w = np.asarray(w, np.float64)
    rows_w, back = kernel_rows(w, out_axis=out_axis)
    O = rows_w.shape[0]
    lv = _row_levels(q, O, out_axis, w.ndim)
    L = lv.shape[-1]
    flat = rows_w.reshape(O, -1)
    if np.ndim(q.levels) == 1:
        lo = np.searchsorted(lv[0], flat, side="right") - 1
    else:
        lo = np.stack([np.searchsorted(lv[o], flat[o], side="right") - 1 for o in range(O)])
    hi = lo + 1
    below, above = lo < 0, hi > L - 1
    lo = np.where(below, 0, np.minimum(lo, L - 1))
    hi = np.where(below, 0, np.where(above, L - 1, hi))
    shape = rows_w.shape
    return (back(lo.reshape(shape)).astype(np.int32), back(hi.reshape(shape)).astype(np.int32))


def apply_squant(params_q, report: list[dict], params_float, *,
                 channel_axis: int | Callable[[str, np.ndarray], int] | None = None,
                 kernel: bool = True, channel: bool = True) -> tuple[dict, list[dict]]:
    """Re-round every quantized leaf of a :func:`~paper_repro.core.quantize.quantize_tree`
    result with :func:`squant_codes`. ``channel_axis``: the output-channel axis (an int, or
    ``f(path, leaf)``; ``None``: Keras layouts,
    :func:`~paper_repro.core.quantize.default_channel_axis`). 1-D leaves are left as they are.
    Returns ``(new_params, new_report)`` with the report's ``codes``, ``r`` and
    ``zero_fraction`` updated."""
    flat = dict(Q.tree_paths(params_float))
    axis_fn = (Q.default_channel_axis if channel_axis is None else channel_axis
               if callable(channel_axis) else (lambda p, x: channel_axis))
    new = _copy(params_q)
    out = []
    for row in report:
        path, qz = row["path"], row["quantizer"]
        w = np.asarray(flat[path])
        if w.ndim < 2:
            out.append(row)
            continue
        codes = squant_codes(w, np.asarray(row["codes"]), qz, out_axis=axis_fn(path, w),
                             kernel=kernel, channel=channel)
        w_hat = np.asarray(Q.decode(codes, qz)).astype(w.dtype)
        _set(new, path, w_hat)
        out.append({**row, "codes": jnp.asarray(codes),
                    "r": float(corr_mod.sample_r(jnp.asarray(w), jnp.asarray(w_hat))),
                    "zero_fraction": float(np.mean(w_hat == 0))})
    return new, out


def _copy(tree):
    return {k: _copy(v) if isinstance(v, Mapping) else v for k, v in tree.items()}


def _set(tree, path: str, value) -> None:
    *head, last = path.split("/")
    for k in head:
        tree = tree[k]
    tree[last] = value
