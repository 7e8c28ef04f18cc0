"""ImageNet-act speed: Flax MobileNet vs Keras 3 ``predict``, and the decode-once cache.

1. Float evaluation throughput (images/s) of the Flax MobileNet 0.75 port against Keras 3
   (JAX backend) ``model.predict`` on the same images, same machine, same run.
   Target: ratio >= 1.
2. A 10-configuration sweep (quantize + evaluate) reading preprocessed crops from the
   decode-once cache, against the same sweep decoding every JPEG for every configuration.
   Target: ratio >= 5.

Uses the real MobileNet and images from ``$PAPER_REPRO_SHARED_DATA`` (else the folder
``paper-repro data fetch`` fills); without them, random weights and synthetic JPEGs written
to a temp folder. Run: ``python benchmarks/bench_imagenet.py [--n 300]``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax  # noqa: E402
import numpy as np  # noqa: E402

from paper_repro.feedforward import sweep as E  # noqa: E402
from paper_repro.feedforward import imagenet
from paper_repro.feedforward import models  # noqa: E402
from paper_repro.feedforward import weights as W  # noqa: E402


def data_and_weights(n: int):
    env = os.environ.get("PAPER_REPRO_SHARED_DATA")
    root = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"
    h5 = root / "keras-weights" / "mobilenet_7_5_224_tf.h5"
    if h5.is_file():
        return (root / "imagenet-val-1300" / "images", root / "imagenet-val-1300" / "labels.txt",
                h5, "real MobileNet 0.75 and real validation images")
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
    return tmp / "images", tmp / "labels.txt", tmp / "mobilenet.h5", "random weights, synthetic JPEGs"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=300, help="images per evaluation")
    ap.add_argument("--batch", type=int, default=50)
    args = ap.parse_args()
    images_dir, labels, h5, what = data_and_weights(args.n)
    print(f"data: {what}; {args.n} images, batch {args.batch}")
    cache = Path(tempfile.mkdtemp())
    src = imagenet.from_ground_truth(images_dir, labels)
    data = imagenet.load(src, size=224, policy="crop", cache_dir=cache, progress=False)
    x = np.asarray(data.images[: args.n])

    # 1. Flax vs Keras predict (both after one warm-up call)
    spec = models.get("mobilenet", 0.75)
    params = W.load(spec, h5)
    f = models.make_apply(spec)
    xs = np.asarray(models.preprocess(x, "tf"))

    def flax_run():
        outs = [f(params, xs[i:i + args.batch]) for i in range(0, len(xs), args.batch)]
        jax.block_until_ready(outs)
        return np.concatenate([np.asarray(o) for o in outs])

    import keras

    km = keras.applications.MobileNet(alpha=0.75, weights=None)
    km.load_weights(str(h5))
    flax_run()
    km.predict(xs[: args.batch], batch_size=args.batch, verbose=0)
    t0 = time.perf_counter()
    y_flax = flax_run()
    t_flax = time.perf_counter() - t0
    t0 = time.perf_counter()
    y_keras = km.predict(xs, batch_size=args.batch, verbose=0)
    t_keras = time.perf_counter() - t0
    agree = float(np.mean(y_flax.argmax(1) == y_keras.argmax(1)))
    print(f"float eval: Flax {len(xs) / t_flax:.1f} img/s, Keras predict {len(xs) / t_keras:.1f}"
          f" img/s -> ratio {t_keras / t_flax:.2f}x (target >= 1); top-1 agreement {agree:.3f}")

    # 2. 10-configuration sweep: cache vs decode every time
    task = E.Task(name="bench", apply_fn=f, params=params, data=data, preprocess_mode="tf",
                  info={"model": "mobilenet"}, batch_size=args.batch)
    cfgs = E.sweep_configs(bits=[4, 5, 6, 7, 8], schemes=["linear"], fits=["max", "corr"],
                           granularities=["channel"], lloyd_max=False)[:10]
    # warm-up: compile every configuration's fit and the evaluation step before timing
    for c in cfgs:
        E.quantize_params(params, c)
    E.evaluate_config(task, cfgs[0], limit=args.n, progress=False)
    t0 = time.perf_counter()
    for c in cfgs:
        E.evaluate_config(task, c, limit=args.n, progress=False)
    t_cached = time.perf_counter() - t0
    t0 = time.perf_counter()
    for c in cfgs:
        raw = [src.read(i) for i in range(args.n)]
        arr = np.stack([imagenet.decode(b, size=224, policy="crop") for b in raw])
        t = E.Task(name="bench", apply_fn=f, params=params, data=(arr, src.labels[: args.n]),
                   preprocess_mode="tf", info={"model": "mobilenet"}, batch_size=args.batch)
        E.evaluate_config(t, c, progress=False)
    t_decode = time.perf_counter() - t0
    t0 = time.perf_counter()
    raw = [src.read(i) for i in range(args.n)]
    np.stack([imagenet.decode(b, size=224, policy="crop") for b in raw])
    t_one = time.perf_counter() - t0
    print(f"10-config sweep: decode-once cache {t_cached:.1f} s, decoding every time "
          f"{t_decode:.1f} s -> ratio {t_decode / t_cached:.2f}x (target >= 5); one decode "
          f"pass of {args.n} images takes {t_one:.2f} s, so the ratio is bounded by "
          f"1 + decode / (quantize + evaluate) per configuration")


if __name__ == "__main__":
    main()
