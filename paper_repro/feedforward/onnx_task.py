"""ONNX classifiers as sweep tasks: ``--model path/to/model.onnx`` of ``evaluate`` and ``pack``.

An ``.onnx`` file holds a graph and its weights; :func:`onnx_task` turns it (through
:func:`paper_repro.feedforward.onnx_model.load_onnx`) into a
:class:`paper_repro.feedforward.sweep.Task` like :func:`~paper_repro.feedforward.sweep.imagenet_task`
does for the Keras ports, so every quantizer, repair, sweep and the packer run on it
unchanged:

- ``apply_fn``: the graph's jitted ``apply_nhwc(params, x: (N, S, S, 3) float32) -> logits``
  (the package's image pipeline is channels-last; the graph itself may be NCHW);
- ``params``: ``{node: {"kernel": (*k, in/group, out) or (in, out), "bias": (out,), ...}}``,
  output channels LAST for every kernel, depthwise ones included, so ``channel_axis=-1``
  (:attr:`Task.channel_axis`) for per-channel fits;
- the input side S from the graph's declared input shape ``(N, 3, S, S)`` (224 where the
  spatial dims are symbolic); images through :func:`paper_repro.feedforward.imagenet.load`
  with the chosen crop policy;
- preprocessing: one of :data:`paper_repro.feedforward.imagenet.PREPROCESS_MODES`
  (``torch``: RGB ``x / 255``, ImageNet mean / std; ``tf``: ``x / 127.5 - 1``; ``caffe``:
  BGR minus the ImageNet BGR means), applied by :func:`~paper_repro.feedforward.imagenet.preprocess_input`.
  The file does not say which one the network was trained with, so it is always given.

Packed weights of an ONNX graph (``paper-repro pack --model m.onnx --out q.prq``) record the
graph's file name and SHA-256 in their metadata; ``weights=`` reads them back for the same
file only (any other file, even one with the same node names, is refused).

Example::

    task = onnx_task("shufflenet_v2_x0_5_fp16.onnx", preprocess="torch",
                     data="imagenet-val-1300/images", labels="imagenet-val-1300/labels.txt",
                     policy="crop")
    row, res = sweep.evaluate_config(task, sweep.QuantConfig(scheme="exponential", bits=5,
                                                             granularity="channel", gain=True))
"""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from paper_repro.feedforward import imagenet

__all__ = [
    "DEFAULT_INPUT_SIZE",
    "CHANNEL_AXIS",
    "is_onnx",
    "load_model",
    "file_sha256",
    "input_size",
    "check_preprocess",
    "check_params",
    "source_meta",
    "load_packed_params",
    "onnx_task",
]

DEFAULT_INPUT_SIZE = 224  # input side when the graph's spatial dims are symbolic
CHANNEL_AXIS = -1  # output channels of every ONNX kernel in params (see onnx_model)


def is_onnx(model: str | os.PathLike) -> bool:
    """Whether a ``--model`` value names an ONNX file (by its ``.onnx`` suffix)."""
    return str(model).lower().endswith(".onnx")


@functools.lru_cache(maxsize=4)
def _load_cached(path: str, mtime_ns: int, size: int):
    from paper_repro.feedforward import onnx_model

    return onnx_model.load_onnx(path)


