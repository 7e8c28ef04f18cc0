"""The named data-free recipes on every network at hand, with the sizes of real files.

``datafree/recipes``: for each network (the embedded digits CNN; MobileNet 0.75 from its
Keras ``.h5``; ShuffleNetV2 x0.5 from its ONNX file, batch norm folded) and each average width
(5, 4, 3 bits), the two recipes of :data:`paper_repro.feedforward.repairs.RECIPES`:

- ``datafree``: correlation-fitted levels per output channel, a width and a level family
  (exponential or Lloyd-Max) per layer for the budget, mean-preserving codes, analytic bias
  correction on the traced graph;
- ``datafree-opt``: the same levels and widths, the rounding optimized on synthetic images
  (:mod:`paper_repro.feedforward.calibration`);

and both again with one family for every layer - exponential levels only, linear levels
only (everything else equal) - to see what the choice of family per layer adds and which
family wins once the rounding is optimized. Each row also carries the predicted
output noise ``sum over layers (1 - r^2) / r^2`` and the mean ``r``, to check whether
correlation still ranks the drops after the repairs.

Per row: top-1 / top-5, the drop against float on the same images with its 95 % paired
bootstrap interval and McNemar's p, and the size of the packed file the configuration gives
(:func:`paper_repro.core.storage.packed_nbytes`: the bytes :func:`~paper_repro.core.storage.
pack_tree` writes, header and codebooks included) with fixed-width codes, with ANS-coded
codes, and ANS-coded in the compact form of ``pack --compact`` (batch norms folded into the
codebooks, constants as one number, compressed header), beside the codes' empirical entropy
(the limit an entropy coder can reach). No real
image touches the quantization: the images are only used to measure accuracy.

``datafree/allocation``: each layer's width and level family as the recipes choose them
(weights only, no images). ``datafree/coded_budget``: ``datafree-opt`` with its average
counted in fixed-width bits (as above) and in entropy-coded bits (``--coded-budget``), each
against the size of its compact entropy-coded file: which count buys more accuracy per byte
of the file that is actually stored.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from paper_repro.experiments.base import Context, Experiment, register
from paper_repro.experiments.sweeps import arrays_rows, rows_arrays

RECIPE_NAMES = ("datafree", "datafree-opt")
MODELS = ("digits_cnn", "mobilenet_0.75", "shufflenet_v2_x0.5")
# the packed files sized per row: fixed-width codes, ANS codes, ANS + `pack --compact`
FILES = ("fixed", "ans", "compact")


def _packed_format() -> int:
    """The packed-file format the compact sizes are of (a new format re-sizes them)."""
    from paper_repro.core import storage

    return storage.FORMAT_VERSION


def _recipe_levels() -> dict:
    """Each recipe's level families (a change of them recomputes the table)."""
    from paper_repro.feedforward import repairs

    return {name: levels_of(repairs.RECIPES[name].config(avg_bits=4.0))
            for name in RECIPE_NAMES}


def levels_of(cfg) -> str:
    """The level families a configuration chooses among, ``+``-joined
    (``exponential+lloyd_max``)."""
    return "+".join(dict.fromkeys((cfg.scheme, *cfg.families)))


def _config(smoke: bool) -> dict:
    # "levels": "recipe" is the recipe as named (a family per layer); "exponential" and
    # "linear" put one family on every layer, everything else equal
    if smoke:
        return {"models": ["digits_cnn"], "recipes": list(RECIPE_NAMES), "avg_bits": [3.0],
                "levels": ["recipe"], "recipe_levels": _recipe_levels(),
                "files": list(FILES), "packed_format": _packed_format()}
    return {"models": list(MODELS), "recipes": list(RECIPE_NAMES), "avg_bits": [5.0, 4.0, 3.0],
            "policy": "crop", "levels": ["recipe", "exponential", "linear"],
            "recipe_levels": _recipe_levels(), "files": list(FILES),
            "packed_format": _packed_format()}


def _task(model: str, ctx: Context):
    from paper_repro.feedforward import onnx_task
    from paper_repro.feedforward import sweep as E

    if model == "digits_cnn":
        return E.digits_task()
    data = ctx.inputs["imagenet-val-1300"]
    if model == "mobilenet_0.75":
        return E.imagenet_task("mobilenet", alpha=0.75,
                               weights=ctx.inputs["mobilenet-0.75-keras"],
                               data=data / "images", labels=data / "labels.txt",
                               policy="crop", progress=ctx.progress)
    return onnx_task.onnx_task(ctx.inputs["shufflenet-v2-x0.5-onnx"], preprocess="torch",
                               data=data / "images", labels=data / "labels.txt",
                               policy="crop", attach_graph=True, progress=ctx.progress)


