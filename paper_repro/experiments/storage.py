"""The storage experiment: real bit-packed files of MobileNet 0.75 and their sizes.

Packs the model at every (scheme, granularity, bits) with :mod:`paper_repro.core.storage`,
measures each file on disk, reads it back and checks it bit for bit (docs/theory.md,
section 7). Full size needs the real Keras MobileNet 0.75 weights; the smoke run packs a
synthetic Laplace tree of the same shapes into ``build/smoke-results/`` (a demonstration, never
written over the real results).
"""

from __future__ import annotations

import itertools
import math
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from paper_repro.core.storage import (
    PLAIN_FORMAT_VERSION,
    SUFFIX,
    code_entropy_bits,
    load_packed,
    pack_tree,
    save_packed,
    trees_equal,
    zlib_bytes,
)
from paper_repro.experiments.base import Context, Experiment, register

#: The reference file's identity (the official Keras-applications MobileNet 0.75 weights).
MOBILENET_SOURCE = {"file": "mobilenet_7_5_224_tf.h5", "kind": "keras",
                    "md5": "7544728a764377ce5d6838a5b221cacb"}


def synthetic_params(model: str = "mobilenet", alpha: float | None = 0.75, *,
                     seed: int = 0) -> dict:
    """A ``{layer: {var: float32 array}}`` tree with the model's shapes: Laplace kernels
    (std ``1 / sqrt(fan_in)``), identity batch norm, zero biases. Deterministic in ``seed``."""
    from paper_repro.feedforward import models

    shapes = models.get(model, alpha).param_shapes()
    rng = np.random.default_rng(seed)
    out: dict = {}
    for layer, d in shapes.items():
        out[layer] = {}
        for var, shape in d.items():
            if "kernel" in var:
                fan_in = max(1, math.prod(shape[:-1]) if "depthwise" not in var
                             else math.prod(shape[:2]))
                w = rng.laplace(scale=1.0 / math.sqrt(2 * fan_in), size=shape)
                out[layer][var] = w.astype(np.float32)
            elif var in ("gamma", "moving_variance"):
                out[layer][var] = np.ones(shape, np.float32)
            else:
                out[layer][var] = np.zeros(shape, np.float32)
    return out


def default_config(smoke: bool = False) -> dict:
    """The compression sweep: bits x scheme x granularity on MobileNet 0.75's kernels."""
    return {
        "model": "mobilenet", "alpha": 0.75,
        "source": {"kind": "synthetic-laplace", "seed": 0} if smoke else MOBILENET_SOURCE,
        "schemes": ["exponential"] if smoke else ["linear", "exponential"],
        "bits": [5] if smoke else list(range(2, 9)),
        "granularities": ["tensor", "channel"],
        "fit": "corr", "select": r".*kernel", "method": "histogram",
        "symmetric_codebook": True, "format_version": PLAIN_FORMAT_VERSION,
        "codings": ["fixed", "ans"],
    }


def compute(config: Mapping, ctx: Context) -> dict[str, np.ndarray]:
    """Pack the weights of ``config["source"]``; the rows as columns."""
    from paper_repro.feedforward import models
    from paper_repro.feedforward import weights as W

    if config["source"]["kind"] == "keras":
        path = ctx.inputs["mobilenet-0.75-keras"]
        md5 = W.file_hash(path, "md5")
        if md5 != config["source"]["md5"]:
            raise ValueError(f"{path}: md5 {md5} is not the reference file's "
                             f"{config['source']['md5']}; `paper-repro data fetch "
                             "mobilenet-0.75-keras` gets it")
        params = W.load(models.get(config["model"], config["alpha"]), path)
    else:
        params = synthetic_params(config["model"], config["alpha"],
                                  seed=int(config["source"]["seed"]))
    return rows_to_columns(storage_rows(config, params, progress=ctx.progress))


