"""``paper-repro evaluate``: top-1/top-5 of a Keras-applications model, float or quantized.

Examples::

  paper-repro evaluate --model mobilenet --alpha 0.75 --weights mobilenet_7_5_224_tf.h5 \\
      --data imagenet-val-1300/images --labels imagenet-val-1300/labels.txt --policy crop --json
  paper-repro evaluate --model resnet50 --weights resnet50_weights_tf_dim_ordering_tf_kernels.h5 \\
      --data /data/imagenet/val --scheme exponential --fit corr --bits 4 --granularity channel

``--data`` is a folder of class subfolders (``n01440764/*.JPEG``) or a flat folder with
``--labels`` (``<file> <class index>`` lines). Images are decoded once into the cache
(``$PAPER_REPRO_CACHE``). Without ``--scheme`` the float model is evaluated; with it, the
selected kernels are quantized (no retraining), and the drop vs float on the same images is
reported with a bootstrap interval and McNemar's test. ``--model digits_cnn`` runs the
embedded digits CNN (no weights or data needed; ``--weights`` may name its packed file).
``--model path/to/model.onnx`` runs an ONNX image classifier (the file holds the weights;
``--weights`` may name a ``.prq`` packed from that file) with ``--preprocess torch|tf|caffe``;
its input size comes from the graph (see :mod:`paper_repro.feedforward.onnx_task`)::

  paper-repro evaluate --model shufflenet_v2_x0_5_fp16.onnx --preprocess torch \\
      --data imagenet-val-1300/images --labels imagenet-val-1300/labels.txt --policy crop --json

The data-free repairs (``--bias-correction``, ``--mean-preserving``, ``--fold-bn``,
``--equalize``, ``--avg-bits``) are described in :mod:`paper_repro.feedforward.repairs`, e.g.::

  paper-repro evaluate --model mobilenet --alpha 0.75 ... --scheme linear --bits 5 \\
      --granularity channel --gain --bias-correction
"""

from __future__ import annotations

import argparse

from paper_repro.commands import _args as A
from paper_repro.commands import _recipe as R
from paper_repro.core import quantize as Q
from paper_repro.feedforward import imagenet, onnx_task

DEFAULT_POLICY = "resize"
DEFAULT_BATCH_SIZE = 50
# Defaults of the quantization knobs, filled in by check_args (the parser leaves them None so
# that a knob given without --scheme can be refused).
QUANT_DEFAULTS = {"fit": "corr", "granularity": "tensor", "rounding": "linear",
                  "select": r".*kernel"}
# Flags that only mean something when quantizing (--scheme).
QUANT_FLAGS = {"bits": "--bits", "avg_bits": "--avg-bits", "fit": "--fit",
               "granularity": "--granularity", "gain": "--gain", "rounding": "--rounding",
               "select": "--select", "keep_float": "--keep-float",
               "bias_correction": "--bias-correction", "mean_preserving": "--mean-preserving",
               "fold_bn": "--fold-bn", "equalize": "--equalize", "families": "--families",
               "coded_budget": "--coded-budget"}
