"""The feedforward act: quantize a trained classifier's kernels, evaluate, sweep (docs/theory.md §1, 4).

One configuration = (scheme, fit, bits, granularity, and the other unknowns of docs/theory.md
section 1 as options). :func:`evaluate_config` quantizes the selected kernels of a model with
:func:`paper_repro.core.quantize.quantize_tree` (never retraining), evaluates top-1/top-5 on the
same images as the float model, and returns one row: accuracies with Wilson intervals, the
paired drop vs float (bootstrap interval and McNemar p), the per-layer correlation summary and
the storage accounting. :func:`run_sweep` appends each row atomically to a
:class:`paper_repro.results.ResultsTable` and skips finished rows, so a killed sweep resumes.

The same code runs the ImageNet models (:func:`imagenet_task`) and the embedded digits CNN
(:func:`digits_task`): a :class:`Task` is just ``apply_fn``, float params, images and the
preprocessing mode.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from paper_repro.core import quantize as Q
from paper_repro.core import stats, storage
from paper_repro.feedforward import imagenet
from paper_repro.results import ResultsTable

# docs/theory.md, section 1: the papers' top-5 (%) per model and bits, exponential levels.
PAPER_TOP5 = {
    "vgg16": {"P1": {3: 69.0}, "P2": {3: 76.0}},
    "resnet50": {"P1": {4: 84.0}, "P2": {4: 79.0}},
    "xception": {"P1": {5: 87.0}, "P2": {4: 61.0}},
    "inception_v3": {"P1": {5: 90.0}},
    "mobilenet_v2": {"P1": {5: 77.0}},
}
# Keras float baselines on the full 50k validation set (top-1, top-5 %).
KERAS_FLOAT = {
    "vgg16": (71.3, 90.1), "resnet50": (74.9, 92.1), "xception": (79.0, 94.5),
    "inception_v3": (77.9, 93.7), "mobilenet_v2": (71.3, 90.1), "mobilenet": (68.4, 88.2),
}

DEFAULT_SELECT = r".*kernel"  # conv, depthwise, pointwise and dense kernels; biases/BN float


@dataclasses.dataclass(frozen=True)
class Task:
    """A trained classifier and the images to judge it on.

    ``apply_fn(params, x) -> logits``; ``params`` the float parameter tree; ``data`` an
    :class:`paper_repro.feedforward.imagenet.Images` or ``(images, labels)``; ``preprocess_mode`` as in
    :func:`paper_repro.feedforward.imagenet.evaluate`; ``info`` goes into every row (model, data, ...).
    ``channel_axis``: output-channel axis of the kernels for per-channel fits (``-1`` for ONNX
    graphs, :mod:`paper_repro.feedforward.onnx_task`); ``None``: Keras layouts
    (:func:`paper_repro.core.quantize.default_channel_axis`).
    ``eval_fn``: what evaluations run, same signature and params as ``apply_fn`` (e.g. batch
    norm folded at evaluation time, :mod:`paper_repro.feedforward.fast_eval`); ``None``:
    ``apply_fn``, which stays the reference that graph tracing reads.
    """

    name: str
    apply_fn: Callable
    params: Any
    data: Any
    preprocess_mode: Any
    info: dict
    batch_size: int = 100
    channel_axis: int | None = None
    eval_fn: Callable | None = None


@dataclasses.dataclass(frozen=True)
class QuantConfig:
    """One point of a sweep. ``scheme=None`` is the float model.

    Fields map to :func:`paper_repro.core.quantize.quantize_tree` / :func:`~paper_repro.core.quantize.fit`;
    ``keep_float`` lists path regexes left in float (e.g. the first conv and the classifier,
    docs/theory.md, unknown 7).
    """

    scheme: str | None = None
    fit: str = "corr"
    bits: int = 0
    granularity: str = "tensor"
    gain: bool = False
    rounding: str = "linear"
    select: str = DEFAULT_SELECT
    keep_float: tuple[str, ...] = ()
    method: str = "histogram"
    # Data-free repairs (paper_repro.feedforward.repairs); off by default.
    bias_correction: bool = False
    mean_preserving: bool = False
    fold_bn: bool = False
    equalize: bool = False
    avg_bits: float | None = None
    # with avg_bits: other level families the allocation may choose per layer (repairs.allocate)
    families: tuple[str, ...] = ()
    # with avg_bits: count the codes as entropy coding stores them (pack --entropy-coding)
    coded_budget: bool = False

    def key(self) -> dict:
        """The config as a dict; the repair switches appear only when set (so the keys of
        sweeps made before they existed stay valid)."""
        d = dataclasses.asdict(self)
        for k in _REPAIRS:
            if d[k] == _REPAIR_DEFAULTS[k]:
                del d[k]
        return d

    def label(self) -> str:
        if self.scheme is None:
            return "float"
        b = f"avg{self.avg_bits:g}b" if self.avg_bits is not None else f"{self.bits}b"
        if self.coded_budget:
            b += "-coded"
        tags = "".join(f"+{t}" for k, t in (("fold_bn", "fold"), ("equalize", "eq"),
                                            ("mean_preserving", "mp"),
                                            ("bias_correction", "bc")) if getattr(self, k))
        levels = "+".join(dict.fromkeys((self.scheme, *self.families)))
        return f"{levels}/{self.fit}/{self.granularity}/{b}{tags}"

    @property
    def repaired(self) -> bool:
        return any(getattr(self, k) != _REPAIR_DEFAULTS[k] for k in _REPAIRS)


_REPAIRS = ("bias_correction", "mean_preserving", "fold_bn", "equalize", "avg_bits", "families",
            "coded_budget")
_REPAIR_DEFAULTS = {k: QuantConfig.__dataclass_fields__[k].default for k in _REPAIRS}


def sweep_configs(*, bits: Iterable[int] = range(2, 9),
                  schemes: Sequence[str] = ("linear", "exponential"),
                  fits: Sequence[str] = ("max", "corr"),
                  granularities: Sequence[str] = ("tensor", "channel"),
                  lloyd_max: bool = True, **options) -> list[QuantConfig]:
    """The paper's grid: schemes x fits x granularities (+ Lloyd-Max) x bits."""
    out = []
    for b in bits:
        for g in granularities:
            for s in schemes:
                for f in fits:
                    out.append(QuantConfig(scheme=s, fit=f, bits=b, granularity=g, **options))
            if lloyd_max:
                out.append(QuantConfig(scheme="lloyd_max", fit="corr", bits=b, granularity=g,
                                       **options))
    return out


