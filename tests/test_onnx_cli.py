"""ONNX models through ``paper-repro evaluate`` and ``paper-repro pack`` (paper_repro.feedforward.onnx_task).

A small synthetic image classifier (stem conv, a depthwise conv named ``depthwise`` to test
the channel axis, a 1x1 conv, global pooling, Gemm) is written with ``onnx.helper``; the
images are synthetic PNGs whose labels are onnxruntime's own float predictions for some and
random for the rest. onnxruntime is the oracle: the package's top-1 (float, quantized, packed,
and re-exported as ONNX) must equal onnxruntime's on the same crops. The real checks read
``$PAPER_REPRO_SHARED_DATA/onnx/shufflenet_v2_x0_5_fp16.onnx`` and the 1300-image sample and
are skipped with a message when that data is absent.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from paper_repro import cli
from paper_repro.core import quantize as Q
from paper_repro.feedforward import imagenet, onnx_task

ort = pytest.importorskip("onnxruntime")

S = 32  # input side of the synthetic graph
N_IMAGES = 48
TORCH_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
TORCH_STD = np.array([0.229, 0.224, 0.225], np.float32)
QUANT = ["--scheme", "exponential", "--fit", "corr", "--granularity", "channel", "--gain",
         "--bits", "3"]


# --------------------------------------------------------------------------- helpers


def make_model(*, seed: int = 0, shape=(None, 3, S, S), n_classes: int = 10) -> onnx.ModelProto:
    """NCHW classifier: Conv 3x3/2 + Relu, depthwise 3x3 + Relu, Conv 1x1, GAP, Flatten, Gemm."""
    rng = np.random.default_rng(seed)

    def w(*s, scale=0.3):
        return (rng.standard_normal(s) * scale).astype(np.float32)

    inits = {"w0": w(8, 3, 3, 3), "b0": w(8, scale=0.1), "w1": w(8, 1, 3, 3), "b1": w(8),
             "w2": w(16, 8, 1, 1), "b2": w(16, scale=0.1), "wf": w(n_classes, 16, scale=1.0),
             "bf": w(n_classes, scale=0.1)}
    nodes = [
        helper.make_node("Conv", ["x", "w0", "b0"], ["c0"], name="stem/Conv", kernel_shape=[3, 3],
                         strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c0"], ["r0"], name="stem/Relu"),
        helper.make_node("Conv", ["r0", "w1", "b1"], ["c1"], name="block/depthwise",
                         kernel_shape=[3, 3], group=8, pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="block/Relu"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="block/pointwise",
                         kernel_shape=[1, 1]),
        helper.make_node("GlobalAveragePool", ["c2"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten", axis=1),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["y"], name="fc", transB=1),
    ]
    dims = ["batch" if d is None else d for d in shape]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", n_classes])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def nchw(crops: np.ndarray, mode: str = "torch") -> np.ndarray:
    """``(N, H, W, 3)`` uint8 -> preprocessed ``(N, 3, H, W)`` float32, in numpy (torch:
    ImageNet mean / std of x / 255; caffe: BGR minus the ImageNet BGR means)."""
    x = crops.astype(np.float32)
    if mode == "torch":
        x = (x / 255.0 - TORCH_MEAN) / TORCH_STD
    else:
        x = x[..., ::-1] - np.array([103.939, 116.779, 123.68], np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def ort_top1(path: Path, crops: np.ndarray, labels: np.ndarray,
             mode: str = "torch") -> tuple[float, np.ndarray]:
    """``(top-1 %, predictions)`` of onnxruntime on the crops."""
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0].name
    pred = np.concatenate([sess.run(None, {inp: nchw(crops[i:i + 50], mode)})[0].argmax(1)
                           for i in range(0, len(crops), 50)])
    return 100.0 * float(np.mean(pred == labels)), pred


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def cli_json(capsys, *argv) -> dict:
    rc, out, err = run_cli(capsys, *argv, "--json")
    assert rc == 0, err
    return json.loads(out)


@pytest.fixture
def env(tmp_path, monkeypatch):
    """A synthetic model file, a flat image folder with labels, and a private image cache."""
    from PIL import Image

    monkeypatch.setenv("PAPER_REPRO_CACHE", str(tmp_path / "cache"))
    model_path = tmp_path / "tiny.onnx"
    onnx.save(make_model(), str(model_path))
    rng = np.random.default_rng(7)
    images = tmp_path / "images"
    images.mkdir()
    names = [f"ILSVRC2012_val_{i + 1:08d}.png" for i in range(N_IMAGES)]
    # a random colour and brightness gradient per image, plus noise: pooled features differ
    colour = rng.uniform(0, 255, (N_IMAGES, 1, 1, 3))
    ramp = np.linspace(-1, 1, S + 8)[None, None, :, None] * rng.uniform(-80, 80, (N_IMAGES, 1, 1, 3))
    noise = rng.normal(0, 20, (N_IMAGES, S + 6, S + 8, 3))
    full = np.clip(colour + ramp + noise, 0, 255).astype(np.uint8)
    for name, img in zip(names, full, strict=True):
        Image.fromarray(img).save(images / name)
    crops = full[:, 3:3 + S, 4:4 + S]  # what --policy crop keeps
    _, pred = ort_top1(model_path, crops, np.zeros(N_IMAGES, int))
    labels = np.where(np.arange(N_IMAGES) % 3 == 0, rng.integers(0, 10, N_IMAGES), pred)
    (tmp_path / "labels.txt").write_text(
        "".join(f"{n} {int(c)}\n" for n, c in zip(names, labels, strict=True)))
    data = ["--data", images, "--labels", tmp_path / "labels.txt", "--policy", "crop"]
    return {"model": model_path, "crops": crops, "labels": labels, "data": data,
            "tmp": tmp_path}


# --------------------------------------------------------------------------- the task


def test_input_size_from_the_graph(tmp_path):
    from paper_repro.feedforward import onnx_model as om

    assert onnx_task.input_size(om.load_onnx(make_model())) == S
    assert onnx_task.input_size(om.load_onnx(make_model(shape=(None, 3, None, None)))) == 224
    with pytest.raises(ValueError, match="only square"):
        onnx_task.input_size(om.load_onnx(make_model(shape=(None, 3, S, S + 2)), check=False))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\) RGB"):
        onnx_task.input_size(om.load_onnx(make_model(shape=(None, S, S, 3)), check=False))


def test_task_quantizes_output_channels_last(env):
    """A node named ``depthwise`` would get axis -2 from the Keras default; ONNX kernels
    keep their output channels last, and the task says so."""
    from paper_repro.feedforward import sweep

    task = onnx_task.onnx_task(env["model"], preprocess="torch", data=env["data"][1],
                               labels=env["data"][3], policy="crop", progress=False)
    assert task.channel_axis == -1 and task.info["source_format"] == "onnx"
    assert np.shape(task.data.images) == (N_IMAGES, S, S, 3)
    path = "block_depthwise/kernel"
    assert Q.default_channel_axis(path, np.zeros((3, 3, 1, 8))) == -2  # the trap avoided
    cfg = sweep.QuantConfig(scheme="linear", bits=3, granularity="channel")
    _, report = sweep.quantize_params(task.params, cfg, channel_axis=task.channel_axis)
    row = next(r for r in report if r["path"] == path)
    assert row["shape"] == (3, 3, 1, 8)
    assert row["quantizer"].levels.shape[0] == 8  # one codebook per output channel
    assert row["quantizer"].channel_axis % 4 == 3


# --------------------------------------------------------------------------- evaluate


def test_evaluate_float_equals_onnxruntime(env, capsys):
    row = cli_json(capsys, "evaluate", "--model", env["model"], "--preprocess", "torch",
                   *env["data"], "--batch-size", 20)
    want, _ = ort_top1(env["model"], env["crops"], env["labels"])
    assert row["n_images"] == N_IMAGES and row["n_errors"] == 0
    assert row["top1"] == pytest.approx(want, abs=1e-4)  # rows round to 4 decimals
    assert 60 < want < 100  # the labels make the check able to fail both ways
    assert row["model"] == "tiny.onnx" and row["preprocess"] == "torch"
    # another preprocessing: onnxruntime predicts otherwise, and the package follows it
    row_caffe = cli_json(capsys, "evaluate", "--model", env["model"], "--preprocess", "caffe",
                         *env["data"])
    want_caffe, _ = ort_top1(env["model"], env["crops"], env["labels"], "caffe")
    assert row_caffe["top1"] == pytest.approx(want_caffe, abs=1e-4)
    assert want_caffe != want


def test_pack_onnx_runs_in_onnxruntime_with_the_package_top1(env, capsys):
    q_onnx = env["tmp"] / "q.onnx"
    info = cli_json(capsys, "pack", "--model", env["model"], "--preprocess", "torch", *QUANT,
                    "--out", q_onnx)
    assert info["roundtrip_exact"] and info["n_quantized_leaves"] == 4
    assert info["meta"]["options"]["channel_axis"] == -1
    quant = cli_json(capsys, "evaluate", "--model", env["model"], "--preprocess", "torch",
                     *env["data"], *QUANT)
    ort_q, _ = ort_top1(q_onnx, env["crops"], env["labels"])
    assert quant["top1"] == pytest.approx(ort_q, abs=1e-4)  # rows round to 4 decimals
    assert quant["top1"] != quant["float_top1"]  # 3 bits changed predictions: not the float file
    again = cli_json(capsys, "evaluate", "--model", q_onnx, "--preprocess", "torch", *env["data"])
    assert again["top1"] == pytest.approx(quant["top1"], abs=1e-4)  # rows round to 4 decimals

    # the written weights are the package's quantized tree, on at most 2^3 - 1 levels
    m = onnx_task.load_model(env["model"])
    want, _ = Q.quantize_tree(m.params, scheme="exponential", fit="corr", granularity="channel",
                              gain=True, bits=3, channel_axis=-1)
    back = onnx_task.load_model(q_onnx)
    for node, d in want.items():
        for k, v in d.items():
            np.testing.assert_array_equal(np.asarray(back.params[node][k]), np.asarray(v))
    k = np.asarray(back.params["block_depthwise"]["kernel"])
    assert all(np.unique(k[..., c]).size <= 7 for c in range(8))
    props = {p.key: p.value for p in onnx.load(str(q_onnx)).metadata_props}
    assert json.loads(props["paper_repro.quantization"])["bits"] == 3

    # same inputs, same bytes
    q2 = env["tmp"] / "q2.onnx"
    cli_json(capsys, "pack", "--model", env["model"], "--preprocess", "torch", *QUANT,
             "--out", q2)
    assert q2.read_bytes() == q_onnx.read_bytes()


def test_packed_prq_of_an_onnx_graph_evaluates_as_stored(env, capsys):
    prq = env["tmp"] / "q.prq"
    info = cli_json(capsys, "pack", "--model", env["model"], "--preprocess", "torch", *QUANT,
                    "--out", prq)
    assert info["meta"]["source_format"] == "onnx" and info["roundtrip_exact"]
    quant = cli_json(capsys, "evaluate", "--model", env["model"], "--preprocess", "torch",
                     *env["data"], *QUANT)
    packed = cli_json(capsys, "evaluate", "--model", env["model"], "--preprocess", "torch",
                      *env["data"], "--weights", prq)
    assert packed["top1"] == pytest.approx(quant["top1"], abs=1e-4)  # rows round to 4 decimals
    assert packed["label"].endswith("(packed)") and packed["bits"] == 3
    assert packed["compression_ratio"] == pytest.approx(info["ratio"])

    # another ONNX file (same node names, other weights) refuses that packed file
    other = env["tmp"] / "other.onnx"
    onnx.save(make_model(seed=1), str(other))
    rc, _, err = run_cli(capsys, "evaluate", "--model", other, "--preprocess", "torch",
                         *env["data"], "--weights", prq)
    assert rc == 2 and "packed from another ONNX file" in err and err.count("\n") == 1
    # and the packed preprocessing must match
    rc, _, err = run_cli(capsys, "evaluate", "--model", env["model"], "--preprocess", "caffe",
                         *env["data"], "--weights", prq)
    assert rc == 2 and "--preprocess torch" in err


@pytest.mark.parametrize("command, extra, message", [
    ("evaluate", ["--weights", "w.h5"], "holds its own weights"),
    ("evaluate", ["--alpha", "0.75"], "width multiplier"),
    ("evaluate", [], "needs --preprocess"),
    ("pack", ["--weights", "w.h5"], "--weights is meaningless for an ONNX model"),
    ("pack", ["--entropy-coding"], "--entropy-coding applies to packed"),
])
def test_onnx_misuse_is_one_line_exit_2(env, capsys, command, extra, message):
    h5 = env["tmp"] / "w.h5"
    h5.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(100))  # an HDF5 signature: a Keras file
    argv = [command, "--model", env["model"], *(h5 if a == "w.h5" else a for a in extra)]
    if message != "needs --preprocess":
        argv += ["--preprocess", "torch"]
    if command == "evaluate":
        argv += env["data"]
    else:
        argv += ["--scheme", "linear", "--bits", "4", "--out", env["tmp"] / "q.onnx"]
    rc, out, err = run_cli(capsys, *argv)
    assert rc == 2 and out == ""
    assert message in err and err.count("\n") == 1, err
    assert not (env["tmp"] / "q.onnx").exists()


def test_preprocess_and_onnx_out_need_an_onnx_model(tmp_path, capsys):
    rc, _, err = run_cli(capsys, "evaluate", "--model", "digits_cnn", "--preprocess", "torch")
    assert rc == 2 and "--preprocess is for ONNX models" in err
    rc, _, err = run_cli(capsys, "pack", "--model", "digits_cnn", "--scheme", "linear",
                         "--bits", "4", "--out", tmp_path / "d.onnx")
    assert rc == 2 and "needs --model path/to/model.onnx" in err
    assert not (tmp_path / "d.onnx").exists()


# ------------------------------------------------- shapes of common CNN exports, with recipes
# Three small graphs in the forms exporters write: MobileNetV3 (HardSwish, squeeze-excite with
# HardSigmoid and a tensor-by-tensor Mul, residual Add), EfficientNet (SiLU as Sigmoid and
# Mul, squeeze-excite through ReduceMean, a MatMul classifier whose bias is a separate Add of a
# constant) and ResNet (batch norms kept as BatchNormalization nodes, MaxPool, the
# Shape/Gather/Concat/Reshape flatten). Channels are 32 wide so that per-channel codebooks
# leave room for codes at 6 bits average.


def _finish_pattern(nodes, inits, n_classes, name):
    graph = helper.make_graph(
        nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, S, S])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", n_classes])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model

def _wr(rng, *s, scale=0.3):
    return (rng.standard_normal(s) * scale).astype(np.float32)

def se_hardswish(seed=0, n_classes=10):
    """MobileNetV3-like: HardSwish stem, depthwise, squeeze-excite (GAP, 1x1, Relu, 1x1,
    HardSigmoid, Mul), 1x1 projection with a residual Add, GAP, Flatten, Gemm."""
    rng = np.random.default_rng(seed)
    i = {"w0": _wr(rng, 32, 3, 3, 3), "b0": _wr(rng, 32, scale=0.1), "w1": _wr(rng, 32, 1, 3, 3),
         "b1": _wr(rng, 32, scale=0.1), "ws1": _wr(rng, 8, 32, 1, 1), "bs1": _wr(rng, 8, scale=0.1),
         "ws2": _wr(rng, 32, 8, 1, 1), "bs2": _wr(rng, 32, scale=0.1), "w2": _wr(rng, 32, 32, 1, 1),
         "b2": _wr(rng, 32, scale=0.1), "wf": _wr(rng, n_classes, 32, scale=0.3),
         "bf": _wr(rng, n_classes, scale=0.1)}
    n = [helper.make_node("Conv", ["x", "w0", "b0"], ["c0"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
         helper.make_node("HardSwish", ["c0"], ["h0"]),
         helper.make_node("Conv", ["h0", "w1", "b1"], ["c1"], kernel_shape=[3, 3], group=32, pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c1"], ["r1"]),
         helper.make_node("GlobalAveragePool", ["r1"], ["p1"]),
         helper.make_node("Conv", ["p1", "ws1", "bs1"], ["s1"], kernel_shape=[1, 1]),
         helper.make_node("Relu", ["s1"], ["s2"]),
         helper.make_node("Conv", ["s2", "ws2", "bs2"], ["s3"], kernel_shape=[1, 1]),
         helper.make_node("HardSigmoid", ["s3"], ["s4"], alpha=1 / 6, beta=0.5),
         helper.make_node("Mul", ["r1", "s4"], ["e1"]),
         helper.make_node("Conv", ["e1", "w2", "b2"], ["c2"], kernel_shape=[1, 1]),
         helper.make_node("Add", ["c2", "h0"], ["a2"]),
         helper.make_node("GlobalAveragePool", ["a2"], ["g"]),
         helper.make_node("Flatten", ["g"], ["f"], axis=1),
         helper.make_node("Gemm", ["f", "wf", "bf"], ["y"], transB=1)]
    return _finish_pattern(n, i, n_classes, "se_hardswish")

def silu_reducemean(seed=0, n_classes=10):
    """EfficientNet-like: SiLU (Sigmoid, Mul), squeeze-excite through ReduceMean (keepdims)
    and Sigmoid, MatMul + Add classifier."""
    rng = np.random.default_rng(seed)
    i = {"w0": _wr(rng, 32, 3, 3, 3), "b0": _wr(rng, 32, scale=0.1), "w1": _wr(rng, 32, 1, 3, 3),
         "b1": _wr(rng, 32, scale=0.1), "ws1": _wr(rng, 8, 32, 1, 1), "bs1": _wr(rng, 8, scale=0.1),
         "ws2": _wr(rng, 32, 8, 1, 1), "bs2": _wr(rng, 32, scale=0.1), "w2": _wr(rng, 48, 32, 1, 1),
         "b2": _wr(rng, 48, scale=0.1), "wf": _wr(rng, 48, n_classes, scale=0.3),
         "bf": _wr(rng, n_classes, scale=0.1)}
    n = [helper.make_node("Conv", ["x", "w0", "b0"], ["c0"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
         helper.make_node("Sigmoid", ["c0"], ["g0"]), helper.make_node("Mul", ["c0", "g0"], ["h0"]),
         helper.make_node("Conv", ["h0", "w1", "b1"], ["c1"], kernel_shape=[3, 3], group=32, pads=[1, 1, 1, 1]),
         helper.make_node("Sigmoid", ["c1"], ["g1"]), helper.make_node("Mul", ["c1", "g1"], ["h1"]),
         helper.make_node("ReduceMean", ["h1"], ["p1"], axes=[2, 3], keepdims=1),
         helper.make_node("Conv", ["p1", "ws1", "bs1"], ["s1"], kernel_shape=[1, 1]),
         helper.make_node("Sigmoid", ["s1"], ["t1"]), helper.make_node("Mul", ["s1", "t1"], ["s2"]),
         helper.make_node("Conv", ["s2", "ws2", "bs2"], ["s3"], kernel_shape=[1, 1]),
         helper.make_node("Sigmoid", ["s3"], ["s4"]),
         helper.make_node("Mul", ["h1", "s4"], ["e1"]),
         helper.make_node("Conv", ["e1", "w2", "b2"], ["c2"], kernel_shape=[1, 1]),
         helper.make_node("ReduceMean", ["c2"], ["g"], axes=[2, 3], keepdims=0),
         helper.make_node("MatMul", ["g", "wf"], ["m"]),
         helper.make_node("Add", ["m", "bf"], ["y"])]
    return _finish_pattern(n, i, n_classes, "silu_reducemean")

def resnet_bn(seed=0, n_classes=10):
    """ResNet-like export that keeps its batch norms: Conv (no bias), BatchNormalization,
    Relu, MaxPool, a basic block with a residual Add, GAP, then the classic
    Shape/Gather/Unsqueeze/Concat/Reshape flatten, Gemm."""
    rng = np.random.default_rng(seed)
    def bn(c, tag):
        return {f"{tag}_s": (1 + 0.2 * rng.standard_normal(c)).astype(np.float32),
                f"{tag}_b": (0.1 * rng.standard_normal(c)).astype(np.float32),
                f"{tag}_m": (0.2 * rng.standard_normal(c)).astype(np.float32),
                f"{tag}_v": rng.uniform(0.5, 2.0, c).astype(np.float32)}
    i = {"w0": _wr(rng, 32, 3, 3, 3), **bn(32, "bn0"), "w1": _wr(rng, 32, 32, 3, 3, scale=0.1), **bn(32, "bn1"),
         "w2": _wr(rng, 32, 32, 3, 3, scale=0.1), **bn(32, "bn2"), "wf": _wr(rng, n_classes, 32, scale=0.3),
         "bf": _wr(rng, n_classes, scale=0.1), "zero": np.array([0], np.int64), "minus1": np.array([-1], np.int64)}
    def bnn(x, y, tag):
        return helper.make_node("BatchNormalization", [x, f"{tag}_s", f"{tag}_b", f"{tag}_m", f"{tag}_v"], [y], epsilon=1e-5)
    n = [helper.make_node("Conv", ["x", "w0"], ["c0"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
         bnn("c0", "n0", "bn0"), helper.make_node("Relu", ["n0"], ["r0"]),
         helper.make_node("MaxPool", ["r0"], ["m0"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
         helper.make_node("Conv", ["m0", "w1"], ["c1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
         bnn("c1", "n1", "bn1"), helper.make_node("Relu", ["n1"], ["r1"]),
         helper.make_node("Conv", ["r1", "w2"], ["c2"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
         bnn("c2", "n2", "bn2"), helper.make_node("Add", ["n2", "m0"], ["a2"]),
         helper.make_node("Relu", ["a2"], ["r2"]),
         helper.make_node("GlobalAveragePool", ["r2"], ["g"]),
         helper.make_node("Shape", ["g"], ["sh"]),
         helper.make_node("Gather", ["sh", "zero"], ["n"], axis=0),
         helper.make_node("Concat", ["n", "minus1"], ["shape"], axis=0),
         helper.make_node("Reshape", ["g", "shape"], ["f"]),
         helper.make_node("Gemm", ["f", "wf", "bf"], ["y"], transB=1)]
    return _finish_pattern(n, i, n_classes, "resnet_bn")

PATTERNS = {"se_hardswish": se_hardswish, "silu_reducemean": silu_reducemean,
            "resnet_bn": resnet_bn}


@pytest.mark.parametrize("pattern", sorted(PATTERNS))
def test_recipes_on_common_export_patterns(env, capsys, pattern):
    """Float top-1 equals onnxruntime's; the datafree recipe evaluates, and the file pack
    writes from it runs in onnxruntime with the recipe's own top-1."""
    path = env["tmp"] / f"{pattern}.onnx"
    onnx.save(PATTERNS[pattern](), str(path))
    model = ["--model", path, "--preprocess", "torch"]
    ort_float, _ = ort_top1(path, env["crops"], env["labels"])
    assert cli_json(capsys, "evaluate", *model, *env["data"])["top1"] == pytest.approx(
        ort_float, abs=1e-4)
    recipe = ["--recipe", "datafree", "--avg-bits", "6"]
    rec = cli_json(capsys, "evaluate", *model, *env["data"], *recipe)
    assert rec["recipe"] == "datafree" and 0 <= rec["top1"] <= 100
    q = env["tmp"] / f"{pattern}_q.onnx"
    cli_json(capsys, "pack", *model, *recipe, "--out", q)
    assert ort_top1(q, env["crops"], env["labels"])[0] == pytest.approx(rec["top1"], abs=1e-4)


