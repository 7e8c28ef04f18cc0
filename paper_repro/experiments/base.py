"""What an experiment is, and the one way to run it.

An :class:`Experiment` declares one figure or table of the package:

- ``config(smoke)``: its configuration, full size or smoke size (JSON-able, seed included);
- ``compute(config, ctx)``: arrays out (a dict of numpy arrays), nothing drawn;
- ``plots``: ``{stem: plot(data, config) -> Figure}``, drawn from the arrays only;
- ``tables``: ``{file name: table(data, config)}`` giving rows (``.csv``) or text (``.md``);
- ``inputs``: the real data it needs (names known to :mod:`paper_repro.datasets`).

:func:`run` is what the notebooks, ``paper-repro figures`` and ``make`` all call. It reuses
``results/<name>/`` when the saved data were computed from the same config and numerics
version, and recomputes otherwise; figures and tables are redrawn from the data every time and
written only when their bytes change. An experiment whose real inputs are missing is skipped
with a message, and results computed from real data are never replaced by a fallback. Smoke
runs write to ``build/smoke-results/`` and never touch ``results/``.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections.abc import Callable, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from paper_repro import results

Arrays = dict[str, np.ndarray]
Plot = Callable[[Arrays, dict], Any]
Table = Callable[[Arrays, dict], "list[dict] | str"]


@dataclasses.dataclass(frozen=True)
class Experiment:
    """One figure or table: configs, compute, plots, tables, inputs (see the module doc)."""

    name: str
    title: str
    config: Callable[[bool], dict]
    compute: Callable[[dict, Context], Mapping[str, Any]]
    plots: Mapping[str, Plot] = dataclasses.field(default_factory=dict)
    tables: Mapping[str, Table] = dataclasses.field(default_factory=dict)
    inputs: tuple[str, ...] = ()
    smoke_inputs: tuple[str, ...] | None = None
    notebook: str = ""
    runtime: str = ""

    def needs(self, smoke: bool) -> tuple[str, ...]:
        """The real inputs this run needs (smoke runs may need fewer)."""
        return self.inputs if not smoke or self.smoke_inputs is None else self.smoke_inputs


@dataclasses.dataclass
class Context:
    """What a compute step may use besides its config.

    ``inputs``: resolved paths of the real inputs; ``dir``: the result folder (for resumable
    row stores such as a sweep's ``sweep.csv``); ``smoke``; ``progress``: show progress bars.
    """

    inputs: dict[str, Path]
    dir: Path
    smoke: bool = False
    progress: bool = True


@dataclasses.dataclass
class Outcome:
    """What :func:`run` gives back: the arrays, the figures and tables, and what happened.

    ``status`` is ``"computed"``, ``"reused"`` or ``"skipped"`` (``message`` says why).
    In a notebook, displaying an outcome shows its figures inline.
    """

    name: str
    status: str
    message: str = ""
    data: Arrays | None = None
    config: dict | None = None
    figures: dict[str, Any] = dataclasses.field(default_factory=dict)
    tables: dict[str, Any] = dataclasses.field(default_factory=dict)
    dir: Path | None = None
    seconds: float = 0.0

    def table(self, file: str | None = None):
        """A table as a pandas DataFrame (rows) or a Markdown display (text)."""
        key = file or next(iter(self.tables))
        t = self.tables[key]
        if isinstance(t, str):
            from IPython.display import Markdown

            return Markdown(t)
        import pandas as pd

        return pd.DataFrame(t)

    def _ipython_display_(self):
        from IPython.display import display

        print(f"{self.name}: {self.status}" + (f" ({self.message})" if self.message else ""))
        for fig in self.figures.values():
            display(fig)


# ------------------------------------------------------------------------------- registry

_REGISTRY: dict[str, Experiment] = {}
_MODULES = ("quantizers", "hopfield", "storage", "sweeps", "explorer", "datafree", "recipes")


def register(*exps: Experiment) -> None:
    """Add experiments to the registry (names are unique)."""
    for e in exps:
        if e.name in _REGISTRY and _REGISTRY[e.name] is not e:
            raise ValueError(f"experiment {e.name!r} declared twice")
        _REGISTRY[e.name] = e


def _load_all() -> None:
    import importlib

    for m in _MODULES:
        try:
            importlib.import_module(f"paper_repro.experiments.{m}")
        except ModuleNotFoundError as err:
            if err.name != f"paper_repro.experiments.{m}":
                raise


def all_experiments() -> dict[str, Experiment]:
    """Every declared experiment, by name, in declaration order."""
    _load_all()
    return dict(_REGISTRY)


def get(name: str) -> Experiment:
    """The experiment called ``name`` (a clear error lists the names)."""
    exps = all_experiments()
    if name not in exps:
        raise ValueError(f"unknown experiment {name!r}; known: {', '.join(exps)}")
    return exps[name]


def select(names: list[str] | None) -> list[Experiment]:
    """Experiments by name or by prefix (``hopfield`` selects every ``hopfield/...``)."""
    exps = all_experiments()
    if not names:
        return list(exps.values())
    out = []
    for n in names:
        hits = [e for k, e in exps.items() if k == n or k.startswith(n.rstrip("/") + "/")]
        if not hits:
            raise ValueError(f"unknown experiment {n!r}; known: {', '.join(exps)}")
        out += [e for e in hits if e not in out]
    return out


# ------------------------------------------------------------------------------- inputs

#: Where each named input lies inside the data folder (the layout ``paper-repro data fetch``
#: writes).
INPUT_PATHS = {
    "imagenet-val-1300": "imagenet-val-1300",
    "mobilenet-0.75-keras": "keras-weights/mobilenet_7_5_224_tf.h5",
    "shufflenet-v2-x0.5-onnx": "onnx/shufflenet_v2_x0_5_fp16.onnx",
}


def resolve_inputs(names: tuple[str, ...]) -> tuple[dict[str, Path], list[str]]:
    """``({name: path}, [missing names])`` for the real inputs ``names``."""
    from paper_repro.feedforward.weights import shared_data_dir

    root = shared_data_dir()
    found, missing = {}, []
    for n in names:
        p = None if root is None else root / INPUT_PATHS[n]
        if p is None or not p.exists():
            missing.append(n)
        else:
            found[n] = p
    return found, missing


@contextmanager
def _smoke_results():
    """Point ``results`` at ``build/smoke-results`` unless ``PAPER_REPRO_RESULTS`` is set."""
    old = os.environ.get("PAPER_REPRO_RESULTS")
    if old is None:
        os.environ["PAPER_REPRO_RESULTS"] = str(results.ROOT / "build" / "smoke-results")
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("PAPER_REPRO_RESULTS", None)


def _draw(exp: Experiment, data: Arrays, config: dict, d: Path, *, save: bool) -> tuple:
    import matplotlib.pyplot as plt

    figures, tables = {}, {}
    for stem, plot in exp.plots.items():
        fig = plot(data, config)
        figures[stem] = fig
        if save:
            results.save_figure(fig, exp.name, stem=stem)
        plt.close(fig)
    for file, make in exp.tables.items():
        t = make(data, config)
        tables[file] = t
        if save:
            if isinstance(t, str):
                results.write_if_changed(d / file, t if t.endswith("\n") else t + "\n")
            elif t:
                results.write_csv(d / file, t)
    return figures, tables


def run(name: str | Experiment, *, smoke: bool | None = None, force: bool = False,
        progress: bool = True, save: bool = True) -> Outcome:
    """Run (or reuse) one experiment and write ``results/<name>/``; see the module doc.

    ``smoke=None`` reads ``PAPER_REPRO_SMOKE=1`` from the environment (the notebooks' switch).
    """
    exp = get(name) if isinstance(name, str) else name
    if smoke is None:
        smoke = os.environ.get("PAPER_REPRO_SMOKE") == "1"
    force = force or os.environ.get("PAPER_REPRO_FORCE") == "1"
    t0 = time.perf_counter()
    ctx_manager = _smoke_results() if smoke else _nullcontext()
    with ctx_manager:
        config = exp.config(smoke)
        d = results.results_root() / exp.name
        inputs, missing = resolve_inputs(exp.needs(smoke))
        data = None if force else results.saved_arrays(exp.name, config)
        status, message = "reused", ""
        if data is None:
            if missing:
                have = (d / "data.npz").exists()
                msg = (f"needs {', '.join(missing)} (see `paper-repro data list`); "
                       + ("the saved results were kept" if have else "nothing written"))
                results.log_run({"experiment": exp.name, "status": "skipped", "why": msg})
                if have:  # show what is there, computed earlier from real data
                    old = results.load_npz(d / "data.npz")
                    meta_cfg = _saved_config(d)
                    if old is not None and meta_cfg is not None:
                        figs, tabs = _draw(exp, old, meta_cfg, d, save=False)
                        return Outcome(exp.name, "skipped", msg, old, meta_cfg, figs, tabs, d,
                                       time.perf_counter() - t0)
                return Outcome(exp.name, "skipped", msg, dir=d,
                               seconds=time.perf_counter() - t0)
            d.mkdir(parents=True, exist_ok=True)
            ctx = Context(inputs=inputs, dir=d, smoke=smoke, progress=progress)
            data = results.run_or_load(exp.name, config, lambda: exp.compute(config, ctx),
                                       force=True)
            status = "computed"
        figures, tables = _draw(exp, data, config, d, save=save)
    return Outcome(exp.name, status, message, data, config, figures, tables, d,
                   time.perf_counter() - t0)


def _saved_config(d: Path) -> dict | None:
    import json

    try:
        return json.loads((d / "meta.json").read_text())["config"]
    except (OSError, ValueError, KeyError):
        return None


@contextmanager
def _nullcontext():
    yield


def run_many(names: list[str] | None = None, *, smoke: bool = False, force: bool = False,
             progress: bool = True) -> list[Outcome]:
    """Run every selected experiment in order; print one line each (to stderr)."""
    import matplotlib

    if "ipykernel" not in sys.modules:
        matplotlib.use("Agg")
    outs = []
    for exp in select(names):
        out = run(exp, smoke=smoke, force=force, progress=progress)
        line = f"[figures] {exp.name}: {out.status}"
        if out.status != "skipped":
            line += f" in {out.seconds:.1f} s"
        if out.message:
            line += f" -- {out.message}"
        print(line, file=sys.stderr, flush=True)
        outs.append(out)
    return outs