def _recipe_task(task, recipe, *, progress: bool):
    """The task whose parameters carry the recipe's optimizer (a copy of the tree, so that the
    plain recipe on ``task`` stays plain); the traced graph is shared."""
    from paper_repro.feedforward import repairs

    wiring = repairs.attach_task(task)
    if recipe.optimize is None:
        return task
    params = dict(task.params)  # same leaves, another tree identity
    repairs.attach(params, wiring)
    repairs.attach_optimizer(params, recipe.opt_config(), progress=progress)
    return dataclasses.replace(task, params=params)


def _scores(res) -> dict:
    """Top-1 / top-5 in percent with their Wilson intervals (no wall time: rows are data)."""
    return {k: v for k, v in res.as_dict().items() if k != "wall_s"}


def recipe_row(task, recipe_name: str, avg_bits: float, float_res, *, progress: bool,
               model: str | None = None, scheme: str | None = None,
               coded_budget: bool = False) -> dict:
    """Quantize ``task``'s network with a named recipe at ``avg_bits`` (``scheme``: one level
    family for every layer instead of the recipe's choice per layer; ``coded_budget``: the
    average counts entropy-coded bits, ``--coded-budget``), evaluate it against ``float_res``
    and size its packed files (fixed-width codes, ANS-coded codes, and ANS-coded as
    ``pack --compact`` writes)."""
    from paper_repro.core import entropy, storage
    from paper_repro.feedforward import repairs
    from paper_repro.feedforward import sweep as E

    recipe = repairs.RECIPES[recipe_name]
    t = _recipe_task(task, recipe, progress=progress)
    cfg = recipe.config(avg_bits=avg_bits)
    if scheme is not None:
        cfg = dataclasses.replace(cfg, scheme=scheme, families=())
    if coded_budget:
        cfg = dataclasses.replace(cfg, coded_budget=True)
    qparams, report = E.quantize_params(t.params, cfg, channel_axis=t.channel_axis,
                                        progress=progress)
    res = E.evaluate_params(t, qparams, progress=False)
    row = {"model": model or task.info.get("model", task.name), "recipe": recipe_name,
           "avg_bits": float(avg_bits), "scheme": cfg.scheme, "levels": levels_of(cfg),
           "switches": recipe.flags(),
           **_scores(res)}
    row.update(E.paired_drops(float_res, res))
    n_q = sum(r["size"] for r in report)
    row["code_entropy_bits"] = sum(r["size"] * entropy.entropy_bits(r["codes"], r["n_levels"])
                                   for r in report) / n_q
    row.update({k: E.correlation_summary(report)[k] for k in ("r_mean", "noise_sum")})
    for coding in ("fixed", "ans"):
        sizes = storage.packed_nbytes(qparams, report, coding=coding)
        row[f"{coding}_bytes"] = int(sizes["packed_bytes"])
        row[f"{coding}_ratio"] = float(sizes["ratio"])
        row[f"{coding}_code_bits_per_weight"] = float(sizes["code_bits_per_weight"])
    row["float_bytes"] = int(sizes["float_bytes"])
    # what `pack --entropy-coding --compact` writes: batch norms folded into the codebooks,
    # constant leaves as one number, compressed header (format 4); the same network
    folded, frep, _ = repairs.fold_into_codebooks(repairs.attach_task(task).graph, qparams,
                                                  report)
    sizes = storage.packed_nbytes(folded, frep, coding="ans", fill=True)
    row["compact_bytes"] = int(sizes["packed_bytes"])
    row["compact_ratio"] = float(sizes["ratio"])
    return row


def _float_baseline(model: str, ctx: Context, **tags):
    """``(task, float result, float row)`` of a network: the row every table starts with
    (``tags``: the table's own columns, empty for float)."""
    from paper_repro.feedforward import sweep as E

    task = _task(model, ctx)
    float_res = E.evaluate_params(task, task.params, progress=ctx.progress)
    return task, float_res, {"model": model, "recipe": "float", **tags, "avg_bits": 32.0,
                             **_scores(float_res)}


