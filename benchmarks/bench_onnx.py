"""ONNX evaluation speed: the package's JAX port of an ONNX graph vs onnxruntime, same images.

Both evaluate the same float32 graph on the same preprocessed batches on this machine, after
one warm-up batch each (compilation / session setup not timed): the package through
:func:`paper_repro.feedforward.imagenet.evaluate` (``load_onnx(...).apply_nhwc``, torch
preprocessing inside the jitted step, top-1 / top-5 kept), onnxruntime's CPU provider on the
graph written back in float32 (:func:`~paper_repro.feedforward.onnx_model.save_onnx`), with
the same preprocessing in numpy and the same batch size. Each side runs ``--repeats``
times, interleaved, and keeps its best time. Prints both throughputs, both top-1s and
``vs onnxruntime: R x`` (ours / onnxruntime's throughput; target R >= 0.5).

Data: ShuffleNetV2 x0.5 (``onnx/shufflenet_v2_x0_5_fp16.onnx``) and the 1300 validation
images (``imagenet-val-1300``, centre crop 224) from the package's real-data folder
(``$PAPER_REPRO_SHARED_DATA``); without them, a synthetic ShuffleNet-like graph (stem,
depthwise and 1x1 convolutions, channel shuffles) on random images, and one line says which
is missing. Run: ``python benchmarks/bench_onnx.py [--n 1300] [--batch 50] [--repeats 2]``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from paper_repro.feedforward import imagenet, onnx_model
from paper_repro.feedforward import weights as W

TORCH_MEAN = np.asarray(imagenet._TORCH_MEAN, np.float32)
TORCH_STD = np.asarray(imagenet._TORCH_STD, np.float32)


def synthetic_model(path: Path, *, seed: int = 0) -> None:
    """A small ShuffleNet-like NCHW classifier (224x224 input, 1000 classes) at ``path``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    inits, nodes = {}, []

    def conv(x, c_in, c_out, k, *, stride=1, group=1, relu=True):
        i = len(nodes)
        inits[f"w{i}"] = (rng.standard_normal((c_out, c_in // group, k, k))
                          * np.sqrt(2.0 / (c_in // group * k * k))).astype(np.float32)
        inits[f"b{i}"] = np.zeros(c_out, np.float32)
        nodes.append(helper.make_node("Conv", [x, f"w{i}", f"b{i}"], [f"c{i}"], name=f"conv{i}",
                                      kernel_shape=[k, k], strides=[stride, stride],
                                      pads=[k // 2] * 4, group=group))
        if not relu:
            return f"c{i}"
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"], name=f"relu{i}"))
        return f"r{i}"

    x = conv("images", 3, 24, 3, stride=2)
    nodes.append(helper.make_node("MaxPool", [x], ["p"], name="pool", kernel_shape=[3, 3],
                                  strides=[2, 2], pads=[1, 1, 1, 1]))
    x, c, h = "p", 24, 56
    for stage, (c_out, stride) in enumerate(((48, 2), (96, 2), (192, 2))):
        x = conv(x, c, c_out, 1)
        x = conv(x, c_out, c_out, 3, stride=stride, group=c_out, relu=False)
        x = conv(x, c_out, c_out, 1)
        h //= stride
        split, merge = f"split{stage}", f"merge{stage}"
        inits[split] = np.array([0, 2, c_out // 2, h, h], np.int64)
        inits[merge] = np.array([0, c_out, h, h], np.int64)
        nodes += [helper.make_node("Reshape", [x, split], [f"s{stage}a"], name=f"shuf{stage}a"),
                  helper.make_node("Transpose", [f"s{stage}a"], [f"s{stage}b"],
                                   name=f"shuf{stage}b", perm=[0, 2, 1, 3, 4]),
                  helper.make_node("Reshape", [f"s{stage}b", merge], [f"s{stage}c"],
                                   name=f"shuf{stage}c")]
        x, c = f"s{stage}c", c_out
    x = conv(x, c, 512, 1)
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["g"], name="gap"))
    nodes.append(helper.make_node("Flatten", ["g"], ["f"], name="flatten"))
    inits["wf"] = (rng.standard_normal((1000, 512)) * 0.05).astype(np.float32)
    inits["bf"] = np.zeros(1000, np.float32)
    nodes.append(helper.make_node("Gemm", ["f", "wf", "bf"], ["classes"], name="fc", transB=1))
    graph = helper.make_graph(
        nodes, "synthetic",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, 224, 224])],
        [helper.make_tensor_value_info("classes", TensorProto.FLOAT, ["batch", 1000])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def model_and_data(n: int, tmp: Path):
    """``(onnx path, Images, description)``: the real ones when present, else synthetic."""
    root = W.shared_data_dir()
    model = root / "onnx" / "shufflenet_v2_x0_5_fp16.onnx" if root else None
    val = root / "imagenet-val-1300" if root else None
    lacks = []
    if model is None or not model.is_file():
        lacks.append("the ShuffleNet ONNX file (onnx/shufflenet_v2_x0_5_fp16.onnx)")
        model = tmp / "synthetic.onnx"
        synthetic_model(model)
    if val is not None and (val / "labels.txt").is_file():
        src = imagenet.from_ground_truth(val / "images", val / "labels.txt")
        data = imagenet.load(src, size=224, policy="crop", progress=False)
        real_images = True
    else:
        real_images = False
        lacks.append("the 1300 validation images (imagenet-val-1300)")
        rng = np.random.default_rng(0)
        data = imagenet.Images.from_arrays(rng.integers(0, 256, (n, 224, 224, 3), np.uint8),
                                           rng.integers(0, 1000, n))
    if lacks:
        print(f"lacking {' and '.join(lacks)} under $PAPER_REPRO_SHARED_DATA: using "
              f"{model.name} and {'real' if real_images else 'random'} images")
    return model, data, ("real ShuffleNetV2 x0.5, real images" if not lacks else
                         "stand-in data (timings only; top-1 is chance level)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1300, help="images (at most the data's count)")
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=2, help="timed runs per side (best kept)")
    args = ap.parse_args()
    try:
        import onnxruntime as ort
    except ImportError:
        print("onnxruntime is not installed (pip install onnxruntime): nothing to compare with")
        return
    import jax

    tmp = Path(tempfile.mkdtemp())
    path, data, what = model_and_data(args.n, tmp)
    n = min(args.n, len(data.labels))
    labels = np.asarray(data.labels[:n])
    m = onnx_model.load_onnx(path)
    f32 = onnx_model.save_onnx(m, m.params, tmp / "float32.onnx")
    opts = ort.SessionOptions()
    sess = ort.InferenceSession(str(f32), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    print(f"{what}: {path.name}, {n} images, batch {args.batch}, JAX {jax.__version__} "
          f"({jax.default_backend()}), onnxruntime {ort.__version__} "
          f"({opts.intra_op_num_threads or 'default'} threads)")

    def ours():
        res = imagenet.evaluate(m.apply_nhwc, m.params, data, batch_size=args.batch,
                                preprocess_mode="torch", limit=n, progress=False)
        return 100 * res.top1

    def theirs():
        pred = np.empty(n, np.int64)
        for i in range(0, n, args.batch):
            x = np.asarray(data.images[i:min(i + args.batch, n)]).astype(np.float32)
            x = ((x / 255.0 - TORCH_MEAN) / TORCH_STD).transpose(0, 3, 1, 2)
            y = sess.run(None, {name: np.ascontiguousarray(x)})[0]
            pred[i:i + len(y)] = y.argmax(1)
        return 100 * float(np.mean(pred == labels))

    # warm-up: compile the jitted step (and the padded last batch) / first ORT run
    imagenet.evaluate(m.apply_nhwc, m.params, data, batch_size=args.batch,
                      preprocess_mode="torch", limit=min(n, args.batch), progress=False)
    sess.run(None, {name: np.zeros((args.batch, 3, 224, 224), np.float32)})
    t_ours, t_ort = [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        top1_ours = ours()
        t_ours.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        top1_ort = theirs()
        t_ort.append(time.perf_counter() - t0)
    r_ours, r_ort = n / min(t_ours), n / min(t_ort)
    print(f"package (JAX): {r_ours:.1f} img/s, top-1 {top1_ours:.2f}%  "
          f"[runs {', '.join(f'{t:.2f}' for t in t_ours)} s]")
    print(f"onnxruntime:   {r_ort:.1f} img/s, top-1 {top1_ort:.2f}%  "
          f"[runs {', '.join(f'{t:.2f}' for t in t_ort)} s]")
    print(f"vs onnxruntime: {r_ours / r_ort:.2f} x (target >= 0.5)")


if __name__ == "__main__":
    main()
