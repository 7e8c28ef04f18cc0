"""``paper-repro unpack``: inspect a packed model (``.prq``) or write it back as floats.

Prints the header (model, scheme, bits, options, versions), the size accounting and a
per-leaf summary; ``--out`` writes the dequantized weights as a legacy Keras ``.h5`` file
(loadable by ``paper-repro`` and by Keras ``model.load_weights``) or a flat ``.npz``
(``"<layer>/<var>"`` keys). In Python: ``params, meta = paper_repro.core.storage.load_packed(f)``.

Example::

    paper-repro unpack mobilenet_exp5.prq --json
    paper-repro unpack mobilenet_exp5.prq --out mobilenet_exp5.h5
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "unpack", help="show a packed model's header and sizes, or write it back as floats",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file", help="packed model (.prq) written by `paper-repro pack`")
    p.add_argument("--out", default=None,
                   help="write the dequantized weights: .h5 (legacy Keras) or .npz")
    p.add_argument("--json", action="store_true", help="print header, sizes and leaves as JSON")
    return p


def run(args) -> int:
    from paper_repro.core import storage

    packed = storage.read_packed(args.file)
    info = storage.describe(packed)
    if args.out:
        out = Path(args.out)
        params = storage.unpack_tree(packed)
        if out.suffix == ".h5":
            from paper_repro.feedforward import weights as W

            if any(not isinstance(d, dict) or any(isinstance(v, dict) for v in d.values())
                   for d in params.values()):
                raise ValueError(".h5 output needs a {layer: {var: array}} tree; use .npz")
            W.save_h5(params, out)
        elif out.suffix == ".npz":
            flat = storage.flatten(params)
            out.parent.mkdir(parents=True, exist_ok=True)
            np.savez(out, **flat)
        else:
            raise ValueError(f"--out must end in .h5 or .npz, got {out.name}")
        info["written"] = str(out)
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    s, m = info["sizes"], info["meta"]
    print(f"{args.file}: format {m['format_version']}, paper-repro {m['package_version']}")
    for k, v in m.items():
        if k not in ("format_version", "package_version"):
            print(f"  {k}: {v}")
    print(f"  {s['packed_bytes']:,d} bytes packed, {s['float_bytes']:,d} float32 -> "
          f"{s['ratio']:.2f}x (codes {s['codes_bytes']:,d}, codebooks {s['codebook_bytes']:,d}, "
          f"float kept {s['float_kept_bytes']:,d}, header {s['header_bytes']:,d})")
    width = max(len(r["path"]) for r in info["leaves"])
    for r in info["leaves"]:
        if r["kind"] == "quantized":
            what = f"{r['scheme']} {r['bits']}b {r['granularity']} L={r['n_levels']}"
            what += f" r={r['r']:.4f}" if r["r"] is not None else ""
        else:
            what = f"{r['dtype']} kept"
        print(f"  {r['path']:<{width}}  {str(tuple(r['shape'])):<20} {what}")
    if args.out:
        print(f"wrote {args.out}")
    return 0