def load_model(path: str | os.PathLike):
    """The :class:`~paper_repro.feedforward.onnx_model.OnnxModel` of an ``.onnx`` file (loaded
    once per file version in a process). ``FileNotFoundError`` if it is absent."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"ONNX model {p} not found; give the path of an .onnx file")
    st = p.stat()
    return _load_cached(str(p.resolve()), st.st_mtime_ns, st.st_size)


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def input_size(model) -> int:
    """Side S of the square RGB images the graph takes: from its input ``(N, 3, S, S)``.

    Symbolic spatial dims give :data:`DEFAULT_INPUT_SIZE`. ``ValueError`` for inputs that
    are not NCHW RGB images or not square.
    """
    shape = tuple(model.input_shape)
    where = model.path.name if model.path is not None else "the ONNX model"
    if len(shape) != 4 or shape[1] not in (3, None):
        raise ValueError(f"{where}: input {model.input_name!r} has shape {shape}; image "
                         "classifiers here take (N, 3, H, W) RGB images")
    h, w = shape[2], shape[3]
    if h is None and w is None:
        return DEFAULT_INPUT_SIZE
    if h is None or w is None or h != w:
        raise ValueError(f"{where}: input {model.input_name!r} has shape {shape}; only square "
                         "inputs (S x S, or both sides symbolic) are supported")
    return int(h)


def check_preprocess(preprocess: str | None) -> str:
    """``preprocess`` if it is one of :data:`~paper_repro.feedforward.imagenet.PREPROCESS_MODES`."""
    modes = imagenet.PREPROCESS_MODES
    if preprocess is None:
        raise ValueError(f"an ONNX model needs --preprocess ({', '.join(modes)}): the file "
                         "does not say how its network expects its pixels")
    if preprocess not in modes:
        raise ValueError(f"unknown preprocessing {preprocess!r}: use one of {', '.join(modes)}")
    return preprocess


def check_params(model, params, *, where: str) -> None:
    """``ValueError`` unless ``params`` has exactly the nodes, keys and shapes of ``model.params``."""
    want = {(n, k): np.shape(v) for n, d in model.params.items() for k, v in d.items()}
    try:
        have = {(n, k): np.shape(v) for n, d in params.items() for k, v in d.items()}
    except AttributeError:
        raise ValueError(f"{where} is not a {{node: {{name: array}}}} tree of the ONNX "
                         "graph") from None
    if have.keys() != want.keys():
        missing = sorted("/".join(k) for k in want.keys() - have.keys())
        extra = sorted("/".join(k) for k in have.keys() - want.keys())
        raise ValueError(f"{where} does not match the ONNX graph: missing {missing[:3]}, "
                         f"unexpected {extra[:3]}")
    for k, s in want.items():
        if have[k] != s:
            raise ValueError(f"{where}: {'/'.join(k)} has shape {have[k]}, the ONNX graph "
                             f"needs {s}")


def source_meta(path: str | os.PathLike, *, preprocess: str | None = None) -> dict:
    """What packed metadata records of an ONNX source: ``model`` (the file name),
    ``source_format: "onnx"``, ``onnx_sha256`` and, when given, ``preprocess``."""
    p = Path(path)
    meta: dict[str, Any] = {"model": p.name, "alpha": None, "source_format": "onnx",
                            "weights_file": p.name, "onnx_sha256": file_sha256(p)}
    if preprocess is not None:
        meta["preprocess"] = preprocess
    return meta


def _check_packed_file(weights: str | os.PathLike, onnx_path: str | os.PathLike) -> None:
    """``FileNotFoundError`` / ``ValueError`` unless ``weights`` is a packed file (an ONNX
    model holds its own weights: nothing else may replace them)."""
    from paper_repro.core import storage

    wpath = Path(weights)
    if not wpath.is_file():
        raise FileNotFoundError(f"no packed weights at {wpath}")
    if not storage.is_packed(wpath):
        raise ValueError(f"{wpath}: an ONNX model holds its own weights; --weights may only name "
                         f"a packed .prq file made from it (`paper-repro pack --model "
                         f"{Path(onnx_path).name} --out q.prq`)")


def load_packed_params(model, weights: str | os.PathLike, *,
                       preprocess: str | None = None) -> tuple[dict, dict]:
    """``(params, packed_info)`` of a packed file made from this very ONNX file.

    ``packed_info``: scheme, fit, bits, granularity, file name, compression ratio and sizes
    (as :func:`paper_repro.feedforward.sweep.imagenet_task` reports them). ``ValueError``
    if ``weights`` is no packed file, was packed from another model or another ONNX file,
    or was packed with another preprocessing than ``preprocess``.
    """
    from paper_repro.core import storage

    wpath = Path(weights)
    _check_packed_file(wpath, model.path or "model.onnx")
    params, meta = storage.load_packed(wpath)
    name = model.path.name if model.path is not None else None
    if meta.get("source_format") != "onnx":
        raise ValueError(f"{wpath} holds {meta.get('model')}, not an ONNX graph; pack this "
                         "ONNX file with `paper-repro pack --model <file>.onnx`")
    if model.path is not None and meta.get("onnx_sha256") != file_sha256(model.path):
        raise ValueError(f"{wpath} was packed from another ONNX file ({meta.get('model')}, "
                         f"sha256 {str(meta.get('onnx_sha256'))[:12]}...), not {name}; pack "
                         "this file again")
    if preprocess is not None and meta.get("preprocess") not in (None, preprocess):
        raise ValueError(f"{wpath} was packed for --preprocess {meta['preprocess']}, not "
                         f"{preprocess}")
    check_params(model, params, where=str(wpath))
    return params, storage.packed_record(wpath, meta)


def onnx_task(path: str | os.PathLike, *, preprocess: str, data: str | os.PathLike,
              labels: str | os.PathLike | None = None, policy: str = "resize",
              weights: str | os.PathLike | None = None, batch_size: int = 50,
              attach_graph: bool = False, progress: bool = True):
    """A :class:`~paper_repro.feedforward.sweep.Task` for an ONNX image classifier.

    Args:
      path: the ``.onnx`` file (graph and float weights).
      preprocess: ``"torch"``, ``"tf"`` or ``"caffe"`` (see the module docstring).
      data, labels: ImageNet validation images (see
        :func:`paper_repro.feedforward.imagenet.open_source`).
      policy: crop policy (:func:`paper_repro.feedforward.imagenet.resize_for`).
      weights: a packed ``.prq`` file made from this ONNX file (evaluated as stored), or
        None for the file's own weights.
      batch_size: images per evaluation step.
      attach_graph: trace the graph for the data-free repairs now
        (:func:`paper_repro.feedforward.repairs.attach_task` with the ONNX node list).
      progress: show the image-decoding bar.

    Returns:
      ``Task`` with ``channel_axis=-1``, ``apply_fn`` the graph on ``(N, S, S, 3)`` images and
      ``info`` = model (file name), source_format, onnx_sha256 (first 16 hex digits), preprocess,
      data, policy, n_data (and ``packed`` with ``weights``).
    """
    from paper_repro.feedforward import sweep

    if not is_onnx(path):
        raise ValueError(f"{path}: not an .onnx file")
    preprocess = check_preprocess(preprocess)
    if weights is not None:
        _check_packed_file(weights, path)
    model = load_model(path)
    size = input_size(model)
    packed = None
    if weights is not None:
        params, packed = load_packed_params(model, weights, preprocess=preprocess)
    else:
        params = model.params
    source = imagenet.open_source(data, labels)
    images = imagenet.load(source, size=size, policy=policy, progress=progress)
    info: dict[str, Any] = {"model": model.path.name, "source_format": "onnx",
                            "onnx_sha256": file_sha256(model.path)[:16],
                            "preprocess": preprocess, "data": source.name, "policy": policy,
                            "n_data": len(source)}
    if packed is not None:
        info["packed"] = packed
    task = sweep.Task(name=Path(model.path).stem, apply_fn=model.apply_nhwc, params=params,
                      data=images, preprocess_mode=preprocess, info=info,
                      batch_size=batch_size, channel_axis=CHANNEL_AXIS)
    if attach_graph:
        from paper_repro.feedforward import repairs

        repairs.attach_task(task, model=model)
    return task


# --- Command-line glue (paper-repro evaluate / pack) --------------------------------------------


def refuse_preprocess(args) -> None:
    """``ValueError`` when ``--preprocess`` is given for a model that is not an ONNX file
    (registry models and digits_cnn carry their own preprocessing)."""
    if getattr(args, "preprocess", None) is not None and not is_onnx(args.model):
        raise ValueError("--preprocess is for ONNX models (--model path/to/model.onnx); "
                         f"{args.model} uses its own preprocessing")


def task_from_args(args, *, progress: bool = True):
    """:func:`onnx_task` from ``paper-repro evaluate`` arguments (``--model m.onnx``).

    Refuses ``--alpha`` and weights that are not a packed file of this graph; traces the
    graph for the repairs when ``--bias-correction``, ``--fold-bn``, ``--equalize`` or a
    ``--recipe`` asks for it.
    """
    if getattr(args, "alpha", None) is not None:
        raise ValueError("--alpha is a MobileNet width multiplier; an ONNX model has none")
    if not getattr(args, "data", None):
        raise ValueError("--data is required for an ONNX model (an ImageNet validation folder; "
                         "see data/README.md)")
    needs_graph = any(getattr(args, k, None) for k in ("bias_correction", "fold_bn", "equalize",
                                                       "recipe"))
    return onnx_task(args.model, preprocess=getattr(args, "preprocess", None), data=args.data,
                     labels=args.labels, policy=args.policy, weights=args.weights,
                     batch_size=args.batch_size, attach_graph=needs_graph, progress=progress)


def check_pack_args(args) -> None:
    """``paper-repro pack`` argument checks for ONNX models and ``.onnx`` outputs (before any
    work): ``--weights`` and ``--alpha`` are refused for an ONNX model (the file holds its
    weights), an ``.onnx`` output needs an ONNX model and holds float32 weights (no
    ``--entropy-coding``), and never overwrites its source."""
    refuse_preprocess(args)
    onnx_in, onnx_out = is_onnx(args.model), is_onnx(args.out)
    if onnx_out and not onnx_in:
        raise ValueError(f"--out {args.out}: an .onnx output needs --model path/to/model.onnx; "
                         "write a packed .prq file for this model")
    if not onnx_in:
        return
    if getattr(args, "alpha", None) is not None:
        raise ValueError("--alpha is a MobileNet width multiplier; an ONNX model has none")
    if getattr(args, "weights", None):
        raise ValueError("--weights is meaningless for an ONNX model: the .onnx file holds its "
                         "weights; drop --weights")
    if args.preprocess is not None:
        check_preprocess(args.preprocess)
    if onnx_out:
        if getattr(args, "entropy_coding", False):
            raise ValueError("--entropy-coding applies to packed .prq files; an .onnx output "
                             "holds dequantized float32 weights")
        if Path(args.out).expanduser().resolve() == Path(args.model).expanduser().resolve():
            raise ValueError(f"--out {args.out} is the source model; choose another file name")


def pack_source(args) -> tuple[Any, dict, dict]:
    """``(model, params, meta)`` of the ONNX model ``paper-repro pack`` quantizes: the loaded
    graph, its float parameter tree and what the packed header records (:func:`source_meta`)."""
    model = load_model(args.model)
    return model, model.params, source_meta(model.path, preprocess=args.preprocess)


def write_quantized_onnx(model, q_params, out: str | os.PathLike, *, report: list[dict],
                         meta: dict) -> dict:
    """Write ``q_params`` (dequantized weights of ``model``'s tree) as an ONNX model.

    Same graph as the source, every weight float32 (:func:`paper_repro.feedforward.onnx_model.save_onnx`
    with ``dtype="float32"``), the quantization settings in the model's ``metadata_props``
    (key ``paper_repro.quantization``, JSON). Written atomically, then read back: every
    parameter must equal ``q_params`` bit for bit, else ``RuntimeError``.

    Returns:
      ``{"out", "onnx_bytes", "source_bytes", "float_bytes", "n_quantized_leaves",
      "roundtrip_exact"}``.
    """
    import json
    import tempfile

    import onnx

    from paper_repro.core import storage
    from paper_repro.feedforward import onnx_model

    out = Path(out).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=out.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        onnx_model.save_onnx(model, q_params, tmp)
        proto = onnx.load(tmp)
        entry = proto.metadata_props.add()
        entry.key, entry.value = "paper_repro.quantization", json.dumps(meta, sort_keys=True)
        onnx.save(proto, tmp)
        os.chmod(tmp, storage.file_mode())
        os.replace(tmp, out)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    back = onnx_model.load_onnx(out)
    exact = all(np.array_equal(np.asarray(back.params[n][k]), np.asarray(v))
                and np.asarray(back.params[n][k]).dtype == np.float32
                for n, d in q_params.items() for k, v in d.items())
    if not exact or back.params.keys() != q_params.keys():
        raise RuntimeError(f"{out} does not hold the quantized weights; please report")
    n = sum(int(np.size(v)) for d in q_params.values() for v in d.values())
    return {"out": str(out), "onnx_bytes": out.stat().st_size,
            "source_bytes": model.path.stat().st_size if model.path is not None else None,
            "float_bytes": 4 * n, "n_quantized_leaves": len(report), "roundtrip_exact": exact}
