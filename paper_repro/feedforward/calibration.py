"""Synthetic calibration and learned rounding: no real data, no labels, no retraining.

The codebook stays the papers' fitted one (linear or exponential levels, per tensor or per
channel); what is optimized is *which* of its two neighbouring levels each weight takes,
against the float network's own behaviour on images synthesized from the network itself.

1. **Synthetic images** (:func:`synthesize`, ZeroQ, Cai et al., CVPR 2020). A batch of
   random inputs (drawn per channel from the preprocessing convention's mean and standard
   deviation, :data:`paper_repro.feedforward.repairs.PREPROCESS_STATS`, and kept inside its
   value range) is optimized with Adam (optax) so that the batch mean and standard deviation
   of every batch norm's input match the norm's running statistics (:func:`bn_targets`). A
   network without batch norms (an ONNX model with the norms folded) is matched instead to
   the analytic per-channel moments of its layer outputs,
   :func:`paper_repro.feedforward.repairs.propagate` (:func:`moment_targets`). Images have
   the network's own input size. The gradient runs over chunks of images (the batch
   statistics are sums, so a first pass collects them and a second back-propagates their
   gradient chunk by chunk): memory stays that of one chunk, and the same code runs on a GPU
   when JAX sees one.
2. **Learned rounding** (:func:`learn_rounding`, AdaRound, Nagel et al., ICML 2020), layer
   by layer in graph order. Each quantized weight gets a soft rounding variable ``h(V)`` (a
   rectified sigmoid) between its two neighbouring levels, ``w_hat = lo + h (hi - lo)``, and
   Adam minimizes the layer's output error against the float network,
   ``E || W^T x_f - W_hat^T x_q ||^2`` (``x_f``: the float network's layer input; ``x_q``:
   the quantized-so-far network's), plus ``lambda sum (1 - |2h - 1|^beta)`` with ``beta``
   annealed from 20 to 2 after a warm-up, which drives every ``h`` to 0 or 1. The error is
   a quadratic form in the layer's input patches, so the synthetic set enters through their
   second moments (Gram matrices, accumulated once per layer; shrunk toward their diagonal
   by the Ledoit-Wolf intensity where the patches are few compared to their size) and each
   Adam step costs ``K^2 C_out`` whatever the number of images. Errors are measured after the
   following batch norm's scale (the units the next layer sees) and centred; the mean output
   shift of each rounded layer on the synthetic set is then absorbed into its bias or the
   following batch norm's moving mean (empirical bias correction), before the next layer's
   inputs are computed.
3. :func:`datafree_opt`: fit the codebooks (and per-layer widths for an average budget),
   round with :func:`paper_repro.feedforward.rounding.squant_codes` (the data-free start and
   what layers without learned rounding keep), synthesize, learn the rounding, correct the
   biases. The result is cached (``$PAPER_REPRO_CACHE/datafree-opt``, default
   ``~/.cache/paper_repro/datafree-opt``) under the hash of the configuration and of the
   float parameters, and the synthetic images separately under the synthesis settings, so
   other widths reuse them.

Conventions: a :class:`paper_repro.feedforward.graph.Graph` gives the wiring and each node's
computation; the rounding is learned for ``conv`` (any kernel size, stride, zero padding),
``depthwise`` (multiplier 1) and ``dense`` layers. Any other quantized layer (several kernels
in one traced layer, such as a separable convolution's depthwise and pointwise kernels, or
another layer type) keeps its starting (SQuant) codes, its mean output shift is absorbed as
for the others, and :func:`summary` names it under ``not_learned`` with the reason.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from paper_repro.core import correlation as corr_mod
from paper_repro.core import quantize as Q
from paper_repro.feedforward import graph as G
from paper_repro.feedforward import rounding as RD

CACHE_FORMAT = 2  # 2: learned rounding only where synthesis reproduces its targets
BIAS_CORRECTIONS = ("analytic", "synthetic", "none")
# a synthesis whose loss stays above its start this many steps in a row has diverged
DIVERGED_AFTER = 10
# rectified sigmoid of AdaRound: h(V) = clip(sigmoid(V) (ZETA - GAMMA) + GAMMA, 0, 1)
ZETA, GAMMA = 1.1, -0.1


# --- Configuration ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class OptConfig:
    """Settings of synthesis and learned rounding (the same on every network).

    Synthesis: ``n_images`` images at the network's input size, ``synth_steps`` Adam steps
    of rate ``synth_lr`` (in units of the input's per-channel standard deviation, cosine
    decay to zero) from ``synth_init`` noise (:func:`synthesize`), the first batch norm's
    mismatch weighted ``synth_first_weight``, ``seed``; ``chunk``: images per gradient
    evaluation. ``flip``: calibrate
    on the images and their horizontal mirror images (twice the patches, no extra synthesis).
    Learned rounding: ``round_steps`` Adam steps per layer of rate ``round_lr`` on the
    rounding variables, regularizer weight ``reg_weight`` (AdaRound's ``lambda``), ``beta``
    annealed from ``beta_start`` to ``beta_end`` after ``warmup`` of the steps.
    ``refine_sweeps``: sweeps of exact coordinate flips after the soft optimization
    (:func:`refine_layer`; 0: none). ``holdout``: share of the synthetic images kept out of
    the optimization; each layer keeps the candidate rounding (its start, the learned one,
    each refined) with the lowest output error on them (0: the lowest objective).
    ``bias_correction``: absorb each rounded layer's mean output shift as it is rounded,
    ``"analytic"`` (the expected shift from the float network's analytic input means,
    :func:`paper_repro.feedforward.repairs.layer_shifts`), ``"synthetic"`` (the shift measured
    on the synthetic set) or ``"none"``.
    ``learn``: ``False`` stops after synthesis-free SQuant rounding (no images at all).
    ``synth_tolerance``: the learned rounding is only as good as the synthetic images; it runs
    only when they reproduce their targets, i.e. when the final statistic loss
    (:func:`statistic_loss`: mean squared deviation in units of the target's standard
    deviation) is at most this. Otherwise (deep networks without batch norms, whose analytic
    moments are approximate) the SQuant start is kept with the analytic bias correction of the
    anchored layers, as in the ``datafree`` recipe, and ``info["learn_skipped"]`` says why.
    """

    # 96: with 32 images the learned rounding overfits them (MobileNet 0.75 at 4 bits: held-out
    # synthetic error 0.35 against 0.16 on the images it was fitted to, top-1 drop 2.15); 96
    # halve that gap's effect (held-out 0.29, drop 1.38) at about 3x the synthesis time
    n_images: int = 96
    synth_steps: int = 60
    synth_lr: float = 0.25
    synth_init: str = "pink"
    synth_first_weight: float = 10.0
    seed: int = 0
    chunk: int = 8
    flip: bool = True
    round_steps: int = 400
    round_lr: float = 0.05
    refine_sweeps: int = 2
    holdout: float = 0.25
    reg_weight: float = 0.01
    beta_start: float = 20.0
    beta_end: float = 2.0
    warmup: float = 0.2
    bias_correction: str = "analytic"
    learn: bool = True
    synth_tolerance: float = 1.0

    def synth_key(self) -> dict:
        return {k: getattr(self, k) for k in ("n_images", "synth_steps", "synth_lr",
                                               "synth_init", "synth_first_weight", "seed")}

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def __post_init__(self):
        if self.bias_correction not in BIAS_CORRECTIONS:
            raise ValueError(f"bias_correction must be one of {BIAS_CORRECTIONS}, got "
                             f"{self.bias_correction!r}")
        if self.n_images < 1 or self.synth_steps < 0 or self.round_steps < 0 or self.chunk < 1:
            raise ValueError("n_images and chunk must be >= 1, synth_steps and round_steps "
                             ">= 0")
        if not 0.0 <= self.holdout < 1.0:
            raise ValueError(f"holdout must lie in [0, 1), got {self.holdout}")


def cache_dir() -> Path:
    """``$PAPER_REPRO_CACHE/datafree-opt`` (default ``~/.cache/paper_repro/datafree-opt``)."""
    from paper_repro.feedforward import imagenet

    return imagenet.default_cache_dir() / "datafree-opt"


def params_digest(params) -> str:
    """SHA-256 over the paths, dtypes, shapes and bytes of every leaf (the float model)."""
    h = hashlib.sha256()
    for p, x in Q.tree_paths(params):
        a = np.ascontiguousarray(np.asarray(x))
        h.update(f"{p}\0{a.dtype.str}\0{a.shape}\0".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _key(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:24]


# --- Running graph nodes on many images -----------------------------------------------------------


def _run_node(graph: G.Graph, node: G.Node, values, xs: Sequence[jax.Array], *,
              chunk: int = 16) -> jax.Array:
    """``node.fn`` on batched inputs of any batch size (a jaxpr graph traced at batch 1 runs
    per example under ``vmap``), in chunks of ``chunk`` examples."""
    n = xs[0].shape[0]
    per_example = graph.source == "jaxpr" and n != graph.input_shape[0]

    def run(*cs):
        if per_example:
            return jax.vmap(lambda *e: node.fn(values, *(a[None] for a in e))[0])(*cs)
        return node.fn(values, *cs)

    if n <= chunk:
        return run(*xs)
    return jnp.concatenate([run(*(x[i:i + chunk] for x in xs)) for i in range(0, n, chunk)])


def _apply(graph: G.Graph, params, x: jax.Array) -> tuple[jax.Array, dict]:
    """The graph on batched ``x``: ``(output, {node: output})``."""
    return graph.apply(params, x, capture=True)


# --- Synthesis targets --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Target:
    """Per-channel statistics wanted at node ``node``'s output: ``mean``, ``std`` (``(C,)``)
    and the scale the mismatch is measured in (``scale``, ``(C,)``)."""

    node: str
    mean: np.ndarray
    std: np.ndarray
    scale: np.ndarray


def bn_targets(graph: G.Graph, params) -> list[Target]:
    """One :class:`Target` per batch norm with running statistics: its input's per-channel
    batch mean and standard deviation should equal ``moving_mean`` and
    ``sqrt(moving_variance)`` (mismatch in units of ``sqrt(moving_variance + eps)``)."""
    from paper_repro.feedforward import repairs

    values = G.flat_values(params)
    out = []
    for node in graph.nodes:
        if node.op != "bn":
            continue
        bv = repairs.bn_vars(node)
        if not {"mean", "var"} <= set(bv):
            continue
        var = np.asarray(values[bv["var"]], np.float64)
        eps = float(node.attrs.get("eps") or 0.0)
        out.append(Target(node.inputs[0], np.asarray(values[bv["mean"]], np.float64),
                          np.sqrt(np.maximum(var, 0.0)), np.sqrt(var + eps) + 1e-12))
    return out


def moment_targets(graph: G.Graph, params, *, in_mean, in_std) -> list[Target]:
    """One :class:`Target` per layer but the last: the per-channel mean and standard
    deviation of its output from the analytic moments of
    :func:`paper_repro.feedforward.repairs.propagate` (element moments averaged over
    positions: ``var_c = mean(var + mean^2) - mean_c^2``). Layers whose moments are not
    finite are left out. Raises ``ValueError`` when none is left."""
    from paper_repro.feedforward import repairs

    mom = repairs.propagate(graph, params, in_mean=in_mean, in_std=in_std)
    ax = graph.channel_axis
    out = []
    for node in graph.layers[:-1]:
        m = mom[node.name]
        mean = np.asarray(m.mean, np.float64)
        second = np.asarray(m.var, np.float64) + mean**2
        c_ax = ax % (mean.ndim + 1) - 1
        mc = np.moveaxis(mean, c_ax, 0).reshape(mean.shape[c_ax], -1).mean(1)
        sc = np.moveaxis(second, c_ax, 0).reshape(mean.shape[c_ax], -1).mean(1)
        if not (np.all(np.isfinite(mc)) and np.all(np.isfinite(sc))):
            continue
        std = np.sqrt(np.maximum(sc - mc**2, 0.0))
        out.append(Target(node.name, mc, std, np.maximum(std, 1e-3 * max(std.max(), 1e-12))))
    if not out:
        raise ValueError("the network has no batch norm with running statistics and no layer "
                         "with analytic moments: synthetic calibration is not available for it "
                         "(use the data-free recipe without it)")
    return out


def targets_for(graph: G.Graph, params, *, in_mean, in_std) -> tuple[str, list[Target]]:
    """``("bn", bn_targets)`` when the network has batch norms with running statistics,
    else ``("moments", moment_targets)``."""
    t = bn_targets(graph, params)
    if t:
        return "bn", t
    return "moments", moment_targets(graph, params, in_mean=in_mean, in_std=in_std)


def _channel_sums(a: jax.Array, axis: int) -> tuple[jax.Array, jax.Array]:
    """Per-channel ``(sum a, sum a^2)`` over every other axis of a batched activation."""
    ax = axis % a.ndim
    red = tuple(i for i in range(a.ndim) if i != ax)
    return a.sum(red), (a * a).sum(red)


def statistic_loss(sums, counts, targets: Sequence[Target], *, first_weight: float = 1.0
                   ) -> jax.Array:
    """Mean over targets and channels of ``((mean - m) / s)^2 + ((std - sd) / s)^2`` from
    per-channel sums ``[(S1, S2)]`` over ``counts`` values each; the first target weighs
    ``first_weight`` (DeepInversion's multiplier of the first batch norm: the one nearest the
    pixels, which the other targets constrain least)."""
    tot = 0.0
    for i, ((s1, s2), n, t) in enumerate(zip(sums, counts, targets)):
        mu = s1 / n
        sd = jnp.sqrt(jnp.maximum(s2 / n - mu * mu, 0.0) + 1e-12)
        term = jnp.mean(((mu - t.mean) / t.scale) ** 2 + ((sd - t.std) / t.scale) ** 2)
        tot = tot + (first_weight if i == 0 else 1.0) * term
    return tot / len(targets)


def synthesize(graph: G.Graph, params, targets: Sequence[Target], *, n_images: int,
               steps: int, lr: float, seed: int, in_mean, in_std, in_lo, in_hi,
               init: str = "pink", first_weight: float = 1.0, chunk: int = 8,
               patience: int = DIVERGED_AFTER, progress: bool = False
               ) -> tuple[np.ndarray, list[float]]:
    """ZeroQ images: ``(images (n_images, *input_shape[1:]) float32, loss per step)``.

    Starts from noise of mean ``in_mean`` and standard deviation ``in_std`` per channel
    (clipped to ``[in_lo, in_hi]``): ``init="white"`` independent pixels (ZeroQ's Gaussian
    start), ``"pink"`` the ``1/f`` amplitude spectrum of natural images
    (:func:`pink_noise`; no data, a property of natural images like the channel means);
    ``steps`` Adam steps (optax, rate ``lr`` in units of ``in_std``, cosine decay) on
    :func:`statistic_loss`, each followed by clipping to the input range. The loss list has
    ``steps + 1`` entries (the last: the returned images). Deterministic for a seed.

    A synthesis that diverges, its loss above the starting loss for ``patience`` steps in a
    row (targets the network cannot reach from these inputs, e.g. approximate analytic
    moments) or not finite (``patience`` 0: never stopped), stops there and returns the
    images of the lowest finite loss in the list (:func:`synthesis_outcome` tells such a run
    from a finished one).
    """
    import optax

    if n_images < 1 or steps < 0:
        raise ValueError("n_images must be >= 1 and steps >= 0")
    shape = tuple(graph.input_shape[1:])
    ax = graph.channel_axis
    cshape = [1] * (len(shape) + 1)
    cshape[ax] = -1
    mean = jnp.asarray(np.broadcast_to(np.asarray(in_mean, np.float32).reshape(cshape[1:])
                                       if np.ndim(in_mean) == 1 else in_mean, shape))
    std = jnp.asarray(np.broadcast_to(np.asarray(in_std, np.float32).reshape(cshape[1:])
                                      if np.ndim(in_std) == 1 else in_std, shape))
    lo = jnp.asarray(np.broadcast_to(np.asarray(in_lo, np.float32).reshape(cshape[1:])
                                     if np.ndim(in_lo) == 1 else in_lo, shape))
    hi = jnp.asarray(np.broadcast_to(np.asarray(in_hi, np.float32).reshape(cshape[1:])
                                     if np.ndim(in_hi) == 1 else in_hi, shape))
    std = jnp.maximum(std, 1e-6)
    u_lo, u_hi = (lo - mean) / std, (hi - mean) / std
    key = jax.random.PRNGKey(seed)
    if init == "white":
        u0 = jax.random.normal(key, (n_images,) + shape, jnp.float32)
    elif init == "pink":
        u0 = pink_noise(key, (n_images,) + shape, channel_axis=ax)
    else:
        raise ValueError(f"init must be 'pink' or 'white', got {init!r}")
    u = jnp.clip(u0, u_lo, u_hi)
    names = [t.node for t in targets]
    tg = [Target(t.node, jnp.asarray(t.mean, jnp.float32), jnp.asarray(t.std, jnp.float32),
                 jnp.asarray(t.scale, jnp.float32)) for t in targets]
    chunk = max(1, min(chunk, n_images))

    def sums(uc):
        _, env = _apply(graph, params, mean + std * uc)
        return [_channel_sums(env[k], ax) for k in names]

    sums_j = jax.jit(sums)

    def chunk_grad(uc, ct):
        _, vjp = jax.vjp(sums, uc)
        return vjp(ct)[0]

    grad_j = jax.jit(chunk_grad)
    env_shapes = jax.eval_shape(lambda uc: _apply(graph, params, mean + std * uc)[1], u[:1])
    counts = [n_images * int(np.prod(env_shapes[k].shape)) // env_shapes[k].shape[ax]
              for k in names]
    loss_and_ct = jax.jit(jax.value_and_grad(lambda s: statistic_loss(
        s, counts, tg, first_weight=first_weight)))

    sched = optax.cosine_decay_schedule(lr, max(steps, 1))
    opt = optax.adam(sched)
    state = opt.init(u)
    history: list[float] = []
    from tqdm.auto import tqdm

    bar = tqdm(total=steps, desc="synthesizing images", unit="step", disable=not progress)
    best = (np.inf, u)
    above = 0  # steps in a row with the loss above the start's
    for step in range(steps + 1):
        parts = [sums_j(u[i:i + chunk]) for i in range(0, n_images, chunk)]
        tot = jax.tree_util.tree_map(lambda *a: sum(a[1:], a[0]), *parts)
        val, ct = loss_and_ct(tot)
        history.append(float(val))
        if history[-1] < best[0]:
            best = (history[-1], u)
        finite = math.isfinite(history[-1])
        if finite and step == steps:
            break
        above = above + 1 if history[-1] > history[0] else 0
        if patience > 0 and (not finite or above >= patience):
            u = best[1]  # diverged: back to the images of the lowest loss
            break
        g = jnp.concatenate([grad_j(u[i:i + chunk], ct) for i in range(0, n_images, chunk)])
        upd, state = opt.update(g, state, u)
        u = jnp.clip(optax.apply_updates(u, upd), u_lo, u_hi)
        bar.update(1)
        bar.set_postfix_str(f"loss {history[-1]:.4f}")
    bar.close()
    return np.asarray(mean + std * u, np.float32), history


def synthesis_outcome(history: Sequence[float], steps: int) -> dict:
    """``{"loss_end": the returned images' loss}``, with ``"diverged_at"`` (the step it stopped
    at) where :func:`synthesize` stopped a diverging run (``history`` shorter than ``steps +
    1`` or ending in a loss that is not finite: its images are those of the lowest finite
    loss; ``loss_end`` ``None`` if there is none)."""
    if len(history) == steps + 1 and math.isfinite(history[-1]):
        return {"loss_end": history[-1]}
    finite = [h for h in history if math.isfinite(h)]
    return {"loss_end": min(finite) if finite else None, "diverged_at": len(history) - 1}


def pink_noise(key, shape: Sequence[int], *, channel_axis: int = -1) -> jax.Array:
    """Noise with a ``1/f`` amplitude spectrum over the two spatial axes (what natural
    images have), each image and channel scaled to zero mean and unit standard deviation.
    ``shape``: batched, ``(N, H, W, C)`` or ``(N, C, H, W)``."""
    shape = tuple(shape)
    ax = channel_axis % len(shape)
    sp = [a for a in range(1, len(shape)) if a != ax]
    white = jax.random.normal(key, shape, jnp.float32)
    f = jnp.fft.fftn(white, axes=sp)
    fy = jnp.fft.fftfreq(shape[sp[0]])
    fx = jnp.fft.fftfreq(shape[sp[1]])
    r = jnp.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2)
    amp = 1.0 / jnp.maximum(r, 1.0 / max(shape[sp[0]], shape[sp[1]]))
    amp = amp.at[0, 0].set(0.0)
    bshape = [1] * len(shape)
    bshape[sp[0]], bshape[sp[1]] = shape[sp[0]], shape[sp[1]]
    x = jnp.real(jnp.fft.ifftn(f * amp.reshape(bshape), axes=sp))
    x = x - x.mean(axis=tuple(sp), keepdims=True)
    return (x / (x.std(axis=tuple(sp), keepdims=True) + 1e-12)).astype(jnp.float32)


def target_mismatch(graph: G.Graph, params, targets: Sequence[Target], images) -> float:
    """:func:`statistic_loss` of ``images`` (the synthesis objective, for checks)."""
    _, env = _apply(graph, params, jnp.asarray(images))
    ax = graph.channel_axis
    sums, counts = [], []
    for t in targets:
        a = env[t.node]
        sums.append(_channel_sums(a, ax))
        counts.append(a.size // a.shape[ax])
    return float(statistic_loss(sums, counts, targets))


# --- Layer inputs as patches --------------------------------------------------------------------


def _nhwc(x: jax.Array, channel_axis: int) -> jax.Array:
    return jnp.moveaxis(x, channel_axis % x.ndim, -1) if channel_axis % x.ndim != x.ndim - 1 \
        else x


@dataclasses.dataclass
class LayerForm:
    """How a layer's output is ``patches @ kernel``: ``op`` (``conv``, ``depthwise``,
    ``dense``), the kernel path, its ``out_axis`` and the kernel rows ``(G, K, O)`` mapping
    (``to_rows`` / ``from_rows``): ``G = 1`` groups for conv and dense (``K`` inputs per output),
    ``G = C`` for depthwise (``K = kh kw``, ``O = 1``)."""

    op: str
    kernel: str
    out_axis: int
    to_rows: Callable[[np.ndarray], np.ndarray]
    from_rows: Callable[[np.ndarray], np.ndarray]
    patches: Callable[[jax.Array], jax.Array]  # batched input -> (G, P, K)


def layer_form(graph: G.Graph, node: G.Node, kernel: np.ndarray, *, out_axis: int) -> LayerForm:
    """The :class:`LayerForm` of a ``conv`` / ``depthwise`` / ``dense`` node (kernels
    ``HWIO`` or Keras depthwise ``(kh, kw, C, 1)`` / ONNX depthwise ``(kh, kw, 1, C)``,
    dense ``(C_in, C_out)``). Raises ``ValueError`` for other layers."""
    path = node.kernels[0] if len(node.kernels) == 1 else None
    if node.op not in ("conv", "depthwise", "dense") or path is None:
        raise ValueError(f"learned rounding does not handle layer {node.name!r} ({node.op}, "
                         f"kernels {list(node.kernels)}): keep it out of the quantized paths "
                         "or use the data-free recipe")
    w = np.asarray(kernel)
    ax = graph.channel_axis
    if node.op == "dense" or w.ndim == 2:
        if w.ndim != 2:
            raise ValueError(f"dense layer {node.name!r} has a {w.shape} kernel")
        oa = out_axis % 2

        def to_rows(a):
            a = np.asarray(a)
            return (a if oa == 1 else a.T)[None]

        def from_rows(r):
            r = np.asarray(r)[0]
            return r if oa == 1 else r.T

        def patches(x):
            return x.reshape(-1, x.shape[-1])[None] if ax % x.ndim == x.ndim - 1 else \
                jnp.moveaxis(x, ax % x.ndim, -1).reshape(-1, x.shape[ax])[None]

        return LayerForm("dense", path, out_axis, to_rows, from_rows, patches)
    if w.ndim != 4:
        raise ValueError(f"layer {node.name!r}: a {w.shape} kernel is not a 2-D convolution")
    kh, kw = w.shape[:2]
    strides = tuple(node.attrs.get("strides", (1, 1)))
    padding = tuple(tuple(p) for p in node.attrs.get("padding", ((0, 0), (0, 0))))
    oa = out_axis % 4
    if node.op == "depthwise":
        mult = w.shape[3] if oa == 2 else w.shape[2]
        if mult != 1:
            raise ValueError(f"depthwise layer {node.name!r} has channel multiplier {mult}; "
                             "learned rounding handles multiplier 1")
        C = w.shape[oa]

        def to_rows(a):
            a = np.asarray(a).reshape(kh * kw, C)  # (kh, kw, C, 1) or (kh, kw, 1, C)
            return a.T[:, :, None]  # (C, S, 1)

        def from_rows(r):
            return np.asarray(r)[:, :, 0].T.reshape(w.shape)

        def patches(x):
            x = _nhwc(x, ax)
            p = _patches(x, kh, kw, strides, padding)  # (N, Ho, Wo, C, S)
            return jnp.moveaxis(p.reshape(-1, C, kh * kw), 1, 0)

        return LayerForm("depthwise", path, out_axis, to_rows, from_rows, patches)
    if oa != 3:
        raise ValueError(f"convolution {node.name!r}: kernels must be HWIO (output axis -1)")
    cin, cout = w.shape[2], w.shape[3]

    def to_rows(a):
        return np.asarray(a).reshape(kh * kw * cin, cout)[None]

    def from_rows(r):
        return np.asarray(r)[0].reshape(w.shape)

    def patches(x):
        x = _nhwc(x, ax)
        if kh == kw == 1 and all(s == 1 for s in strides) and not any(
                p for pp in padding for p in pp):
            return x.reshape(1, -1, cin)
        p = _patches(x, kh, kw, strides, padding)  # (N, Ho, Wo, C, S)
        return jnp.swapaxes(p, -1, -2).reshape(1, -1, kh * kw * cin)

    return LayerForm("conv", path, out_axis, to_rows, from_rows, patches)


def _patches(x: jax.Array, kh: int, kw: int, strides, padding) -> jax.Array:
    """``(N, Ho, Wo, C, kh * kw)`` input patches of an NHWC tensor (taps in ``(kh, kw)``
    row-major order)."""
    p = lax.conv_general_dilated_patches(
        x, (kh, kw), tuple(int(s) for s in strides), [tuple(int(a) for a in q) for q in padding],
        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    n, ho, wo, _ = p.shape
    return p.reshape(n, ho, wo, x.shape[-1], kh * kw)


@dataclasses.dataclass
class Moments2:
    """Centred second moments of a layer's input patches over ``count`` positions:
    ``qq = Cov(x_q, x_q)``, ``qf = Cov(x_q, x_f)`` (``(G, K, K)``), means ``mq``, ``mf``
    (``(G, K)``), and the Ledoit-Wolf shrinkage intensity toward the diagonal of ``qq`` per
    group (``(G,)``)."""

    qq: np.ndarray
    qf: np.ndarray
    mq: np.ndarray
    mf: np.ndarray
    count: int
    shrink: np.ndarray


def patch_moments(form: LayerForm, x_q: jax.Array, x_f: jax.Array, *, chunk: int = 8
                  ) -> Moments2:
    """Accumulate :class:`Moments2` of the patches of ``x_q`` (quantized-so-far inputs) and
    ``x_f`` (float inputs), ``chunk`` images at a time (float64 sums of patches shifted by the
    first chunk's means, so that the centred moments and the shrinkage, computed on centred
    patches, lose no precision)."""

    @jax.jit
    def part(xq, xf, cq, cf):
        pq, pf = form.patches(xq) - cq[:, None], form.patches(xf) - cf[:, None]
        sq = pq * pq
        return (jnp.einsum("gpk,gpl->gkl", pq, pq), jnp.einsum("gpk,gpl->gkl", pq, pf),
                pq.sum(1), pf.sum(1), jnp.einsum("gpk,gpl->gkl", sq, sq))

    n = x_q.shape[0]
    first_q, first_f = form.patches(x_q[:chunk]), form.patches(x_f[:chunk])
    cq, cf = first_q.mean(1), first_f.mean(1)
    del first_q, first_f
    acc = None
    cnt = 0
    for i in range(0, n, chunk):
        parts = part(x_q[i:i + chunk], x_f[i:i + chunk], cq, cf)
        vals = [np.asarray(a, np.float64) for a in parts]
        cnt += int(jax.eval_shape(form.patches, x_q[i:i + chunk]).shape[1])
        acc = vals if acc is None else [a + b for a, b in zip(acc, vals)]
    qq, qf, sq_, sf_, m4 = acc
    dq, df = sq_ / cnt, sf_ / cnt  # means of the shifted patches
    qq = qq / cnt - np.einsum("gk,gl->gkl", dq, dq)  # centred
    qf = qf / cnt - np.einsum("gk,gl->gkl", dq, df)
    m4 = m4 / cnt
    # Ledoit-Wolf intensity toward the diagonal (centred patches, the first chunk's means
    # standing in for the mean in the fourth moments): sum_{i != j} Var(s_ij) / sum s_ij^2
    off = ~np.eye(qq.shape[-1], dtype=bool)
    var_sij = np.maximum(m4 - qq * qq, 0.0) / max(cnt - 1, 1)
    num = (var_sij * off).sum((1, 2))
    den = (qq * qq * off).sum((1, 2))
    shrink = np.clip(np.where(den > 0, num / np.maximum(den, 1e-300), 1.0), 0.0, 1.0)
    cq64, cf64 = np.asarray(cq, np.float64), np.asarray(cf, np.float64)
    return Moments2(qq, qf, dq + cq64, df + cf64, cnt, shrink)


# --- Learned rounding of one layer -------------------------------------------------------------


def _h(v):
    return jnp.clip(jax.nn.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def _h_inv(h):
    h = np.clip(h, 1e-3, 1 - 1e-3)
    s = np.clip((h - GAMMA) / (ZETA - GAMMA), 1e-6, 1 - 1e-6)
    return np.log(s / (1 - s))


def _rec(w_hat, H, A, c, s2):
    """``sum_o s2_o (w_o^T H w_o - 2 w_o^T A_o + c_o)`` over groups, shapes ``(G, K, O)``,
    ``(G, K, K)``, ``(G, K, O)``, ``(G, O)``, ``(G, O)``."""
    hw = jnp.einsum("gkl,glo->gko", H, w_hat)
    e = (w_hat * hw).sum(1) - 2 * (w_hat * A).sum(1) + c
    return (s2 * e).sum()


@jax.jit
def _layer_errors(w_hat, H, A, c, s2):
    return _rec(w_hat, H, A, c, s2)


def optimize_layer(lo, gap, w, H, A, c, s2, *, ref: float, steps: int, lr: float,
                   reg_weight: float, beta_start: float, beta_end: float, warmup: float
                   ) -> np.ndarray:
    """AdaRound on one layer's rows: minimizes ``rec / ref + reg_weight * mean(1 - |2h -
    1|^beta)`` (``rec``: :func:`_rec`; ``ref``: the float output's energy, so the balance
    does not depend on the layer's scale) from ``h`` = each weight's fractional position
    between its neighbouring levels. ``lo``, ``gap`` (``(G, K, O)``): lower neighbouring level
    and the gap to the upper one (0 where a weight has one neighbour); ``w`` the float rows.
    Returns the 0/1 choice of the upper level per weight."""
    frac = np.where(gap > 0, (np.asarray(w) - lo) / np.where(gap > 0, gap, 1.0), 0.0)
    v0 = jnp.asarray(_h_inv(frac), jnp.float32)
    args = tuple(jnp.asarray(a, jnp.float32) for a in (lo, gap, H, A, c, s2))
    up = _adaround(v0, *args, jnp.float32(ref), steps=int(steps), lr=float(lr), reg_weight=float(reg_weight),
                   beta_start=float(beta_start), beta_end=float(beta_end),
                   warmup=float(warmup))
    return np.asarray(up) & (gap > 0)


def _adaround_impl(v0, lo, gap, H, A, c, s2, ref, *, steps, lr, reg_weight, beta_start,
                   beta_end, warmup):
    import optax

    opt = optax.adam(lr)
    live = (gap > 0).astype(jnp.float32)
    n_live = jnp.maximum(live.sum(), 1.0)
    n_warm = int(warmup * steps)

    def loss(v, beta, lam):
        h = _h(v)
        rec = _rec(lo + h * gap, H, A, c, s2) / ref
        reg = (live * (1 - jnp.abs(2 * h - 1) ** beta)).sum() / n_live
        return rec + lam * reg

    def body(i, carry):
        v, st = carry
        t = jnp.clip((i - n_warm) / max(steps - n_warm, 1), 0.0, 1.0)
        beta = beta_end + 0.5 * (beta_start - beta_end) * (1 + jnp.cos(jnp.pi * t))
        lam = jnp.where(i < n_warm, 0.0, reg_weight)
        g = jax.grad(loss)(v, beta, lam)
        upd, st = opt.update(g, st, v)
        return optax.apply_updates(v, upd), st

    v, _ = lax.fori_loop(0, steps, body, (v0, opt.init(v0)))
    return _h(v) >= 0.5


_adaround = jax.jit(_adaround_impl, static_argnames=("steps", "lr", "reg_weight", "beta_start",
                                                      "beta_end", "warmup"))


def _refine_impl(up, lo, gap, H, A, *, sweeps):
    """Exact coordinate descent on the hard choices: for each input index ``k`` in turn, flip
    every weight ``(g, k, o)`` whose flip to its other neighbouring level lowers the column's
    ``w^T H w - 2 w^T A`` (columns are independent, so all are done at once), ``sweeps``
    times over ``k``. Never raises the objective."""
    w = lo + up * gap
    g = 2 * (jnp.einsum("gkl,glo->gko", H, w) - A)
    K = lo.shape[1]

    def step(k, carry):
        up, w, g = carry
        up_k, lo_k, gap_k = up[:, k, :], lo[:, k, :], gap[:, k, :]
        d = jnp.where(up_k, lo_k, lo_k + gap_k) - w[:, k, :]
        hkk = H[:, k, k][:, None]
        gain = d * g[:, k, :] + hkk * d * d  # objective change of the flip
        flip = (gap_k > 0) & (gain < -1e-6 * hkk * d * d)
        d = jnp.where(flip, d, 0.0)
        up = up.at[:, k, :].set(jnp.where(flip, 1.0 - up_k, up_k))
        w = w.at[:, k, :].add(d)
        g = g + 2 * H[:, :, k][:, :, None] * d[:, None, :]
        return up, w, g

    carry = (up, w, g)
    for _ in range(sweeps):
        carry = lax.fori_loop(0, K, step, carry)
    return carry[0]


_refine = jax.jit(_refine_impl, static_argnames=("sweeps",))


def refine_layer(up, lo, gap, H, A, *, sweeps: int = 2) -> np.ndarray:
    """:func:`_refine_impl` on 0/1 choices ``up`` (``(G, K, O)``); returns the new choices."""
    args = tuple(jnp.asarray(a, jnp.float32) for a in (up, lo, gap, H, A))
    return np.asarray(_refine(*args, sweeps=int(sweeps))) > 0.5


# --- Learned rounding of a network -------------------------------------------------------------


def _sink(graph, node, values) -> tuple[str, str] | None:
    from paper_repro.feedforward import repairs

    return repairs.find_sink(graph, node, values)


def _post_scale(graph: G.Graph, node: G.Node, values) -> np.ndarray | None:
    """``(C_out,)`` scale of the batch norm right after ``node`` (``None`` if none)."""
    from paper_repro.feedforward import repairs

    bn, _ = G.follow(graph, node.name)
    if bn is None:
        return None
    try:
        a, _ = repairs.bn_affine(graph[bn], values)
    except ValueError:
        return None
    return np.asarray(a, np.float64)


def _channel_var(y: jax.Array, axis: int) -> np.ndarray:
    """Per-channel variance over every other axis (float64)."""
    y = np.asarray(y, np.float64)
    ax = axis % y.ndim
    r = np.moveaxis(y, ax, 0).reshape(y.shape[ax], -1)
    return r.var(1)


def learn_rounding(graph: G.Graph, params_float, params_q, report: list[dict], images, *,
                   config: OptConfig, channel_axis: int | Callable | None = None,
                   in_mean=None, in_std=None, progress: bool = False
                   ) -> tuple[dict, list[dict], list[dict]]:
    """Learned rounding of every quantized layer of ``report`` (a
    :func:`~paper_repro.core.quantize.quantize_tree` report whose ``codes`` are the start,
    e.g. SQuant's) on ``images`` (``(N, *input)``), in graph order, each layer's mean output
    shift corrected as ``config.bias_correction`` says before the next layer's inputs are
    computed.

    ``params_float``: the float tree (same layout as ``params_q``); ``channel_axis``: the
    kernels' output-channel axis (int, ``f(path, leaf)`` or ``None`` for Keras layouts);
    ``in_mean`` / ``in_std``: the input statistics the analytic bias correction starts from
    (:func:`paper_repro.feedforward.repairs.propagate`). Returns ``(new_params, new_report,
    layers)``: ``layers`` one dict per rounded layer (output error relative to the float
    output's variance, after the next batch norm's scale, of nearest, starting and learned
    rounding on the synthetic set; shrinkage; seconds).
    """
    from tqdm.auto import tqdm

    from paper_repro.feedforward import repairs

    axis_fn = (Q.default_channel_axis if channel_axis is None else channel_axis
               if callable(channel_axis) else (lambda p, x: channel_axis))
    rows = {r["path"]: r for r in report}
    orig = G.flat_values(params_q)
    vf = {k: jnp.asarray(v) for k, v in G.flat_values(params_float).items()}
    vq = {k: jnp.asarray(v) for k, v in orig.items()}
    changed: dict[str, np.ndarray] = {}
    moments = None
    if config.bias_correction == "analytic":
        if in_mean is None or in_std is None:
            raise ValueError("analytic bias correction needs the input statistics (in_mean=, "
                             "in_std=)")
        moments = repairs.propagate(graph, params_float, in_mean=in_mean, in_std=in_std)
    vf_np = {k: np.asarray(v, np.float64) for k, v in vf.items()}
    x = jnp.asarray(images, jnp.float32)
    n_val = int(round(config.holdout * x.shape[0]))
    if n_val >= x.shape[0]:
        raise ValueError(f"holdout={config.holdout} leaves no calibration image of "
                         f"{x.shape[0]}")
    parts = [x[:x.shape[0] - n_val], x[x.shape[0] - n_val:]]
    if config.flip:
        sp = [a for a in range(1, x.ndim) if a != graph.channel_axis % x.ndim]
        parts = [jnp.concatenate([p, jnp.flip(p, sp[-1])]) for p in parts]
    n_cal = parts[0].shape[0]
    x = jnp.concatenate(parts) if n_val else parts[0]
    env_f: dict[str, jax.Array] = {"input": x}
    env_q: dict[str, jax.Array] = {"input": x}
    left = {n.name: len(graph.consumers(n.name)) for n in graph.nodes}
    left["input"] = len(graph.consumers("input"))
    todo = [n for n in graph.layers if any(k in rows for k in n.kernels)]
    bar = tqdm(total=len(todo), desc="learned rounding", unit="layer", disable=not progress)
    new_report = dict(rows)
    layers = []
    for node in graph.nodes:
        xs_f = [env_f[i] for i in node.inputs]
        xs_q = [env_q[i] for i in node.inputs]
        form = None
        if node in todo:
            t0 = time.perf_counter()
            try:
                form = _form_of(graph, node, vf, axis_fn, xs_f[0][:2])
            except ValueError as e:  # keeps its starting codes; its shift is still absorbed
                info = {"layer": node.name, "path": ",".join(node.kernels), "kept": "start",
                        "not_learned": str(e)}
                shift = _start_shift(graph, node, vf, vq, vf_np, xs_q, n_cal, moments, config)
                if shift is not None:
                    _absorb(graph, node, shift, vq, orig, changed, info)
                info["seconds"] = round(time.perf_counter() - t0, 2)
                layers.append(info)
                bar.update(1)
                bar.set_postfix_str(f"{node.name}: starting codes kept")
        if form is not None:
            path = form.kernel
            row = rows[path]
            w = np.asarray(vf[path], np.float64)
            xq, xf = xs_q[0], xs_f[0]
            mom = patch_moments(form, xq[:n_cal], xf[:n_cal], chunk=config.chunk)
            val = patch_moments(form, xq[n_cal:], xf[n_cal:], chunk=config.chunk) \
                if n_val else None
            y_f = _run_node(graph, node, vf, xs_f)
            info, codes, shift = _round_layer(graph, node, form, row, w, mom, y_f[:n_cal], vf,
                                              config, val, y_f[n_cal:])
            qz = row["quantizer"]
            w_hat = np.asarray(Q.decode(codes, qz)).astype(np.asarray(orig[path]).dtype)
            vq[path] = jnp.asarray(w_hat)
            changed[path] = w_hat
            if config.bias_correction != "none":
                if config.bias_correction == "analytic":
                    shift = _analytic_shift(graph, node, vq, vf_np, moments)
                _absorb(graph, node, shift, vq, orig, changed, info)
            new_report[path] = {**row, "codes": jnp.asarray(codes),
                                "r": float(corr_mod.sample_r(jnp.asarray(w, jnp.float32),
                                                             jnp.asarray(w_hat))),
                                "zero_fraction": float(np.mean(w_hat == 0))}
            info["seconds"] = round(time.perf_counter() - t0, 2)
            layers.append(info)
            env_f[node.name] = y_f
            env_q[node.name] = _run_node(graph, node, vq, xs_q)
            bar.update(1)
            bar.set_postfix_str(f"{node.name}: error x{info['learned'] / max(info['nearest'], 1e-30):.2f} "
                                "of nearest")
        else:
            env_f[node.name] = _run_node(graph, node, vf, xs_f)
            env_q[node.name] = _run_node(graph, node, vq, xs_q)
        for i in node.inputs:
            left[i] -= 1
            if left[i] == 0:
                env_f.pop(i, None)
                env_q.pop(i, None)
    bar.close()
    new = repairs._copy_tree(params_q)
    for p, v in changed.items():
        repairs._set(new, p, v)
    return new, [new_report[r["path"]] for r in report], layers


def _form_of(graph: G.Graph, node: G.Node, values, axis_fn, x) -> LayerForm:
    """The node's single quantized kernel as input patches times a matrix, checked against
    the node on ``x``; ``ValueError`` (the reason) where learned rounding cannot express it
    (several kernels in one node, e.g. a separable convolution; another layer type)."""
    if len(node.kernels) != 1:
        raise ValueError(f"{len(node.kernels)} kernels in one layer "
                         f"({', '.join(node.kernels)})")
    path = node.kernels[0]
    w = np.asarray(values[path], np.float64)
    form = layer_form(graph, node, w, out_axis=axis_fn(path, w))
    _check_form(graph, node, form, values, x)
    return form


def _start_shift(graph, node, vf, vq, vf_np, xs_q, n_cal, moments, config) -> np.ndarray | None:
    """The mean output shift ``E[y_q - y_f]`` per output channel of a layer that keeps its
    starting codes: analytic (from the float network's input means) or measured on the
    calibration images with the quantized network's inputs; ``None`` without correction."""
    if config.bias_correction == "none":
        return None
    if config.bias_correction == "analytic":
        return _analytic_shift(graph, node, vq, vf_np, moments)
    xs = [a[:n_cal] for a in xs_q]
    v0 = dict(vq)
    v0.update({k: vf[k] for k in node.kernels})
    d = np.asarray(_run_node(graph, node, vq, xs) - _run_node(graph, node, v0, xs), np.float64)
    return _channel_mean(d, graph.channel_axis)


def _analytic_shift(graph, node, vq, vf_np, moments) -> np.ndarray:
    """The expected output shift of ``node``'s quantized kernels (in ``vq``) from the float
    network's analytic input mean (:func:`paper_repro.feedforward.repairs.layer_shifts`)."""
    from paper_repro.feedforward import repairs

    vq_k = {k: np.asarray(vq[k], np.float64) for k in node.kernels}
    return repairs.layer_shifts(graph, vf_np, vq_k,
                                {node.name: moments[node.inputs[0]].mean})[node.name]


def _channel_mean(y: np.ndarray, axis: int) -> np.ndarray:
    ax = axis % y.ndim
    return y.mean(axis=tuple(a for a in range(y.ndim) if a != ax))


def _absorb(graph, node, shift, vq, orig, changed, info) -> None:
    """Absorb ``shift`` (per output channel) into the node's bias, the batch norm after it or
    a new bias (updating ``vq`` and ``changed``); ``info`` records it."""
    sink = _sink(graph, node, vq)
    if sink is None:  # no bias, batch norm or creatable bias: left as is
        info["shift_absorbed"] = False
    else:
        kind, spath = sink
        if kind == "new":
            changed[spath] = (-shift).astype(np.float32)
        else:
            cur = np.asarray(orig[spath]) if spath not in changed else changed[spath]
            val = cur.astype(np.float64) + (shift if kind == "bn" else -shift)
            changed[spath] = val.astype(cur.dtype)
        vq[spath] = jnp.asarray(changed[spath])
    info["max_abs_shift"] = float(np.abs(shift).max())


def _check_form(graph, node, form: LayerForm, values, x):
    """``patches @ kernel`` must reproduce the layer (bias removed) on a few inputs."""
    vz = dict(values)
    vz[form.kernel] = jnp.zeros_like(values[form.kernel])
    y = _run_node(graph, node, values, [x]) - _run_node(graph, node, vz, [x])
    rows = jnp.asarray(form.to_rows(np.asarray(values[form.kernel])), jnp.float32)
    p = form.patches(x)  # (G, P, K)
    yp = jnp.einsum("gpk,gko->gpo", p, rows)  # (G, P, O)
    yn = _nhwc(y, graph.channel_axis) if y.ndim > 2 else y
    ref = yn.reshape(-1, yn.shape[-1])  # (P, C)
    got = yp[0] if form.op != "depthwise" else yp[:, :, 0].T
    err = float(jnp.max(jnp.abs(got - ref)))
    scale = float(jnp.max(jnp.abs(ref))) + 1e-12
    if not err <= 1e-3 * scale:
        raise ValueError(f"learned rounding cannot express layer {node.name!r} as input patches "
                         f"times its kernel (relative mismatch {err / scale:.2g}); keep it out of "
                         "the quantized paths or use the data-free recipe")


def _quadratic(mom: Moments2, W, var_f, s2, *, shrink: bool):
    """``(H, A, c, s2)`` of :func:`_rec` for the uncentred output error (``E[x x^T] = Cov +
    m m^T``: the mean error counts too); ``var_f`` ``(G, O)`` the float output variance;
    ``shrink``: the covariances shrunk toward their diagonal by ``mom.shrink``."""
    qq, qf = mom.qq, mom.qf
    if shrink:
        a = mom.shrink[:, None, None]
        eye = np.eye(qq.shape[-1], dtype=bool)[None]
        qq = np.where(eye, qq, (1 - a) * qq)
        qf = np.where(eye, qf, (1 - a) * qf)
    H = qq + np.einsum("gk,gl->gkl", mom.mq, mom.mq)
    A = np.einsum("gkl,glo->gko", qf + np.einsum("gk,gl->gkl", mom.mq, mom.mf), W)
    c = var_f + np.einsum("gk,gko->go", mom.mf, W) ** 2
    return H, A, c, s2


def _errors(rows: Mapping[str, np.ndarray], quad) -> dict[str, float]:
    z = tuple(jnp.asarray(a, jnp.float32) for a in quad)
    return {k: float(_layer_errors(jnp.asarray(r, jnp.float32), *z)) for k, r in rows.items()}


def _round_layer(graph, node, form, row, w, mom: Moments2, y_f, vf, config: OptConfig,
                 val: Moments2 | None = None, y_val=None):
    """Candidates for one layer (the start; AdaRound's rounding; each refined), the one with
    the lowest output error on the held-out images (``val``; else the optimization
    objective) kept. Returns ``(info, codes, shift)``."""
    qz = row["quantizer"]
    lo_c, hi_c = RD.neighbour_codes(w, qz, out_axis=form.out_axis)

    def levels_of(c):
        return np.asarray(Q.decode(c, qz), np.float64)

    W = form.to_rows(w)
    LO = form.to_rows(levels_of(lo_c))
    GAP = form.to_rows(levels_of(hi_c)) - LO
    G_, K, O = W.shape
    s = _post_scale(graph, node, vf)
    s2 = np.ones((G_, O)) if s is None else (s * s).reshape(G_, O)

    def var_of(y):
        return _channel_var(y, graph.channel_axis).reshape(G_, O)

    var_c = var_of(y_f)
    opt = _quadratic(mom, W, var_c, s2, shrink=True)
    measured = _quadratic(mom, W, var_c, s2, shrink=False)
    ref = float((s2 * var_c).sum()) + 1e-30
    start_up = form.to_rows(np.asarray(row["codes"]).astype(np.int32) == hi_c) & (GAP > 0)
    nearest = form.to_rows(levels_of(np.asarray(Q.encode(jnp.asarray(w, jnp.float32), qz))))
    cands = {"start": start_up}
    if config.learn and config.round_steps > 0:
        soft = optimize_layer(LO, GAP, W, *opt[:2], opt[2], s2, ref=ref,
                              steps=config.round_steps, lr=config.round_lr,
                              reg_weight=config.reg_weight, beta_start=config.beta_start,
                              beta_end=config.beta_end, warmup=config.warmup)
        cands["learned"] = soft
        if config.refine_sweeps:
            cands["start+refined"] = refine_layer(start_up, LO, GAP, *opt[:2],
                                                  sweeps=config.refine_sweeps)
            cands["learned+refined"] = refine_layer(soft, LO, GAP, *opt[:2],
                                                    sweeps=config.refine_sweeps)
    rows = {k: LO + u * GAP for k, u in cands.items()}
    cal = _errors({"nearest": nearest, **rows}, measured)
    info = {"layer": node.name, "path": form.kernel, "op": form.op, "K": int(K),
            "positions": int(mom.count), "shrink": float(np.median(mom.shrink))}
    if val is not None:
        var_v = var_of(y_val)
        held = _errors({"nearest": nearest, **rows},
                       _quadratic(val, W, var_v, s2, shrink=False))
        ref_v = float((s2 * var_v).sum()) + 1e-30
        score = {k: held[k] for k in rows}
        info["heldout"] = {k: v / ref_v for k, v in held.items()}
    else:
        score = _errors(rows, opt)
    # the lowest score wins; ties go to the start (never worse than it on the score)
    kept = min(score, key=lambda k: (score[k], k != "start"))
    codes = np.where(form.from_rows(cands[kept]), hi_c, lo_c)
    chosen = rows[kept]
    # mean shift E[y_q - y_f] per output channel, averaged over positions (padding included)
    shift = (np.einsum("gk,gko->go", mom.mq, chosen)
             - np.einsum("gk,gko->go", mom.mf, W)).reshape(-1)
    info.update({"nearest": cal["nearest"] / ref, "start": cal["start"] / ref,
                 "learned": cal[kept] / ref, "kept": kept,
                 "changed_vs_start": float(np.mean(codes != np.asarray(row["codes"])))})
    return info, codes.astype(np.asarray(row["codes"]).dtype), shift


# --- The whole pass, cached ---------------------------------------------------------------------


def _report_digest(report: list[dict]) -> str:
    """SHA-256 of the starting quantization: each leaf's path, codes and codebook."""
    h = hashlib.sha256()
    for r in report:
        q = r["quantizer"]
        h.update(f"{r['path']}\0{q.scheme}\0{q.bits}\0{q.granularity}\0{q.channel_axis}\0".encode())
        for a in (r["codes"], q.levels, q.thresholds):
            h.update(np.ascontiguousarray(np.asarray(a)).tobytes())
    return h.hexdigest()


def synthetic_images(graph: G.Graph, params, *, config: OptConfig, in_mean, in_std, in_lo,
                     in_hi, digest: str | None = None, progress: bool = False,
                     cache: bool = True) -> tuple[np.ndarray, dict]:
    """:func:`synthesize` with :func:`targets_for`, cached under the float parameters'
    digest and the synthesis settings (``synth-<key>.npz`` in :func:`cache_dir`). Returns
    ``(images, info)``; ``info``: target kind and count, the objective at the start and the
    end, seconds, whether it came from the cache."""
    kind, targets = targets_for(graph, params, in_mean=in_mean, in_std=in_std)
    digest = digest or params_digest(params)
    key = _key({"format": CACHE_FORMAT, "params": digest, "synth": config.synth_key(),
                "targets": kind, "input": list(graph.input_shape[1:]),
                "stats": [np.asarray(a, np.float64).round(12).tolist()
                          for a in (in_mean, in_std, in_lo, in_hi)]})
    path = cache_dir() / f"synth-{key}.npz"
    hit = _read_entry(path, _load_images) if cache else None
    if hit is not None:
        return hit
    t0 = time.perf_counter()
    images, hist = synthesize(graph, params, targets, n_images=config.n_images,
                              steps=config.synth_steps, lr=config.synth_lr, seed=config.seed,
                              in_mean=in_mean, in_std=in_std, in_lo=in_lo, in_hi=in_hi,
                              init=config.synth_init, first_weight=config.synth_first_weight,
                              chunk=config.chunk, progress=progress)
    info = {"targets": kind, "n_targets": len(targets), "loss_start": hist[0],
            **synthesis_outcome(hist, config.synth_steps),
            "seconds": round(time.perf_counter() - t0, 1)}
    if cache:
        _atomic_savez(path, images=images, info=np.array(json.dumps(info)))
    return images, {**info, "cached": False}


def _load_images(path: Path) -> tuple[np.ndarray, dict]:
    with np.load(path) as z:
        return z["images"], {**json.loads(str(z["info"])), "cached": True}


def _read_entry(path: Path, load: Callable[[Path], Any]) -> Any:
    """``load(path)`` of a cache entry, or ``None`` when there is none or it cannot be read
    (truncated, corrupt, another format): one line on stderr says so, and the caller
    computes the entry again and replaces it."""
    if not path.is_file():
        return None
    try:
        return load(path)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        print(f"paper_repro datafree-opt cache: entry {path} is not used: "
              f"{type(e).__name__}: {e}; computing it again", file=sys.stderr, flush=True)
        return None


def _atomic_savez(path: Path, **arrays) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
    os.close(fd)
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # like any other file (mkstemp makes it 0600)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def optimize(params_float, params_q, report: list[dict], *, graph: G.Graph, in_mean, in_std,
             in_lo, in_hi, config: OptConfig = OptConfig(),
             channel_axis: int | Callable | None = None, progress: bool = False,
             cache: bool = True) -> tuple[dict, list[dict], dict]:
    """The optimized rounding of a quantized model (codebooks as fitted, codes re-chosen).

    ``params_q`` / ``report``: a :func:`~paper_repro.core.quantize.quantize_tree` result
    (nearest codes) of ``params_float``; ``graph``: the traced network; ``in_*``: the
    input statistics of its preprocessing. Steps: SQuant flips
    (:func:`paper_repro.feedforward.rounding.apply_squant`); with ``config.learn``,
    synthetic images (:func:`synthetic_images`) and :func:`learn_rounding` with the bias
    correction of ``config.bias_correction``; without, the analytic bias correction of
    :func:`paper_repro.feedforward.repairs.bias_correct` (unless ``"none"``).

    Cached (``opt-<key>.npz`` in :func:`cache_dir`) under the float parameters, the starting
    codes and codebooks, and ``config``; a hit returns the stored result, and a miss returns
    what it stores, so both are identical. Returns ``(new_params, new_report, info)``.
    """
    from paper_repro.feedforward import repairs

    t0 = time.perf_counter()
    digest = params_digest(params_float)
    key = _key({"format": CACHE_FORMAT, "params": digest, "start": _report_digest(report),
                "config": config.as_dict(), "axis": str(channel_axis)})
    path = cache_dir() / f"opt-{key}.npz"
    hit = _read_entry(path, lambda p: _load_result(p, params_q, report)) if cache else None
    if hit is not None:
        qp, rep, info = hit
        return qp, rep, {**info, "cached": True, "cache_key": key}
    info: dict[str, Any] = {"config": config.as_dict()}
    qp, rep = RD.apply_squant(params_q, report, params_float, channel_axis=channel_axis)
    learn = config.learn
    if learn:
        images, sinfo = synthetic_images(graph, params_float, config=config, in_mean=in_mean,
                                         in_std=in_std, in_lo=in_lo, in_hi=in_hi,
                                         digest=digest, progress=progress, cache=cache)
        info["synthesis"] = sinfo
        end = sinfo["loss_end"]
        if end is None or not end <= config.synth_tolerance:
            learn = False
            why = (f", the synthesis diverged at step {sinfo['diverged_at']}"
                   if "diverged_at" in sinfo else "")
            loss = "not finite" if end is None else f"{end:.3g}"
            info["learn_skipped"] = (
                f"the synthetic images miss their {sinfo['targets']} targets (statistic loss "
                f"{loss} > {config.synth_tolerance:g}{why}): SQuant rounding and the analytic "
                "bias correction of the anchored layers kept")
    if learn:
        qp, rep, layers = learn_rounding(graph, params_float, qp, rep, images, config=config,
                                         channel_axis=channel_axis, in_mean=in_mean,
                                         in_std=in_std, progress=progress)
        info["layers"] = layers
    elif config.bias_correction != "none":
        if config.bias_correction == "synthetic" and not config.learn:
            raise ValueError("synthetic bias correction needs the synthetic images: set "
                             "learn=True or bias_correction='analytic'")
        moments = repairs.propagate(graph, params_float, in_mean=in_mean, in_std=in_std)
        qp, _ = repairs.bias_correct(graph, params_float, qp, moments,
                                     paths=[r["path"] for r in rep], scope="anchored")
    info["seconds"] = round(time.perf_counter() - t0, 1)
    if not cache:
        return qp, rep, {**info, "cached": False}
    _store_result(path, params_float, qp, rep, info)
    qp, rep, info = _load_result(path, params_q, report)
    return qp, rep, {**info, "cached": False, "cache_key": key}


_ROW_SCALARS = ("shape", "size", "bits", "n_levels", "std", "max_over_std", "kurtosis", "params",
                "r", "zero_fraction")


def _store_result(path: Path, params_float, qp, report, info) -> None:
    """Codes, codebooks and every other leaf that differs from ``params_float``."""
    flat_f = dict(Q.tree_paths(params_float))
    flat_q = G.flat_values(qp)
    kernels = {r["path"] for r in report}
    arrays: dict[str, np.ndarray] = {}
    rows = []
    for i, r in enumerate(report):
        q = r["quantizer"]
        arrays[f"codes{i}"] = np.asarray(r["codes"])
        arrays[f"levels{i}"] = np.asarray(q.levels)
        arrays[f"thresholds{i}"] = np.asarray(q.thresholds)
        for k, v in q.params.items():
            arrays[f"qp{i}/{k}"] = np.asarray(v)
        rows.append({"path": r["path"], "scheme": q.scheme, "qbits": q.bits,
                     "granularity": q.granularity, "channel_axis": q.channel_axis,
                     "qparams": sorted(q.params),
                     **{k: r[k] for k in _ROW_SCALARS if k in r}})
    changed = []
    for p, v in flat_q.items():
        if p in kernels:
            continue
        a = np.asarray(v)
        if p not in flat_f or not np.array_equal(a, np.asarray(flat_f[p])) or \
                a.dtype != np.asarray(flat_f[p]).dtype:
            arrays[f"leaf{len(changed)}"] = a
            changed.append(p)
    meta = {"format": CACHE_FORMAT, "rows": rows, "changed": changed, "info": info}
    _atomic_savez(path, meta=np.array(json.dumps(meta, default=_json_default)), **arrays)


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"{type(o)} is not JSON-able")


def _load_result(path: Path, params_q, report) -> tuple[dict, list[dict], dict]:
    """The tree and report stored by :func:`_store_result` (``params_q`` gives the layout and
    the leaves that did not change; kernels are decoded from the stored codes)."""
    from paper_repro.feedforward import repairs

    with np.load(path) as z:
        meta = json.loads(str(z["meta"]))
        if meta.get("format") != CACHE_FORMAT:
            raise ValueError(f"cache format {meta.get('format')}, expected {CACHE_FORMAT}")
        new = repairs._copy_tree(params_q)
        flat_q = G.flat_values(params_q)
        rows = []
        by_path = {r["path"]: r for r in report}
        for i, m in enumerate(meta["rows"]):
            q = Q.Quantizer(levels=jnp.asarray(z[f"levels{i}"]),
                            thresholds=jnp.asarray(z[f"thresholds{i}"]),
                            params={k: jnp.asarray(z[f"qp{i}/{k}"]) for k in m["qparams"]},
                            scheme=m["scheme"], bits=m["qbits"], granularity=m["granularity"],
                            channel_axis=m["channel_axis"])
            codes = z[f"codes{i}"]
            leaf = np.asarray(flat_q[m["path"]])
            repairs._set(new, m["path"], np.asarray(Q.decode(codes, q)).astype(leaf.dtype))
            row = {**by_path.get(m["path"], {}), **{k: m[k] for k in _ROW_SCALARS if k in m}}
            row.update(path=m["path"], codes=jnp.asarray(codes), quantizer=q)
            row["shape"] = tuple(row["shape"])
            rows.append(row)
        for j, p in enumerate(meta["changed"]):
            repairs._set(new, p, z[f"leaf{j}"])
    return new, rows, meta["info"]


def summary(info: Mapping[str, Any]) -> dict:
    """A JSON-able summary of :func:`optimize`'s ``info``: seconds, cache, the synthesis
    objective, how many layers kept which candidate, the summed relative output error on the
    synthetic set of nearest, starting and kept rounding."""
    out = {k: info[k] for k in ("seconds", "cached", "cache_key", "learn_skipped") if k in info}
    if "synthesis" in info:
        out["synthesis"] = dict(info["synthesis"])
    every = info.get("layers") or []
    layers = [r for r in every if "not_learned" not in r]
    if len(layers) < len(every):  # starting codes kept where the rounding cannot be learned
        out["not_learned"] = {r["layer"]: r["not_learned"] for r in every
                              if "not_learned" in r}
    if layers:
        kept: dict[str, int] = {}
        for r in layers:
            kept[r["kept"]] = kept.get(r["kept"], 0) + 1
        out["layers"] = len(layers)
        out["kept"] = dict(sorted(kept.items()))
        for k in ("nearest", "start", "learned"):
            out[f"error_{k}"] = round(float(sum(r[k] for r in layers)), 6)
        if all("heldout" in r for r in layers):
            out["heldout_error_nearest"] = round(float(sum(r["heldout"]["nearest"]
                                                           for r in layers)), 6)
            out["heldout_error_kept"] = round(float(sum(r["heldout"][r["kept"]]
                                                        for r in layers)), 6)
    return out
