"""``paper-repro correlation``: r(w, Q(w)) of a fitted quantizer on a Gaussian or Laplace density.

``--fit corr`` fits on the exact (closed-form) density. ``--fit max`` pins the top level at
the largest |w| of a Monte-Carlo sample of ``--n`` weights (seed ``--seed``): a density has no
maximum, so the max-anchored reading needs a sample size; ``r`` is then exact on the density.
"""

from __future__ import annotations

import argparse

import jax
import numpy as np

from paper_repro.commands import _args as A
from paper_repro.core import correlation as C
from paper_repro.core import quantize as Q

DEFAULT_N = 1_000_000
EXPONENTIAL = ("exponential", "exponential_nozero")


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "correlation",
        help="correlation r between weights and their quantized copy, on a density",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--density", choices=C.DENSITIES, default="gaussian")
    p.add_argument("--scheme", choices=Q.SCHEMES, default="linear")
    p.add_argument("--fit", choices=Q.FITS, default="corr")
    p.add_argument("--bits", type=int, default=4, help="bits per weight incl. sign (1..8)")
    p.add_argument("--rounding", choices=Q.ROUNDINGS, default="linear")
    p.add_argument("--base", type=A.finite_float, default=None,
                   help="fixed exponential base a in (0,1) (exponential schemes only)")
    p.add_argument("--n", type=A.positive_int, default=None,
                   help=f"sample size for --fit max (default {DEFAULT_N:_})")
    p.add_argument("--seed", type=int, default=None, help="sample seed for --fit max (default 0)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def correlation_on_density(*, density: str, scheme: str, fit: str, bits: int,
                           rounding: str = "linear", base: float | None = None,
                           n: int = 1_000_000, seed: int = 0) -> dict:
    """Fit on a unit-variance density and return ``{density, scheme, fit, bits, r, params,...}``."""
    Q.check_args(scheme, bits, fit, rounding=rounding)
    dm = C.density_moments(density)
    if fit == "max":
        key = jax.random.key(seed)
        w = (jax.random.normal(key, (n,)) if density == "gaussian"
             else jax.random.laplace(key, (n,)) / np.sqrt(2.0))
        top = float(np.max(np.abs(np.asarray(w))))
        dm = C.DensityMoments(density=density, top=np.float32(top))
    out = Q.fit_moments(dm, scheme=scheme, bits=bits, fit=fit, rounding=rounding, base=base)
    r = float(out["r"])
    return {
        "density": density, "scheme": scheme, "fit": fit, "bits": bits,
        "n_levels": Q.n_levels(scheme, bits), "r": r, "r2": r * r,
        "noise_strength": 1.0 / (r * r) - 1.0, "sheppard": float(C.sheppard(r)),
        "params": {"c": float(out["c"]), "a": float(out["a"]),
                   "levels_positive": [float(x) for x in np.asarray(out["p"])]},
        "rounding": rounding,
        **({"sample_n": n, "seed": seed} if fit == "max" else {}),
    }


def check_args(args) -> None:
    """Refuse flags the chosen fit or scheme does not use and out-of-range values (before any
    fitting); fill in the defaults of ``--n`` and ``--seed``."""
    A.check_bits(args.scheme, args.bits, fit=args.fit, rounding=args.rounding)
    if args.fit != "max":
        A.refuse(A.given(args, {"n": "--n", "seed": "--seed"}),
                 "with --fit corr (it fits on the exact density, no sample)")
    if args.base is not None:
        if args.scheme not in EXPONENTIAL:
            raise ValueError(f"--base is the base of the exponential schemes "
                             f"({', '.join(EXPONENTIAL)}), not of {args.scheme}; drop it")
        if not 0.0 < args.base < 1.0:
            raise ValueError(f"--base must be in (0, 1), got {args.base:g}")
    args.n = DEFAULT_N if args.n is None else args.n
    args.seed = 0 if args.seed is None else args.seed


def run(args) -> int:
    check_args(args)
    res = correlation_on_density(density=args.density, scheme=args.scheme, fit=args.fit,
                                 bits=args.bits, rounding=args.rounding, base=args.base,
                                 n=args.n, seed=args.seed)
    if args.json:
        A.print_json(res)
    else:
        print(f"{res['density']} {res['scheme']} fit={res['fit']} bits={res['bits']} "
              f"({res['n_levels']} levels): r = {res['r']:.4f}, r^2 = {res['r2']:.4f}, "
              f"c = {res['params']['c']:.4g} sigma, a = {res['params']['a']:.4g}")
    return 0
