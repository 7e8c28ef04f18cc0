"""Results on disk: compute once, keep the data, record where every number came from.

Every figure or table lives in ``results/<name>/`` as

- ``<name>.png`` and ``<name>.pdf``  the figure,
- ``data.npz`` (and/or ``.csv``)     the arrays the figure was drawn from,
- ``meta.json``                      config, seed, package versions, git commit, device, wall time.

``run_or_load`` recomputes only when the config changes; ``save_figure`` writes the figure
files next to the data. Partial results of long sweeps go to :class:`ResultsTable`, a CSV that
gets one row per finished configuration (appended atomically), so an interrupted run resumes.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(os.environ.get("PAPER_REPRO_RESULTS", ROOT / "results"))


def results_dir(name: str) -> Path:
    """``results/<name>/``, created if missing (``PAPER_REPRO_RESULTS`` moves the root)."""
    d = Path(os.environ.get("PAPER_REPRO_RESULTS", RESULTS_DIR)) / name
    d.mkdir(parents=True, exist_ok=True)
    return d


def git_commit() -> str:
    """The current commit (with ``+dirty`` when the tree has changes), or ``"unknown"``."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT, capture_output=True, text=True, check=True,
        ).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def versions() -> dict[str, str]:
    """Versions of Python and the packages that shape the numbers."""
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for mod in ("jax", "jaxlib", "flax", "numpy", "scipy", "matplotlib"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - a missing optional package is recorded, not fatal
            out[mod] = "absent"
    return out


def device() -> str:
    """The JAX backend and devices, e.g. ``"cpu: TFRT_CPU_0"``."""
    try:
        import jax

        return f"{jax.default_backend()}: " + ", ".join(str(d) for d in jax.devices())
    except Exception:  # noqa: BLE001
        return "unknown"


def config_hash(config: Mapping[str, Any]) -> str:
    """A short stable hash of a JSON-able config (key order does not matter)."""
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_meta(d: Path, config: Mapping[str, Any], wall_time_s: float, **extra: Any) -> dict:
    """Write ``meta.json`` (config, versions, commit, device, wall time) and return it."""
    meta = {
        "config": dict(config),
        "config_hash": config_hash(config),
        "versions": versions(),
        "git_commit": git_commit(),
        "device": device(),
        "wall_time_s": round(float(wall_time_s), 3),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **extra,
    }
    _atomic_write_bytes(d / "meta.json", json.dumps(meta, indent=2, default=str).encode())
    return meta


def run_or_load(
    name: str,
    config: Mapping[str, Any],
    compute: Callable[[], Mapping[str, Any]],
    *,
    force: bool = False,
) -> dict[str, np.ndarray]:
    """Return the arrays of ``results/<name>/data.npz``, recomputing only when needed.

    ``compute()`` returns a mapping of arrays. It runs when there is no saved data, when the
    saved ``meta.json`` has another config, or when ``force`` is true (or the environment has
    ``PAPER_REPRO_FORCE=1``); then the arrays and the meta are written. ``config`` must
    hold everything the numbers depend on (seed included).
    """
    d = results_dir(name)
    data_path, meta_path = d / "data.npz", d / "meta.json"
    force = force or os.environ.get("PAPER_REPRO_FORCE") == "1"
    if not force and data_path.exists() and meta_path.exists():
        saved = json.loads(meta_path.read_text())
        if saved.get("config_hash") == config_hash(config):
            with np.load(data_path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
    t0 = time.perf_counter()
    arrays = {k: np.asarray(v) for k, v in compute().items()}
    wall = time.perf_counter() - t0
    fd, tmp = tempfile.mkstemp(dir=d, suffix=".npz")
    os.close(fd)
    np.savez(tmp, **arrays)
    os.replace(tmp, data_path)
    write_meta(d, config, wall)
    return arrays


def save_figure(fig, name: str, *, stem: str | None = None) -> list[Path]:
    """Save a matplotlib figure as ``results/<name>/<stem>.png`` and ``.pdf``."""
    d = results_dir(name)
    stem = stem or name.replace("/", "_")
    paths = []
    for ext in ("png", "pdf"):
        p = d / f"{stem}.{ext}"
        meta = {"Creator": f"paper_repro {git_commit()}"} if ext == "png" else None
        fig.savefig(p, dpi=150, bbox_inches="tight", metadata=meta)
        paths.append(p)
    return paths


def write_csv(path: Path, rows: Iterable[Mapping[str, Any]]) -> Path:
    """Write rows (dicts; missing keys left empty) to a CSV file atomically."""
    rows = list(rows)
    if not rows:
        raise ValueError(f"no rows to write to {path}")
    fields = list(dict.fromkeys(k for row in rows for k in row))  # union, first-seen order
    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, restval="")
    w.writeheader()
    w.writerows(rows)
    _atomic_write_bytes(Path(path), buf.getvalue().encode())
    return Path(path)


class ResultsTable:
    """A CSV of finished configurations: one row each, appended atomically, keyed by a hash.

    Long sweeps call ``done(config)`` to skip finished work and ``append(config, row)`` after
    each configuration, so a killed run loses at most the configuration in flight.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def rows(self) -> list[dict[str, str]]:
        if not self.path.exists():
            return []
        with self.path.open(newline="") as f:
            return [json.loads(r["row_json"]) for r in csv.DictReader(f)]

    def keys(self) -> set[str]:
        if not self.path.exists():
            return set()
        with self.path.open(newline="") as f:
            return {r["key"] for r in csv.DictReader(f)}

    def done(self, config: Mapping[str, Any]) -> bool:
        return config_hash(config) in self.keys()

    def append(self, config: Mapping[str, Any], row: Mapping[str, Any]) -> None:
        """Append one finished row; the file is rewritten whole and replaced atomically."""
        import io

        existing = self.path.read_bytes() if self.path.exists() else b""
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=["key", "row_json"])
        if not existing:
            w.writeheader()
        full = {**dict(config), **dict(row)}
        w.writerow({"key": config_hash(config), "row_json": json.dumps(full, default=float)})
        _atomic_write_bytes(self.path, existing + buf.getvalue().encode())
