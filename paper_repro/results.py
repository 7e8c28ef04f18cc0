"""Results on disk: compute once, keep the data, record what determines every number.

Every figure or table lives in ``results/<name>/`` as

- ``<stem>.png`` and ``<stem>.pdf``  the figures,
- ``data.npz`` (and ``.csv`` / ``.md``) the arrays and tables the figures were drawn from,
- ``meta.json``                       what determines the data: config, its hash, the numerics
                                      version, pinned package versions, the checksums of the
                                      inputs, and the commit that computed the data.

The files are byte-stable: the same config and numerics give the same bytes on every machine,
and a file is rewritten only when its bytes change (a rerun that reproduces the same data leaves
every tracked file untouched). What differs between runs -- wall time, host, device, the
working directory -- goes to the untracked run log ``build/run-log.jsonl``.

``run_or_load`` recomputes only when the config or :data:`paper_repro.NUMERICS_VERSION` changes
(or when forced); :class:`ResultsTable` is the resumable, lock-protected row store of long
sweeps (one row per finished configuration).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from paper_repro import NUMERICS_VERSION

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(os.environ.get("PAPER_REPRO_RESULTS", ROOT / "results"))
RUN_LOG = ROOT / "build" / "run-log.jsonl"

# The packages whose versions shape the numbers (exact pins in requirements.txt).
_VERSIONED = ("jax", "jaxlib", "flax", "numpy", "scipy", "matplotlib")


def results_root() -> Path:
    """The results folder: ``$PAPER_REPRO_RESULTS`` or ``<repo>/results``."""
    return Path(os.environ.get("PAPER_REPRO_RESULTS", RESULTS_DIR))


def results_dir(name: str) -> Path:
    """``results/<name>/``, created if missing (``PAPER_REPRO_RESULTS`` moves the root)."""
    d = results_root() / name
    d.mkdir(parents=True, exist_ok=True)
    return d


def git_state() -> dict[str, Any]:
    """``{"commit": sha or "unknown", "tree_dirty": bool}`` of the checkout."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout.strip()
        # the result files being written are not the code that computed them
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--",
                                ".", ":(exclude)results"],
                               cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
        return {"commit": sha, "tree_dirty": bool(dirty)}
    except (OSError, subprocess.CalledProcessError):
        return {"commit": "unknown", "tree_dirty": None}


def git_commit() -> str:
    """The current commit, ``"<sha>+dirty"`` when the tree has changes, or ``"unknown"``."""
    g = git_state()
    return g["commit"] + ("+dirty" if g["tree_dirty"] else "")


def versions() -> dict[str, str]:
    """Versions of Python (major.minor) and of the packages that shape the numbers."""
    out = {"python": ".".join(platform.python_version_tuple()[:2])}
    for mod in _VERSIONED:
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - a missing optional package is recorded, not fatal
            out[mod] = "absent"
    return out


def device() -> str:
    """The JAX backend and devices, e.g. ``"cpu: TFRT_CPU_0"`` (for the run log only)."""
    try:
        import jax

        return f"{jax.default_backend()}: " + ", ".join(str(d) for d in jax.devices())
    except Exception:  # noqa: BLE001
        return "unknown"


def _jsonable(v: Any) -> Any:
    """Floats that JSON cannot hold (nan, inf) become ``None``; numpy scalars become Python."""
    if isinstance(v, Mapping):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def dumps(obj: Any, **kw) -> str:
    """Strict JSON (no NaN/Infinity tokens: they become ``null``), keys sorted."""
    return json.dumps(_jsonable(obj), allow_nan=False, sort_keys=True, default=str, **kw)


def config_hash(config: Mapping[str, Any]) -> str:
    """A short stable hash of a JSON-able config (key order does not matter)."""
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def file_sha256(path: str | os.PathLike, *, chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix="." + path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_if_changed(path: str | os.PathLike, data: bytes | str) -> bool:
    """Write ``data`` atomically unless the file already holds exactly these bytes.

    Returns whether the file was written. This is what keeps reruns from touching files.
    """
    path = Path(path)
    if isinstance(data, str):
        data = data.encode()
    if path.exists() and path.read_bytes() == data:
        return False
    _atomic_write_bytes(path, data)
    return True


def log_run(record: Mapping[str, Any]) -> None:
    """Append one record (plus time, host, device, commit, cwd) to the untracked run log."""
    rec = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "host": socket.gethostname(),
           "cwd": os.getcwd(), "commit": git_commit(), **dict(record)}
    try:
        RUN_LOG.parent.mkdir(parents=True, exist_ok=True)
        with RUN_LOG.open("a") as f:
            f.write(json.dumps(_jsonable(rec), default=str) + "\n")
    except OSError:  # a read-only checkout still runs; the log is a convenience
        pass


