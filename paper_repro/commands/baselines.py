"""``paper-repro baselines``: qwix int-b per-channel weights vs our correlation-fitted levels.

Runs :func:`paper_repro.feedforward.baselines.run` on the real MobileNet 0.75 and the 1300 shared
validation images (``PAPER_REPRO_SHARED_DATA``) and writes ``results/explorer/baselines/``
(table.csv, table.md, meta.json, baselines.png/pdf). Needs ``pip install qwix==0.1.8``.
About 10 minutes on 2 cores for bits 4 5 6 8 (``--limit 100``: about a minute).
"""

from __future__ import annotations

import argparse
import sys


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("baselines", help="library (qwix) int quantization vs ours on MobileNet",
                       description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bits", type=int, nargs="+", default=[4, 5, 6, 8])
    p.add_argument("--limit", type=int, default=None, help="first K images only")
    p.add_argument("--name", default="explorer/baselines", help="results/<name>/")
    p.add_argument("--progress", action="store_true")
    return p


def run(args) -> int:
    from paper_repro import results as R
    from paper_repro.experiments import plot_explorer as P
    from paper_repro.feedforward import baselines as B

    try:
        rows = B.run(name=args.name, bits=tuple(args.bits), limit=args.limit,
                     progress=args.progress)
    except (B.BaselineUnavailableError, FileNotFoundError) as e:
        print(f"baselines skipped: {e}", file=sys.stderr)
        return 2
    R.save_figure(P.plot_baselines(rows, title="MobileNet 0.75, 1300 real val images"),
                  args.name, stem="baselines")
    print(B.markdown_table(rows))
    return 0
