"""Explorer experiments: which levels fit which layer, and does r predict accuracy?

- ``explorer``: per-layer statistics of MobileNet 0.75's kernels and r for every scheme,
  fit, granularity and width, with two single-layer views (docs/theory.md, sections 2, 5).
- ``explorer/correlation_vs_accuracy``: network summaries of the per-layer r against the
  measured top-1 drop of every configuration of the MobileNet sweep (a committed result),
  the law fitted on them, and the data-free recipes of ``datafree/recipes`` (mixed widths,
  re-rounded or optimized codes, corrected biases) checked against that law out of sample.
- ``explorer/baselines``: the qwix library's per-channel integers beside ours.

Full size needs the real MobileNet 0.75 weights (and images for the baselines); the smoke run
explores synthetic layers into ``build/smoke-results/``.
"""

from __future__ import annotations

import json

import numpy as np

from paper_repro import results as R
from paper_repro.experiments.base import Context, Experiment, register
from paper_repro.experiments.sweeps import arrays_rows, rows_arrays

SWEEP = "imagenet/mobilenet_0.75_val1300"
RECIPES = "datafree/recipes"


def config(smoke: bool) -> dict:
    from paper_repro.feedforward import explorer as X

    return {
        "model": "synthetic" if smoke else "mobilenet_0.75", "seed": 0,
        "select": X.DEFAULT_SELECT, "layers": 4 if smoke else None,
        "schemes": ["linear", "exponential"] if smoke else ["linear", "exponential",
                                                              "lloyd_max"],
        "fits": ["corr"] if smoke else ["max", "corr"],
        "bits": [3, 4] if smoke else [2, 3, 4, 5, 6, 7, 8],
        "granularities": ["tensor", "channel"],
        "view": {"scheme": "exponential", "fit": "corr", "bits": 4, "granularity": "tensor"},
    }


def _view_arrays(view: dict, prefix: str) -> dict[str, np.ndarray]:
    meta = {k: view[k] for k in ("path", "r", "stats", "scheme", "fit", "bits", "granularity")}
    return {f"{prefix}/w": view["w"], f"{prefix}/w_hat": view["w_hat"],
            f"{prefix}/levels": view["levels"],
            f"{prefix}/meta_json": np.array(json.dumps(meta, sort_keys=True, default=float))}


def view_of(data, prefix: str) -> dict:
    """The single-layer view saved under ``prefix`` (see ``explorer.layer_view``)."""
    return {"w": data[f"{prefix}/w"], "w_hat": data[f"{prefix}/w_hat"],
            "levels": data[f"{prefix}/levels"], **json.loads(str(data[f"{prefix}/meta_json"]))}


def compute(cfg: dict, ctx: Context) -> dict[str, np.ndarray]:
    from paper_repro.feedforward import explorer as X

    if cfg["model"] == "synthetic":
        model = X.load_model("synthetic", seed=cfg["seed"])
    else:
        model = X.load_model("mobilenet", path=ctx.inputs["mobilenet-0.75-keras"], alpha=0.75)
    out = X.explore(model, cfg)
    stats = X.arrays_to_rows(out, "stats/")
    heavy = max(stats, key=lambda s: s["kurtosis"])["index"]
    out.update(_view_arrays(X.layer_view(model.params, 1, **cfg["view"]), "view"))
    out.update(_view_arrays(X.layer_view(model.params, heavy, **cfg["view"]), "view_heavy"))
    return out


def _rows(data):
    from paper_repro.feedforward import explorer as X

    stats, r_rows = X.arrays_to_rows(data, "stats/"), X.arrays_to_rows(data, "r/")
    return stats, r_rows, X.network_summary(r_rows)


def _plots() -> dict:
    from paper_repro.experiments import plot_explorer as P

    def layer(prefix, label):
        return lambda d, c: P.plot_layer(view_of(d, prefix),
                                         title=f"{c['model']}: {label or view_of(d, prefix)['path']}")

    return {
        "layer_density_levels": layer("view", ""),
        "layer_density_levels_heavy": layer("view_heavy", "heaviest tails"),
        "r_vs_bits": lambda d, c: P.plot_r_vs_bits(_rows(d)[1], _rows(d)[2],
                                                   layer=view_of(d, "view")["path"],
                                                   title=c["model"]),
        "r_per_layer": lambda d, c: P.plot_r_per_layer(_rows(d)[1], _rows(d)[0], bits=4,
                                                       title=f"{c['model']}, 4 bits"),
        "layer_stats": lambda d, c: P.plot_layer_stats(_rows(d)[0], _rows(d)[1], bits=4),
        "tensor_vs_channel": lambda d, c: P.plot_tensor_vs_channel(_rows(d)[1], _rows(d)[0],
                                                                   bits=4),
    }


class _LazyPlots(dict):
    """Plot table resolved on first use (keeps matplotlib out of module import)."""

    def _fill(self):
        if not super().__len__():
            self.update(_plots())

    def items(self):
        self._fill()
        return super().items()

    def __iter__(self):
        self._fill()
        return super().__iter__()

    def __len__(self):
        self._fill()
        return super().__len__()


register(Experiment(
    name="explorer",
    title="per-layer weight statistics and r for every scheme, fit, granularity, width",
    config=config, compute=compute, plots=_LazyPlots(),
    tables={"layer_stats.csv": lambda d, c: _rows(d)[0],
            "r_per_layer.csv": lambda d, c: _rows(d)[1],
            "network_summary.csv": lambda d, c: _rows(d)[2]},
    inputs=("mobilenet-0.75-keras",), smoke_inputs=(),
    notebook="explorer", runtime="about 1.5 min full (2 cores), 20 s smoke",
))