# --- Storage accounting -------------------------------------------------------------------------


def storage_accounting(params, report: list[dict]) -> dict:
    """Bytes of the float32 model vs the quantized one (codes at b bits + codebooks + kept floats).

    Codes and codebooks count exactly what the packed format writes for them
    (:func:`paper_repro.core.storage.codes_nbytes`: bit-packed codes;
    :func:`paper_repro.core.storage.codebook_nbytes`: one or two float32 per parametric
    codebook, the positive levels for Lloyd-Max), every other leaf as float32. File headers
    are not counted here (``paper-repro pack`` measures the real file).
    ``compression_ratio_param_codebooks`` is kept for older tables: the packed format stores
    parametric codebooks as their parameters, so it equals ``compression_ratio``.
    """
    total = sum(int(np.size(x)) for _, x in Q.tree_paths(params))
    float_bytes = 4 * total
    q_weights = sum(r["size"] for r in report)
    code_bytes = sum(storage.codes_nbytes(r["size"], r["n_levels"]) for r in report)
    book_bytes = sum(storage.codebook_nbytes(r["quantizer"]) for r in report)
    kept = 4 * (total - q_weights)
    packed = code_bytes + book_bytes + kept
    packed_param = packed
    return {
        "float_bytes": float_bytes, "code_bytes": code_bytes, "codebook_bytes": book_bytes,
        "kept_float_bytes": kept, "quantized_bytes": packed,
        "compression_ratio": float_bytes / packed if packed else float("nan"),
        "quantized_fraction": q_weights / total if total else 0.0,
        # codebooks stored as their parameters (one scale per linear codebook, ...)
        "compression_ratio_param_codebooks": (float_bytes / packed_param if packed_param
                                              else float("nan")),
        "code_bits_per_weight": 8 * code_bytes / q_weights if q_weights else 0.0,
        "bits_per_weight_with_codebooks": (8 * (code_bytes + book_bytes) / q_weights
                                           if q_weights else 0.0),
    }


