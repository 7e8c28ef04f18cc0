"""Data-free repairs as declared experiments (docs/theory.md, section 6).

- ``datafree/digits``: the repair ladder on the embedded digits CNN at 4, 3 and 2 bits.
- ``datafree/mobilenet_0.75_val1300``: the papers' recipe, then the repairs, on the real
  MobileNet 0.75 and the 1300-image validation sample.

Rows are kept in a resumable ``sweep.csv``; the arrays are the rows (see
:mod:`paper_repro.experiments.sweeps`).
"""

from __future__ import annotations

from paper_repro import results as R
from paper_repro.experiments.base import Context, Experiment, register
from paper_repro.experiments.sweeps import arrays_rows, mobilenet_task, rows_arrays


def _ordered(rows, configs):
    order = {c.label(): i for i, c in enumerate(configs)}
    rows = sorted(rows, key=lambda r: -1 if r.get("label") == "float" else
                  order.get(r.get("label"), len(order)))
    return [r for r in rows if r.get("label") == "float" or r.get("label") in order]


def digits_configs(smoke: bool) -> list:
    from paper_repro.feedforward import repairs

    return repairs.repair_configs(bits=(3,) if smoke else (4, 3, 2))


def mobilenet_configs(smoke: bool) -> list:
    from paper_repro.feedforward import repairs

    if smoke:
        return repairs.headline_configs()[:2]
    return repairs.paper_recipe_configs() + repairs.headline_configs()


def _compute(task_fn, configs_fn):
    def compute(config, ctx: Context):
        from paper_repro.feedforward import sweep as E

        configs = configs_fn(ctx.smoke)
        task = task_fn(ctx)
        rows = E.run_sweep(task, configs, R.ResultsTable(ctx.dir / "sweep.csv"),
                           limit=config.get("limit"), progress=ctx.progress)
        return rows_arrays(_ordered(rows, configs))
    return compute


def _digits_task(ctx):
    from paper_repro.feedforward import sweep as E

    return E.digits_task()


def _plot(title):
    def plot(data, config):
        from paper_repro.experiments import plot_datafree

        return plot_datafree.plot_datafree(arrays_rows(data), title=title)
    return plot


def _md(data, config):
    from paper_repro.feedforward import repairs

    return repairs.markdown_table(arrays_rows(data))


register(Experiment(
    name="datafree/digits",
    title="data-free repairs on the digits CNN: bias correction, mean-preserving rounding, "
          "mixed widths",
    config=lambda smoke: {"model": "digits_cnn",
                          "configs": [c.key() for c in digits_configs(smoke)]},
    compute=_compute(_digits_task, digits_configs),
    plots={"top1": _plot("digits CNN: data-free repairs")},
    tables={"table.csv": lambda d, c: arrays_rows(d), "table.md": _md},
    notebook="datafree", runtime="about 2 min, 20 s smoke",
))
register(Experiment(
    name="datafree/mobilenet_0.75_val1300",
    title="data-free repairs on MobileNet 0.75, 1300 real validation images",
    config=lambda smoke: {"model": "mobilenet", "alpha": 0.75, "policy": "crop",
                          "limit": 100 if smoke else None,
                          "configs": [c.key() for c in mobilenet_configs(smoke)]},
    compute=_compute(lambda ctx: mobilenet_task(ctx, progress=ctx.progress), mobilenet_configs),
    plots={"top1": _plot("MobileNet 0.75, 1300 images: data-free repairs")},
    tables={"table.csv": lambda d, c: arrays_rows(d), "table.md": _md},
    inputs=("mobilenet-0.75-keras", "imagenet-val-1300"),
    notebook="datafree", runtime="about 15 min (2 cores); resumable",
))