def test_optimized_recipe_with_a_bias_that_is_a_separate_add(env, capsys):
    """A MatMul whose bias is an Add of a constant has nowhere to absorb its output shift:
    its shift is left uncorrected and the optimized recipe still runs."""
    path = env["tmp"] / "silu.onnx"
    onnx.save(PATTERNS["silu_reducemean"](), str(path))
    out = cli_json(capsys, "evaluate", "--model", path, "--preprocess", "torch", *env["data"],
                   "--recipe", "datafree-opt", "--avg-bits", "6")
    assert out["datafree_opt"]["layers"] == 6 and 0 <= out["top1"] <= 100


# --------------------------------------------------------------------------- real model


@pytest.fixture
def shufflenet(shared_data):
    path = shared_data / "onnx" / "shufflenet_v2_x0_5_fp16.onnx"
    root = shared_data / "imagenet-val-1300"
    if not path.is_file() or not (root / "labels.txt").is_file():
        pytest.skip(f"{path} or {root} is absent: the real ONNX command-line checks are skipped")
    return path, ["--data", root / "images", "--labels", root / "labels.txt", "--policy", "crop"]


@pytest.mark.shared_data
def test_shufflenet_evaluate_command_top1(shufflenet, capsys):
    """The shared check: float top-1 71.23 % on the 1300 images, centre crop 224."""
    path, data = shufflenet
    row = cli_json(capsys, "evaluate", "--model", path, "--preprocess", "torch", *data)
    assert row["n_images"] == 1300 and row["n_errors"] == 0
    assert abs(row["top1"] - 71.23) <= 0.1, row


