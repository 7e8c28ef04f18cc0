"""paper-repro imagenet-repro: the papers' models on your full ImageNet validation set.

The sweeps on the embedded digits CNN and on MobileNet 0.75 with the 1300-image sample are
declared experiments: `paper-repro figures digits imagenet`. This command runs the same sweep
for the five paper models (VGG16, ResNet50, Xception, InceptionV3, MobileNetV2) on data you
configure: IMAGENET_DIR (class subfolders, or a flat folder with IMAGENET_LABELS) and
WEIGHTS_DIR (the official Keras .h5 files, as `paper-repro weights fetch` names them), one
sweep per model whose weights are there, in results/imagenet/<model>/.

Each sweep appends finished configurations to sweep.csv and skips them when rerun, so an
interrupted run resumes. Without data it says how to get it and stops.
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
    p.add_argument("--skip-digits", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--no-progress", action="store_true")
    return p


def run(args) -> int:
    from paper_repro.experiments.sweeps import sweep_to_results
    from paper_repro.feedforward import sweep as E

    bits = [3, 5] if args.smoke else args.bits
    grid = dict(bits=bits)
    if args.smoke:
        grid.update(schemes=("linear", "exponential"), fits=("corr",), granularities=("tensor",),
                    lloyd_max=False)
    configs = E.sweep_configs(**grid)
    limit = 100 if args.smoke and args.limit is None else args.limit
    sfx = "_smoke" if args.smoke else ""
    progress = not args.no_progress

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
