"""``paper-repro recipes``: the named data-free recipes and the switches each stands for.

A recipe is the same set of settings on every network (no per-model tuning); the average
width is the caller's. Use one with ``paper-repro evaluate`` or ``paper-repro pack``::

    paper-repro evaluate --model mobilenet --alpha 0.75 --weights w.h5 --data val/ \\
        --recipe datafree --avg-bits 5 --json
    paper-repro pack --model m.onnx --preprocess torch --recipe datafree-opt --avg-bits 4 \\
        --entropy-coding --out m4.prq

The JSON output of both commands records the recipe, its switches and (for
``datafree-opt``) the optimizer's settings.
"""

from __future__ import annotations

import argparse
import json


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "recipes", help="list the named data-free recipes (--recipe) and what they stand for",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true", help="print the recipes as JSON")
    return p


def run(args) -> int:
    from paper_repro.feedforward import repairs

    if args.json:
        out = {}
        for r in repairs.RECIPES.values():
            opt = r.opt_config()
            out[r.name] = {"switches": r.flags(), "settings": dict(r.settings),
                           "optimizer": opt.as_dict() if opt is not None else None,
                           "why": r.why}
        print(json.dumps(out, indent=2))
    else:
        print(repairs.describe_recipes())
    return 0
