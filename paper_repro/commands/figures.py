"""paper-repro figures: run the declared experiments and write results/<name>/.

Each figure or table of the package is one declared experiment (paper_repro/experiments/):
its configs (full and smoke), a compute step, its plots and tables, and the real inputs it
needs. A result computed from the same config and numerics version is reused; figures and
tables are redrawn from the saved data and written only when their bytes change, so a rerun
leaves the repository untouched. Experiments whose real inputs are missing are skipped, with a
line saying which data they need (paper-repro data list); saved results are never replaced.
"""

from __future__ import annotations

import argparse
import json
import sys


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("figures", help="run the declared experiments (every figure and table)",
                       description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("names", nargs="*",
                   help="experiments or prefixes (default: all; see --list)")
    p.add_argument("--list", action="store_true", help="list the experiments and exit")
    p.add_argument("--smoke", action="store_true",
                   help="tiny configs, written to build/smoke-results/ (results/ untouched)")
    p.add_argument("--force", action="store_true", help="recompute even when results match")
    p.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    return p


def run(args) -> int:
    from paper_repro import experiments as X

    if args.list:
        for e in X.select(args.names):
            needs = f"  needs: {', '.join(e.inputs)}" if e.inputs else ""
            print(f"{e.name:<36} {e.title}  [notebook: {e.notebook or '-'}; "
                  f"{e.runtime or '-'}]{needs}")
        return 0
    outs = X.run_many(args.names, smoke=args.smoke, force=args.force)
    if args.json:
        print(json.dumps([{"name": o.name, "status": o.status, "message": o.message,
                           "seconds": round(o.seconds, 1)} for o in outs], indent=1))
    skipped = [o.name for o in outs if o.status == "skipped"]
    if skipped:
        print(f"[figures] skipped (real data missing): {', '.join(skipped)}", file=sys.stderr)
    return 0
