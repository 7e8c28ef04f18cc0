"""``paper-repro unpack``: inspect a packed model (``.prq``) or write it back as floats.

Prints the header (model, scheme, bits, options, versions), the size accounting and a
per-leaf summary. The file's checksum and header are checked first and every leaf is decoded
before anything is written: a damaged file is refused with a one-line error (exit 2). ``--out``
writes the dequantized weights as a legacy Keras ``.h5`` file
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


def _write(params: dict, out: Path) -> None:
    """Write the decoded tree to ``out`` (.h5 or .npz) atomically."""
    import os
    import tempfile

    from paper_repro.core import storage

    if out.suffix not in (".h5", ".npz"):
        raise ValueError(f"--out must end in .h5 or .npz, got {out.name}")
    flat = storage.flatten(params)
    raw = [p for p, a in flat.items() if a.dtype.kind == "V" or a.dtype.name == "bfloat16"]
    if raw:
        raise ValueError(f"{raw[0]} is bfloat16, which {out.suffix} files store as raw bytes; "
                         "load it in Python with storage.load_packed instead")
    if out.suffix == ".h5" and any(
            not isinstance(d, dict) or any(isinstance(v, dict) for v in d.values())
            for d in params.values()):
        raise ValueError(".h5 output needs a {layer: {var: array}} tree; use .npz")
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=out.suffix)
    os.close(fd)
    try:
        if out.suffix == ".h5":
            from paper_repro.feedforward import weights as W

            W.save_h5(params, tmp)
        else:
            np.savez(tmp, **flat)
        os.chmod(tmp, storage.file_mode())
        os.replace(tmp, out)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def run(args) -> int:
    from paper_repro.core import storage

    packed = storage.read_packed(args.file)  # checksum and header checks; ValueError if damaged
    info = storage.describe(packed)
    if args.out:
        params = storage.unpack_tree(packed)  # decodes every leaf before anything is written
        _write(params, Path(args.out))
        info["written"] = str(args.out)
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
            what = (f"{r['scheme']} {r['bits']}b {r['granularity']} L={r['n_levels']} "
                    f"{r['coding']}")
            what += f" r={r['r']:.4f}" if r["r"] is not None else ""
        elif r["kind"] == "fill":
            what = f"{r['dtype']} constant {r['value']!r}"
        else:
            what = f"{r['dtype']} kept"
        print(f"  {r['path']:<{width}}  {str(tuple(r['shape'])):<20} {what}")
    if args.out:
        print(f"wrote {args.out}")
    return 0