# --- does correlation predict accuracy? ---------------------------------------------------


def cva_config(smoke: bool) -> dict:
    if smoke:
        return {"source": "digits-smoke", "bits": [2, 3, 4]}
    p = R.results_root() / SWEEP / "data.npz"
    q = R.results_root() / RECIPES / "data.npz"
    return {"source": SWEEP, "rows_sha256": R.file_sha256(p) if p.exists() else None,
            "recipes": RECIPES, "recipe_model": "mobilenet_0.75",
            "recipes_sha256": R.file_sha256(q) if q.exists() else None}


def cva_compute(cfg: dict, ctx: Context) -> dict[str, np.ndarray]:
    from paper_repro.feedforward import explorer as X
    from paper_repro.feedforward import sweep as E

    if cfg["source"] == SWEEP:
        data = R.load_npz(R.results_root() / SWEEP / "data.npz")
        if data is None:
            raise FileNotFoundError(f"results/{SWEEP}/data.npz is missing: run "
                                    f"`paper-repro figures {SWEEP}` first")
        keep = {r["label"] for r in X.sweep_rows_from(arrays_rows(data))}
        rows = [r for r in arrays_rows(data) if r.get("label") in keep]
        # the data-free recipes (mixed widths, repaired or optimized rounding): not fitted,
        # checked against the law fitted on the plain sweep
        recipes = R.load_npz(R.results_root() / cfg["recipes"] / "data.npz")
        extra = X.recipe_points(arrays_rows(recipes), model=cfg["recipe_model"]) \
            if recipes is not None else []
        return rows_arrays(X.accuracy_points(rows) + extra)
    else:
        configs = E.sweep_configs(bits=cfg["bits"], schemes=("linear", "exponential"),
                                  fits=("corr",), granularities=("tensor",), lloyd_max=False)
        rows = E.run_sweep(E.digits_task(), configs, R.ResultsTable(ctx.dir / "sweep.csv"),
                           progress=ctx.progress, log=lambda *_: None)
        rows = [r for r in rows if r.get("scheme") is not None and "top1_drop" in r]
    return rows_arrays(X.accuracy_points(rows))


def _cva_plot(d, c):
    from paper_repro.experiments import plot_explorer as P
    from paper_repro.feedforward import explorer as X

    rows, extra = X.split_points(arrays_rows(d))
    what = "MobileNet 0.75, 1300 images" if c["source"] == SWEEP else "digits CNN (smoke)"
    return P.plot_correlation_vs_accuracy(
        rows, X.correlation_vs_accuracy(rows), extra=extra,
        title=f"{what}: does correlation predict accuracy? ({len(rows)} configurations)")


def _cva_quality(d, c):
    from paper_repro.feedforward import explorer as X

    return X.fit_summary_rows(X.correlation_vs_accuracy(X.split_points(arrays_rows(d))[0]))


def _cva_recipes(d, c):
    """The recipes' measured drops beside the drops the sweep's law predicts."""
    from paper_repro.feedforward import explorer as X

    rows, extra = X.split_points(arrays_rows(d))
    return X.predicted_drops(X.correlation_vs_accuracy(rows), extra)


register(Experiment(
    name="explorer/correlation_vs_accuracy",
    title="does the network summary of per-layer r predict the top-1 drop?",
    config=cva_config, compute=cva_compute,
    plots={"correlation_vs_accuracy": _cva_plot},
    tables={"points.csv": lambda d, c: arrays_rows(d), "fit_quality.csv": _cva_quality,
            "recipes_vs_prediction.csv": _cva_recipes},
    notebook="explorer", runtime="seconds (reads the MobileNet sweep)",
))


# --- the library baseline -------------------------------------------------------------------


def baselines_config(smoke: bool) -> dict:
    return {"alpha": 0.75, "bits": [8] if smoke else [4, 5, 6, 8],
            "data": "imagenet-val-1300-images", "library": "qwix 0.1.8",
            "limit": 20 if smoke else None, "model": "mobilenet",
            "n_data": 1300, "policy": "crop", "task": "mobilenet_0.75"}


def baselines_compute(cfg: dict, ctx: Context) -> dict[str, np.ndarray]:
    from paper_repro.experiments.sweeps import mobilenet_task
    from paper_repro.feedforward import baselines as B

    task = mobilenet_task(ctx, progress=ctx.progress)
    return rows_arrays(B.compare(task, bits=cfg["bits"], limit=cfg["limit"],
                                 progress=ctx.progress))


def _baselines_plot(d, c):
    from paper_repro.experiments import plot_explorer as P

    return P.plot_baselines(arrays_rows(d), title="MobileNet 0.75, 1300 images: qwix int-b "
                                                  "per channel vs ours")


register(Experiment(
    name="explorer/baselines",
    title="qwix per-channel integers vs our correlation-fitted levels (MobileNet 0.75)",
    config=baselines_config, compute=baselines_compute,
    plots={"baselines": _baselines_plot},
    tables={"table.csv": lambda d, c: arrays_rows(d),
            "table.md": lambda d, c: __import__(
                "paper_repro.feedforward.baselines", fromlist=["x"]).markdown_table(
                    arrays_rows(d))},
    inputs=("mobilenet-0.75-keras", "imagenet-val-1300"),
    notebook="explorer", runtime="about 2.5 min (2 cores)",
))
