"""The command-line side of the named recipes (``--recipe``, ``--avg-bits``, ``--families``,
``--coded-budget`` of ``paper-repro evaluate`` and ``paper-repro pack``): the flags, their
checks, what a result records of them, and the quantization ``pack --recipe`` writes.

The recipes themselves (settings, optimizer options, why) are
:data:`paper_repro.feedforward.repairs.RECIPES`; the quantization they run is
:func:`paper_repro.feedforward.repairs.quantize_model`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np

from paper_repro.commands import _args
from paper_repro.core import quantize as Q
from paper_repro.feedforward import graph as G
from paper_repro.feedforward.repairs import (
    RECIPES,
    Wiring,
    attach_optimizer,
    attach_task,
    attached,
    input_statistics,
    quantize_model,
)

# QuantConfig field -> the flag that sets it (evaluate and pack)
_FLAGS = {"scheme": "--scheme", "fit": "--fit", "granularity": "--granularity",
          "gain": "--gain", "rounding": "--rounding", "mean_preserving": "--mean-preserving",
          "bias_correction": "--bias-correction", "fold_bn": "--fold-bn",
          "equalize": "--equalize", "families": "--families"}


def add_recipe_argument(parser) -> None:
    """``--recipe NAME`` (and ``--avg-bits`` where the command has none) on a command's
    parser; the help lists what each recipe stands for."""
    names = ", ".join(f"{r.name} = {r.flags()}" for r in RECIPES.values())
    parser.add_argument("--recipe", choices=sorted(RECIPES), default=None,
                        help=f"named data-free settings, the same on every network: {names}. "
                             "Needs --avg-bits; giving a switch the recipe sets is an error")
    if not any("--avg-bits" in a.option_strings for a in parser._actions):
        parser.add_argument("--avg-bits", type=float, default=None,
                            help="with --recipe: average bits per quantized weight (codes and "
                                 "codebooks); each layer's width is chosen for it")
    parser.add_argument("--families", type=_args.scheme_list, default=None,
                        help="with --avg-bits: level families (comma-separated, e.g. "
                             "exponential,lloyd_max) the allocation may choose among per layer, "
                             "besides --scheme: each layer gets the family and width of least "
                             "predicted noise per stored bit")
    parser.add_argument("--coded-budget", action="store_true",
                        help="with --avg-bits: count each layer's codes as entropy coding "
                             "stores them (what pack --entropy-coding writes) instead of at "
                             "their fixed width, so --avg-bits sets the entropy-coded size and "
                             "layers whose codes compress well get wider")
    parser.set_defaults(_recipe_defaults={a.dest: a.default for a in parser._actions})


def apply_recipe(args, *, command: str = "evaluate") -> None:
    """Fill ``args`` with the switches of ``args.recipe`` (before the command checks them).

    Raises ``ValueError`` when a switch the recipe sets is given too, when ``--bits`` is given
    (the recipe chooses widths), or when ``--avg-bits`` is missing. Without a recipe, for
    ``pack``: ``--scheme`` and ``--bits`` are required and ``--avg-bits`` is refused.
    """
    name = getattr(args, "recipe", None)
    defaults = getattr(args, "_recipe_defaults", {})
    if not name:
        if command == "pack":
            if getattr(args, "avg_bits", None) is not None:
                raise ValueError("--avg-bits is for --recipe (pack writes one width per "
                                 "layer only with a recipe); use --bits")
            if getattr(args, "families", None):
                raise ValueError("--families is for --recipe (pack chooses a family per "
                                 "layer only with a recipe)")
            if getattr(args, "coded_budget", False):
                raise ValueError("--coded-budget is for --recipe (pack chooses widths only "
                                 "with a recipe)")
            missing = [f for k, f in (("scheme", "--scheme"), ("bits", "--bits"))
                       if getattr(args, k, None) is None]
            if missing:
                raise ValueError(f"{' and '.join(missing)} required (or --recipe NAME "
                                 "--avg-bits B)")
        return
    recipe = RECIPES[name]
    clash = [flag for k, flag in _FLAGS.items() if k in recipe.settings and hasattr(args, k)
             and getattr(args, k) not in (None, False, defaults.get(k))]
    if clash:
        raise ValueError(f"--recipe {name} sets {', '.join(clash)}; drop "
                         f"{'it' if len(clash) == 1 else 'them'} (or drop --recipe)")
    if getattr(args, "bits", None) is not None:
        raise ValueError(f"--recipe {name} chooses each layer's width: give --avg-bits, "
                         "not --bits")
    if getattr(args, "avg_bits", None) is None:
        raise ValueError(f"--recipe {name} needs --avg-bits (average bits per weight, "
                         "e.g. 5 or 4)")
    if command == "pack" and getattr(args, "coded_budget", False) and \
            not getattr(args, "entropy_coding", False):
        raise ValueError("--coded-budget counts entropy-coded bits: add --entropy-coding "
                         "(or drop --coded-budget)")
    for k, v in recipe.settings.items():
        setattr(args, k, v)


def recipe_record(args) -> dict:
    """What a result records of the recipe: ``{"recipe", "recipe_switches"}`` (empty
    without one)."""
    name = getattr(args, "recipe", None)
    if not name:
        return {}
    r = RECIPES[name]
    coded = " --coded-budget" if getattr(args, "coded_budget", False) else ""
    out = {"recipe": name, "recipe_switches": r.flags().replace(
        "(with --avg-bits B)", f"--avg-bits {float(args.avg_bits):g}{coded}")}
    if r.optimize is not None:
        out["recipe_options"] = r.opt_config().as_dict()
    return out


def prepare_task(task, args) -> None:
    """Before evaluating a task from command-line ``args``: attach its graph when a repair
    needs it, and record the recipe in ``task.info``."""
    recipe = RECIPES.get(getattr(args, "recipe", None) or "")
    optimizing = recipe is not None and recipe.optimize is not None
    if any(getattr(args, k, False) for k in ("bias_correction", "fold_bn", "equalize")) or \
            optimizing:
        if attached(task.params) is None:
            if task.info.get("source_format") == "onnx":
                raise ValueError("an ONNX task needs its graph from the node list: build it "
                                 "with onnx_task(..., attach_graph=True)")
            attach_task(task)
    task.info.update(recipe_record(args))
    if optimizing:
        rec = attach_optimizer(task.params, recipe.opt_config(),
                               progress=not getattr(args, "no_progress", False))
        task.info["datafree_opt"] = rec["last"]  # filled when the model is quantized


def pack_wiring(args, params, *, onnx_model=None) -> Wiring:
    """The traced graph and input statistics of the model ``paper-repro pack`` was given
    (registry model, digits_cnn, or ``onnx_model``)."""
    if onnx_model is not None:
        graph = G.from_onnx(onnx_model)
        stats = input_statistics(getattr(args, "preprocess", None))
        mode = args.preprocess
    elif args.model == "digits_cnn":
        from paper_repro.feedforward import digits

        graph = G.trace(digits.apply, params, (1, digits.INPUT_SIZE, digits.INPUT_SIZE, 1))
        stats = input_statistics(None, model="digits_cnn")
        mode = "digits_cnn"
    else:
        from paper_repro.feedforward import models

        spec = models.get(args.model, args.alpha)
        size = spec.input_size
        graph = G.trace(models.make_apply(spec), params, (1, size, size, 3))
        stats = input_statistics(spec.preprocess_mode)
        mode = spec.preprocess_mode
    return Wiring(graph, *stats, preprocess=mode)


def pack_quantize(args, params, *, onnx_model=None, channel_axis: int | None = None):
    """``paper-repro pack --recipe``: the repaired quantization of ``params`` for the model
    named by ``args`` (registry, digits_cnn, or ``onnx_model``). Returns
    ``(new_params, report, meta)``; ``meta`` records the recipe and the per-layer widths."""
    wiring = pack_wiring(args, params, onnx_model=onnx_model)
    pattern = re.compile(args.select)
    paths = [p for p, x in Q.tree_paths(params) if pattern.fullmatch(p) and np.ndim(x) > 0]
    if not paths:
        raise ValueError(f"--select {args.select!r} matches no parameter")
    kw = {k: getattr(args, k) for k in ("fit", "granularity", "gain", "rounding", "method")
          if getattr(args, k, None) is not None}
    if getattr(args, "base", None) is not None:
        kw["base"] = args.base
    recipe = RECIPES.get(getattr(args, "recipe", None) or "")
    if recipe is not None and recipe.optimize is not None:  # progress on stderr
        attach_optimizer(params, recipe.opt_config(), progress=True)
    new, report, info = quantize_model(
        params, paths=paths, scheme=args.scheme, avg_bits=args.avg_bits,
        fold=bool(getattr(args, "fold_bn", False)), equalize_ranges=bool(getattr(
            args, "equalize", False)), bias_correction=bool(getattr(args, "bias_correction",
                                                                    False)),
        mean_preserving=bool(getattr(args, "mean_preserving", False)), wiring=wiring,
        channel_axis=channel_axis, families=tuple(getattr(args, "families", None) or ()),
        coded_budget=bool(getattr(args, "coded_budget", False)), progress=True, **kw)
    meta = {**recipe_record(args), "avg_bits": float(args.avg_bits),
            "layer_bits": info.get("bits", {})}
    if getattr(args, "coded_budget", False):  # absent otherwise: older headers stay the same
        meta["coded_budget"] = True
    if "schemes" in info:
        meta["layer_schemes"] = info["schemes"]
    if "datafree_opt" in info:  # what was done, not how long it took: same config, same bytes
        meta["datafree_opt"] = _run_independent(info["datafree_opt"])
    return new, report, meta


def _run_independent(record):
    """``record`` without what differs from run to run of the same configuration (timings,
    whether a cache was hit), for a file header."""
    if isinstance(record, Mapping):
        return {k: _run_independent(v) for k, v in record.items()
                if k not in ("seconds", "cached")}
    return record