def planned_compression(params, cfg: QuantConfig) -> float | None:
    """Compression ratio of a fixed-width configuration, from shapes alone (no fitting).

    Same accounting as :func:`storage_accounting` with codebooks in their stored form
    (top level, and base for exponential levels; all positive levels for Lloyd-Max), for
    re-deriving the column of sweep rows made under an older accounting. ``None`` for float,
    mixed-width or folded configurations (their layout depends on the fit).
    """
    import re

    if cfg.scheme is None or cfg.avg_bits is not None or cfg.fold_bn:
        return None
    leaves = Q.tree_paths(params)
    total = sum(int(np.size(x)) for _, x in leaves)
    keep = [re.compile(k) for k in cfg.keep_float]
    chosen = [(p, x) for p, x in leaves if re.fullmatch(cfg.select, p) and np.ndim(x) > 0
              and not any(k.search(p) for k in keep)]
    n_q = code = books = 0
    for p, x in chosen:
        n = int(np.size(x))
        n_books = (np.shape(x)[Q.default_channel_axis(p, x)] if cfg.granularity == "channel"
                   else 1)
        n_q += n
        code += storage.codes_nbytes(n, Q.n_levels(cfg.scheme, cfg.bits))
        books += storage.codebook_nbytes(scheme=cfg.scheme, bits=cfg.bits,
                                         granularity=cfg.granularity, n_channels=n_books)
    packed = code + books + 4 * (total - n_q)
    return 4 * total / packed


def config_of(row: dict) -> QuantConfig:
    """The :class:`QuantConfig` a sweep row was made with."""
    names = {f.name for f in dataclasses.fields(QuantConfig)}
    kw = {k: v for k, v in row.items() if k in names}
    kf = kw.get("keep_float", ())
    kw["keep_float"] = tuple(x for x in kf.split(",") if x) if isinstance(kf, str) else tuple(kf)
    fam = kw.get("families", ())
    kw["families"] = tuple(x for x in fam.split(",") if x) if isinstance(fam, str) else tuple(fam)
    cb = kw.get("coded_budget", False)  # "True" / "False" from a CSV row
    kw["coded_budget"] = cb == "True" if isinstance(cb, str) else bool(cb)
    return QuantConfig(**kw)


def refresh_compression(params, rows: list[dict]) -> list[dict]:
    """Rows with ``compression_ratio`` re-derived by :func:`planned_compression` (unchanged
    where it does not apply), so tables made across accounting versions agree."""
    out = []
    for r in rows:
        ratio = planned_compression(params, config_of(r)) if r.get("scheme") else None
        out.append({**r, "compression_ratio": ratio} if ratio is not None else r)
    return out


def quantize_params(params, cfg: QuantConfig, *, channel_axis: int | None = None,
                    progress: bool = False):
    """``(new_params, report)`` for one configuration (float: ``(params, [])``).

    ``channel_axis``: see :class:`Task` (``None``: Keras layouts); ``progress``: a bar on
    stderr while mixed widths are chosen."""
    if cfg.scheme is None:
        return params, []
    import re

    keep = [re.compile(k) for k in cfg.keep_float]
    select = cfg.select
    if keep:
        paths = [p for p, _ in Q.tree_paths(params)
                 if re.fullmatch(cfg.select, p) and not any(k.search(p) for k in keep)]
        if not paths:
            raise ValueError(f"keep_float={cfg.keep_float} leaves nothing to quantize")
        select = "|".join(re.escape(p) for p in paths)
    if cfg.repaired:
        from paper_repro.feedforward import repairs as C

        paths = [p for p, x in Q.tree_paths(params)
                 if re.fullmatch(select, p) and np.ndim(x) > 0]
        qp, report, _ = C.quantize_model(
            params, paths=paths, scheme=cfg.scheme, bits=cfg.bits or None,
            avg_bits=cfg.avg_bits, fold=cfg.fold_bn, equalize_ranges=cfg.equalize,
            bias_correction=cfg.bias_correction, mean_preserving=cfg.mean_preserving,
            fit=cfg.fit, granularity=cfg.granularity, gain=cfg.gain, rounding=cfg.rounding,
            method=cfg.method, channel_axis=channel_axis, families=cfg.families,
            coded_budget=cfg.coded_budget, progress=progress)
        return qp, report
    return Q.quantize_tree(params, select=select, scheme=cfg.scheme, bits=cfg.bits, fit=cfg.fit,
                           granularity=cfg.granularity, gain=cfg.gain, rounding=cfg.rounding,
                           method=cfg.method, channel_axis=channel_axis)


