"""``paper-repro hopfield``: Hopfield networks with quantized couplings (docs/theory.md, section 3).

  paper-repro hopfield theory [--json]        capacities from replica-symmetric theory
  paper-repro hopfield figures [--smoke]      recompute/redraw all figures in results/hopfield/
  paper-repro hopfield figures --only basins  one figure (see --help for names)

``theory`` fits every scheme at 2..5 bits by correlation maximization on the Gaussian density of
Hebbian couplings and reports r^2 and alpha_c = max load with a retrieval solution of the RS
T = 0 equations with static noise 1/r^2 - 1 (float: 0.1379, sign: 0.1018). ``figures`` at full
size take about 3 minutes on 2 cores (resumable: finished (N, seed) units are kept), at
``--smoke`` size under a minute; results go to ``$PAPER_REPRO_RESULTS`` (default results/).
"""

from __future__ import annotations

import argparse

from paper_repro.commands import _args as A


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("hopfield", help="Hopfield networks with quantized couplings: theory and "
                       "figures", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    hs = p.add_subparsers(dest="hopfield_command", metavar="ACTION", required=True)
    t = hs.add_parser("theory", help="r^2 and RS capacity for float, sign, ternary and each "
                      "scheme at 2..5 bits (corr-fitted)")
    t.add_argument("--json", action="store_true", help="print one JSON object")
    t.add_argument("--bits", type=int, nargs="+", default=[2, 3, 4, 5],
                   help="widths for every scheme, 2..8 (default 2 3 4 5)")
    f = hs.add_parser("figures", help="regenerate all Hopfield figures and the capacity table")
    f.add_argument("--smoke", action="store_true", help="tiny sizes (under a minute)")
    f.add_argument("--force", action="store_true", help="recompute even if the config is saved")
    f.add_argument("--only", nargs="+", default=None,
                   help="figure names: r_vs_bits overlap_vs_alpha capacity_vs_bits basins "
                   "field_agreement")
    return p


def check_bits(bits) -> tuple[int, ...]:
    """``bits`` without repeats if every scheme of the table has each width (``ValueError``
    naming the first that does not, before anything is computed)."""
    from paper_repro.hopfield.theory import TABLE_SCHEMES

    for b in bits:
        for sch in TABLE_SCHEMES:
            A.check_bits(sch, b)
    return tuple(dict.fromkeys(bits))


def _theory(args) -> int:
    from paper_repro.hopfield.theory import theory_table

    tab = theory_table(check_bits(args.bits))
    if args.json:
        A.print_json(tab)
        return 0
    print(f"{'couplings':<22} {'levels':>6} {'r2':>7} {'alpha_c':>8} {'naive':>7} {'frac':>6}")
    for k, r in tab.items():
        print(f"{k:<22} {r['n_levels'] or '-':>6} {r['r2']:7.4f} {r['alpha_c']:8.4f} "
              f"{r['alpha_c_naive']:7.4f} {r['fraction_of_float']:6.3f}")
    return 0


def make_figures(*, smoke: bool = False, force: bool = False, only=None) -> dict:
    """Run every Hopfield experiment (or those in ``only``); returns ``{name: seconds}``."""
    from paper_repro import experiments as X

    names = ["hopfield"] if not only else [n if n.startswith("hopfield/") else f"hopfield/{n}"
                                           for n in only]
    return {o.name: round(o.seconds, 1) for o in X.run_many(names, smoke=smoke, force=force)}


def run(args) -> int:
    if args.hopfield_command == "theory":
        return _theory(args)
    times = make_figures(smoke=args.smoke, force=args.force, only=args.only)
    A.print_json({"seconds": times, "total_s": round(sum(times.values()), 1)})
    return 0