def storage_rows(config: Mapping, params, *, progress: bool = True) -> list[dict]:
    """Pack the model at every (scheme, granularity, bits) of ``config``; one row each.

    Every file is written to a temporary folder (``packed_bytes`` is its size on disk), read
    back and checked bit for bit against :func:`~paper_repro.core.quantize.quantize_tree`'s output
    (``exact``). Rows: the :func:`sizes` fields plus scheme, granularity, bits, ``mean_r``
    (size-weighted correlation of the quantized kernels), ``code_entropy_bits``,
    ``zlib_bytes`` / ``zlib_ratio`` (compression on top, reported apart); one row per code
    ``coding`` (``"fixed"``: bit-packed, ``"ans"``: entropy-coded).
    """
    from paper_repro.core import quantize

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        grid = list(itertools.product(config["schemes"], config["granularities"],
                                      config["bits"]))
        bar = tqdm(total=len(grid) * len(config["codings"]), desc="storage: pack + verify",
                   unit="file", disable=not progress)
        for scheme, gran, bits in grid:
            new, report = quantize.quantize_tree(
                params, select=config["select"], scheme=scheme, bits=int(bits),
                fit=config["fit"], granularity=gran, method=config["method"])
            for coding in config["codings"]:
                rows.append(_pack_row(params, new, report, config, scheme, gran, int(bits),
                                      coding, Path(tmp)))
                bar.update()
        bar.close()
    return rows


def _pack_row(params, new, report, config, scheme, gran, bits, coding, tmp: Path) -> dict:
    """Pack one quantized tree, measure the file, read it back and compare bit for bit."""
    meta = {k: config[k] for k in ("model", "alpha", "fit", "select", "method")}
    meta.update(scheme=scheme, granularity=gran, bits=int(bits))
    packed = pack_tree(params, report, meta=meta, coding=coding,
                       symmetric_codebook=config["symmetric_codebook"])
    f = tmp / f"{scheme}_{gran}_{bits}_{coding}{SUFFIX}"
    s = save_packed(f, packed)
    loaded, _ = load_packed(f)
    exact = trees_equal(loaded, {k: {v: np.asarray(a) for v, a in d.items()}
                                 for k, d in new.items()})
    n_q = sum(r["size"] for r in report)
    z = zlib_bytes(packed)
    row = {
        "scheme": scheme, "granularity": gran, "bits": int(bits), "coding": coding, **s,
        "disk_bytes": f.stat().st_size, "exact": bool(exact),
        "mean_r": sum(r["r"] * r["size"] for r in report) / n_q,
        "code_entropy_bits": code_entropy_bits(packed),
        "zlib_bytes": z, "zlib_ratio": s["float_bytes"] / z,
    }
    f.unlink()
    return row


def rows_to_columns(rows: Sequence[Mapping]) -> dict[str, np.ndarray]:
    """Rows (dicts with the same keys) -> ``{column: array}`` (for ``results.run_or_load``)."""
    return {k: np.asarray([r[k] for r in rows]) for k in rows[0]}


def columns_to_rows(data: Mapping[str, np.ndarray]) -> list[dict]:
    """Inverse of :func:`rows_to_columns` with plain Python scalars."""
    keys = list(data)
    n = len(data[keys[0]])
    return [{k: np.asarray(data[k])[i].item() for k in keys} for i in range(n)]


def ratio_table(rows: Sequence[Mapping]) -> list[dict]:
    """One row per bits: ``ratio`` per ``scheme/granularity`` and the ideal ``32 / bits``."""
    out: dict[int, dict] = {}
    for r in rows:
        d = out.setdefault(int(r["bits"]), {"bits": int(r["bits"]),
                                            "ideal 32/b": round(32 / int(r["bits"]), 3)})
        coding = "" if r.get("coding", "fixed") == "fixed" else f" {r['coding']}"
        d[f"{r['scheme']}/{r['granularity']}{coding}"] = round(float(r["ratio"]), 3)
    return [out[b] for b in sorted(out)]


def _plot(data, config):
    from paper_repro.experiments import plot_storage

    return plot_storage.plot_storage(data, config)


_COLS = ("scheme", "granularity", "bits", "ratio", "packed_bytes", "codes_bytes",
         "codebook_bytes", "float_kept_bytes", "header_bytes", "exact", "mean_r",
         "code_entropy_bits", "zlib_ratio")

register(Experiment(
    name="storage",
    title="bit-packed MobileNet 0.75 files: compression vs bits, scheme and granularity",
    config=default_config,
    compute=compute,
    plots={"storage": _plot},
    tables={"storage.csv": lambda d, c: [{k: r[k] for k in r if k != "seconds"}
                                         for r in columns_to_rows(d)],
            "ratios.csv": lambda d, c: ratio_table(columns_to_rows(d))},
    inputs=("mobilenet-0.75-keras",),
    smoke_inputs=(),
    notebook="storage", runtime="about 1.5 min full (2 cores), 30 s smoke",
))
