"""``paper-repro notebooks``: execute the notebooks, which regenerate every figure in results/.

Each notebook is thin (configure -> compute through paper_repro -> plot -> save). Executed
copies with outputs go to ``results/notebooks/``. ``--smoke`` shrinks every config
(``PAPER_REPRO_SMOKE=1``); figures land in ``$PAPER_REPRO_RESULTS`` when that is set.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from paper_repro import results

NOTEBOOK_DIR = results.ROOT / "notebooks"


def available() -> list[str]:
    return sorted(p.stem for p in NOTEBOOK_DIR.glob("*.ipynb"))


def execute(name: str, *, smoke: bool, timeout: int = 3600, out_dir: Path | None = None) -> Path:
    """Run ``notebooks/<name>.ipynb`` top to bottom; write the executed copy and return it."""
    import nbformat
    from nbclient import NotebookClient

    path = NOTEBOOK_DIR / f"{name}.ipynb"
    if not path.exists():
        raise FileNotFoundError(f"no notebook {path}; available: {', '.join(available())}")
    nb = nbformat.read(path, as_version=4)
    old = os.environ.get("PAPER_REPRO_SMOKE")
    os.environ["PAPER_REPRO_SMOKE"] = "1" if smoke else "0"
    try:
        NotebookClient(nb, timeout=timeout, kernel_name="python3",
                       resources={"metadata": {"path": str(NOTEBOOK_DIR)}}).execute()
    finally:
        if old is None:
            os.environ.pop("PAPER_REPRO_SMOKE", None)
        else:
            os.environ["PAPER_REPRO_SMOKE"] = old
    out_dir = out_dir or results.results_dir("notebooks")
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"{name}.ipynb"
    nbformat.write(nb, out)
    return out


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("notebooks", help="execute notebooks to regenerate the figures",
                       description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("names", nargs="*", help=f"notebooks to run (default: all: {available()})")
    p.add_argument("--smoke", action="store_true", help="tiny configs (seconds each)")
    p.add_argument("--skip", nargs="*", default=[], help="notebooks not to run")
    return p


def run(args) -> int:
    names = args.names or available()
    failed = []
    for name in names:
        if name in args.skip:
            continue
        t0 = time.perf_counter()
        print(f"[notebooks] {name} ...", flush=True)
        try:
            out = execute(name, smoke=args.smoke)
        except Exception as e:  # noqa: BLE001 - report every notebook, then fail
            failed.append(name)
            print(f"[notebooks] {name} FAILED: {type(e).__name__}: {str(e)[-2000:]}",
                  file=sys.stderr)
            continue
        print(f"[notebooks] {name} done in {time.perf_counter() - t0:.0f} s -> {out}")
    if failed:
        print(f"[notebooks] failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0
