"""Fitting speed: correlation-fitted quantizers for a synthetic ResNet50-sized model.

Model: ResNet50's 54 convolution kernels and its dense kernel (25.5M weights, Keras layouts),
Laplace weights. Sweep: bits 2..8 x {linear, exponential} x {per tensor, per channel}, fit
"corr" (28 configurations, every layer each). Baseline measured in the same run: one read pass
over all the weights (sum of |w|). Fitting uses one histogram pass per layer and granularity,
then each fit costs O(levels) per candidate on the tables.

Run: ``python benchmarks/bench_quantize.py`` (``--quick`` for a 3-config smoke run).
Target: the whole sweep within 20 s on a 2-core laptop (warm: compiled once per config).
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    layers = [(rng.laplace(size=s) * 0.02).astype(np.float32) for s in resnet50_kernel_shapes()]
    n = sum(w.size for w in layers)
    print(f"model: {len(layers)} kernels, {n / 1e6:.1f}M weights (ResNet50 shapes, Laplace)")

    t0 = time.perf_counter()
    total = sum(float(np.abs(w).sum()) for w in layers)
    t_read = time.perf_counter() - t0
    print(f"baseline, one read pass over the weights: {t_read:.3f} s (checksum {total:.1f})")

    bits = [2, 5] if args.quick else list(range(2, 9))
    schemes = ["linear"] if args.quick else ["linear", "exponential"]
    t0 = time.perf_counter()
    tables = {g: [Q.moments(w, granularity=g) for w in layers] for g in ("tensor", "channel")}
    t_tables = time.perf_counter() - t0
    print(f"histogram tables (one pass per layer and granularity): {t_tables:.2f} s")

    def sweep():
        for g in ("tensor", "channel"):
            for s in schemes:
                for b in bits:
                    for w, m in zip(layers, tables[g], strict=True):
                        q = Q.fit(w, scheme=s, bits=b, granularity=g, table=m)
                    jax.block_until_ready(q.levels)

    t0 = time.perf_counter()
    sweep()
    t_cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    sweep()
    t_warm = time.perf_counter() - t0
    n_cfg = 2 * len(schemes) * len(bits)
    print(f"sweep of {n_cfg} configurations x {len(layers)} layers:")
    print(f"  first run (includes one compilation per configuration): {t_cold:.1f} s")
    print(f"  warm run:                                               {t_warm:.1f} s")
    print(f"  tables + warm sweep: {t_tables + t_warm:.1f} s = "
          f"{(t_tables + t_warm) / t_read:.0f}x one read pass ({t_read:.2f} s); target <= 20 s")


if __name__ == "__main__":
    main()
