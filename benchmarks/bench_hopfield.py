"""Benchmark: batched JAX Hopfield retrieval sweep vs a plain NumPy reference, in one run.

    .venv/bin/python benchmarks/bench_hopfield.py [--N 1000] [--alphas 0.08 0.12 0.14]

Prints, in one run on the same machine:

1. the machine's matmul rate (float32 ``N x N`` products, JAX and NumPy), GFLOP/s;
2. the synchronous update ``s <- sign(s T)`` of a batch of states (one dense step), as GFLOP/s
   and as a fraction of the measured matmul rate;
3. a retrieval sweep (loads x coupling types, synchronous dynamics from every stored pattern
   to a fixed point / 2-cycle): ``paper_repro.hopfield.network`` (jit, batched, sparse field updates)
   vs a plain NumPy reference that runs each probe on its own (matrix-vector steps), and vs a
   batched NumPy loop; final overlaps must agree exactly (integer couplings).

Timings take the best of ``--repeat`` runs after a warm-up (compilation excluded and
reported separately).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from paper_repro.hopfield import network as hf  # noqa: E402


def best_of(f, repeat):
    ts = []
    for _ in range(repeat):
        t = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t)
    return min(ts)


def matmul_rate(N, repeat):
    a = jax.random.normal(jax.random.PRNGKey(0), (N, N), jnp.float32)
    b = jax.random.normal(jax.random.PRNGKey(1), (N, N), jnp.float32)
    mm = jax.jit(lambda a, b: a @ b)
    mm(a, b).block_until_ready()
    t_jax = best_of(lambda: mm(a, b).block_until_ready(), repeat)
    an, bn = np.asarray(a), np.asarray(b)
    t_np = best_of(lambda: an @ bn, repeat)
    flops = 2.0 * N**3
    return flops / t_jax / 1e9, flops / t_np / 1e9


def numpy_sync_single(T, s0, max_steps):
    """Plain reference: one probe at a time, ``h = T s`` per step, same stopping rule."""
    out = np.empty_like(s0)
    for b in range(s0.shape[0]):
        s_prev = s = s0[b]
        for _ in range(max_steps):
            h = T @ s
            s_new = np.where(h > 0, 1.0, np.where(h < 0, -1.0, s)).astype(np.float32)
            if np.array_equal(s_new, s) or np.array_equal(s_new, s_prev):
                s = s_new
                break
            s_prev, s = s, s_new
        out[b] = s
    return out


def numpy_sync_batched(T, s0, max_steps):
    """Batched NumPy: all probes in one matrix product per step, frozen once settled."""
    s_prev = s = s0.copy()
    active = np.ones(s0.shape[0], bool)
    for _ in range(max_steps):
        if not active.any():
            break
        h = s @ T
        s_new = np.where(active[:, None], np.where(h > 0, 1.0, np.where(h < 0, -1.0, s)), s)
        s_new = s_new.astype(np.float32)
        settled = np.all(s_new == s, -1) | np.all(s_new == s_prev, -1)
        s_prev, s = s, s_new
        active &= ~settled
    return s


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--N", type=int, default=1000)
    p.add_argument("--alphas", type=float, nargs="+", default=[0.08, 0.12, 0.14])
    p.add_argument("--max-steps", type=int, default=50)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    N = args.N
    print(f"device: {jax.default_backend()} {jax.devices()}, cpus: {os.cpu_count()}")

    # 1 + 2. machine matmul rate and one synchronous update step (B = 200 states, N = 2000),
    # measured interleaved, best of many, so that load from other processes hits both alike
    n_mm, B, N2 = 2000, 200, 2000
    a = jax.random.normal(jax.random.PRNGKey(0), (n_mm, n_mm), jnp.float32)
    b = jax.random.normal(jax.random.PRNGKey(1), (n_mm, n_mm), jnp.float32)
    mm = jax.jit(lambda a, b: a @ b)
    xi = hf.patterns(jax.random.PRNGKey(args.seed), 200, N2)
    T2 = hf.hebbian(xi)
    s = xi.astype(jnp.float32)
    step = jax.jit(lambda T, s: jnp.where(s @ T > 0, 1.0, jnp.where(s @ T < 0, -1.0, s)))
    mm(a, b).block_until_ready()
    step(T2, s).block_until_ready()
    an, bn = np.asarray(a), np.asarray(b)
    t_mm, t_np, t_step = [], [], []
    for _ in range(max(args.repeat, 3) * 3):
        t_mm.append(best_of(lambda: mm(a, b).block_until_ready(), 1))
        t_step.append(best_of(lambda: step(T2, s).block_until_ready(), 1))
        t_np.append(best_of(lambda: an @ bn, 1))
    g_jax = 2.0 * n_mm**3 / min(t_mm) / 1e9
    g_np = 2.0 * n_mm**3 / min(t_np) / 1e9
    g_step = 2.0 * B * N2 * N2 / min(t_step) / 1e9
    print(f"matmul {n_mm}^3 float32: JAX {g_jax:.1f} GFLOP/s, NumPy {g_np:.1f} GFLOP/s "
          f"(best of {len(t_mm)})")
    print(f"sync update (B={B}, N={N2}): {min(t_step) * 1e3:.2f} ms, {g_step:.1f} GFLOP/s = "
          f"{g_step / g_jax:.0%} of the JAX matmul rate")

    # 3. retrieval sweep
    key = jax.random.PRNGKey(args.seed)
    Ms = [int(round(a * N)) for a in args.alphas]
    xi = hf.patterns(key, max(Ms), N)
    cases = []
    for M in Ms:
        T = hf.hebbian(xi[:M])
        Qs, _ = hf.quantize_couplings(T, scheme="sign", M=M)
        cases += [(f"float a={M / N:.3f}", T, xi[:M]), (f"sign a={M / N:.3f}", Qs, xi[:M])]

    def run_jax():
        return [np.asarray(hf.sync_dynamics(C, x, max_steps=args.max_steps)[0])
                for _, C, x in cases]

    t = time.perf_counter()
    run_jax()
    t_compile = time.perf_counter() - t
    t_jax = best_of(run_jax, args.repeat)
    res_jax = run_jax()
    cases_np = [(n, np.asarray(C), np.asarray(x, np.float32)) for n, C, x in cases]
    t = time.perf_counter()
    res_single = [numpy_sync_single(C, x, args.max_steps) for _, C, x in cases_np]
    t_single = time.perf_counter() - t
    t_batched = best_of(lambda: [numpy_sync_batched(C, x, args.max_steps)
                                 for _, C, x in cases_np], args.repeat)
    res_batched = [numpy_sync_batched(C, x, args.max_steps) for _, C, x in cases_np]
    for (name, _, x), a, b, c in zip(cases_np, res_jax, res_single, res_batched, strict=True):
        m = (a * x).mean(-1)
        same = np.array_equal(a, c) and np.allclose(m, (b * x).mean(-1))
        print(f"  {name}: mean final overlap {m.mean():.4f}  agree with NumPy: {same}")
    n_probes = sum(x.shape[0] for _, _, x in cases)
    print(f"sweep: {len(cases)} (load, coupling) cases, {n_probes} probes, N={N}")
    print(f"  JAX batched jit : {t_jax:.3f} s (first call incl. compile {t_compile:.2f} s)")
    print(f"  NumPy per probe : {t_single:.3f} s  -> JAX speed-up {t_single / t_jax:.1f}x")
    print(f"  NumPy batched   : {t_batched:.3f} s  -> JAX speed-up {t_batched / t_jax:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
