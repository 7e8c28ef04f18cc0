"""ONNX import / export (paper_repro.feedforward.onnx_model), onnxruntime as the oracle.

Small graphs are built here with ``onnx.helper`` (one per operator family, random weights
and inputs) and run both by onnxruntime and by ``load_onnx(...).apply``; outputs must agree
within 1e-4 relative (max |difference| / max |reference|). Image graphs also run through
``apply_nhwc``; convolution graphs with both convolution forms (``conv_impl="cpu"`` and
``"xla"``).

The real-model checks read ``$PAPER_REPRO_SHARED_DATA/onnx/shufflenet_v2_x0_5_fp16.onnx``
(torchvision ShuffleNetV2 x0.5, float16) and the 1300-image ImageNet sample (found through
the package's data resolver, the ``shared_data`` fixture); they are skipped with a message
when that data is absent.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from paper_repro.feedforward import onnx_model as om

ort = pytest.importorskip("onnxruntime")

RTOL = 1e-4
BOTH = ("cpu", "xla")  # the convolution forms of load_onnx(conv_impl=...)
F = TensorProto.FLOAT


# --------------------------------------------------------------------------- helpers


def _rng(seed=0):
    return np.random.default_rng(seed)


def _w(shape, seed=0, scale=0.5):
    return (_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def make(nodes, x_shape, inits=(), *, opset=17, out="y", x_type=F, out_type=F, dynamic_batch=False):
    """A one-input one-output model; ``inits`` is a dict name -> numpy array."""
    shape = list(x_shape)
    if dynamic_batch:
        shape[0] = "batch"
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", x_type, shape)],
        [helper.make_tensor_value_info(out, out_type, None)],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in dict(inits).items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8 if opset <= 17 else 9
    return model


def run_ort(model, x):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def rel_err(y, ref):
    y, ref = np.asarray(y, np.float64), np.asarray(ref, np.float64)
    assert y.shape == ref.shape, (y.shape, ref.shape)
    scale = max(np.abs(ref).max(), 1e-12)
    return float(np.abs(y - ref).max() / scale)


def check(model, x, *, impls=("cpu",)):
    """apply (with each convolution form in ``impls``) and apply_nhwc agree with onnxruntime."""
    ref = run_ort(model, x)
    for impl in impls:
        m = om.load_onnx(model, conv_impl=impl)
        y = np.asarray(m.apply(m.params, x))
        assert rel_err(y, ref) <= RTOL, (impl, rel_err(y, ref))
        if x.ndim >= 3:
            y2 = np.asarray(m.apply_nhwc(m.params, np.moveaxis(x, 1, -1)))
            assert rel_err(y2, ref) <= RTOL, (impl, "nhwc", rel_err(y2, ref))
    return m, ref


def to_float32(model):
    """An independent float16 -> float32 conversion of a graph, for onnxruntime: initializers,
    Constant values, Cast targets and value types."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    for t in model.graph.initializer:
        if t.data_type == TensorProto.FLOAT16:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float32), t.name))
    for n in model.graph.node:
        for a in n.attribute:
            if a.type == onnx.AttributeProto.TENSOR and a.t.data_type == TensorProto.FLOAT16:
                a.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(a.t).astype(np.float32)))
            if n.op_type == "Cast" and a.name == "to" and a.i == TensorProto.FLOAT16:
                a.i = F
    for v in list(model.graph.input) + list(model.graph.output) + list(model.graph.value_info):
        if v.type.tensor_type.elem_type == TensorProto.FLOAT16:
            v.type.tensor_type.elem_type = F
    return model


def conv_model(x_shape, w_shape, *, bias=True, relu=True, seed=1, **attrs):
    inits = {"W": _w(w_shape, seed)}
    ins = ["x", "W"]
    if bias:
        inits["B"] = _w((w_shape[0],), seed + 1)
        ins.append("B")
    nodes = [helper.make_node("Conv", ins, ["c" if relu else "y"], name="/block/conv", **attrs)]
    if relu:
        nodes.append(helper.make_node("Relu", ["c"], ["y"]))
    return make(nodes, x_shape, inits)


def x_of(shape, seed=3):
    return _rng(seed).standard_normal(shape).astype(np.float32)


# --------------------------------------------------------------------------- convolutions