def correlation_summary(report: list[dict]) -> dict:
    """Network-level summaries of the per-layer r: size-weighted mean, min, and the predicted
    relative output noise ``sum over layers (1 - r^2) / r^2`` (docs/theory.md, section 2)."""
    if not report:
        return {"r_mean": 1.0, "r_min": 1.0, "noise_sum": 0.0, "zero_fraction": 0.0}
    r = np.array([row["r"] for row in report])
    size = np.array([row["size"] for row in report], float)
    rr = np.clip(r, 1e-6, 1.0)
    return {
        "r_mean": float(np.sum(r * size) / size.sum()), "r_min": float(r.min()),
        "noise_sum": float(np.sum((1 - rr**2) / rr**2)),
        "zero_fraction": float(np.sum([row["zero_fraction"] * row["size"] for row in report])
                               / size.sum()),
    }


def evaluate_params(task: Task, params, *, limit=None, per_class=None, progress=True):
    return imagenet.evaluate(task.eval_fn or task.apply_fn, params, task.data,
                             batch_size=task.batch_size,
                             preprocess_mode=task.preprocess_mode, limit=limit,
                             per_class=per_class, progress=progress)


def evaluate_config(task: Task, cfg: QuantConfig, *, float_result=None, limit=None,
                    per_class=None, progress=True) -> tuple[dict, Any]:
    """Quantize, evaluate, compare with float on the same images. ``(row, EvalResult)``."""
    t0 = time.perf_counter()
    qparams, report = quantize_params(task.params, cfg, channel_axis=task.channel_axis,
                                      progress=progress)
    t_q = time.perf_counter() - t0
    res = evaluate_params(task, qparams, limit=limit, per_class=per_class, progress=progress)
    row = {"task": task.name, **task.info, **cfg.key(), "label": cfg.label(), **res.as_dict()}
    row["keep_float"] = ",".join(cfg.keep_float)
    row.update(correlation_summary(report))
    row.update(storage_accounting(task.params, report) if report else
               {"compression_ratio": 1.0, "float_bytes": 4 * sum(
                   int(np.size(x)) for _, x in Q.tree_paths(task.params))})
    if cfg.coded_budget and report:  # what the budget counted: the entropy-coded codes
        # same accounting as compression_ratio (codes, codebooks, kept floats; no header)
        ans = storage.packed_nbytes(qparams, report, coding="ans")
        row["coded_compression_ratio"] = float(ans["float_bytes"] / (
            ans["codes_bytes"] + ans["codebook_bytes"] + ans["float_kept_bytes"]))
        row["coded_bits_per_weight_with_codebooks"] = float(
            8 * (ans["codes_bytes"] + ans["codebook_bytes"]) / ans["n_quantized"])
    if float_result is not None and report:
        row.update(paired_drops(float_result, res))
    row["quantize_s"] = round(t_q, 3)
    return row, res


def paired_drops(float_result, res) -> dict:
    """Top-1 / top-5 drop of ``res`` against ``float_result`` on the same images, in points:
    ``<metric>_drop``, its 95 % paired-bootstrap interval (``_low``, ``_high``) and McNemar's
    ``_mcnemar_p``."""
    out = {}
    for metric in ("top1", "top5"):
        pc = stats.paired_comparison(float_result, res, metric=metric, n_resamples=2000)
        out[f"{metric}_drop"] = round(100 * pc.drop, 4)
        out[f"{metric}_drop_low"] = round(100 * pc.drop_low, 4)
        out[f"{metric}_drop_high"] = round(100 * pc.drop_high, 4)
        out[f"{metric}_mcnemar_p"] = pc.p_value
    return out


def _float_result(task: Task, table: ResultsTable, key: dict, *, limit, per_class, progress):
    """The float model's per-image results, kept beside the sweep table (``float_<hash>.npz``)
    so that resuming a sweep does not evaluate the float model again."""
    from paper_repro.results import config_hash

    path = table.path.parent / f"float_{config_hash(key)}.npz"
    if path.exists():
        try:
            with np.load(path) as z:
                return imagenet.EvalResult(
                    n_images=int(z["n_images"]), n_errors=int(z["n_errors"]),
                    top1=float(z["top1"]), top5=float(z["top5"]),
                    top1_ci=tuple(z["top1_ci"].tolist()), top5_ci=tuple(z["top5_ci"].tolist()),
                    correct1=z["correct1"], correct5=z["correct5"], pred=z["pred"],
                    labels=z["labels"], indices=z["indices"])
        except Exception as e:  # truncated or damaged (written atomically, so not by us)
            print(f"[{task.name}] {path.name} is unreadable ({type(e).__name__}); "
                  "evaluating the float model again")
    res = evaluate_params(task, task.params, limit=limit, per_class=per_class,
                          progress=progress)
    import io

    from paper_repro.results import write_if_changed

    buf = io.BytesIO()
    np.savez(buf, n_images=res.n_images, n_errors=res.n_errors, top1=res.top1, top5=res.top5,
             top1_ci=np.array(res.top1_ci), top5_ci=np.array(res.top5_ci),
             correct1=res.correct1, correct5=res.correct5, pred=res.pred, labels=res.labels,
             indices=res.indices)
    write_if_changed(path, buf.getvalue())  # atomic: a temporary file, then a rename
    return res


