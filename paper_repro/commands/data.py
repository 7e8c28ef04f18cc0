"""paper-repro data: the real data and weight files the project knows; fetch and verify them.

Files go below the data root: --dest, else $PAPER_REPRO_DATA, else
$XDG_CACHE_HOME/paper-repro/data (default ~/.cache/paper-repro/data). Every file is checked
against its recorded sha256 before it is kept; files already present and correct are skipped.

Examples:

    paper-repro data list
    paper-repro data list --json
    paper-repro data fetch imagenet-val-1300
    paper-repro data fetch all --dest /data/paper-repro
    paper-repro data fetch shufflenet-v2-x0.5-onnx --base-url http://mirror.example/dl-infer-learn/
    paper-repro data verify mobilenet-0.75-keras
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from paper_repro import datasets as D


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "data", help="list, fetch and verify the real data sets and weight files",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    choices = ", ".join(D.names())

    ls = sub.add_parser("list", help="every entry: size, source, license, checksums, presence")
    ls.add_argument("--json", action="store_true", help="print JSON")
    ls.add_argument("--dest", default=None, help="data root to look in (default: the data root)")

    f = sub.add_parser("fetch", help="download an entry, verifying every file")
    f.add_argument("name", help=f"entry name ({choices}) or 'all'")
    f.add_argument("--dest", default=None, help="data root to write below")
    f.add_argument("--base-url", default=None,
                   help="replaces the entry's URL prefix: a mirror URL, a file:// URL or a "
                        "local folder (e.g. a clone of the source repository)")
    f.add_argument("--timeout", type=float, default=D.DEFAULT_TIMEOUT_S,
                   help="seconds per request (default %(default)s)")
    f.add_argument("--jobs", type=int, default=D.DEFAULT_JOBS,
                   help="parallel downloads (default %(default)s)")
    f.add_argument("--no-progress", action="store_true", help="no progress bar")

    v = sub.add_parser("verify", help="check an entry's files against their checksums")
    v.add_argument("name", help=f"entry name ({choices}) or 'all'")
    v.add_argument("--dest", default=None, help="data root to look in")
    return p


def _names(name: str) -> list[str]:
    if name == "all":
        return D.names()
    D.get(name)  # ValueError naming the choices
    return [name]


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _list(args) -> int:
    root = Path(args.dest).expanduser() if args.dest else D.data_root()
    rows = [D.get(n).describe(root) for n in D.names()]
    if args.json:
        print(json.dumps({"data_root": str(root), "entries": rows}, indent=1))
        return 0
    print(f"data root: {root}")
    for r in rows:
        print()
        print(f"{r['name']}  [{'present' if r['present'] else 'not present'}]")
        print(f"  {r['description']}")
        print(f"  size     {_size(r['size_bytes'])} ({r['size_bytes']:,d} bytes, "
              f"{r['n_files']} file{'s' if r['n_files'] != 1 else ''})")
        print(f"  source   {r['source']}")
        for u in r["urls"]:
            print(f"  url      {u}")
        print(f"  license  {r['license']}")
        for k, val in r["checksums"].items():
            print(f"  {k:<8} {val}" if len(k) <= 8 else f"  {k} {val}")
        print(f"  path     {r['path']}")
        if r["notes"]:
            print(f"  note     {r['notes']}")
    return 0


def _fetch(args) -> int:
    for name in _names(args.name):
        res = D.fetch(name, args.dest, base_url=args.base_url, progress=not args.no_progress,
                      timeout=args.timeout, jobs=args.jobs)
        print(res.summary())
    return 0


def _verify(args) -> int:
    failed = 0
    for name in _names(args.name):
        res = D.verify(name, args.dest)
        print(res.summary())
        failed += not res.passed
    if failed:
        print(f"paper-repro data: error: {failed} entr{'y' if failed == 1 else 'ies'} failed "
              "verification; rerun `paper-repro data fetch NAME` to replace bad files",
              file=sys.stderr)
        return 2
    return 0


def run(args) -> int:
    action = {"list": _list, "fetch": _fetch, "verify": _verify}[args.data_command]
    try:
        return action(args)
    except BrokenPipeError:
        # Output piped into e.g. `head`: stop quietly, and keep Python's exit flush quiet too.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except (ValueError, FileNotFoundError):
        raise
    except OSError as e:  # e.g. no permission to write the destination
        print(f"paper-repro data: error: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("paper-repro data: interrupted (verified files are kept; rerun to resume)",
              file=sys.stderr)
        return 130