@pytest.mark.shared_data
def test_shufflenet_quantized_onnx_matches_onnxruntime(shufflenet, tmp_path, capsys):
    """5-bit exponential per-channel ShuffleNet written as ONNX: onnxruntime's top-1 on 200
    real images equals the package's quantized evaluation of the same configuration."""
    path, data = shufflenet
    quant = ["--scheme", "exponential", "--fit", "corr", "--granularity", "channel", "--gain",
             "--bits", "5"]
    q_onnx = tmp_path / "shufflenet_exp5.onnx"
    info = cli_json(capsys, "pack", "--model", path, "--preprocess", "torch", *quant,
                    "--out", q_onnx)
    assert info["n_quantized_leaves"] == 57 and info["mean_r"] > 0.99
    row = cli_json(capsys, "evaluate", "--model", path, "--preprocess", "torch", *data, *quant,
                   "--limit", 200)
    src = imagenet.from_ground_truth(data[1], data[3])
    images = imagenet.load(src, size=224, policy="crop", progress=False)
    crops = np.asarray(images.images[:200])
    labels = np.asarray(images.labels[:200])
    ort_q, _ = ort_top1(q_onnx, crops, labels)
    assert row["n_images"] == 200
    assert row["top1"] == pytest.approx(ort_q, abs=1e-4)  # rows round to 4 decimals
    assert 45 < row["top1"] < row["float_top1"]  # measured 53.5 on these 200