def run_sweep(task: Task, configs: Sequence[QuantConfig], table: ResultsTable, *,
              limit=None, per_class=None, progress=True, log=print) -> list[dict]:
    """Evaluate float and every configuration, appending each finished row to ``table``.

    Rows already in ``table`` (same task info, config and subset) are skipped, so rerunning an
    interrupted sweep finishes it. Returns all rows of this task and subset, float first.
    """
    from tqdm.auto import tqdm

    subset = {"limit": limit, "per_class": per_class}

    def key(cfg):
        return {"task": task.name, **task.info, **cfg.key(), **subset}

    float_cfg = QuantConfig()
    float_res = None
    todo = [c for c in configs if not table.done(key(c))]
    if any(c.bias_correction or c.fold_bn or c.equalize for c in todo):
        from paper_repro.feedforward import repairs

        repairs.attach_task(task)  # the traced graph the repairs work on (once per task)
    if not table.done(key(float_cfg)) or todo:
        float_res = _float_result(task, table, key(float_cfg), limit=limit,
                                  per_class=per_class, progress=progress)
        if not table.done(key(float_cfg)):
            row = {"task": task.name, **task.info, **float_cfg.key(), "label": "float",
                   **float_res.as_dict(), "compression_ratio": 1.0, "r_mean": 1.0,
                   **subset}
            table.append(key(float_cfg), row)
        log(f"[{task.name}] float: {float_res}")
    bar = tqdm(todo, desc=f"{task.name} sweep", disable=not progress, unit="config")
    for cfg in bar:
        bar.set_postfix_str(cfg.label())
        row, res = evaluate_config(task, cfg, float_result=float_res, limit=limit,
                                   per_class=per_class, progress=False)
        table.append(key(cfg), {**row, **subset})
        log(f"[{task.name}] {cfg.label()}: top-1 {row['top1']:.2f} top-5 {row['top5']:.2f} "
            f"(drop {row.get('top1_drop', float('nan')):+.2f}), r_mean {row['r_mean']:.4f}, "
            f"x{row['compression_ratio']:.2f}")
    return [r for r in table.rows() if r.get("task") == task.name
            and r.get("limit") == limit and r.get("per_class") == per_class]


# --- Tasks --------------------------------------------------------------------------------------


def digits_task(weights: str | os.PathLike | None = None) -> Task:
    """The embedded default: the small digits CNN and its held-out split (no download).

    ``weights``: a packed file of the digits CNN (``paper-repro pack --model digits_cnn``),
    evaluated as stored; default: the embedded float checkpoint.
    """
    from paper_repro.feedforward import digits

    info: dict[str, Any] = {"model": "digits_cnn", "data": "digits"}
    if weights is None:
        params = digits.load_or_train()
    else:
        if storage.weights_kind(weights) != "packed":
            raise ValueError(f"{weights}: digits_cnn reads packed files (`paper-repro pack "
                             "--model digits_cnn`); omit --weights for the float checkpoint")
        params, meta = storage.load_packed(weights)
        if meta.get("model") != "digits_cnn":
            raise ValueError(f"{weights} holds {meta.get('model')}, not digits_cnn")
        info["packed"] = storage.packed_record(weights, meta)
    _, test = digits.load_data()
    return Task(name="digits_cnn", apply_fn=digits.apply, params=params, data=test,
                preprocess_mode=digits.preprocess, info=info, batch_size=256)


