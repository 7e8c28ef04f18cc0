"""Fitting speed: correlation-fitted quantizers for a synthetic ResNet50-sized model.

Model: ResNet50's 54 convolution kernels and its dense kernel (25.5M weights, Keras layouts),
Laplace weights. Sweep: bits 2..8 x {linear, exponential} x {per tensor, per channel}, fit
"corr" (28 configurations, every layer each). Fitting uses one histogram pass per layer and
granularity, then each fit costs O(levels) per candidate on the tables.

Baselines measured in the same run: one read pass over all the weights (sum of |w|), and the
previous grid search for exponential levels (a 24 x 24 grid over top level and base, four
9 x 9 zooms, plus the max-anchored search; kept below as a reference implementation) on a
sample of channels, against the current fit on the same tables: its time and its fitted r.

Run: ``python benchmarks/bench_quantize.py`` (``--quick``: 3 configurations, no reference).
Target: tables + warm sweep within 20 s, first run within 40 s, on a 2-core machine; the
fitted r as before (mean over the sample's channels within 1e-5).
"""

from __future__ import annotations

import argparse
import functools
import math
import time

import jax
import jax.numpy as jnp
import numpy as np

import paper_repro
from paper_repro.core import correlation as corr_mod
from paper_repro.core import quantize as Q


def resnet50_kernel_shapes() -> list[tuple[int, ...]]:
    shapes = [(7, 7, 3, 64)]
    cin = 64
    for filters, blocks in ((64, 3), (128, 4), (256, 6), (512, 3)):
        for b in range(blocks):
            if b == 0:
                shapes.append((1, 1, cin, 4 * filters))  # projection shortcut
            shapes += [(1, 1, cin, filters), (3, 3, filters, filters), (1, 1, filters, 4 * filters)]
            cin = 4 * filters
    shapes.append((2048, 1000))
    return shapes


# --- Reference: the previous grid search for free exponential bases ----------------------------


def _ref_r(bits, moments, c, a):
    p = Q.positive_levels("exponential", bits, c, a)
    return corr_mod.half_r(p, Q.lower_bounds(p, zero=True), moments)


def _ref_search_1d(f, lo, hi, n0=48, n=9, rounds=4):
    u = jnp.linspace(lo, hi, n0)
    best = u[jnp.argmax(jax.vmap(f)(u))]
    step0 = (hi - lo) / (n0 - 1)

    def zoom(i, best):
        u = jnp.clip(best + jnp.linspace(-1.0, 1.0, n) * step0 * (2.0 / (n - 1)) ** i, lo, hi)
        return u[jnp.argmax(jax.vmap(f)(u))]

    return jax.lax.fori_loop(0, rounds, zoom, best)


def _ref_search_2d(f, lo, hi, n0=24, n=9, rounds=4):
    lo, hi = jnp.asarray(lo, jnp.float32), jnp.asarray(hi, jnp.float32)

    def grid(center, step, m):
        t = jnp.linspace(-1.0, 1.0, m)
        uu, vv = jnp.meshgrid(center[0] + t * step[0], center[1] + t * step[1], indexing="ij")
        return jnp.clip(jnp.stack([uu.ravel(), vv.ravel()], -1), lo, hi)

    def argbest(pts):
        return pts[jnp.argmax(jax.vmap(lambda z: f(z[0], z[1]))(pts))]

    best = argbest(grid((lo + hi) / 2, (hi - lo) / 2, n0))
    step0 = (hi - lo) / (n0 - 1)
    return jax.lax.fori_loop(0, rounds, lambda i, b: argbest(grid(b, step0 * (2.0 / (n - 1)) ** i,
                                                                  n)), best)


@functools.partial(jax.jit, static_argnames=("bits",))
def reference_exponential_r(table, *, bits: int):
    """r of the previous corr fit of free-base exponential levels, per row of ``table``."""

    def one(m):
        K = Q.n_positive("exponential", bits)

        def base(v):
            return jnp.exp(-jnp.exp(v) / (K - 1))

        top = jnp.where(m.top > 0, m.top, 1.0)
        lo, hi = (-math.log(100.0), math.log(0.01)), (0.0, math.log(20.0))
        z = _ref_search_2d(lambda u, v: _ref_r(bits, m, top * jnp.exp(u), base(v)), lo, hi)
        v_max = _ref_search_1d(lambda v: _ref_r(bits, m, top, base(v)), lo[1], hi[1])
        return jnp.maximum(_ref_r(bits, m, top * jnp.exp(z[0]), base(z[1])),
                           _ref_r(bits, m, top, base(v_max)))

    return jax.vmap(one)(table)


