"""ImageNet-act speed: the package's MobileNet evaluation against onnxruntime, Keras and itself.

Run: ``python benchmarks/bench_imagenet.py [--n 200] [--batch 50] [--repeat 3]``. In one run,
on the same images (centre crops 224, 'tf' preprocessing) and the same batches:

1. **vs onnxruntime** (target >= 0.8): the evaluation function sweeps use
   (:func:`paper_repro.feedforward.fast_eval.make_eval_apply`: batch norm folded at evaluation
   time, CPU-friendly ops, small inner chunks) against onnxruntime running an ONNX graph of
   the same weights with batch norm folded, built here from the Flax params with the ``onnx``
   package (Conv / Clip / GlobalAveragePool, NCHW as onnxruntime prefers). Model only: both
   get the same preprocessed float32 batches, already in their layouts. Also the unfolded
   reference port (:func:`paper_repro.feedforward.models.make_apply`, Keras summation order),
   and the package's whole :func:`paper_repro.feedforward.imagenet.evaluate` (uint8 crops in,
   top-5 out) with both functions. Logits and top-1 must agree.
2. **vs Keras 3** ``model.predict`` (JAX backend; a dev-only dependency, skipped with one line
   when it does not import).
3. A 10-configuration sweep (quantize + evaluate) reading the decode-once cache, against the
   same sweep decoding every JPEG for every configuration (target >= 5).

Timings: best (and median) of ``--repeat`` interleaved runs after a warm-up (compilation
excluded), so that load from other processes hits all sides alike. Uses the real MobileNet
0.75 and validation images from ``$PAPER_REPRO_SHARED_DATA`` (else the folder ``paper-repro data
fetch`` fills); without them, random weights and synthetic JPEGs written to a temp folder.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax  # noqa: E402
import numpy as np  # noqa: E402

from paper_repro.feedforward import fast_eval, imagenet, models  # noqa: E402
from paper_repro.feedforward import sweep as E  # noqa: E402
from paper_repro.feedforward import weights as W  # noqa: E402

# (pointwise filters, stride) of MobileNet v1 depthwise blocks 1..13 (as the Flax port)
_V1_BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1),
              (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1))


def data_and_weights(n: int):
    root = W.shared_data_dir()
    if root is not None:
        h5 = root / "keras-weights" / "mobilenet_7_5_224_tf.h5"
        labels = root / "imagenet-val-1300" / "labels.txt"
        if h5.is_file() and labels.is_file():
            return (root / "imagenet-val-1300" / "images", labels, h5,
                    "real MobileNet 0.75 and real validation images")
    from PIL import Image

    tmp = Path(tempfile.mkdtemp())
    (tmp / "images").mkdir()
    rng = np.random.default_rng(0)
    lines = []
    for i in range(n):
        name = f"ILSVRC2012_val_{i + 1:08d}.JPEG"
        Image.fromarray(rng.integers(0, 255, (256, 300, 3), np.uint8)).save(tmp / "images" / name)
        lines.append(f"{name} {i % 1000}")
    (tmp / "labels.txt").write_text("\n".join(lines) + "\n")
    spec = models.get("mobilenet", 0.75)
    params = spec.init(jax.random.key(0))
    W.save_h5(params, tmp / "mobilenet.h5")
    return (tmp / "images", tmp / "labels.txt", tmp / "mobilenet.h5",
            "random weights, synthetic JPEGs (no real data found)")


def mobilenet_onnx(params: dict, *, size: int = 224, eps: float = 1e-3):
    """The MobileNet v1 of ``params`` (Keras layout) as an ONNX model with batch norm folded:
    input ``x (N, 3, size, size)`` preprocessed, output ``logits (N, classes)``. The folding
    is computed here in float64 NumPy, independently of :mod:`paper_repro.feedforward.fast_eval`."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits = [], []

    def const(name, a, dtype=np.float32):
        inits.append(numpy_helper.from_array(np.ascontiguousarray(a, dtype), name))
        return name

    def fold(bn):
        p = {k: np.asarray(v, np.float64) for k, v in params[bn].items()}
        scale = p["gamma"] / np.sqrt(p["moving_variance"] + eps)
        return scale, p["beta"] - p["moving_mean"] * scale

    def conv(x, name, w_hwio, b, stride, pads, *, group=1, relu6=True):
        w = const(f"{name}_W", np.transpose(w_hwio, (3, 2, 0, 1)))  # HWIO -> OIHW
        y = f"{name}_y"
        nodes.append(helper.make_node("Conv", [x, w, const(f"{name}_B", b)], [y],
                                      strides=[stride, stride], pads=pads, group=group))
        if not relu6:
            return y
        nodes.append(helper.make_node("Clip", [y, "zero", "six"], [f"{name}_a"]))
        return f"{name}_a"

    const("zero", np.float32(0))
    const("six", np.float32(6))
    scale, shift = fold("conv1_bn")
    # TF "same" for a 3x3 stride-2 convolution on an even size: the extra row/column at the end
    x = conv("x", "conv1", np.asarray(params["conv1"]["kernel"], np.float64) * scale, shift, 2,
             [0, 0, 1, 1])
    for i, (_, stride) in enumerate(_V1_BLOCKS, 1):
        scale, shift = fold(f"conv_dw_{i}_bn")
        dk = np.asarray(params[f"conv_dw_{i}"]["depthwise_kernel"], np.float64)[:, :, :, 0]
        x = conv(x, f"dw{i}", (dk * scale)[:, :, None, :], shift, stride,
                 [1, 1, 1, 1] if stride == 1 else [0, 0, 1, 1], group=dk.shape[-1])
        scale, shift = fold(f"conv_pw_{i}_bn")
        x = conv(x, f"pw{i}", np.asarray(params[f"conv_pw_{i}"]["kernel"], np.float64) * scale,
                 shift, 1, [0, 0, 0, 0])
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["gap"]))
    k, b = params["conv_preds"]["kernel"], params["conv_preds"]["bias"]
    x = conv("gap", "preds", k, b, 1, [0, 0, 0, 0], relu6=False)
    classes = int(np.shape(b)[0])
    nodes.append(helper.make_node("Reshape", [x, const("shape", [-1, classes], np.int64)],
                                  ["logits"]))
    graph = helper.make_graph(
        nodes, "mobilenet_folded",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model)
    return model


