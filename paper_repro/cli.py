"""The ``paper-repro`` command line.

Each subcommand lives in ``paper_repro/commands/<name>.py`` with two functions,
``add_parser(subparsers)`` and ``run(args) -> int``; this file only collects them.
Run ``paper-repro --help`` for the list, ``paper-repro <command> --help`` for details.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from paper_repro import __version__

from paper_repro import commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="paper-repro",
        description=(
            "Quantize trained network weights without retraining (linear, exponential, "
            "Lloyd-Max levels chosen by maximizing correlation) and measure what it costs: "
            "Hopfield memories and ImageNet CNNs."
        ),
        epilog="Example: paper-repro correlation --density laplace --scheme exponential "
        "--fit corr --bits 4 --json",
    )
    parser.add_argument("--version", action="version", version=f"paper-repro {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        mod = importlib.import_module(f"paper_repro.commands.{info.name}")
        p = mod.add_parser(sub)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 0
    try:
        return int(args._run(args) or 0)
    except (ValueError, FileNotFoundError) as e:
        print(f"paper-repro {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