# --- Benchmark -----------------------------------------------------------------------------------


class Clock:
    """Wall and process CPU seconds since construction (CPU shows contention on shared cores)."""

    def __init__(self):
        self.t, self.c = time.perf_counter(), time.process_time()

    def __call__(self) -> tuple[float, float]:
        return time.perf_counter() - self.t, time.process_time() - self.c


def reference_comparison(layers, tables, bits_list) -> None:
    """Previous grid search vs the current fit, exponential per channel, on a channel sample."""
    sample = [i for i, w in enumerate(layers) if w.shape[-1] in (64, 512)][:3]
    chans = sum(layers[i].shape[-1] for i in sample)
    print(f"reference (previous grid search), exponential per channel, {chans} channels of "
          f"layers {sample}:")
    for b in bits_list:
        parts = [tables["channel"][i] for i in sample]
        for _rep in range(2):  # the second run is warm
            clk = Clock()
            r_ref = np.concatenate([np.asarray(reference_exponential_r(m, bits=b)) for m in parts])
            t_ref = clk()
            clk = Clock()
            r_new = np.concatenate([np.asarray(Q.fit(layers[i], scheme="exponential", bits=b,
                                                     granularity="channel", table=m)
                                               .params["r_fit"]) for i, m in zip(sample, parts,
                                                                                 strict=True)])
            t_new = clk()
        d = r_new - r_ref
        print(f"  {b} bits: warm {t_ref[0]:6.2f} s -> {t_new[0]:5.2f} s "
              f"({t_ref[0] / t_new[0]:4.1f}x; cpu {t_ref[1] / max(t_new[1], 1e-9):4.1f}x); "
              f"r new - previous: mean {d.mean():+.1e}, min {d.min():+.1e}, max {d.max():+.1e}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 configurations, no reference")
    ap.add_argument("--no-reference", action="store_true", help="skip the previous method")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    layers = [(rng.laplace(size=s) * 0.02).astype(np.float32) for s in resnet50_kernel_shapes()]
    n = sum(w.size for w in layers)
    print(f"model: {len(layers)} kernels, {n / 1e6:.1f}M weights (ResNet50 shapes, Laplace); "
          f"numerics version {paper_repro.NUMERICS_VERSION}")

    clk = Clock()
    total = sum(float(np.abs(w).sum()) for w in layers)
    t_read = clk()[0]
    print(f"baseline, one read pass over the weights: {t_read:.3f} s (checksum {total:.1f})")

    bits = [2, 5] if args.quick else list(range(2, 9))
    schemes = ["linear"] if args.quick else ["linear", "exponential"]
    clk = Clock()
    tables = {g: [Q.moments(w, granularity=g) for w in layers] for g in ("tensor", "channel")}
    t_tables = clk()
    print(f"histogram tables (one pass per layer and granularity): {t_tables[0]:.2f} s "
          f"(cpu {t_tables[1]:.2f} s)")

    def sweep():
        times = {}
        for g in ("tensor", "channel"):
            for s in schemes:
                for b in bits:
                    c = Clock()
                    for w, m in zip(layers, tables[g], strict=True):
                        q = Q.fit(w, scheme=s, bits=b, granularity=g, table=m)
                    jax.block_until_ready(q.levels)
                    times[g, s, b] = c()
        return times

    clk = Clock()
    sweep()
    t_cold = clk()
    clk = Clock()
    per = sweep()
    t_warm = clk()
    n_cfg = 2 * len(schemes) * len(bits)
    print(f"sweep of {n_cfg} configurations x {len(layers)} layers (wall s, cpu s):")
    for g in ("tensor", "channel"):
        for s in schemes:
            row = "  ".join(f"{b}:{per[g, s, b][0]:5.2f}" for b in bits)
            print(f"  warm {g:7s} {s:12s} {row}")
    print(f"  first run (includes one compilation per configuration): {t_cold[0]:.1f} s "
          f"(cpu {t_cold[1]:.1f} s); target <= 40 s")
    print(f"  warm run:                                               {t_warm[0]:.1f} s "
          f"(cpu {t_warm[1]:.1f} s)")
    both = t_tables[0] + t_warm[0]
    print(f"  tables + warm sweep: {both:.1f} s = {both / t_read:.0f}x one read pass "
          f"({t_read:.3f} s); target <= 20 s")
    if not (args.quick or args.no_reference):
        reference_comparison(layers, tables, [4, 8])


if __name__ == "__main__":
    main()