# Flags of the ImageNet path (registry and ONNX models); digits_cnn brings its own images.
DATA_FLAGS = {"data": "--data", "labels": "--labels", "policy": "--policy",
              "batch_size": "--batch-size"}


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("evaluate", help="top-1/top-5 of a float or quantized model",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True,
                   help="vgg16, resnet50, xception, inception_v3, mobilenet_v2, mobilenet, "
                        "digits_cnn (embedded), or path/to/model.onnx")
    p.add_argument("--alpha", type=A.positive_float, default=None,
                   help="MobileNet width multiplier")
    p.add_argument("--weights", help="Keras .h5 weight file, or a packed .prq file from "
                                     "`paper-repro pack` (evaluated as stored)")
    p.add_argument("--data", help="ImageNet validation folder")
    p.add_argument("--labels", help="ground-truth file for a flat --data folder")
    p.add_argument("--policy", default=None,
                   help=f"'{DEFAULT_POLICY}' (shorter side 256/342, centre crop; default), "
                        "'resize<N>', or 'crop' (centre crop, no resize)")
    p.add_argument("--preprocess", choices=imagenet.PREPROCESS_MODES, default=None,
                   help="ONNX models only: torch (RGB /255, ImageNet mean/std), tf (x/127.5-1) "
                        "or caffe (BGR minus ImageNet means)")
    p.add_argument("--scheme", choices=Q.SCHEMES, default=None, help="quantize (default: float)")
    p.add_argument("--fit", choices=Q.FITS, default=None,
                   help=f"level fit (default {QUANT_DEFAULTS['fit']})")
    p.add_argument("--bits", type=int, default=None,
                   help="bits per weight incl. sign (range per scheme, at most 8)")
    p.add_argument("--granularity", choices=Q.GRANULARITIES, default=None,
                   help=f"one codebook per tensor or per output channel "
                        f"(default {QUANT_DEFAULTS['granularity']})")
    p.add_argument("--gain", action="store_true", help="least-squares gain after fitting")
    p.add_argument("--rounding", choices=Q.ROUNDINGS, default=None,
                   help=f"default {QUANT_DEFAULTS['rounding']}")
    p.add_argument("--select", default=None,
                   help=f"regex of parameter paths to quantize (default "
                        f"{QUANT_DEFAULTS['select']})")
    p.add_argument("--keep-float", nargs="*", default=[],
                   help="regexes of paths kept in float (e.g. conv1 predictions)")
    g = p.add_argument_group("data-free repairs (paper_repro.feedforward.repairs; all off by default)")
    g.add_argument("--bias-correction", action="store_true",
                   help="absorb each quantized kernel's expected output shift (from batch-norm "
                        "statistics, no data) into the next batch norm or bias")
    g.add_argument("--mean-preserving", action="store_true",
                   help="re-round so each output channel keeps sum Q(w) = sum w")
    g.add_argument("--fold-bn", action="store_true",
                   help="fold batch norms into the kernels before quantizing (as deployed)")
    g.add_argument("--equalize", action="store_true",
                   help="cross-layer equalization of channel ranges (implies --fold-bn)")
    g.add_argument("--avg-bits", type=A.finite_float, default=None,
                   help="mixed widths: per-layer bits for this average (codes + codebooks) "
                        "chosen by predicted output noise; replaces --bits")
    R.add_recipe_argument(g)
    p.add_argument("--limit", type=A.positive_int, default=None, help="first K images")
    p.add_argument("--per-class", type=A.positive_int, default=None,
                   help="first K images of each class")
    p.add_argument("--batch-size", type=A.positive_int, default=None,
                   help=f"images per step (default {DEFAULT_BATCH_SIZE})")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def check_args(args) -> None:
    """Check every argument of ``args`` before anything is loaded or evaluated, and fill in the
    defaults of the flags left unset (``args.policy``, ``args.batch_size``, ``args.fit``, ...).

    Raises ``ValueError`` (``FileNotFoundError`` for a missing file) naming the flag: flags the
    model does not use, quantization flags without ``--scheme``, widths out of range for the
    scheme, ``--bits`` together with ``--avg-bits``, regexes that do not compile, a packed
    ``--weights`` file with ``--scheme``, paths that are not a file / folder.
    """
    from paper_repro.core import storage
    from paper_repro.feedforward import models

    spec = None
    if args.model == "digits_cnn":
        A.refuse(A.given(args, {"alpha": "--alpha", **DATA_FLAGS}),
                 "by digits_cnn (the embedded model brings its own images)")
    elif not onnx_task.is_onnx(args.model):
        spec = models.get(args.model, args.alpha)  # unknown model or a stray --alpha: ValueError
        if not args.weights or not args.data:
            raise ValueError("--weights and --data are required for ImageNet models "
                             "(see `paper-repro weights fetch --help` and data/README.md)")
    onnx_task.refuse_preprocess(args)
    if args.weights:
        A.check_file(args.weights, "--weights", what="weight file")
    if args.data:
        A.check_dir(args.data, "--data")
    if args.labels:
        A.check_file(args.labels, "--labels", what="labels file")
    if args.model != "digits_cnn":
        args.policy = args.policy or DEFAULT_POLICY
        try:  # ONNX: the input size comes from the graph; check the spelling here
            imagenet.resize_for(spec.input_size if spec is not None else 1, args.policy)
        except ValueError as e:
            raise ValueError(f"--policy: {e}") from None
        args.batch_size = args.batch_size or DEFAULT_BATCH_SIZE
    if args.scheme is None:
        A.refuse(A.given(args, QUANT_FLAGS),
                 "without --scheme (the float model is evaluated)",
                 alternative="add --scheme to quantize")
    for k, v in QUANT_DEFAULTS.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.scheme is None:
        return
    if args.weights and storage.is_packed(args.weights):
        raise ValueError("--weights is a packed (already quantized) file: drop --scheme")
    if args.bits is not None and args.avg_bits is not None:
        raise ValueError("give --bits or --avg-bits, not both (--avg-bits chooses the width of "
                         "each layer)")
    if args.bits is None and args.avg_bits is None:
        raise ValueError("--scheme needs --bits (or --avg-bits)")
    knobs = dict(fit=args.fit, granularity=args.granularity, rounding=args.rounding)
    if args.bits is not None:
        A.check_bits(args.scheme, args.bits, **knobs)
    else:
        for s in dict.fromkeys((args.scheme, *(args.families or ()))):
            A.check_avg_bits(s, args.avg_bits, **knobs)
    if args.families and args.avg_bits is None:
        raise ValueError("--families (a level family per layer) needs --avg-bits")
    if args.coded_budget and args.avg_bits is None:
        raise ValueError("--coded-budget (entropy-coded bits counted) needs --avg-bits")
    A.check_regex(args.select, "--select")
    for pattern in args.keep_float:
        A.check_regex(pattern, "--keep-float")