def _compute(config: dict, ctx: Context) -> dict:
    rows = []
    for model in config["models"]:
        task, float_res, float_row = _float_baseline(model, ctx)
        rows.append(float_row)
        for levels in config["levels"]:
            for recipe in config["recipes"]:
                for b in config["avg_bits"]:
                    rows.append(recipe_row(task, recipe, b, float_res, progress=ctx.progress,
                                           model=model,
                                           scheme=None if levels == "recipe" else levels))
    return rows_arrays(rows)


def markdown_table(rows: list[dict]) -> str:
    """One line per network, recipe and average width."""
    out = ["| network | recipe | levels | avg bits | top-1 | drop [95% CI] | McNemar p | "
           "file ratio, fixed / ANS / ANS + compact | ANS bits per weight (entropy) | "
           "predicted noise |",
           "|" + "---|" * 10]
    for r in rows:
        if r["recipe"] == "float":
            out.append(f"| {r['model']} | float | | 32 | {r['top1']:.2f} | | | 1 | | |")
            continue
        out.append(
            f"| {r['model']} | {r['recipe']} | {r.get('levels', r.get('scheme'))} | "
            f"{r['avg_bits']:g} | {r['top1']:.2f} | "
            f"{r['top1_drop']:+.2f} [{r['top1_drop_low']:+.2f}, {r['top1_drop_high']:+.2f}] | "
            f"{r['top1_mcnemar_p']:.2g} | {r['fixed_ratio']:.2f}x / {r['ans_ratio']:.2f}x / "
            f"{r['compact_ratio']:.2f}x | "
            f"{r['ans_code_bits_per_weight']:.2f} ({r['code_entropy_bits']:.2f}) | "
            f"{r['noise_sum']:.3g} |")
    return "\n".join(out) + "\n"


