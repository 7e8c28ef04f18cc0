"""Data-free repairs as declared experiments (docs/theory.md, section 6).

- ``datafree/digits``: the repair ladder on the embedded digits CNN at 4, 3 and 2 bits.
- ``datafree/mobilenet_0.75_val1300``: the papers' recipe, then the repairs, on the real
  MobileNet 0.75 and the 1300-image validation sample.

Rows are kept in a resumable ``sweep.csv``; the arrays are the rows (see
:mod:`paper_repro.experiments.sweeps`).
"""

from __future__ import annotations

from collections.abc import Sequence

from paper_repro import results as R
from paper_repro.experiments.base import Context, Experiment, register
from paper_repro.experiments.sweeps import arrays_rows, mobilenet_task, rows_arrays


def _ordered(rows, configs):
    order = {c.label(): i for i, c in enumerate(configs)}
    rows = sorted(rows, key=lambda r: -1 if r.get("label") == "float" else
                  order.get(r.get("label"), len(order)))
    return [r for r in rows if r.get("label") == "float" or r.get("label") in order]


def repair_configs(*, bits: Sequence[int] = (5, 4), schemes: Sequence[str] = ("linear",
                                                                                "exponential"),
                   granularity: str = "channel", gain: bool = True,
                   mixed: bool = True) -> list:
    """The ladder of repairs per scheme and width: plain, +bias correction, +mean-preserving,
    +both, +fold/equalize, and mixed widths (``avg_bits = bits``, from 3 bits) with both."""
    from paper_repro.feedforward.sweep import QuantConfig

    out = []
    for b in bits:
        for s in schemes:
            base = dict(scheme=s, fit="corr", bits=b, granularity=granularity, gain=gain)
            out += [QuantConfig(**base), QuantConfig(**base, bias_correction=True),
                    QuantConfig(**base, mean_preserving=True),
                    QuantConfig(**base, mean_preserving=True, bias_correction=True),
                    QuantConfig(**base, fold_bn=True, equalize=True, mean_preserving=True,
                                bias_correction=True)]
            if mixed and b >= 3:  # at 2 bits the codebook scales alone exceed small budgets
                out.append(QuantConfig(**base, avg_bits=float(b), mean_preserving=True,
                                       bias_correction=True))
    return out


def paper_recipe_configs() -> list:
    """The papers' recipe before any repair (least-squares gain, batch norm in float): linear
    per tensor with top = max at 8 / 6 / 5 bits, exponential per tensor at 5 (max-anchored and
    correlation-fitted), correlation-fitted per channel (linear 5 / 6, exponential 5), and the
    same per-channel ones with bias correction."""
    from paper_repro.feedforward.sweep import QuantConfig as QC

    return ([QC(scheme="linear", fit="max", bits=b, gain=True) for b in (8, 6, 5)]
            + [QC(scheme="exponential", fit=f, bits=5, gain=True) for f in ("max", "corr")]
            + [QC(scheme=s, fit="corr", bits=b, granularity="channel", gain=True)
               for s, b in (("linear", 5), ("linear", 6), ("exponential", 5))]
            + [QC(scheme=s, fit="corr", bits=b, granularity="channel", gain=True,
                  bias_correction=True)
               for s, b in (("linear", 5), ("exponential", 5), ("linear", 6))])


def headline_configs() -> list:
    """The repaired configurations reported against the 5- and 4-bit targets, the named
    ``datafree`` recipe (:data:`paper_repro.feedforward.repairs.RECIPES`) among them."""
    from paper_repro.feedforward import repairs
    from paper_repro.feedforward.sweep import QuantConfig as QC

    lin5 = dict(scheme="linear", fit="corr", bits=5, granularity="channel", gain=True)
    lin4 = {**lin5, "bits": 4}
    exp4 = {**lin4, "scheme": "exponential"}
    both = dict(mean_preserving=True, bias_correction=True)
    recipe = repairs.RECIPES["datafree"]
    return [QC(**lin5, **both), QC(**lin5, avg_bits=5.0, **both),
            QC(**lin4, **both), QC(**lin4, avg_bits=4.0, **both),
            QC(**exp4, **both), recipe.config(avg_bits=5.0), recipe.config(avg_bits=4.0),
            QC(**lin5, mean_preserving=True),
            QC(**lin5, fold_bn=True, equalize=True, **both),
            QC(**lin4, bias_correction=True)]


def digits_configs(smoke: bool) -> list:
    return repair_configs(bits=(3,) if smoke else (4, 3, 2))


def mobilenet_configs(smoke: bool) -> list:
    if smoke:
        return headline_configs()[:2]
    return paper_recipe_configs() + headline_configs()


def markdown_table(rows: list[dict]) -> str:
    """Markdown: configuration, top-1 / top-5, drop vs float, code bits per weight and the
    compression ratio with codebooks stored as levels and as parameters."""
    lines = ["| configuration | top-1 | top-5 | drop top-1 [95% CI] | code bits/weight | "
             "compression (levels / params) |", "|" + "---|" * 6]
    for r in rows:
        if r.get("scheme") in (None, "", "None"):
            lines.append(f"| float | {float(r['top1']):.2f} | {float(r['top5']):.2f} | | 32 | "
                         "1.00 |")
            continue
        drop = (f"{float(r['top1_drop']):+.2f} [{float(r['top1_drop_low']):+.2f}, "
                f"{float(r['top1_drop_high']):+.2f}]" if "top1_drop" in r else "")
        lines.append(f"| {r['label']} | {float(r['top1']):.2f} | {float(r['top5']):.2f} | "
                     f"{drop} | {float(r.get('code_bits_per_weight', 0)):.2f} | "
                     f"{float(r['compression_ratio']):.2f} / "
                     f"{float(r.get('compression_ratio_param_codebooks', 0)):.2f} |")
    return "\n".join(lines) + "\n"


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
    return markdown_table(arrays_rows(data))


register(Experiment(
    name="datafree/digits",
    title="data-free repairs on the digits CNN: bias correction, mean-preserving rounding, "
          "mixed widths",
    config=lambda smoke: {"model": "digits_cnn",
                          "configs": [c.key() for c in digits_configs(smoke)]},
    compute=_compute(_digits_task, digits_configs),
    plots={"top1": _plot("digits CNN: data-free repairs")},
    tables={"table.csv": lambda d, c: arrays_rows(d), "table.md": _md},
    notebook="datafree", runtime="about 20 s full, 10 s smoke (2 cores)",
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
    notebook="datafree", runtime="about 5 min (2 cores); resumable",
))