def meta_content(config: Mapping[str, Any], **extra: Any) -> dict:
    """The deterministic part of ``meta.json``: what determines the data."""
    return {
        "config": _jsonable(dict(config)),
        "config_hash": config_hash(config),
        "numerics_version": NUMERICS_VERSION,
        "versions": versions(),
        **{k: _jsonable(v) for k, v in extra.items()},
    }


def _meta_matches(saved: Mapping[str, Any], config: Mapping[str, Any]) -> bool:
    return (saved.get("config_hash") == config_hash(config)
            and saved.get("numerics_version", 1) == NUMERICS_VERSION)


def write_meta(d: Path, config: Mapping[str, Any], wall_time_s: float | None = None, *,
               data_changed: bool = True, **extra: Any) -> dict:
    """Write ``d/meta.json`` (see :func:`meta_content`) with the commit that computed the data.

    The commit is updated only when the data changed (``data_changed``) or the meta's content
    differs; wall time and the rest go to the run log. Returns the meta.
    """
    d = Path(d)
    meta = meta_content(config, **extra)
    path = d / "meta.json"
    old = None
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError):
            old = None
    same = old is not None and {k: v for k, v in old.items() if k != "computed_by"} == meta
    if same and not data_changed:
        meta["computed_by"] = old.get("computed_by")
    else:
        meta["computed_by"] = git_state()
    write_if_changed(path, json.dumps(meta, indent=2, sort_keys=True, allow_nan=False,
                                      default=str) + "\n")
    log_run({"result": str(d), "config_hash": meta["config_hash"],
             "wall_time_s": None if wall_time_s is None else round(float(wall_time_s), 3),
             "device": device(), "data_changed": data_changed})
    return meta


def npz_bytes(arrays: Mapping[str, Any]) -> bytes:
    """``np.savez`` of ``arrays`` into bytes (deterministic: fixed zip timestamps)."""
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})
    return buf.getvalue()


