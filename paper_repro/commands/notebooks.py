"""paper-repro notebooks: execute the lessons and keep their executed copies.

Each notebook teaches one topic around the declared experiments it runs (the same ones
`paper-repro figures` runs), so at full size it reuses results/ and finishes in seconds.
Executed copies, with their figures inline, go to results/notebooks/ and are rewritten only
when their content changes (no timings, no progress bars, no widget state kept). --smoke
shrinks every config (PAPER_REPRO_SMOKE=1) and writes the copies to build/smoke-notebooks/.
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
    saved = {k: os.environ.get(k) for k in ("PAPER_REPRO_SMOKE", "TQDM_DISABLE", "MPLBACKEND")}
    os.environ["PAPER_REPRO_SMOKE"] = "1" if smoke else "0"
    os.environ["TQDM_DISABLE"] = "1"  # progress bars are for people, not for stored copies
    os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
    try:
        import tempfile

        from jupyter_client.manager import KernelManager

        # a local socket in a private folder: no network port, no transport warning
        with tempfile.TemporaryDirectory(prefix="paper-repro-kernel-") as sock:
            km = KernelManager(kernel_name="python3", transport="ipc",
                               ip=str(Path(sock) / "kernel"))
            try:
                NotebookClient(nb, km=km, timeout=timeout, record_timing=False,
                               resources={"metadata": {"path": str(NOTEBOOK_DIR)}}).execute()
            finally:
                if km.has_kernel:
                    km.shutdown_kernel(now=True)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    clean(nb)
    if out_dir is None:
        out_dir = (results.ROOT / "build" / "smoke-notebooks") if smoke else \
            results.results_dir("notebooks")
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"{name}.ipynb"
    results.write_if_changed(out, nbformat.writes(nb) + "\n")
    return out


def clean(nb) -> None:
    """Drop what differs between runs of the same notebook: stderr streams (progress,
    warnings), widget state, execution timing and kernel metadata."""
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        if cell.cell_type != "code":
            continue
        cell.outputs = [o for o in cell.outputs
                        if not (o.get("output_type") == "stream" and o.get("name") == "stderr")
                        and "application/vnd.jupyter.widget-view+json" not in o.get("data", {})]


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
