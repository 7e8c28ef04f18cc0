"""Packing speed: bit-pack / unpack codes and load a packed MobileNet-sized model.

Codes: 4.2M random codes (MobileNet 1.0's weight count) at 1..8 bits. Baseline measured in
the same run: a plain copy of the same uint8 codes (one read and one write pass). Then a
whole-model round trip: a Laplace tree of MobileNet 0.75's shapes, 5-bit per-channel
codebooks (hand-built, no fitting), :func:`paper_repro.core.storage.save_packed` and
:func:`~paper_repro.core.storage.load_packed` (checksum and header checks included), with
bit-packed and with entropy-coded codes, against ``np.savez``/``np.load`` of the float32 tree;
and the checksum alone (SHA-256 of the file).

Run: ``python benchmarks/bench_storage.py``. Target: pack and unpack within ~20x a copy; a
load within a few times the float32 npz load.
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from pathlib import Path

import numpy as np

from paper_repro.core import quantize as Q
from paper_repro.core import storage as S


def best_of(f, n=5) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    rng = np.random.default_rng(0)
    n = 4_231_976
    print(f"{'bits':>4} {'pack ms':>8} {'unpack ms':>9} {'copy ms':>8} {'pack/copy':>9} "
          f"{'MB/s unpack':>11}")
    for bits in range(1, 9):
        codes = rng.integers(0, 2**bits, n).astype(np.uint8)
        buf = S.pack_codes(codes, bits)
        tp = best_of(lambda c=codes, b=bits: S.pack_codes(c, b))
        tu = best_of(lambda x=buf, b=bits: S.unpack_codes(x, b, n))
        tc = best_of(lambda c=codes: c.copy())
        print(f"{bits:>4} {1e3 * tp:>8.1f} {1e3 * tu:>9.1f} {1e3 * tc:>8.2f} {tp / tc:>9.1f} "
              f"{n / tu / 1e6:>11.0f}")

    params = S.synthetic_params("mobilenet", 0.75, seed=0)
    report = []
    for path, w in S.flatten(params).items():
        if not path.endswith("kernel"):
            continue
        ax = Q.default_channel_axis(path, w) % w.ndim
        C = w.shape[ax]
        p = np.sort(rng.uniform(0.01, 1, (C, 15)).astype(np.float32), axis=1)
        levels = np.concatenate([-p[:, ::-1], np.zeros((C, 1), np.float32), p], axis=1)
        codes = rng.integers(0, 31, w.shape).astype(np.uint8)
        q = Q.Quantizer(levels=levels, thresholds=levels[:, 1:], params={}, scheme="exponential",
                        bits=5, granularity="channel", channel_axis=ax)
        report.append({"path": path, "codes": codes, "quantizer": q})
    # Laplace-distributed codes around the middle level, like a fitted quantizer's
    for r in report:
        r["codes"] = np.clip(np.round(rng.laplace(scale=3, size=r["codes"].shape)) + 15, 0,
                             30).astype(np.uint8)
    flat = S.flatten(params)
    with tempfile.TemporaryDirectory() as tmp:
        g = Path(tmp) / "m.npz"
        tfs = best_of(lambda: np.savez(g, **flat), 3)

        def load_npz():
            with np.load(g) as z:
                return {k: z[k] for k in z.files}

        tfl = best_of(load_npz, 3)
        print(f"MobileNet 0.75 float32 npz: save {1e3 * tfs:.0f} ms, load {1e3 * tfl:.0f} ms, "
              f"{g.stat().st_size:,d} bytes")
        for coding in ("fixed", "ans"):
            f = Path(tmp) / f"m_{coding}.prq"
            ts = best_of(lambda c=coding, f=f: S.save_packed(f, params, report, coding=c), 3)
            tl = best_of(lambda f=f: S.load_packed(f), 3)
            blob = f.read_bytes()
            th = best_of(lambda b=blob: hashlib.sha256(b).digest(), 5)
            s = S.sizes(S.read_packed(f))
            print(f"  5-bit per channel, {coding:>5}: save {1e3 * ts:.0f} ms, load {1e3 * tl:.0f} ms"
                  f" (checksum {1e3 * th:.1f} ms); load ratio {tl / tfl:.1f}x; "
                  f"{s['packed_bytes']:,d} bytes, {s['code_bits_per_weight']:.3f} bits/weight")


if __name__ == "__main__":
    main()