def timed(fns: dict, repeat: int) -> dict:
    """``{name: [seconds per run]}``: each function once as warm-up, then ``repeat`` rounds,
    the functions interleaved within each round."""
    for f in fns.values():
        f()
    out = {k: [] for k in fns}
    for _ in range(repeat):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            out[k].append(time.perf_counter() - t0)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200, help="images per evaluation")
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--repeat", type=int, default=3, help="timed rounds (best and median)")
    ap.add_argument("--skip-sweep", action="store_true", help="only parts 1 and 2")
    args = ap.parse_args(argv)
    images_dir, labels, h5, what = data_and_weights(args.n)
    print(f"data: {what}; {args.n} images, batch {args.batch}; jax {jax.__version__} "
          f"{jax.default_backend()}, {os.cpu_count()} cpus")
    cache = Path(tempfile.mkdtemp())
    src = imagenet.from_ground_truth(images_dir, labels)
    data = imagenet.load(src, size=224, policy="crop", cache_dir=cache, progress=False)
    n = min(args.n, len(src))
    u8 = np.asarray(data.images[:n])
    spec = models.get("mobilenet", 0.75)
    params = W.load(spec, h5)
    pdev = jax.device_put(params)
    xs = np.asarray(models.preprocess(u8, "tf"))  # (n, 224, 224, 3) float32
    fast, ref = fast_eval.make_eval_apply(spec), models.make_apply(spec)
    bs = args.batch

    def jax_run(f):
        def run():
            outs = [f(pdev, xs[i:i + bs]) for i in range(0, n, bs)]
            return np.concatenate([np.asarray(o) for o in outs])
        return run

    def eval_run(f):
        return lambda: imagenet.evaluate(f, params, data, batch_size=bs, preprocess_mode="tf",
                                         limit=n, progress=False)

    fns = {"fast": jax_run(fast), "reference": jax_run(ref),
           "evaluate(fast)": eval_run(fast), "evaluate(reference)": eval_run(ref)}
    y = {"fast": fns["fast"](), "reference": fns["reference"]()}
    try:
        import onnxruntime as ort
    except ModuleNotFoundError as e:
        print(f"onnxruntime baseline skipped: {e.name} is not installed "
              "(pip install -r requirements.txt)")
        ort = None
    if ort is not None:
        sess = ort.InferenceSession(mobilenet_onnx(params).SerializeToString(),
                                    providers=["CPUExecutionProvider"])
        xn = np.ascontiguousarray(xs.transpose(0, 3, 1, 2))  # NCHW, outside the timing

        def ort_run():
            return np.concatenate([sess.run(None, {"x": xn[i:i + bs]})[0]
                                   for i in range(0, n, bs)])
        fns["onnxruntime"] = ort_run
        y["onnxruntime"] = ort_run()
    scale = float(np.abs(y["reference"]).max())
    for k in [k for k in y if k != "reference"]:
        print(f"logits {k} vs reference: max |diff| {np.abs(y[k] - y['reference']).max():.2e} "
              f"(max |logit| {scale:.1f}), top-1 agreement "
              f"{np.mean(y[k].argmax(1) == y['reference'].argmax(1)):.4f}")
    top1 = {k: float(np.mean(v.argmax(1) == data.labels[:n])) for k, v in y.items()}
    print("top-1 on these images: " + ", ".join(f"{k} {100 * v:.2f}%" for k, v in top1.items()))

    t = timed(fns, args.repeat)
    best = {k: min(v) for k, v in t.items()}
    rate = {k: n / v for k, v in best.items()}
    print(f"throughput, best of {args.repeat} (img/s): " + ", ".join(
        f"{k} {v:.1f}" for k, v in rate.items()))

    def ratio(a, b):  # speed of a relative to b: best-of ratio and median of paired ratios
        med = float(np.median(np.asarray(t[b]) / np.asarray(t[a])))
        return f"{best[b] / best[a]:.2f} x (median of paired runs {med:.2f} x)"

    print(f"fast (batch norm folded) vs reference port: {ratio('fast', 'reference')}")
    print(f"evaluate(fast) vs evaluate(reference): {ratio('evaluate(fast)', 'evaluate(reference)')}")
    if "onnxruntime" in t:
        print(f"vs onnxruntime: {best['onnxruntime'] / best['fast']:.2f} x (target >= 0.8; "
              f"model only, batch {bs}; median of paired runs "
              f"{np.median(np.asarray(t['onnxruntime']) / np.asarray(t['fast'])):.2f} x); "
              f"whole evaluate(fast) vs onnxruntime: "
              f"{best['onnxruntime'] / best['evaluate(fast)']:.2f} x")

    # 2. Keras 3 predict (dev-only dependency)
    try:
        import keras
    except ImportError as e:
        print(f"Keras baseline skipped: keras does not import ({type(e).__name__}: {e}); it is a "
              "dev-only dependency (pip install -r requirements-dev.txt)")
    else:
        km = keras.applications.MobileNet(alpha=0.75, weights=None)
        km.load_weights(str(h5))
        tk = timed({"keras": lambda: km.predict(xs, batch_size=bs, verbose=0),
                    "fast": fns["fast"]}, args.repeat)
        yk = km.predict(xs, batch_size=bs, verbose=0)
        print(f"vs Keras predict: {min(tk['keras']) / min(tk['fast']):.2f} x (Keras "
              f"{n / min(tk['keras']):.1f} img/s); top-1 agreement "
              f"{np.mean(yk.argmax(1) == y['fast'].argmax(1)):.4f}")
    if args.skip_sweep:
        return 0

    # 3. 10-configuration sweep: decode-once cache vs decoding every time
    task = E.Task(name="bench", apply_fn=ref, params=params, data=data, preprocess_mode="tf",
                  info={"model": "mobilenet"}, batch_size=bs, eval_fn=fast)
    cfgs = E.sweep_configs(bits=[4, 5, 6, 7, 8], schemes=["linear"], fits=["max", "corr"],
                           granularities=["channel"], lloyd_max=False)[:10]
    for c in cfgs:  # warm-up: compile every configuration's fit and the evaluation step
        E.quantize_params(params, c)
    E.evaluate_config(task, cfgs[0], limit=n, progress=False)
    t0 = time.perf_counter()
    for c in cfgs:
        E.evaluate_config(task, c, limit=n, progress=False)
    t_cached = time.perf_counter() - t0
    t0 = time.perf_counter()
    for c in cfgs:
        arr = np.stack([imagenet.decode(src.read(i), size=224, policy="crop") for i in range(n)])
        t = E.Task(name="bench", apply_fn=ref, params=params, data=(arr, src.labels[:n]),
                   preprocess_mode="tf", info={"model": "mobilenet"}, batch_size=bs,
                   eval_fn=fast)
        E.evaluate_config(t, c, progress=False)
    t_decode = time.perf_counter() - t0
    t0 = time.perf_counter()
    np.stack([imagenet.decode(src.read(i), size=224, policy="crop") for i in range(n)])
    t_one = time.perf_counter() - t0
    print(f"10-config sweep: decode-once cache {t_cached:.1f} s, decoding every time "
          f"{t_decode:.1f} s -> ratio {t_decode / t_cached:.2f}x (target >= 5); one decode "
          f"pass of {n} images takes {t_one:.2f} s, so the ratio is bounded by "
          f"1 + decode / (quantize + evaluate) per configuration")
    return 0


if __name__ == "__main__":
    sys.exit(main())
