"""``paper-repro imagenet-repro``: the feedforward act on whatever data is configured.

Always: the embedded digits CNN (no download) through the full sweep -> ``results/digits/``.
Then, where present:

- ``PAPER_REPRO_SHARED_DATA``: a folder with ``imagenet-val-1300/`` (1300 real validation
  images + labels) and ``keras-weights/mobilenet_7_5_224_tf.h5`` -> MobileNet 0.75 sweep in
  ``results/imagenet/mobilenet_0.75_val1300/``.
- ``IMAGENET_DIR`` (class subfolders, or flat with ``IMAGENET_LABELS``) and ``WEIGHTS_DIR``
  (official Keras .h5 files, as ``paper-repro weights fetch`` names them) -> one sweep per
  paper model whose weights are there, in ``results/imagenet/<model>/``.

Each sweep appends finished configurations to ``sweep.csv`` and skips them when rerun, so an
interrupted run resumes. Without data it says how to get it and goes on.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

PAPER_MODELS = ("vgg16", "resnet50", "xception", "inception_v3", "mobilenet_v2")


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("imagenet-repro", help="quantization sweeps on the configured data",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bits", type=int, nargs="*", default=list(range(2, 9)))
    p.add_argument("--models", nargs="*", default=list(PAPER_MODELS),
                   help="paper models to run when IMAGENET_DIR/WEIGHTS_DIR are set")
    p.add_argument("--limit", type=int, default=None, help="first K images only")
    p.add_argument("--per-class", type=int, default=None, help="K images per class only")
    p.add_argument("--smoke", action="store_true", help="a few configurations, 100 images")
    p.add_argument("--skip-digits", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    return p


def run(args) -> int:
    from paper_repro.feedforward import sweep as E
    from paper_repro.experiments.sweeps import sweep_to_results

    progress = not args.no_progress
    bits = [3, 5] if args.smoke else args.bits
    grid = dict(bits=bits)
    if args.smoke:
        grid.update(schemes=("linear", "exponential"), fits=("corr",), granularities=("tensor",),
                    lloyd_max=False)
    configs = E.sweep_configs(**grid)
    limit = 100 if args.smoke and args.limit is None else args.limit
    sfx = "_smoke" if args.smoke else ""

    if not args.skip_digits:
        print("== digits CNN (embedded, no download)")
        sweep_to_results(E.digits_task(), configs, f"digits{sfx}", progress=progress,
                         title="digits CNN (sklearn, held-out 449)")

    shared = os.environ.get("PAPER_REPRO_SHARED_DATA")
    if shared and (Path(shared) / "imagenet-val-1300").is_dir():
        root = Path(shared)
        print("== MobileNet 0.75 on the 1300-image real validation sample")
        task = E.imagenet_task("mobilenet", alpha=0.75,
                               weights=root / "keras-weights" / "mobilenet_7_5_224_tf.h5",
                               data=root / "imagenet-val-1300" / "images",
                               labels=root / "imagenet-val-1300" / "labels.txt",
                               policy="crop", progress=progress)
        sweep_to_results(task, configs, f"imagenet/mobilenet_0.75_val1300{sfx}", limit=limit,
                         per_class=args.per_class, progress=progress,
                         title="MobileNet 0.75, 1300 real val images")
    else:
        print("PAPER_REPRO_SHARED_DATA not set (or without imagenet-val-1300/): skipping the "
              "1300-image MobileNet demonstration.")

    imagenet_dir, weights_dir = os.environ.get("IMAGENET_DIR"), os.environ.get("WEIGHTS_DIR")
    if not imagenet_dir or not weights_dir:
        print("IMAGENET_DIR / WEIGHTS_DIR not set: full-ImageNet tables skipped. To run them, "
              "put the ILSVRC-2012 validation images in a folder (class subfolders, or flat "
              "plus IMAGENET_LABELS), fetch the weights with `paper-repro weights fetch NAME "
              "--cache-dir DIR` for NAME in " + ", ".join(PAPER_MODELS) + ", then `make imagenet "
              "IMAGENET_DIR=... WEIGHTS_DIR=...` (see data/README.md).")
        return 0
    from paper_repro.feedforward import models

    for name in args.models:
        spec = models.get(name)
        wfile = Path(weights_dir) / spec.weights.file_name
        if not wfile.is_file():
            print(f"{name}: {wfile} missing; `paper-repro weights fetch {name}` gets it. Skipped.")
            continue
        print(f"== {name} on {imagenet_dir}")
        task = E.imagenet_task(name, weights=wfile, data=imagenet_dir,
                               labels=os.environ.get("IMAGENET_LABELS"), progress=progress)
        sweep_to_results(task, configs, f"imagenet/{name}{sfx}", limit=limit,
                         per_class=args.per_class, progress=progress,
                         paper_top5=E.PAPER_TOP5.get(name), title=f"{name}, ImageNet val")
    return 0
