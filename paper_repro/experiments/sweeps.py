"""Act 2 sweeps as declared experiments: the papers' recipe (levels x fit x granularity x bits).

- ``digits``: the embedded digits CNN (no download), every scheme, fit and granularity at
  2..8 bits -> ``results/digits/``.
- ``imagenet/mobilenet_0.75_val1300``: the real Keras MobileNet 0.75 on the 1300-image
  ILSVRC-2012 validation sample -> ``results/imagenet/mobilenet_0.75_val1300/``.

A sweep keeps one row per finished configuration in ``sweep.csv`` (resumable: a rerun skips
finished rows); its arrays are the rows themselves, so tables and figures are redrawn from
``data.npz`` on any machine, with or without the real data.
"""

from __future__ import annotations

import json

import numpy as np

from paper_repro import results as R
from paper_repro.experiments.base import Context, Experiment, register


def rows_arrays(rows: list[dict]) -> dict[str, np.ndarray]:
    """Rows -> ``{"rows_json": str array}`` (exact, any keys)."""
    return {"rows_json": np.array([json.dumps(r, sort_keys=True, default=float) for r in rows])}


def arrays_rows(data) -> list[dict]:
    """Inverse of :func:`rows_arrays`."""
    return [json.loads(str(s)) for s in data["rows_json"]]


def sweep_to_results(task, configs, name: str, *, limit=None, per_class=None, progress=True,
                     paper_top5=None, title=None) -> list[dict]:
    """Run (or resume) a sweep of ``configs`` on ``task``; write ``results/<name>/`` tables
    and figure (for user-configured data, e.g. the paper models on full ImageNet)."""
    from paper_repro.experiments import plot_imagenet as P
    from paper_repro.feedforward import sweep as E

    d = R.results_dir(name)
    rows = E.run_sweep(task, configs, R.ResultsTable(d / "sweep.csv"), limit=limit,
                       per_class=per_class, progress=progress)
    rows = E.refresh_compression(task.params, rows)
    R.write_csv(d / "table.csv", rows)
    R.write_if_changed(d / "table.md", E.markdown_table(rows, model=task.info.get("model")))
    needed = E.bits_needed(rows, within=1.0)
    if needed:
        R.write_csv(d / "bits_needed.csv", needed)
    R.save_figure(P.plot_sweep(rows, title=title or task.name, paper_top5=paper_top5), name,
                  stem="accuracy_vs_bits")
    R.write_meta(d, {"task": task.name, **task.info, "configs": [c.key() for c in configs],
                     "limit": limit, "per_class": per_class}, n_rows=len(rows))
    return rows


def _grid(smoke: bool) -> dict:
    if smoke:
        return dict(bits=[3, 5], schemes=["linear", "exponential"], fits=["corr"],
                    granularities=["tensor"], lloyd_max=False)
    return dict(bits=list(range(2, 9)), schemes=["linear", "exponential"],
                fits=["max", "corr"], granularities=["tensor", "channel"], lloyd_max=True)


def _configs(config: dict):
    from paper_repro.feedforward import sweep as E

    g = config["grid"]
    return E.sweep_configs(bits=g["bits"], schemes=tuple(g["schemes"]), fits=tuple(g["fits"]),
                           granularities=tuple(g["granularities"]), lloyd_max=g["lloyd_max"])


def _run(task, config: dict, ctx: Context) -> dict[str, np.ndarray]:
    from paper_repro.feedforward import sweep as E

    rows = E.run_sweep(task, _configs(config), R.ResultsTable(ctx.dir / "sweep.csv"),
                       limit=config.get("limit"), progress=ctx.progress)
    return rows_arrays(E.refresh_compression(task.params, rows))


def _digits(config: dict, ctx: Context):
    from paper_repro.feedforward import sweep as E

    return _run(E.digits_task(), config, ctx)


def mobilenet_task(ctx: Context, *, progress: bool = True):
    """MobileNet 0.75 (the real Keras weights) on the 1300-image validation sample, crop 224."""
    from paper_repro.feedforward import sweep as E

    data = ctx.inputs["imagenet-val-1300"]
    return E.imagenet_task("mobilenet", alpha=0.75, weights=ctx.inputs["mobilenet-0.75-keras"],
                           data=data / "images", labels=data / "labels.txt", policy="crop",
                           progress=progress)


def _mobilenet(config: dict, ctx: Context):
    return _run(mobilenet_task(ctx, progress=ctx.progress), config, ctx)


def _table_md(model):
    def table(data, config):
        from paper_repro.feedforward import sweep as E

        return E.markdown_table(arrays_rows(data), model=model)
    return table


def _plot(title):
    def plot(data, config):
        from paper_repro.experiments import plot_imagenet as P

        return P.plot_sweep(arrays_rows(data), title=title)
    return plot


def _bits_needed(data, config):
    from paper_repro.feedforward import sweep as E

    return E.bits_needed(arrays_rows(data), within=1.0)


register(Experiment(
    name="digits",
    title="the papers' recipe on the embedded digits CNN: top-1 vs bits",
    config=lambda smoke: {"model": "digits_cnn", "grid": _grid(smoke)},
    compute=_digits,
    plots={"accuracy_vs_bits": _plot("digits CNN (sklearn digits, 449 held-out images)")},
    tables={"table.csv": lambda d, c: arrays_rows(d), "table.md": _table_md("digits_cnn"),
            "bits_needed.csv": _bits_needed},
    notebook="imagenet", runtime="about 1 min full, 20 s smoke",
))
register(Experiment(
    name="imagenet/mobilenet_0.75_val1300",
    title="the papers' recipe on MobileNet 0.75, 1300 real validation images",
    config=lambda smoke: {"model": "mobilenet", "alpha": 0.75, "policy": "crop",
                          "grid": _grid(smoke), "limit": 100 if smoke else None},
    compute=_mobilenet,
    plots={"accuracy_vs_bits": _plot("MobileNet 0.75, 1300 real validation images")},
    tables={"table.csv": lambda d, c: arrays_rows(d), "table.md": _table_md("mobilenet"),
            "bits_needed.csv": _bits_needed},
    inputs=("mobilenet-0.75-keras", "imagenet-val-1300"),
    notebook="imagenet", runtime="about 11 min for 70 configurations (2 cores); resumable",
))