def _add_drop(row: dict, float_res, res) -> None:
    """Paired drop vs float on the same images (bootstrap interval, McNemar p) into ``row``."""
    from paper_repro.feedforward import sweep

    row.update(sweep.paired_drops(float_res, res))
    row["float_top1"] = round(100 * float_res.top1, 4)
    row["float_top5"] = round(100 * float_res.top5, 4)


def run(args) -> int:
    from paper_repro.feedforward import sweep as E

    R.apply_recipe(args)  # --recipe: its switches, before they are checked
    check_args(args)
    progress = not (args.no_progress or args.json)
    if onnx_task.is_onnx(args.model):
        task = onnx_task.task_from_args(args, progress=progress)
    elif args.model == "digits_cnn":
        task = E.digits_task(weights=args.weights)
    else:
        task = E.imagenet_task(args.model, weights=args.weights, data=args.data,
                               labels=args.labels, alpha=args.alpha, policy=args.policy,
                               batch_size=args.batch_size, progress=progress)
    R.prepare_task(task, args)  # the traced graph for the repairs; the recipe record
    packed = task.info.get("packed")
    if packed is not None and args.scheme is not None:
        raise ValueError("--weights is a packed (already quantized) file: drop --scheme")
    cfg = E.QuantConfig(scheme=args.scheme, fit=args.fit, bits=args.bits or 0,
                        granularity=args.granularity, gain=args.gain, rounding=args.rounding,
                        select=args.select, keep_float=tuple(args.keep_float),
                        bias_correction=args.bias_correction,
                        mean_preserving=args.mean_preserving, fold_bn=args.fold_bn,
                        equalize=args.equalize, avg_bits=args.avg_bits,
                        families=tuple(args.families or ()),
                        coded_budget=bool(args.coded_budget))
    # Quantize (and evaluate) first: an error of the quantization itself (e.g. an --avg-bits
    # below what the codebooks allow) stops the command before the float evaluation.
    row, res = E.evaluate_config(task, cfg, limit=args.limit, per_class=args.per_class,
                                 progress=progress)
    float_res = None
    if args.scheme is not None:
        float_res = E.evaluate_params(task, task.params, limit=args.limit,
                                      per_class=args.per_class, progress=progress)
        _add_drop(row, float_res, res)
    if packed is not None:
        for k in ("r_mean", "r_min", "noise_sum", "zero_fraction"):
            row.pop(k, None)  # the original weights are not in a packed file
        row.update(packed)  # how it was quantized, its label and the file's real ratio
        row.pop("packed", None)
    elif args.scheme is None:
        row.update({"scheme": None, "fit": None, "bits": 32, "granularity": None})
    if args.json:
        A.print_json(row)
    else:
        print(f"{task.name} {row['label'] if packed is not None else cfg.label()}: {res}")
        if float_res is not None:
            print(f"float: {float_res}")
            print(f"drop top-1 {row['top1_drop']:+.2f} points "
                  f"[{row['top1_drop_low']:+.2f}, {row['top1_drop_high']:+.2f}], "
                  f"McNemar p = {row['top1_mcnemar_p']:.3g}; compression x"
                  f"{row['compression_ratio']:.2f}"
                  + (f" (x{row['coded_compression_ratio']:.2f} entropy-coded)"
                     if "coded_compression_ratio" in row else "")
                  + f"; mean r {row['r_mean']:.4f}")
    return 0