def drop_bars(rows: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """The rows' top-1 drops and their asymmetric 95 % interval bars, for ``errorbar``."""
    y = np.array([r["top1_drop"] for r in rows])
    err = np.array([[r["top1_drop"] - r["top1_drop_low"] for r in rows],
                    [r["top1_drop_high"] - r["top1_drop"] for r in rows]])
    return y, err


def _network_panels(models: list[str]):
    """``(fig, axes)``: one panel per network, side by side (``axes[0][i]``)."""
    import matplotlib.pyplot as plt

    return plt.subplots(1, len(models), figsize=(4.2 * len(models), 3.6), squeeze=False)


def _label_panel(ax, model: str, xlabel: str) -> None:
    ax.set_xlabel(xlabel)
    ax.set_title(model, fontsize=9)
    ax.grid(alpha=0.3)


def _finish_panels(fig, axes) -> None:
    """The drop axis labelled on the first panel, the legend on the last."""
    axes[0][0].set_ylabel("top-1 drop vs float (points), 95 % CI")
    axes[0][-1].legend(fontsize=7, loc="upper left")
    fig.tight_layout()


def plot_recipes(rows: list[dict]):
    """Top-1 drop against the real file's compression ratio, one panel per network: filled
    markers fixed-width codes, hollow markers the same models ANS-coded; each average width
    labelled once, above its fixed-width points. The
    named recipes only (a level family per layer); the one-family variants are in the
    table."""
    models = list(dict.fromkeys(r["model"] for r in rows))
    named = _recipe_levels()  # the recipes as named (a level family per layer)
    fig, axes = _network_panels(models)
    colors = {"datafree": "C0", "datafree-opt": "C3"}
    for ax, model in zip(axes[0], models, strict=True):
        q = [r for r in rows if r["model"] == model and r["recipe"] != "float"
             and r.get("levels") == named[r["recipe"]]]
        for name in RECIPE_NAMES:
            rr = sorted((r for r in q if r["recipe"] == name), key=lambda r: r["avg_bits"])
            if not rr:
                continue
            y, err = drop_bars(rr)
            for coding, face in (("fixed", colors[name]), ("ans", "white")):
                x = np.array([r[f"{coding}_ratio"] for r in rr])
                ax.errorbar(x, y, yerr=err, color=colors[name], mfc=face, marker="o",
                            capsize=3, lw=1, ls="-" if coding == "fixed" else ":",
                            label=f"{name}, {'fixed-width' if coding == 'fixed' else 'ANS'}")
        # one width label per average width, above the highest of its fixed-width points
        # (both recipes give files of nearly the same size: one label, not two on top)
        for b in sorted({r["avg_bits"] for r in q}):
            at = [r for r in q if r["avg_bits"] == b]
            top = max(at, key=lambda r: r["top1_drop_high"])
            ax.annotate(f"{b:g} bits", (top["fixed_ratio"], top["top1_drop_high"]),
                        textcoords="offset points", xytext=(0, 4), fontsize=7, ha="center")
        ax.axhline(0, color="k", lw=0.8)
        lo, hi = ax.get_ylim()
        ax.set_ylim(lo, hi + 0.08 * (hi - lo))  # room for the width labels
        _label_panel(ax, model, "file size ratio, float32 / packed file")
    _finish_panels(fig, axes)
    return fig


register(Experiment(
    name="datafree/recipes",
    title="the named data-free recipes (datafree, datafree-opt) at 5 / 4 / 3 bits on every "
          "network, with real file sizes",
    config=_config,
    compute=_compute,
    plots={"recipes": lambda data, config: plot_recipes(arrays_rows(data))},
    tables={"table.csv": lambda d, c: arrays_rows(d),
            "table.md": lambda d, c: markdown_table(arrays_rows(d))},
    inputs=("mobilenet-0.75-keras", "shufflenet-v2-x0.5-onnx", "imagenet-val-1300"),
    smoke_inputs=(),
    notebook="datafree",
    runtime="11 min measured with the synthetic images and 12 of the 18 optimized roundings "
            "of MobileNet cached (2 cores); each uncached MobileNet rounding adds about 2 min, "
            "its image synthesis about 10; 40 s smoke",
))


# --- Where the bits go: the recipe's width and level family per layer ----------------------------


def _allocation_config(smoke: bool) -> dict:
    base = {"recipe": "datafree", "recipe_levels": _recipe_levels()}
    if smoke:
        return {**base, "models": ["digits_cnn"], "avg_bits": [3.0]}
    return {**base, "models": list(MODELS), "avg_bits": [5.0, 4.0, 3.0]}


def _network(model: str, ctx: Context):
    """``(params, quantized kernel paths in network order, channel_axis)`` of ``model``: the
    weights alone (no images: the allocation needs none)."""
    import re

    from paper_repro.core import quantize as Q
    from paper_repro.feedforward import digits, models, onnx_task
    from paper_repro.feedforward import graph as G
    from paper_repro.feedforward import weights as W
    from paper_repro.feedforward.sweep import DEFAULT_SELECT

    axis = None
    if model == "digits_cnn":
        params = digits.load_or_train()
        graph = G.trace(digits.apply, params, (1, digits.INPUT_SIZE, digits.INPUT_SIZE, 1))
    elif model == "mobilenet_0.75":
        spec = models.get("mobilenet", 0.75)
        params = W.load(spec, ctx.inputs["mobilenet-0.75-keras"])
        graph = G.trace(models.make_apply(spec), params, (1, 224, 224, 3))
    else:
        m = onnx_task.load_model(ctx.inputs["shufflenet-v2-x0.5-onnx"])
        params, graph, axis = m.params, G.from_onnx(m), onnx_task.CHANNEL_AXIS
    chosen = {p for p, x in Q.tree_paths(params)
              if re.fullmatch(DEFAULT_SELECT, p) and np.ndim(x) > 0}
    order = [p for p in graph.kernel_paths() if p in chosen]
    return params, order + sorted(chosen - set(order)), axis


def _allocation_compute(config: dict, ctx: Context) -> dict:
    from paper_repro.feedforward import repairs

    cfg = repairs.RECIPES[config["recipe"]].config(avg_bits=4.0)
    fit = {"fit": cfg.fit, "granularity": cfg.granularity, "gain": cfg.gain,
           "rounding": cfg.rounding, "method": cfg.method}
    rows = []
    for model in config["models"]:
        params, paths, axis = _network(model, ctx)
        for b in config["avg_bits"]:
            chosen = repairs.choose_levels(params, paths, scheme=cfg.scheme,
                                           families=cfg.families, avg_bits=b,
                                           channel_axis=axis, progress=ctx.progress, **fit)
            for i, p in enumerate(paths):
                c = chosen[p]
                rows.append({"model": model, "avg_bits": float(b), "index": i, "path": p,
                             "size": c["size"], "scheme": c["scheme"], "bits": c["bits"],
                             "r": c["r"], "noise": c["noise"],
                             "storage_bits": c["storage_bits"]})
    return rows_arrays(rows)


def allocation_summary(rows: list[dict]) -> list[dict]:
    """Per network and average width: the layers (and share of the weights) on each level
    family, and the widths each family got."""
    out = []
    keys = dict.fromkeys((r["model"], float(r["avg_bits"])) for r in rows)
    for model, b in keys:
        rs = [r for r in rows if r["model"] == model and float(r["avg_bits"]) == b]
        total = sum(int(r["size"]) for r in rs)
        for fam in dict.fromkeys(r["scheme"] for r in rs):
            f = [r for r in rs if r["scheme"] == fam]
            widths = sorted({int(r["bits"]) for r in f})
            out.append({"model": model, "avg_bits": b, "levels": fam, "layers": len(f),
                        "of_layers": len(rs),
                        "weight_share": sum(int(r["size"]) for r in f) / total,
                        "widths": "/".join(map(str, widths))})
    return out


def allocation_markdown(rows: list[dict]) -> str:
    out = ["| network | avg bits | levels | layers | share of the weights | widths |",
           "|---|---|---|---|---|---|"]
    for s in allocation_summary(rows):
        out.append(f"| {s['model']} | {s['avg_bits']:g} | {s['levels']} | "
                   f"{s['layers']} of {s['of_layers']} | {100 * s['weight_share']:.1f} % | "
                   f"{s['widths']} |")
    return "\n".join(out) + "\n"


def plot_allocation(rows: list[dict]):
    """One panel per network (columns) and average width (rows): each layer's width as a bar
    in network order, coloured by its level family; the layer's size (weights, log scale) as a
    grey step line on the right axis. The large layers take few bits and Lloyd-Max levels."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    from paper_repro.experiments import style as S

    models = list(dict.fromkeys(r["model"] for r in rows))
    widths = sorted({float(r["avg_bits"]) for r in rows}, reverse=True)
    fig, axes = plt.subplots(len(widths), len(models), squeeze=False,
                             figsize=(4.6 * len(models), 2.3 * len(widths) + 0.6))
    families = list(dict.fromkeys(r["scheme"] for r in rows))
    for j, model in enumerate(models):
        for i, b in enumerate(widths):
            ax = axes[i][j]
            rs = sorted((r for r in rows if r["model"] == model and float(r["avg_bits"]) == b),
                        key=lambda r: int(r["index"]))
            x = np.array([int(r["index"]) for r in rs])
            ax.bar(x, [int(r["bits"]) for r in rs], width=0.8,
                   color=[S.scheme_color(r["scheme"]) for r in rs])
            ax.set_ylim(0, 8.5)
            ax.set_yticks([2, 4, 6, 8])
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(axis="y", alpha=0.3)
            tw = ax.twinx()
            tw.step(x, [int(r["size"]) for r in rs], where="mid", color="0.45", lw=0.9,
                    ls=(0, (3, 1)))
            tw.set_yscale("log")
            tw.tick_params(labelsize=7, colors="0.4")
            if j == len(models) - 1:
                tw.set_ylabel("weights in the layer", fontsize=7, color="0.4")
            if j == 0:
                ax.set_ylabel(f"bits, {b:g} on average", fontsize=8)
            if i == 0:
                ax.set_title(model, fontsize=9)
            if i == len(widths) - 1:
                ax.set_xlabel("layer, in network order")
    handles = [plt.Rectangle((0, 0), 1, 1, color=S.scheme_color(f)) for f in families]
    handles.append(plt.Line2D([], [], color="0.45", lw=0.9, ls=(0, (3, 1))))
    names = {"lloyd_max": "Lloyd-Max"}
    fig.legend(handles, [f"{names.get(f, f)} levels" for f in families]
               + ["layer size (right axis)"],
               loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return fig


register(Experiment(
    name="datafree/allocation",
    title="where the bits go: the datafree recipe's width and level family per layer at 5 / 4 "
          "/ 3 bits average",
    config=_allocation_config,
    compute=_allocation_compute,
    plots={"allocation": lambda data, config: plot_allocation(arrays_rows(data))},
    tables={"table.csv": lambda d, c: arrays_rows(d),
            "summary.md": lambda d, c: allocation_markdown(arrays_rows(d))},
    inputs=("mobilenet-0.75-keras", "shufflenet-v2-x0.5-onnx"),
    smoke_inputs=(),
    notebook="datafree",
    runtime="about 2 min (2 cores; no images needed); under a minute smoke",
))


# --- What the budget counts: fixed-width bits or entropy-coded bits ------------------------------


def _budget_config(smoke: bool) -> dict:
    base = {"recipe": "datafree-opt", "recipe_levels": _recipe_levels(),
            "budgets": ["fixed", "coded"], "packed_format": _packed_format()}
    if smoke:
        return {**base, "models": ["digits_cnn"], "avg_bits": [3.0]}
    return {**base, "models": list(MODELS), "avg_bits": [5.0, 4.0, 3.0], "policy": "crop"}


def _budget_compute(config: dict, ctx: Context) -> dict:
    rows = []
    for model in config["models"]:
        task, float_res, float_row = _float_baseline(model, ctx, budget="")
        rows.append(float_row)
        for budget in config["budgets"]:
            for b in config["avg_bits"]:
                row = recipe_row(task, config["recipe"], b, float_res, progress=ctx.progress,
                                 model=model, coded_budget=budget == "coded")
                rows.append({**row, "budget": budget})
    return rows_arrays(rows)


def budget_markdown(rows: list[dict]) -> str:
    """One line per network, budget and average width."""
    out = ["| network | budget counts | avg bits | top-1 | drop [95% CI] | McNemar p | "
           "file ratio, ANS / ANS + compact | ANS bits per weight | fixed-width file ratio |",
           "|" + "---|" * 9]
    for r in rows:
        if r["recipe"] == "float":
            out.append(f"| {r['model']} | float | 32 | {r['top1']:.2f} | | | 1 | | |")
            continue
        out.append(
            f"| {r['model']} | {r['budget']} bits | {r['avg_bits']:g} | {r['top1']:.2f} | "
            f"{r['top1_drop']:+.2f} [{r['top1_drop_low']:+.2f}, {r['top1_drop_high']:+.2f}] | "
            f"{r['top1_mcnemar_p']:.2g} | {r['ans_ratio']:.2f}x / {r['compact_ratio']:.2f}x | "
            f"{r['ans_code_bits_per_weight']:.2f} | {r['fixed_ratio']:.2f}x |")
    return "\n".join(out) + "\n"


def plot_budget(rows: list[dict], *, target_ratio: float = 8.0):
    """Top-1 drop against the compact entropy-coded file's ratio, one panel per network: the
    recipe with its average counted at fixed width (circles) and counted as entropy-coded
    bits (squares), each average labelled; the dashed line marks ``target_ratio``."""
    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = _network_panels(models)
    style = {"fixed": ("C3", "o", "fixed-width bits"), "coded": ("C2", "s", "entropy-coded bits")}
    for ax, model in zip(axes[0], models, strict=True):
        for budget, (color, marker, name) in style.items():
            rr = sorted((r for r in rows if r["model"] == model and r.get("budget") == budget),
                        key=lambda r: r["avg_bits"])
            if not rr:
                continue
            x = np.array([r["compact_ratio"] for r in rr])
            y, err = drop_bars(rr)
            ax.errorbar(x, y, yerr=err, color=color, marker=marker, capsize=3, lw=1,
                        label=f"average counts {name}")
            for r in rr:
                ax.annotate(f"{r['avg_bits']:g}", (r["compact_ratio"], r["top1_drop"]),
                            textcoords="offset points", xytext=(5, -9), fontsize=7,
                            color=color)
        ax.axhline(0, color="k", lw=0.8)
        ax.axvline(target_ratio, color="0.5", lw=0.8, ls="--")
        _label_panel(ax, model, "file size ratio, float32 / compact ANS file")
    _finish_panels(fig, axes)
    return fig


register(Experiment(
    name="datafree/coded_budget",
    title="what the average width counts: the datafree-opt recipe with its budget in "
          "fixed-width bits or in entropy-coded bits, against the real file size",
    config=_budget_config,
    compute=_budget_compute,
    plots={"coded_budget": lambda data, config: plot_budget(arrays_rows(data))},
    tables={"table.csv": lambda d, c: arrays_rows(d),
            "table.md": lambda d, c: budget_markdown(arrays_rows(d))},
    inputs=("mobilenet-0.75-keras", "shufflenet-v2-x0.5-onnx", "imagenet-val-1300"),
    smoke_inputs=(),
    notebook="datafree",
    runtime="10 min measured with the synthetic images and the fixed-budget roundings cached "
            "(2 cores): three new optimized roundings of MobileNet, about 2 min each; 30 s "
            "smoke",
))
