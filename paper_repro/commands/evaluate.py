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
import json

from paper_repro.core import quantize as Q
from paper_repro.feedforward import imagenet, onnx_task


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("evaluate", help="top-1/top-5 of a float or quantized model",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True,
                   help="vgg16, resnet50, xception, inception_v3, mobilenet_v2, mobilenet, "
                        "digits_cnn (embedded), or path/to/model.onnx")
    p.add_argument("--alpha", type=float, default=None, help="MobileNet width multiplier")
    p.add_argument("--weights", help="Keras .h5 weight file, or a packed .prq file from "
                                     "`paper-repro pack` (evaluated as stored)")
    p.add_argument("--data", help="ImageNet validation folder")
    p.add_argument("--labels", help="ground-truth file for a flat --data folder")
    p.add_argument("--policy", default="resize",
                   help="'resize' (shorter side 256/342, centre crop; default), 'resize<N>', "
                        "or 'crop' (centre crop, no resize)")
    p.add_argument("--preprocess", choices=imagenet.PREPROCESS_MODES, default=None,
                   help="ONNX models only: torch (RGB /255, ImageNet mean/std), tf (x/127.5-1) "
                        "or caffe (BGR minus ImageNet means)")
    p.add_argument("--scheme", choices=Q.SCHEMES, default=None, help="quantize (default: float)")
    p.add_argument("--fit", choices=Q.FITS, default="corr")
    p.add_argument("--bits", type=int, default=None)
    p.add_argument("--granularity", choices=Q.GRANULARITIES, default="tensor")
    p.add_argument("--gain", action="store_true", help="least-squares gain after fitting")
    p.add_argument("--rounding", choices=Q.ROUNDINGS, default="linear")
    p.add_argument("--select", default=r".*kernel", help="regex of parameter paths to quantize")
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
    g.add_argument("--avg-bits", type=float, default=None,
                   help="mixed widths: per-layer bits for this average (codes + codebooks) "
                        "chosen by predicted output noise; replaces --bits")
    p.add_argument("--limit", type=int, default=None, help="first K images")
    p.add_argument("--per-class", type=int, default=None, help="first K images of each class")
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def run(args) -> int:
    from paper_repro.feedforward import sweep as E

    if args.scheme is not None and args.bits is None and args.avg_bits is None:
        raise ValueError("--scheme needs --bits (or --avg-bits)")
    progress = not (args.no_progress or args.json)
    onnx_task.refuse_preprocess(args)
    if onnx_task.is_onnx(args.model):
        task = onnx_task.task_from_args(args, progress=progress)
    elif args.model == "digits_cnn":
        task = E.digits_task(weights=args.weights)
    else:
        if not args.weights or not args.data:
            raise ValueError("--weights and --data are required for ImageNet models "
                             "(see `paper-repro weights fetch --help` and data/README.md)")
        task = E.imagenet_task(args.model, weights=args.weights, data=args.data,
                               labels=args.labels, alpha=args.alpha, policy=args.policy,
                               batch_size=args.batch_size, progress=progress)
    packed = task.info.get("packed")
    if packed is not None and args.scheme is not None:
        raise ValueError("--weights is a packed (already quantized) file: drop --scheme")
    cfg = E.QuantConfig(scheme=args.scheme, fit=args.fit, bits=args.bits or 0,
                        granularity=args.granularity, gain=args.gain, rounding=args.rounding,
                        select=args.select, keep_float=tuple(args.keep_float),
                        bias_correction=args.bias_correction,
                        mean_preserving=args.mean_preserving, fold_bn=args.fold_bn,
                        equalize=args.equalize, avg_bits=args.avg_bits)
    float_res = None
    if args.scheme is not None:
        float_res = E.evaluate_params(task, task.params, limit=args.limit,
                                      per_class=args.per_class, progress=progress)
    row, res = E.evaluate_config(task, cfg, float_result=float_res, limit=args.limit,
                                 per_class=args.per_class, progress=progress)
    if float_res is not None:
        row["float_top1"] = round(100 * float_res.top1, 4)
        row["float_top5"] = round(100 * float_res.top5, 4)
    if packed is not None:
        for k in ("r_mean", "r_min", "noise_sum", "zero_fraction"):
            row.pop(k, None)  # the original weights are not in a packed file
        row.update(packed)
        row["label"] = (f"{packed['scheme']}/{packed['fit']}/{packed['granularity']}/"
                        f"{packed['bits']}b (packed)")  # scheme, fit, bits, granularity and the file's real ratio
        row.pop("packed", None)
    elif args.scheme is None:
        row.update({"scheme": None, "fit": None, "bits": 32, "granularity": None})
    if args.json:
        print(json.dumps(row, default=float))
    else:
        print(f"{task.name} {cfg.label()}: {res}")
        if float_res is not None:
            print(f"float: {float_res}")
            print(f"drop top-1 {row['top1_drop']:+.2f} points "
                  f"[{row['top1_drop_low']:+.2f}, {row['top1_drop_high']:+.2f}], "
                  f"McNemar p = {row['top1_mcnemar_p']:.3g}; compression x"
                  f"{row['compression_ratio']:.2f}; mean r {row['r_mean']:.4f}")
    return 0