def load_npz(path: str | os.PathLike) -> dict[str, np.ndarray] | None:
    """The arrays of an ``.npz``, or ``None`` when it is missing, truncated or corrupt."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, KeyError) as e:
        if Path(path).exists():
            print(f"[results] {path}: unreadable ({type(e).__name__}); recomputing",
                  file=sys.stderr)
        return None
    except Exception as e:  # zipfile.BadZipFile and friends
        print(f"[results] {path}: unreadable ({type(e).__name__}); recomputing", file=sys.stderr)
        return None


def saved_arrays(name: str, config: Mapping[str, Any]) -> dict[str, np.ndarray] | None:
    """The saved arrays of ``results/<name>/`` if they were computed from ``config`` under the
    current numerics version, else ``None``."""
    d = results_root() / name
    meta_path = d / "meta.json"
    if not (meta_path.exists() and (d / "data.npz").exists()):
        return None
    try:
        saved = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        return None
    if not _meta_matches(saved, config):
        return None
    return load_npz(d / "data.npz")


def run_or_load(
    name: str,
    config: Mapping[str, Any],
    compute: Callable[[], Mapping[str, Any]],
    *,
    force: bool = False,
    meta_extra: Mapping[str, Any] | None = None,
) -> dict[str, np.ndarray]:
    """Return the arrays of ``results/<name>/data.npz``, recomputing only when needed.

    ``compute()`` returns a mapping of arrays. It runs when there is no readable saved data,
    when the saved ``meta.json`` has another config or numerics version, or when ``force`` is
    true (or the environment has ``PAPER_REPRO_FORCE=1``). ``config`` must hold everything the
    numbers depend on (seed included). Files are rewritten only when their bytes change.
    """
    force = force or os.environ.get("PAPER_REPRO_FORCE") == "1"
    if not force:
        saved = saved_arrays(name, config)
        if saved is not None:
            return saved
    d = results_dir(name)
    t0 = time.perf_counter()
    arrays = {k: np.asarray(v) for k, v in compute().items()}
    wall = time.perf_counter() - t0
    changed = write_if_changed(d / "data.npz", npz_bytes(arrays))
    write_meta(d, config, wall, data_changed=changed, **dict(meta_extra or {}))
    return arrays


def figure_bytes(fig, ext: str) -> bytes:
    """A figure rendered to ``png`` or ``pdf`` bytes, with no dates or commits inside."""
    buf = io.BytesIO()
    meta = {"CreationDate": None} if ext == "pdf" else {}
    fig.savefig(buf, format=ext, dpi=150, bbox_inches="tight", metadata=meta)
    return buf.getvalue()


def save_figure(fig, name: str, *, stem: str | None = None) -> list[Path]:
    """Save a matplotlib figure as ``results/<name>/<stem>.png`` and ``.pdf`` (only if changed)."""
    d = results_dir(name)
    stem = stem or name.replace("/", "_")
    paths = []
    for ext in ("png", "pdf"):
        p = d / f"{stem}.{ext}"
        write_if_changed(p, figure_bytes(fig, ext))
        paths.append(p)
    return paths


def csv_text(rows: Iterable[Mapping[str, Any]]) -> str:
    """Rows (dicts; missing keys left empty) as CSV text, columns in first-seen order."""
    rows = list(rows)
    fields = list(dict.fromkeys(k for row in rows for k in row))  # union, first-seen order
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, restval="")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def write_csv(path: Path, rows: Iterable[Mapping[str, Any]]) -> Path:
    """Write rows (dicts; missing keys left empty) to a CSV file atomically, if changed."""
    rows = list(rows)
    if not rows:
        raise ValueError(f"no rows to write to {path}")
    write_if_changed(Path(path), csv_text(rows))
    return Path(path)


class ResultsTable:
    """A CSV of finished configurations: one row each, keyed by the config's hash.

    Long sweeps call ``done(config)`` to skip finished work and ``append(config, row)`` after
    each configuration, so a killed run loses at most the configuration in flight. Appends
    take a file lock and de-duplicate by key, so two sweeps on the same file never duplicate a
    row; the file is replaced atomically. A row computed under another numerics version
    (``paper_repro.NUMERICS_VERSION``) does not count as done and is replaced when recomputed.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def _lock(self):
        from filelock import FileLock

        return FileLock(str(self.path) + ".lock", timeout=600)

    def _entries(self) -> list[dict[str, str]]:
        if not self.path.exists():
            return []
        with self.path.open(newline="") as f:
            out = []
            for r in csv.DictReader(f):
                try:
                    row = json.loads(r["row_json"])
                except (KeyError, TypeError, ValueError):
                    print(f"[results] {self.path}: skipping an unreadable row", file=sys.stderr)
                    continue
                out.append({"key": r.get("key"), "row": row})
            return out

    def _current(self) -> list[dict]:
        """Entries of the current numerics version, one per key (the last one wins)."""
        by_key = {}
        for e in self._entries():
            if e["row"].get("numerics_version", 1) == NUMERICS_VERSION:
                by_key[e["key"]] = e
        return list(by_key.values())

    def rows(self) -> list[dict]:
        """The finished rows (current numerics version), in the order they were first added."""
        return [e["row"] for e in self._current()]

    def keys(self) -> set[str]:
        return {e["key"] for e in self._current()}

    def done(self, config: Mapping[str, Any]) -> bool:
        return config_hash(config) in self.keys()

    def append(self, config: Mapping[str, Any], row: Mapping[str, Any]) -> None:
        """Add (or replace) the row of ``config``, under a lock; the file is replaced whole."""
        key = config_hash(config)
        full = {**dict(config), **dict(row)}
        if NUMERICS_VERSION != 1:
            full["numerics_version"] = NUMERICS_VERSION
        with self._lock():
            entries = [e for e in self._entries() if e["key"] != key] + [{"key": key, "row": full}]
            buf = io.StringIO()
            w = csv.DictWriter(buf, fieldnames=["key", "row_json"])
            w.writeheader()
            for e in entries:
                w.writerow({"key": e["key"], "row_json": json.dumps(e["row"], default=float)})
            write_if_changed(self.path, buf.getvalue())
