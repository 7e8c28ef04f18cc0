"""``paper-repro hopfield``: Hopfield networks with quantized couplings (SCIENCE.md section 3).

  paper-repro hopfield theory [--json]        capacities from replica-symmetric theory
  paper-repro hopfield figures [--smoke]      recompute/redraw all figures in results/hopfield/
  paper-repro hopfield figures --only basins  one figure (see --help for names)

``theory`` fits every scheme at 2..5 bits by correlation maximization on the Gaussian density of
Hebbian couplings and reports r^2 and alpha_c = max load with a retrieval solution of the RS
T = 0 equations with static noise 1/r^2 - 1 (float: 0.1379, sign: 0.1018). ``figures`` at full
size took 12 minutes (350 CPU-s) on a loaded 2-core machine (resumable: finished (N, seed) units are kept), at
``--smoke`` size under a minute; results go to ``$PAPER_REPRO_RESULTS`` (default results/).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

SCHEMES = ("linear", "linear_midrise", "exponential", "exponential_nozero", "pow2", "lloyd_max")


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("hopfield", help="Hopfield networks with quantized couplings: theory and "
                       "figures", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    hs = p.add_subparsers(dest="hopfield_command", metavar="ACTION", required=True)
    t = hs.add_parser("theory", help="r^2 and RS capacity for float, sign, ternary and each "
                      "scheme at 2..5 bits (corr-fitted)")
    t.add_argument("--json", action="store_true", help="print one JSON object")
    t.add_argument("--bits", type=int, nargs="+", default=[2, 3, 4, 5])
    f = hs.add_parser("figures", help="regenerate all Hopfield figures and the capacity table")
    f.add_argument("--smoke", action="store_true", help="tiny sizes (under a minute)")
    f.add_argument("--force", action="store_true", help="recompute even if the config is saved")
    f.add_argument("--only", nargs="+", default=None,
                   help="figure names: r_vs_bits overlap_vs_alpha capacity_vs_bits basins "
                   "field_agreement")
    return p


def theory_table(bits=(2, 3, 4, 5)) -> dict:
    """``{"float": row, "sign": row, "ternary": row, "<scheme>-<b>": row, ...}`` (rows from
    ``hopfield_theory.theory_row``: r, r2, delta2, alpha_c, alpha_c_naive, ...)."""
    from paper_repro.hopfield import theory as ht

    out = {"float": ht.theory_row("float", None), "sign": ht.theory_row("sign", 1),
           "ternary": ht.theory_row("linear", 2)}
    for sch in SCHEMES:
        for b in bits:
            out[f"{sch}-{b}"] = ht.theory_row(sch, b)
    return out


def _theory(args) -> int:
    tab = theory_table(tuple(args.bits))
    if args.json:
        print(json.dumps(tab))
        return 0
    print(f"{'couplings':<22} {'levels':>6} {'r2':>7} {'alpha_c':>8} {'naive':>7} {'frac':>6}")
    for k, r in tab.items():
        print(f"{k:<22} {r['n_levels'] or '-':>6} {r['r2']:7.4f} {r['alpha_c']:8.4f} "
              f"{r['alpha_c_naive']:7.4f} {r['fraction_of_float']:6.3f}")
    return 0


def make_figures(*, smoke: bool = False, force: bool = False, only=None) -> dict:
    """Compute (or load) every Hopfield figure, draw it, save it; write the capacity table.

    Returns ``{name: seconds}``.
    """
    import matplotlib.pyplot as plt

    from paper_repro.experiments import hopfield as ex
    from paper_repro.experiments import plot_hopfield as ph
    from paper_repro import results

    names = ex.NAMES if not only else [n if n.startswith("hopfield/") else f"hopfield/{n}"
                                       for n in only]
    for n in names:
        if n not in ex.NAMES:
            raise ValueError(f"unknown figure {n!r}; choose from {', '.join(ex.NAMES)}")
    times = {}
    for name in names:
        t0 = time.perf_counter()
        data = ex.run(name, smoke=smoke, force=force)
        fig = ph.PLOTS[name](data)
        results.save_figure(fig, name)
        plt.close(fig)
        if name == "hopfield/capacity_vs_bits":
            ex.write_capacity_table(data)
        times[name] = round(time.perf_counter() - t0, 1)
        print(f"{name}: {times[name]} s -> {results.results_dir(name)}", file=sys.stderr)
    return times


def run(args) -> int:
    if args.hopfield_command == "theory":
        return _theory(args)
    times = make_figures(smoke=args.smoke, force=args.force, only=args.only)
    print(json.dumps({"seconds": times, "total_s": round(sum(times.values()), 1)}))
    return 0
