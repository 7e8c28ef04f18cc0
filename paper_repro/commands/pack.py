"""``paper-repro pack``: quantize a model's kernels and write them bit-packed (a ``.prq`` file).

The file holds each quantized kernel as ``b``-bit codes plus its float32 codebook, and every
other parameter (biases, batch norm) as float32; see :mod:`paper_repro.core.storage` for the
format. Prints the size accounting: the float32 size, the file size and their ratio
(``32 / 5 = 6.4x`` at 5 bits before codebooks and float-kept parameters).

Example::

    paper-repro pack --model mobilenet --alpha 0.75 \\
        --weights ../shared/data/keras-weights/mobilenet_7_5_224_tf.h5 \\
        --scheme exponential --fit corr --bits 5 --granularity channel \\
        --out mobilenet_exp5.prq --json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from paper_repro.core import quantize


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "pack", help="quantize a model's kernels and save them bit-packed (codes + codebooks)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="registry model name (paper-repro weights list)")
    p.add_argument("--alpha", type=float, default=None, help="MobileNet width multiplier")
    p.add_argument("--weights", default=None,
                   help="legacy Keras .h5 weight file (default: the official file from the "
                        "cache or the shared data folder, see `paper-repro weights fetch`)")
    p.add_argument("--scheme", required=True, choices=quantize.SCHEMES)
    p.add_argument("--fit", default="corr", choices=quantize.FITS)
    p.add_argument("--bits", type=int, required=True, help="bits per weight incl. sign, 1..8")
    p.add_argument("--granularity", default="tensor", choices=quantize.GRANULARITIES)
    p.add_argument("--select", default=r".*kernel",
                   help="regex on '<layer>/<var>' paths, matched in full (default: all kernels, "
                        "depthwise and pointwise included)")
    p.add_argument("--gain", action="store_true", help="least-squares gain on the levels")
    p.add_argument("--rounding", default="linear", choices=quantize.ROUNDINGS)
    p.add_argument("--base", type=float, default=None, help="fixed exponential base in (0, 1)")
    p.add_argument("--method", default="histogram", choices=quantize.METHODS)
    p.add_argument("--full-codebook", action="store_true",
                   help="store whole codebooks (default: the positive half where exact)")
    p.add_argument("--out", required=True, help="output file (.prq)")
    p.add_argument("--json", action="store_true", help="print the accounting as JSON")
    return p


def run(args) -> int:
    from paper_repro.feedforward import models
    from paper_repro.core import storage
    from paper_repro.feedforward import weights as W

    spec = models.get(args.model, args.alpha)
    path = Path(args.weights) if args.weights else W.fetch(spec)
    if not path.is_file():
        raise FileNotFoundError(f"no weight file at {path}")
    t0 = time.perf_counter()
    params = W.load(spec, path)
    options = dict(select=args.select, gain=args.gain, rounding=args.rounding, base=args.base,
                   method=args.method)
    new, report = quantize.quantize_tree(params, scheme=args.scheme, bits=args.bits,
                                         fit=args.fit, granularity=args.granularity, **options)
    meta = {
        "model": spec.name, "alpha": spec.alpha, "weights_file": path.name,
        "weights_md5": W.file_hash(path, "md5"), "scheme": args.scheme, "fit": args.fit,
        "bits": args.bits, "granularity": args.granularity,
        "options": {**options, "channel_axis": "default (Keras layouts)"},
    }
    sizes = storage.save_packed(args.out, params, report, meta=meta,
                                symmetric_codebook=not args.full_codebook)
    loaded, _ = storage.load_packed(args.out)
    exact = storage.trees_equal(loaded, {k: dict(d) for k, d in new.items()})
    if not exact:
        raise RuntimeError(f"{args.out} does not decode to the quantized weights; please report")
    n_q = sum(r["size"] for r in report)
    out = {"out": str(args.out), **sizes, "roundtrip_exact": exact, "n_quantized_leaves":
           len(report), "mean_r": sum(r["r"] * r["size"] for r in report) / n_q,
           "seconds": round(time.perf_counter() - t0, 2), "meta": meta}
    if args.json:
        print(json.dumps(out, indent=1))
        return 0
    mib = 1 << 20
    print(f"{args.out}: {sizes['packed_bytes'] / mib:.3f} MiB packed vs "
          f"{sizes['float_bytes'] / mib:.3f} MiB float32 -> {sizes['ratio']:.2f}x "
          f"({sizes['bits_per_param']:.2f} bits/param; codes {sizes['codes_bytes']:,d} B, "
          f"codebooks {sizes['codebook_bytes']:,d} B, float kept {sizes['float_kept_bytes']:,d} B, "
          f"header {sizes['header_bytes']:,d} B); {len(report)} kernels quantized, "
          f"mean r {out['mean_r']:.4f}, round trip exact")
    return 0