CONV_CASES = {
    "plain3x3": ((2, 4, 9, 9), (6, 4, 3, 3), dict(pads=[1, 1, 1, 1])),
    "stride2_dilated": (
        (2, 4, 13, 11),
        (5, 4, 3, 3),
        dict(strides=[2, 2], dilations=[2, 2], pads=[2, 1, 2, 1]),
    ),
    "asym_pads": ((1, 3, 8, 10), (4, 3, 3, 2), dict(pads=[0, 1, 2, 1])),
    "grouped": ((2, 8, 10, 10), (12, 2, 3, 3), dict(group=4, pads=[1, 1, 1, 1])),
    "grouped_strided": (
        (2, 6, 11, 11),
        (6, 3, 3, 3),
        dict(group=2, strides=[2, 2], pads=[1, 1, 1, 1]),
    ),
    "depthwise": ((2, 8, 12, 12), (8, 1, 3, 3), dict(group=8, pads=[1, 1, 1, 1])),
    "depthwise_s2_dil": (
        (2, 8, 15, 13),
        (8, 1, 3, 3),
        dict(group=8, strides=[2, 2], dilations=[2, 1], pads=[2, 1, 1, 1]),
    ),
    "depthwise_mult2_5x5": ((1, 4, 12, 12), (8, 1, 5, 5), dict(group=4, pads=[2, 2, 2, 2])),
    "same_upper_s2": ((1, 3, 10, 9), (4, 3, 3, 3), dict(auto_pad="SAME_UPPER", strides=[2, 2])),
    "same_lower": ((1, 3, 10, 9), (4, 3, 4, 4), dict(auto_pad="SAME_LOWER")),
    "valid": ((1, 3, 10, 9), (4, 3, 3, 3), dict(auto_pad="VALID")),
    "depthwise_same_upper": (
        (1, 6, 9, 9),
        (6, 1, 3, 3),
        dict(group=6, auto_pad="SAME_UPPER", strides=[2, 2]),
    ),
    "pointwise": ((2, 16, 7, 7), (24, 16, 1, 1), dict()),
    "pointwise_s2": ((2, 16, 8, 8), (24, 16, 1, 1), dict(strides=[2, 2])),
    "rgb_stem": ((2, 3, 32, 32), (8, 3, 3, 3), dict(strides=[2, 2], pads=[1, 1, 1, 1])),
    "conv1d": ((2, 4, 20), (6, 4, 5), dict(pads=[2, 2], strides=[2])),
    "no_kernel_shape_attr": ((1, 4, 6, 6), (4, 4, 2, 2), dict()),
}


@pytest.mark.parametrize("case", sorted(CONV_CASES))
def test_conv(case):
    xs, ws, attrs = CONV_CASES[case]
    if "auto_pad" not in attrs and len(ws) == 4 and case != "no_kernel_shape_attr":
        attrs = dict(attrs, kernel_shape=list(ws[2:]))
    check(conv_model(xs, ws, **attrs), x_of(xs), impls=BOTH)


def test_conv_without_bias_and_batchnorm():
    c = 6
    inits = {
        "W": _w((c, 4, 3, 3)),
        "s": _w((c,), 2) + 1.0,
        "b": _w((c,), 3),
        "m": _w((c,), 4),
        "v": np.abs(_w((c,), 5)) + 0.5,
    }
    nodes = [
        helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node(
            "BatchNormalization", ["c", "s", "b", "m", "v"], ["y"], epsilon=1e-3, name="bn"
        ),
    ]
    m, _ = check(make(nodes, (2, 4, 8, 8), inits), x_of((2, 4, 8, 8)))
    assert set(m.params["bn"]) == {"scale", "bias", "mean", "var"}
    assert set(m.params[m.nodes[0].name]) == {"kernel"}


def test_batchnorm_2d_input():
    inits = {
        "s": _w((5,), 2) + 1.0,
        "b": _w((5,), 3),
        "m": _w((5,), 4),
        "v": np.abs(_w((5,), 5)) + 0.5,
    }
    nodes = [helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"])]
    check(make(nodes, (3, 5), inits), x_of((3, 5)))


# --------------------------------------------------------------------------- Gemm / MatMul


@pytest.mark.parametrize(
    "trans_a,trans_b,alpha,beta,c_shape",
    [
        (0, 0, 1.0, 1.0, (7,)),
        (0, 1, 0.5, 2.0, (1, 7)),
        (1, 1, 1.5, 0.25, (7,)),
        (1, 0, 1.0, 1.0, None),
    ],
)
def test_gemm(trans_a, trans_b, alpha, beta, c_shape):
    k, n, batch = 5, 7, 3
    b = _w((n, k) if trans_b else (k, n))
    inits = {"B": b}
    ins = ["x", "B"]
    if c_shape is not None:
        inits["C"] = _w(c_shape, 2)
        ins.append("C")
    node = helper.make_node(
        "Gemm", ins, ["y"], name="fc", transA=trans_a, transB=trans_b, alpha=alpha, beta=beta
    )
    xs = (k, batch) if trans_a else (batch, k)
    m, _ = check(make([node], xs, inits), x_of(xs))
    assert m.params["fc"]["kernel"].shape == (k, n)  # (in, out) whatever transB says
    np.testing.assert_array_equal(m.params["fc"]["kernel"], b.T if trans_b else b)


def test_matmul_weight_and_activation_product():
    w = _w((6, 4))
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["h"], name="mm"),
        helper.make_node("Transpose", ["h"], ["ht"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["h", "ht"], ["y"]),  # both operands computed
    ]
    m, _ = check(make(nodes, (2, 3, 6), {"W": w}), x_of((2, 3, 6)))
    np.testing.assert_array_equal(m.params["mm"]["kernel"], w)
    assert [n.op_type for n in m.nodes] == ["MatMul", "Transpose", "MatMul"]
    assert m.nodes[2].weights == {}


