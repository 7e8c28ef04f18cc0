"""``paper-repro pack``: quantize a model's kernels and write them bit-packed (a ``.prq`` file).

The file holds each quantized kernel as ``b``-bit codes plus its float32 codebook, and every
other parameter (biases, batch norm) as stored; see :mod:`paper_repro.core.storage` for the
format (checksummed, checked on every load). ``--entropy-coding`` stores each kernel's codes
as an ANS stream under its own histogram instead of ``b`` bits a code (a kernel too small for
its histogram to pay off stays bit-packed). Prints the size
accounting: the float32 size, the file size and their ratio (``32 / 5 = 6.4x`` at 5 bits
before codebooks and float-kept parameters), the bits spent per quantized weight and the
empirical entropy of the codes (what an ideal entropy coder would spend). The file is read
back and checked bit for bit against the quantized weights before the command succeeds.

``--compact`` folds each batch norm into the per-channel codebooks of the layer it follows
(:func:`paper_repro.feedforward.repairs.fold_into_codebooks`: the same network up to float32
rounding, the codes mirrored where a scale is negative) and stores the identity batch norms
this leaves as one number per array, with the header zlib-compressed (format 4): three
float32 numbers fewer per channel. The
file then holds the folded parameterization (``paper-repro unpack`` gives folded kernels).

Every model ``paper-repro evaluate`` accepts can be packed: the registry models (weights
from ``--weights`` or the fetched official file) and ``digits_cnn`` (the embedded checkpoint,
or a digits ``.npz`` given with ``--weights``).

An ONNX model (``--model path/to/model.onnx``; the file holds the weights, so no
``--weights``) is quantized with output channels on the last axis of every kernel. With
``--out q.prq`` it is packed as above (``paper-repro evaluate --model m.onnx --weights q.prq``
reads it back for that same file); with ``--out q.onnx`` the same graph is written back as ONNX
with the dequantized float32 weights, which any ONNX runtime runs (no size saving: the
codes live only in ``.prq`` files). ``--preprocess`` is recorded in the header.

Example::

    paper-repro pack --model mobilenet --alpha 0.75 --weights mobilenet_7_5_224_tf.h5 \\
        --scheme exponential --fit corr --bits 5 --granularity channel \\
        --entropy-coding --out mobilenet_exp5.prq --json
    paper-repro evaluate --model mobilenet --alpha 0.75 --weights mobilenet_exp5.prq ...
    paper-repro pack --model shufflenet_v2_x0_5_fp16.onnx --preprocess torch \\
        --scheme exponential --bits 5 --granularity channel --gain --out shufflenet_exp5.onnx
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from paper_repro.commands import _recipe as R
from paper_repro.core import quantize
from paper_repro.feedforward import imagenet, onnx_task, repairs


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "pack", help="quantize a model's kernels and save them bit-packed (codes + codebooks)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True,
                   help="registry model name (paper-repro weights list), digits_cnn, or "
                        "path/to/model.onnx")
    p.add_argument("--alpha", type=float, default=None, help="MobileNet width multiplier")
    p.add_argument("--weights", default=None,
                   help="legacy Keras .h5 weight file (default: the official file from the "
                        "cache or the shared data folder, see `paper-repro weights fetch`); "
                        "for digits_cnn a digits .npz checkpoint (default: the embedded one)")
    p.add_argument("--scheme", default=None, choices=quantize.SCHEMES,
                   help="level family (required unless --recipe)")
    p.add_argument("--fit", default="corr", choices=quantize.FITS)
    p.add_argument("--bits", type=int, default=None,
                   help="bits per weight incl. sign, 1..8 (required unless --recipe)")
    p.add_argument("--granularity", default="tensor", choices=quantize.GRANULARITIES)
    p.add_argument("--select", default=r".*kernel",
                   help="regex on '<layer>/<var>' paths, matched in full (default: all kernels, "
                        "depthwise and pointwise included)")
    p.add_argument("--gain", action="store_true", help="least-squares gain on the levels")
    p.add_argument("--rounding", default="linear", choices=quantize.ROUNDINGS)
    p.add_argument("--base", type=float, default=None, help="fixed exponential base in (0, 1)")
    p.add_argument("--method", default="histogram", choices=quantize.METHODS)
    p.add_argument("--full-codebook", action="store_true",
                   help="store whole codebooks (default: parameters or the positive half "
                        "where exact)")
    p.add_argument("--entropy-coding", action="store_true",
                   help="entropy-code each kernel's codes (ANS under its stored histogram) "
                        "instead of bit-packing them")
    p.add_argument("--compact", action="store_true",
                   help="fold each batch norm into the per-channel codebooks of the layer it "
                        "follows, store the constant leaves this leaves as one number and "
                        "compress the header (format 4): the same network in a smaller file")
    p.add_argument("--preprocess", default=None, choices=imagenet.PREPROCESS_MODES,
                   help="ONNX models only: the input preprocessing, recorded in the header")
    R.add_recipe_argument(p)
    p.add_argument("--out", required=True,
                   help="output file (.prq); for an ONNX model also .onnx (dequantized float32 "
                        "weights, same graph)")
    p.add_argument("--json", action="store_true", help="print the accounting as JSON")
    return p


def _load_model(args) -> tuple[dict, dict]:
    """``(params, meta)`` of the model to pack: the float tree and where it came from."""
    from paper_repro.core import storage
    from paper_repro.feedforward import weights as W

    if args.model == "digits_cnn":
        from paper_repro.feedforward import digits

        if args.alpha is not None:
            raise ValueError("--alpha is a MobileNet width multiplier; digits_cnn has none")
        if args.weights:
            path = Path(args.weights)
            if not path.is_file():
                raise FileNotFoundError(f"no digits checkpoint at {path}")
            with open(path, "rb") as f:
                if f.read(4) != b"PK\x03\x04":
                    raise ValueError(f"{path}: not a digits .npz checkpoint (digits.save writes "
                                     "one); omit --weights for the embedded one")
            params, _ = digits.load(path)
        else:
            params, path = digits.load_or_train(), digits.DEFAULT_PATH
        return params, {"model": "digits_cnn", "alpha": None, "weights_file": path.name,
                        "weights_md5": W.file_hash(path, "md5")}
    from paper_repro.feedforward import models

    spec = models.get(args.model, args.alpha)
    path = Path(args.weights) if args.weights else W.fetch(spec)
    if storage.weights_kind(path) != "hdf5":
        raise ValueError(f"{path} is already a packed model; pack the Keras .h5 weights")
    return W.load(spec, path), {"model": spec.name, "alpha": spec.alpha,
                                "weights_file": path.name,
                                "weights_md5": W.file_hash(path, "md5")}


def run(args) -> int:
    from paper_repro.core import entropy, storage

    t0 = time.perf_counter()
    R.apply_recipe(args, command="pack")  # --recipe: its switches (else --scheme, --bits)
    onnx_task.check_pack_args(args)
    onnx_model = axis = None
    if onnx_task.is_onnx(args.model):
        onnx_model, params, source = onnx_task.pack_source(args)
        axis = onnx_task.CHANNEL_AXIS
    else:
        params, source = _load_model(args)
    options = dict(select=args.select, gain=args.gain, rounding=args.rounding, base=args.base,
                   method=args.method)
    recipe_meta = {}
    if args.recipe:  # per-layer widths, re-rounded codes, corrected biases / batch norms
        new, report, recipe_meta = R.pack_quantize(args, params, onnx_model=onnx_model,
                                                         channel_axis=axis)
        params = new
    else:
        new, report = quantize.quantize_tree(params, scheme=args.scheme, bits=args.bits,
                                             fit=args.fit, granularity=args.granularity,
                                             channel_axis=axis, **options)
    coding = "ans" if args.entropy_coding else "fixed"
    if args.compact:
        if onnx_task.is_onnx(args.out):
            raise ValueError("--compact writes a .prq file (batch norms folded into codebooks); "
                             "an ONNX output keeps the source graph")
        wiring = R.pack_wiring(args, params, onnx_model=onnx_model)
        new, report, folded = repairs.fold_into_codebooks(wiring.graph, new, report)
        params = new
        recipe_meta = {**recipe_meta, "compact": {"folded_batch_norms": len(folded)}}
    meta = {
        **source, "scheme": args.scheme, "fit": args.fit,
        "bits": args.bits, "granularity": args.granularity, "coding": coding,
        "options": {**options, "channel_axis": ("default (Keras layouts)" if axis is None
                                                else axis)},
        **recipe_meta,
    }
    if onnx_task.is_onnx(args.out):
        return _write_onnx(args, onnx_model, new, report, meta, t0)
    sizes = storage.save_packed(args.out, params, report, meta=meta,
                                symmetric_codebook=not args.full_codebook, coding=coding,
                                fill=args.compact)
    loaded, _ = storage.load_packed(args.out)
    exact = storage.trees_equal(loaded, {k: dict(d) for k, d in new.items()})
    if not exact:
        raise RuntimeError(f"{args.out} does not decode to the quantized weights; please report")
    n_q = sum(r["size"] for r in report)
    ent = sum(r["size"] * entropy.entropy_bits(r["codes"], r["n_levels"]) for r in report) / n_q
    out = {"out": str(args.out), **sizes, "code_entropy_bits": ent, "roundtrip_exact": exact,
           "n_quantized_leaves": len(report),
           "mean_r": sum(r["r"] * r["size"] for r in report) / n_q,
           "seconds": round(time.perf_counter() - t0, 2), "meta": meta}
    if args.json:
        print(json.dumps(out, indent=1))
        return 0
    mib = 1 << 20
    print(f"{args.out}: {sizes['packed_bytes'] / mib:.3f} MiB packed vs "
          f"{sizes['float_bytes'] / mib:.3f} MiB float32 -> {sizes['ratio']:.2f}x "
          f"({sizes['bits_per_param']:.2f} bits/param; codes {sizes['codes_bytes']:,d} B "
          f"({coding}: {sizes['code_bits_per_weight']:.3f} bits/weight, entropy {ent:.3f}), "
          f"codebooks {sizes['codebook_bytes']:,d} B, float kept {sizes['float_kept_bytes']:,d} B, "
          f"header {sizes['header_bytes']:,d} B); {len(report)} kernels quantized, "
          f"mean r {out['mean_r']:.4f}, round trip exact")
    return 0


def _write_onnx(args, model, new, report, meta, t0) -> int:
    """``--out q.onnx``: the quantized weights back into the source graph (float32)."""
    import numpy as np

    info = onnx_task.write_quantized_onnx(model, new, args.out, report=report, meta=meta)
    n_q = sum(r["size"] for r in report)
    out = {**info, "mean_r": sum(r["r"] * r["size"] for r in report) / n_q,
           "max_levels": max(int(np.unique(np.asarray(r["codes"])).size) for r in report),
           "seconds": round(time.perf_counter() - t0, 2), "meta": meta}
    if args.json:
        print(json.dumps(out, indent=1))
        return 0
    print(f"{args.out}: ONNX graph of {Path(args.model).name} with {len(report)} quantized kernels "
          f"(dequantized float32, {info['onnx_bytes']:,d} B; at most {out['max_levels']} distinct "
          f"codes per kernel), mean r {out['mean_r']:.4f}, round trip exact")
    return 0
