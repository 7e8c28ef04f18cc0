"""``paper-repro weights``: fetch the official Keras-applications weight files, inspect them.

Examples::

    paper-repro weights list
    paper-repro weights fetch mobilenet --alpha 0.75
    paper-repro weights info ~/.cache/paper_repro/weights/mobilenet_7_5_224_tf.h5 --json
"""

from __future__ import annotations

import argparse

from paper_repro.commands import _args as A
from paper_repro.feedforward import models
from paper_repro.feedforward import weights as W


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "weights",
        help="fetch and inspect the official Keras-applications ImageNet weight files",
        description=(
            "Download an official Keras-applications weight file (checksum verified) into "
            "the cache (--cache-dir, else $PAPER_REPRO_CACHE/weights, else "
            "~/.cache/paper_repro/weights), list the models, or summarize a legacy Keras .h5 weight file."
        ),
    )
    sub = p.add_subparsers(dest="weights_command", metavar="ACTION", required=True)

    f = sub.add_parser("fetch", help="download a model's official weight file (or find it cached)")
    f.add_argument("name", help=f"model name: {', '.join(models.names())}")
    f.add_argument("--alpha", type=A.positive_float, default=None,
                   help="MobileNet width multiplier")
    f.add_argument("--no-top", action="store_true", help="the feature-extractor (notop) file")
    f.add_argument("--cache-dir", default=None, help="folder for the weight files")
    f.add_argument("--timeout", type=A.positive_float, default=W.DEFAULT_TIMEOUT_S,
                   help=f"seconds (default {W.DEFAULT_TIMEOUT_S:g})")

    i = sub.add_parser("info", help="list the layers, shapes and parameter count of a .h5 file")
    i.add_argument("file", help="legacy Keras .h5 weight file")
    i.add_argument("--json", action="store_true", help="print JSON")

    sub.add_parser("list", help="the registry: models, input sizes, preprocessing, files")
    return p


def run(args) -> int:
    if args.weights_command == "fetch":
        spec = models.get(args.name, args.alpha, include_top=not args.no_top)
        path = W.fetch(spec, args.cache_dir, timeout=args.timeout)
        md5 = W.file_hash(path, "md5")
        print(
            f"{path}\nmd5 {md5}" + ("" if spec.weights.hash else " (Keras publishes no checksum)")
        )
        return 0
    if args.weights_command == "info":
        rep = W.info(args.file)
        if args.json:
            A.print_json(rep, indent=1)
            return 0
        print(f"{rep['path']}")
        print(f"md5 {rep['md5']}  keras_version {rep['keras_version']}  backend {rep['backend']}")
        width = max((len(r["name"]) for r in rep["layers"]), default=5)
        for r in rep["layers"]:
            shapes = "  ".join(f"{v}{tuple(s)}" for v, s in r["vars"].items())
            print(f"{r['name']:<{width}}  {r['n_params']:>10,d}  {shapes}")
        print(f"{rep['n_layers']} layers with weights, {rep['n_params']:,d} parameters")
        return 0
    if args.weights_command == "list":
        print(f"{'name':<13} {'input':>5} {'preproc':<7} weight file")
        for name in models.names():
            spec = models.get(name)
            print(
                f"{name:<13} {spec.input_size:>5} {spec.preprocess_mode:<7} "
                f"{spec.weights.file_name}"
            )
        return 0
    raise ValueError(f"unknown weights action {args.weights_command!r}")