# --------------------------------------------------------------------------- element-wise


def test_activations_and_arithmetic():
    """Conv output (channels-last inside) combined with constants of several broadcast shapes
    and with the (channels-first) input itself."""
    inits = {
        "W": _w((4, 4, 3, 3)),
        "cc": _w((4, 1, 1), 2),
        "cw": _w((7,), 3) + 3.0,
        "s": np.asarray(0.7, np.float32),
        "lo": np.asarray(-0.5, np.float32),
        "hi": np.asarray(0.8, np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c", "cc"], ["a1"]),
        helper.make_node("Mul", ["a1", "cw"], ["a2"]),
        helper.make_node("Sub", ["a2", "x"], ["a3"]),
        helper.make_node("Div", ["a3", "cw"], ["a4"]),
        helper.make_node("Mul", ["s", "a4"], ["a5"]),
        helper.make_node("HardSwish", ["a5"], ["h1"]),
        helper.make_node("HardSigmoid", ["a5"], ["h2"], alpha=0.3, beta=0.4),
        helper.make_node("Sigmoid", ["a5"], ["h3"]),
        helper.make_node("Clip", ["a5", "lo", "hi"], ["h4"]),
        helper.make_node("Clip", ["a5", "", "hi"], ["h5"]),
        helper.make_node("LeakyRelu", ["a5"], ["h6"], alpha=0.1),
        helper.make_node("Tanh", ["a5"], ["h7"]),
        helper.make_node("Relu", ["a5"], ["h8"]),
        helper.make_node(
            "Concat", ["h1", "h2", "h3", "h4", "h5", "h6", "h7", "h8"], ["cat"], axis=1
        ),
        helper.make_node("Identity", ["cat"], ["id"]),
        helper.make_node("Dropout", ["id"], ["y"]),
    ]
    check(make(nodes, (2, 4, 6, 7), inits), x_of((2, 4, 6, 7)) * 3)


def test_clip_attributes_old_opset():
    nodes = [helper.make_node("Clip", ["x"], ["y"], min=-0.3, max=0.6)]
    check(make(nodes, (2, 5), opset=6), x_of((2, 5)))


def test_softmax_and_cast():
    nodes = [
        helper.make_node("Cast", ["x"], ["c"], to=TensorProto.FLOAT),
        helper.make_node("Softmax", ["c"], ["y"], axis=-1),
    ]
    check(make(nodes, (3, 10)), x_of((3, 10)))


# --------------------------------------------------------------------------- shapes and layout


def _shuffle_nodes(src, dst, groups, tag):
    """torch-style channel shuffle: the target shapes come from Shape -> Gather chains."""
    c = helper.make_tensor
    return [
        helper.make_node("Shape", [src], [f"{tag}s"]),
        helper.make_node("Gather", [f"{tag}s", "i0"], [f"{tag}n"], axis=0),
        helper.make_node("Gather", [f"{tag}s", "i1"], [f"{tag}c"], axis=0),
        helper.make_node("Gather", [f"{tag}s", "i2"], [f"{tag}h"], axis=0),
        helper.make_node("Gather", [f"{tag}s", "i3"], [f"{tag}w"], axis=0),
        helper.make_node(
            "Constant", [], [f"{tag}g"], value=c(f"{tag}gv", TensorProto.INT64, [], [groups])
        ),
        helper.make_node("Div", [f"{tag}c", f"{tag}g"], [f"{tag}cg"]),
        helper.make_node("Unsqueeze", [f"{tag}n", "ax0"], [f"{tag}un"]),
        helper.make_node("Unsqueeze", [f"{tag}g", "ax0"], [f"{tag}ug"]),
        helper.make_node("Unsqueeze", [f"{tag}cg", "ax0"], [f"{tag}ucg"]),
        helper.make_node("Unsqueeze", [f"{tag}h", "ax0"], [f"{tag}uh"]),
        helper.make_node("Unsqueeze", [f"{tag}w", "ax0"], [f"{tag}uw"]),
        helper.make_node(
            "Concat",
            [f"{tag}un", f"{tag}ug", f"{tag}ucg", f"{tag}uh", f"{tag}uw"],
            [f"{tag}shape5"],
            axis=0,
        ),
        helper.make_node("Reshape", [src, f"{tag}shape5"], [f"{tag}r"]),
        helper.make_node("Transpose", [f"{tag}r"], [f"{tag}t"], perm=[0, 2, 1, 3, 4]),
        helper.make_node(
            "Concat", [f"{tag}un", "minus1", f"{tag}uh", f"{tag}uw"], [f"{tag}shape4"], axis=0
        ),
        helper.make_node("Reshape", [f"{tag}t", f"{tag}shape4"], [dst]),
    ]


def test_channel_shuffle_split_slice_concat():
    """A ShuffleNet unit: Split / Slice into branches, depthwise and 1x1 convs, Concat,
    channel shuffle through Reshape + Transpose + Reshape with targets folded from Shape."""
    c = 8
    inits = {
        "W1": _w((c // 2, c // 2, 1, 1), 1),
        "B1": _w((c // 2,), 2),
        "Wd": _w((c // 2, 1, 3, 3), 3),
        "Bd": _w((c // 2,), 4),
        "W2": _w((c // 2, c // 2, 1, 1), 5),
        "B2": _w((c // 2,), 6),
        "Wst": _w((c, 3, 3, 3), 7),
        "i0": np.asarray(0, np.int64),
        "i1": np.asarray(1, np.int64),
        "i2": np.asarray(2, np.int64),
        "i3": np.asarray(3, np.int64),
        "ax0": np.asarray([0], np.int64),
        "minus1": np.asarray([-1], np.int64),
        "st": np.asarray([0], np.int64),
        "mid": np.asarray([c // 2], np.int64),
        "end": np.asarray([2**62], np.int64),
        "axc": np.asarray([1], np.int64),
        "half": np.asarray([c // 2, c // 2], np.int64),
    }
    nodes = [
        helper.make_node("Conv", ["x", "Wst"], ["stem"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["stem"], ["s0"]),
        helper.make_node("Slice", ["s0", "st", "mid", "axc"], ["keep"]),
        helper.make_node("Slice", ["s0", "mid", "end", "axc"], ["br"]),
        helper.make_node("Conv", ["br", "W1", "B1"], ["b1"]),
        helper.make_node("Relu", ["b1"], ["b1r"]),
        helper.make_node("Conv", ["b1r", "Wd", "Bd"], ["bd"], group=c // 2, pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["bd", "W2", "B2"], ["b2"]),
        helper.make_node("Relu", ["b2"], ["b2r"]),
        helper.make_node("Concat", ["keep", "b2r"], ["cat"], axis=1),
        *_shuffle_nodes("cat", "shuf", 2, "a"),
        helper.make_node("Split", ["shuf", "half"], ["p", "q"], axis=1),
        helper.make_node("Add", ["p", "q"], ["pq"]),
        helper.make_node("Concat", ["pq", "shuf"], ["y"], axis=-3),
    ]
    model = make(nodes, (2, 3, 16, 16), inits, dynamic_batch=True)
    m, _ = check(model, x_of((2, 3, 16, 16)), impls=BOTH)
    y5 = np.asarray(m.apply(m.params, x_of((5, 3, 16, 16), 9)))  # another batch size
    assert rel_err(y5, run_ort(model, x_of((5, 3, 16, 16), 9))) <= RTOL


@pytest.mark.parametrize(
    "starts,ends,axes,steps",
    [
        ([1, -3], [100, -1], [2, 3], [1, 1]),
        ([-1], [-100], [-1], [-2]),
        ([5, 0], [0, 3], [2, 1], [-1, 2]),
        ([0], [2], [0], None),
    ],
)
def test_slice(starts, ends, axes, steps):
    inits = {
        "s": np.asarray(starts, np.int64),
        "e": np.asarray(ends, np.int64),
        "a": np.asarray(axes, np.int64),
    }
    ins = ["xr", "s", "e", "a"]
    if steps is not None:
        inits["k"] = np.asarray(steps, np.int64)
        ins.append("k")
    nodes = [helper.make_node("Relu", ["x"], ["xr"]), helper.make_node("Slice", ins, ["y"])]
    check(make(nodes, (3, 4, 7, 8), inits), x_of((3, 4, 7, 8)))


@pytest.mark.parametrize(
    "opset,how", [(13, "sizes"), (13, "equal"), (18, "num_outputs"), (11, "attr")]
)
def test_split(opset, how):
    inits = {"W": _w((6, 3, 1, 1))}
    kw, ins = {}, ["c"]
    if how == "sizes":
        inits["sp"] = np.asarray([1, 2, 3], np.int64)
        ins.append("sp")
    elif how == "num_outputs":
        kw["num_outputs"] = 3
    elif how == "attr":
        kw["split"] = [3, 2, 1]
    nodes = [
        helper.make_node("Conv", ["x", "W"], ["c"]),
        helper.make_node("Split", ins, ["a", "b", "d"], axis=1, **kw),
        helper.make_node("Sigmoid", ["b"], ["bs"]),
        helper.make_node("Concat", ["d", "bs", "a"], ["y"], axis=1),
    ]
    check(make(nodes, (2, 3, 5, 5), inits, opset=opset), x_of((2, 3, 5, 5)))


def test_attribute_forms_of_old_opsets():
    """Slice (opset 9), Pad (opset 10) and Softmax (opset 11, 2-D coercion) take attributes."""
    x = x_of((2, 3, 6, 5))
    nodes = [helper.make_node("Slice", ["x"], ["y"], starts=[1, -4], ends=[3, 100], axes=[1, 3])]
    check(make(nodes, x.shape, opset=9), x)
    nodes = [helper.make_node("Pad", ["x"], ["y"], pads=[0, 0, 1, 2, 0, 1, 0, 1], value=0.25)]
    check(make(nodes, x.shape, opset=10), x)
    nodes = [helper.make_node("Softmax", ["x"], ["y"], axis=2)]
    check(make(nodes, x.shape, opset=11), x)


def test_reshape_flatten_squeeze_unsqueeze():
    inits = {
        "shp": np.asarray([0, -1, 3], np.int64),
        "ax": np.asarray([1, -1], np.int64),
        "sq": np.asarray([1], np.int64),
        "W": _w((6, 4, 3, 3)),
    }
    nodes = [
        helper.make_node("Conv", ["x", "W"], ["c"]),  # (2, 6, 4, 3)
        helper.make_node("Reshape", ["c", "shp"], ["r"]),  # (2, 24, 3)
        helper.make_node("Unsqueeze", ["r", "ax"], ["u"]),  # (2, 1, 24, 3, 1)
        helper.make_node("Squeeze", ["u", "sq"], ["s"]),  # (2, 24, 3, 1)
        helper.make_node("Squeeze", ["s"], ["s2"]),  # (2, 24, 3)
        helper.make_node("Flatten", ["s2"], ["y"], axis=2),  # (48, 3)
    ]
    check(make(nodes, (2, 4, 6, 5), inits), x_of((2, 4, 6, 5)))


def test_squeeze_unsqueeze_attributes_old_opset():
    nodes = [
        helper.make_node("Unsqueeze", ["x"], ["u"], axes=[0, 3]),
        helper.make_node("Squeeze", ["u"], ["y"], axes=[0]),
    ]
    check(make(nodes, (2, 5), opset=11), x_of((2, 5)))


# --------------------------------------------------------------------------- pools and reductions


POOL_CASES = {
    "max_pad_s2": ("MaxPool", dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])),
    "max_ceil": ("MaxPool", dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)),
    "max_dilated": ("MaxPool", dict(kernel_shape=[2, 3], dilations=[2, 1], pads=[1, 0, 1, 1])),
    "max_same_upper": ("MaxPool", dict(kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER")),
    "avg_exclude_pad": (
        "AveragePool",
        dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
    ),
    "avg_include_pad": (
        "AveragePool",
        dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], count_include_pad=1),
    ),
    "avg_ceil": ("AveragePool", dict(kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1)),
    "avg_ceil_include_pad": (
        "AveragePool",
        dict(
            kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1, count_include_pad=1
        ),
    ),
    "avg_plain": ("AveragePool", dict(kernel_shape=[2, 2])),
}


@pytest.mark.parametrize("case", sorted(POOL_CASES))
def test_pools(case):
    op, attrs = POOL_CASES[case]
    nodes = [helper.make_node(op, ["x"], ["y"], **attrs)]
    check(make(nodes, (2, 3, 9, 8)), x_of((2, 3, 9, 8)))


@pytest.mark.parametrize(
    "opset,keep,axes",
    [(13, 1, [2, 3]), (13, 0, [2, 3]), (13, 0, [1]), (18, 0, [-1, 2]), (18, 1, None)],
)
def test_global_pool_and_reduce_mean(opset, keep, axes):
    inits = {"W": _w((5, 3, 3, 3))}
    kw, ins = {"keepdims": keep}, ["c"]
    if axes is not None:
        if opset >= 18:
            inits["ax"] = np.asarray(axes, np.int64)
            ins.append("ax")
        else:
            kw["axes"] = axes
    nodes = [
        helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("ReduceMean", ins, ["r"], **kw),
        helper.make_node("GlobalAveragePool", ["c"], ["g"]),
        helper.make_node("Flatten", ["g"], ["gf"]),
        helper.make_node("Flatten", ["r"], ["rf"]),
        helper.make_node("Concat", ["gf", "rf"], ["y"], axis=1)
        if axes is not None
        else helper.make_node("Mul", ["gf", "rf"], ["y"]),  # a mean over all axes: (1, 1)
    ]
    check(make(nodes, (2, 3, 6, 7), inits, opset=opset), x_of((2, 3, 6, 7)))


@pytest.mark.parametrize(
    "mode,pads,value",
    [
        ("constant", [0, 0, 1, 2, 0, 0, 3, 1], 0.5),
        ("constant", [0, 0, -1, 2, 0, 0, 1, -2], None),
        ("reflect", [0, 0, 2, 1, 0, 0, 1, 2], None),
        ("edge", [0, 1, 1, 0, 0, 0, 2, 1], None),
    ],
)
def test_pad(mode, pads, value):
    inits = {"p": np.asarray(pads, np.int64), "W": _w((3, 3, 1, 1))}
    ins = ["c", "p"]
    if value is not None:
        inits["v"] = np.asarray(value, np.float32)
        ins.append("v")
    nodes = [
        helper.make_node("Conv", ["x", "W"], ["c"]),
        helper.make_node("Pad", ins, ["y"], mode=mode),
    ]
    check(make(nodes, (2, 3, 6, 5), inits), x_of((2, 3, 6, 5)))


# --------------------------------------------------------------------------- errors and types


def test_unsupported_operator_is_named():
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("Einsum", ["r"], ["y"], name="mix", equation="ij->ji"),
    ]
    with pytest.raises(ValueError, match=r"unsupported ONNX operator 'Einsum' \(node 'mix'\)"):
        om.load_onnx(make(nodes, (2, 3)))
    nodes = [helper.make_node("Celu", ["x"], ["y"])]
    with pytest.raises(ValueError, match=r"unsupported ONNX operator 'Celu' \(node #0\)"):
        om.load_onnx(make(nodes, (2, 3)))


def test_bad_files(tmp_path):
    with pytest.raises(ValueError, match="ONNX file not found"):
        om.load_onnx(tmp_path / "absent.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00\xffthis is not a protobuf" * 10)
    with pytest.raises(ValueError, match="not"):
        om.load_onnx(junk)
    text = tmp_path / "notes.onnx"
    text.write_text("hello")
    with pytest.raises(ValueError, match="not"):
        om.load_onnx(text)
    with pytest.raises(ValueError, match="conv_impl"):
        om.load_onnx(make([helper.make_node("Relu", ["x"], ["y"])], (1, 2)), conv_impl="fast")


def test_data_dependent_shape_is_rejected():
    nodes = [
        helper.make_node("Cast", ["x"], ["s"], to=TensorProto.INT64),
        helper.make_node("Reshape", ["x", "s"], ["y"]),
    ]
    with pytest.raises(ValueError, match="depends on the input values"):
        om.load_onnx(make(nodes, (2,)))


def test_float16_initializers_are_upcast(tmp_path):
    w = _w((6, 3, 3, 3)).astype(np.float16)
    fc = _w((4, 6)).astype(np.float16)  # Gemm transB=1: (out, in)
    inits = {
        "W": w,
        "B": _w((6,), 2).astype(np.float16),
        "F": fc,
        "shp": np.asarray([0, -1], np.int64),
        "half": np.asarray(0.5, np.float16),
    }
    nodes = [
        helper.make_node("Conv", ["x", "W", "B"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Mul", ["c", "half"], ["h"]),
        helper.make_node("GlobalAveragePool", ["h"], ["g"]),
        helper.make_node("Reshape", ["g", "shp"], ["f"]),
        helper.make_node("Gemm", ["f", "F"], ["y"], name="fc", transB=1),
    ]
    model = make(
        nodes, (2, 3, 8, 8), inits, x_type=TensorProto.FLOAT16, out_type=TensorProto.FLOAT16
    )
    path = tmp_path / "half.onnx"
    onnx.save(model, str(path))
    m = om.load_onnx(path)
    assert m.input_dtype == np.float16 and m.input_shape == (2, 3, 8, 8)
    for leaf in (m.params["conv"]["kernel"], m.params["conv"]["bias"], m.params["fc"]["kernel"]):
        assert leaf.dtype == np.float32
    np.testing.assert_array_equal(
        m.params["conv"]["kernel"], w.astype(np.float32).transpose(2, 3, 1, 0)
    )
    np.testing.assert_array_equal(m.params["fc"]["kernel"], fc.astype(np.float32).T)
    x = x_of((2, 3, 8, 8))
    ref = run_ort(to_float32(model), x)
    assert rel_err(m.apply(m.params, x), ref) <= RTOL
    # export: float32 graph by default, the file's float16 on request
    out32 = om.save_onnx(m, m.params, tmp_path / "out32.onnx")
    assert rel_err(run_ort(onnx.load(str(out32)), x), ref) <= RTOL
    out16 = om.save_onnx(m, m.params, tmp_path / "out16.onnx", dtype="original")
    back = {t.name: t for t in onnx.load(str(out16)).graph.initializer}
    assert back["W"].data_type == TensorProto.FLOAT16
    np.testing.assert_array_equal(numpy_helper.to_array(back["W"]), w)


# --------------------------------------------------------------------------- export


def test_structure_and_quantized_export(tmp_path):
    from paper_repro.core import quantize as Q

    c = 8
    inits = {
        "Wst": _w((c, 3, 3, 3), 1),
        "Bst": _w((c,), 2),
        "Wdw": _w((c, 1, 3, 3), 3),
        "Bdw": _w((c,), 4),
        "Wg": _w((c, c // 2, 3, 3), 5),
        "s": _w((c,), 6) + 1.0,
        "b": _w((c,), 7),
        "m": _w((c,), 8),
        "v": np.abs(_w((c,), 9)) + 0.5,
        "F": _w((10, c), 10),
        "Fb": _w((10,), 11),
    }
    nodes = [
        helper.make_node(
            "Conv", ["x", "Wst", "Bst"], ["a"], name="/stem/Conv", pads=[1, 1, 1, 1], strides=[2, 2]
        ),
        helper.make_node("Relu", ["a"], ["ar"], name="/stem/Relu"),
        helper.make_node(
            "Conv", ["ar", "Wdw", "Bdw"], ["d"], name="/dw/Conv", group=c, pads=[1, 1, 1, 1]
        ),
        helper.make_node(
            "Conv", ["d", "Wg"], ["gr"], name="dw_Conv", group=2, pads=[1, 1, 1, 1]
        ),  # same when sanitized
        helper.make_node("BatchNormalization", ["gr", "s", "b", "m", "v"], ["bn"], name="bn"),
        helper.make_node("Clip", ["bn", "", ""], ["cl"]),
        helper.make_node("GlobalAveragePool", ["cl"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "F", "Fb"], ["y"], name="head", transB=1),
    ]
    model = make(nodes, (4, 3, 16, 16), inits, dynamic_batch=True)
    m = om.load_onnx(model)
    assert m.input_name == "x" and m.input_shape == (None, 3, 16, 16) and m.output_names == ("y",)
    assert sorted(m.params) == ["bn", "dw_Conv", "dw_Conv_1", "head", "stem_Conv"]
    assert m.params["stem_Conv"]["kernel"].shape == (3, 3, 3, c)  # HWIO
    assert m.params["dw_Conv"]["kernel"].shape == (3, 3, 1, c)  # depthwise: out last
    assert m.params["dw_Conv_1"]["kernel"].shape == (3, 3, c // 2, c)  # grouped
    assert m.params["head"]["kernel"].shape == (c, 10)  # (in, out)
    assert [n.op_type for n in m.nodes][:3] == ["Conv", "Relu", "Conv"]
    assert (
        m.nodes[0].weights == {"kernel": "Wst", "bias": "Bst"}
        and m.nodes[0].onnx_name == "/stem/Conv"
    )
    assert m.nodes[0].attrs["strides"] == [2, 2] and m.nodes[0].inputs == ("x", "Wst", "Bst")

    x = x_of((4, 3, 16, 16))
    assert rel_err(m.apply(m.params, x), run_ort(model, x)) <= RTOL

    qp, report = Q.quantize_tree(m.params, scheme="linear", bits=3, fit="max")
    assert {r["path"] for r in report} == {
        f"{k}/kernel" for k in ("stem_Conv", "dw_Conv", "dw_Conv_1", "head")
    }
    y_q = np.asarray(m.apply(qp, x))
    path = om.save_onnx(m, qp, tmp_path / "q" / "model_q3.onnx")
    y_ort = run_ort(onnx.load(str(path)), x)
    assert rel_err(y_q, y_ort) <= RTOL
    np.testing.assert_array_equal(y_q.argmax(1), y_ort.argmax(1))
    assert rel_err(y_q, m.apply(m.params, x)) > 1e-3  # the weights did change
    written = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}
    np.testing.assert_array_equal(
        written["Wdw"], np.asarray(qp["dw_Conv"]["kernel"]).transpose(3, 2, 0, 1)
    )
    np.testing.assert_array_equal(written["F"], np.asarray(qp["head"]["kernel"]).T)
    np.testing.assert_array_equal(written["s"], inits["s"])

    bad = {k: dict(v) for k, v in qp.items()}
    bad["head"]["kernel"] = bad["head"]["kernel"][:, :5]
    with pytest.raises(ValueError, match="head/kernel"):
        om.save_onnx(m, bad, tmp_path / "bad.onnx")


def test_constant_node_and_shared_weights(tmp_path):
    """A kernel held by a Constant node is a parameter and is written back there; a kernel
    read by two nodes stays a constant (both read the file's values)."""
    wc = _w((4, 3, 3, 3), 1)
    shared = _w((4, 4, 1, 1), 2)
    nodes = [
        helper.make_node("Constant", [], ["Wc"], value=numpy_helper.from_array(wc, "Wc")),
        helper.make_node("Conv", ["x", "Wc"], ["a"], name="c0", pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["a", "S"], ["b"], name="c1"),
        helper.make_node("Conv", ["b", "S"], ["y"], name="c2"),
    ]
    model = make(nodes, (2, 3, 6, 6), {"S": shared})
    m, _ = check(model, x_of((2, 3, 6, 6)))
    assert sorted(m.params) == ["c0"] and "S" in m.constants
    assert m.slots[0].constant_node == 0
    qp = {"c0": {"kernel": np.round(m.params["c0"]["kernel"] * 4) / 4}}
    path = om.save_onnx(m, qp, tmp_path / "q.onnx")
    x = x_of((2, 3, 6, 6))
    assert rel_err(m.apply(qp, x), run_ort(onnx.load(str(path)), x)) <= RTOL
    const = onnx.load(str(path)).graph.node[0].attribute[0].t
    np.testing.assert_array_equal(
        numpy_helper.to_array(const), np.asarray(qp["c0"]["kernel"]).transpose(3, 2, 0, 1)
    )


# --------------------------------------------------------------------------- the real model


@pytest.fixture
def shufflenet(shared_data):
    """The real model, through the package's data resolver (``$PAPER_REPRO_SHARED_DATA``)."""
    path = shared_data / "onnx" / "shufflenet_v2_x0_5_fp16.onnx"
    if not path.is_file():
        pytest.skip(f"{path} is absent: the real ONNX model checks are skipped")
    return path


@pytest.mark.shared_data
def test_shufflenet_matches_onnxruntime_float32(shufflenet, tmp_path):
    m = om.load_onnx(shufflenet)
    assert m.input_name == "images" and m.output_names == ("classes",)
    assert m.input_shape == (None, 3, 224, 224) and m.input_dtype == np.float16
    assert len(m.nodes) == 186
    assert sum(int(np.size(v)) for d in m.params.values() for v in d.values()) == 1_362_816
    ops = [n.op_type for n in m.nodes]
    assert ops.count("Conv") == 56 and ops.count("Reshape") == 32
    ref_model = to_float32(onnx.load(str(shufflenet)))
    x = x_of((4, 3, 224, 224), 11)
    ref = run_ort(ref_model, x)
    y = np.asarray(m.apply(m.params, x))
    # float32 on both sides: the difference is summation order only (measured ~1e-6)
    assert rel_err(y, ref) <= RTOL
    np.testing.assert_array_equal(y.argmax(1), ref.argmax(1))

    # 4-bit weights (15 uniform levels per tensor, top level max|w|; the package's fitted
    # quantizers run on this tree in test_structure_and_quantized_export), written back:
    # onnxruntime agrees with apply(q_params)
    def q4(w):
        step = np.abs(w).max() / 7
        return (np.round(w / step) * step).astype(np.float32)

    qp = {
        k: {kk: (q4(v) if kk == "kernel" else v) for kk, v in d.items()}
        for k, d in m.params.items()
    }
    path = om.save_onnx(m, qp, tmp_path / "shufflenet_q4.onnx")
    y_q = np.asarray(m.apply(qp, x))
    y_ort = run_ort(onnx.load(str(path)), x)
    assert rel_err(y_q, y_ort) <= RTOL
    np.testing.assert_array_equal(y_q.argmax(1), y_ort.argmax(1))


@pytest.mark.shared_data
def test_shufflenet_top1_on_1300_images(shufflenet, tmp_path):
    """torchvision preprocessing (x/255, ImageNet mean / std), centre crop 224 of the 227x227
    images, no resize; reference top-1 71.23 % (float32 arithmetic, float16 weights upcast)."""
    from paper_repro.feedforward import imagenet

    root = shufflenet.parent.parent / "imagenet-val-1300"
    if not (root / "labels.txt").is_file():
        pytest.skip(f"{root} is absent: the 1300-image check is skipped")
    src = imagenet.from_ground_truth(root / "images", root / "labels.txt")
    data = imagenet.load(src, size=224, policy="crop", cache_dir=tmp_path / "cache", progress=False)
    m = om.load_onnx(shufflenet)
    res = imagenet.evaluate(
        m.apply_nhwc, m.params, data, batch_size=50, preprocess_mode="torch", progress=False
    )
    assert res.n_images == 1300 and res.n_errors == 0
    assert abs(100 * res.top1 - 71.23) <= 0.1, str(res)