def imagenet_task(model: str, *, weights: str | os.PathLike, data: str | os.PathLike,
                  labels: str | os.PathLike | None = None, alpha: float | None = None,
                  policy: str = "resize", batch_size: int = 50, progress: bool = True) -> Task:
    """A Keras-applications model with its official weights on ImageNet validation images.

    ``data`` is a folder of class subfolders or a flat folder with ``labels`` (see
    :func:`paper_repro.feedforward.imagenet.open_source`); images are decoded once into the cache.
    """
    from paper_repro.feedforward import fast_eval, models
    from paper_repro.feedforward import weights as W

    spec = models.get(model, alpha)
    if not Path(weights).is_file():
        raise FileNotFoundError(
            f"weights file {weights} not found; `paper-repro weights fetch {spec.name}` downloads "
            f"{spec.weights.file_name} (or copy it there by hand)")
    packed = None
    if storage.weights_kind(weights) == "packed":  # by content; refuses other formats
        params, meta = storage.load_packed(weights)
        if meta.get("model") not in (None, spec.name) or (
                meta.get("alpha") is not None and meta.get("alpha") != spec.alpha):
            raise ValueError(f"{weights} holds {meta.get('model')} alpha={meta.get('alpha')}, "
                             f"not {spec.name} alpha={spec.alpha}")
        packed = storage.packed_record(weights, meta)
    else:
        params = W.load(spec, weights)
    source = imagenet.open_source(data, labels)
    images = imagenet.load(source, size=spec.input_size, policy=policy, progress=progress)
    info = {"model": spec.name, "alpha": spec.alpha, "data": source.name, "policy": policy,
            "n_data": len(source)}
    if packed is not None:
        info["packed"] = packed
    return Task(name=spec.name + (f"_{spec.alpha:g}" if spec.alpha else ""),
                apply_fn=models.make_apply(spec), params=params, data=images,
                preprocess_mode=spec.preprocess_mode, info=info, batch_size=batch_size,
                eval_fn=fast_eval.make_eval_apply(spec))


# --- Summaries ----------------------------------------------------------------------------------


def bits_needed(rows: list[dict], *, metric: str = "top1", within: float = 1.0) -> list[dict]:
    """Fewest bits at which each (scheme, fit, granularity) stays within ``within`` points of
    float on ``metric``: the check of the papers' "exponential needs 1-2 fewer bits"."""
    base = next((r for r in rows if r.get("scheme") is None), None)
    if base is None:
        return []
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if r.get("scheme") is not None:
            groups.setdefault((r["scheme"], r["fit"], r["granularity"]), []).append(r)
    out = []
    for (s, f, g), rs in sorted(groups.items()):
        ok = sorted(int(r["bits"]) for r in rs if base[metric] - r[metric] <= within)
        out.append({"scheme": s, "fit": f, "granularity": g, "metric": metric,
                    "within_points": within, "float": base[metric],
                    "bits_needed": ok[0] if ok else None,
                    "bits_tried": ",".join(str(b) for b in sorted(int(r["bits"]) for r in rs))})
    return out


def markdown_table(rows: list[dict], *, model: str | None = None) -> str:
    """A markdown table of a sweep: top-1 / top-5 per configuration, with the papers' top-5."""
    lines = ["| scheme | fit | granularity | bits | top-1 | top-5 | drop top-1 [95% CI] | "
             "mean r | compression | paper top-5 |", "|" + "---|" * 10]
    paper = PAPER_TOP5.get(model or "", {})
    for r in sorted(rows, key=lambda r: (r.get("scheme") is not None, str(r.get("granularity")),
                                         str(r.get("scheme")), str(r.get("fit")),
                                         int(r.get("bits") or 0))):
        if r.get("scheme") is None:
            lines.append(f"| float | | | 32 | {r['top1']:.2f} | {r['top5']:.2f} | | 1 | 1.00 | |")
            continue
        b = int(r["bits"])
        pp = ", ".join(f"{k} {v[b]:.0f}" for k, v in paper.items()
                       if b in v and r["scheme"] == "exponential")
        drop = (f"{r['top1_drop']:+.2f} [{r['top1_drop_low']:+.2f}, {r['top1_drop_high']:+.2f}]"
                if "top1_drop" in r else "")
        lines.append(f"| {r['scheme']} | {r['fit']} | {r['granularity']} | {b} | "
                     f"{r['top1']:.2f} | {r['top5']:.2f} | {drop} | {r['r_mean']:.4f} | "
                     f"{r['compression_ratio']:.2f} | {pp} |")
    return "\n".join(lines) + "\n"
