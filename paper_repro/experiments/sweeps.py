"""Figure pipelines that join compute, cache, plot and save (one function per figure family).

Notebooks and the command line call these, so both give the same files in ``results/``.
"""

from __future__ import annotations


def sweep_to_results(task, configs, name: str, *, limit=None, per_class=None, progress=True,
                     paper_top5=None, title=None) -> list[dict]:
    """Run (or resume) a sweep and write ``results/<name>/``: sweep.csv, table.csv/.md, figure."""
    import time

    from paper_repro.feedforward import sweep as E
    from paper_repro.experiments import plot_imagenet as P
    from paper_repro import results as R

    d = R.results_dir(name)
    t0 = time.perf_counter()
    rows = E.run_sweep(task, configs, R.ResultsTable(d / "sweep.csv"), limit=limit,
                       per_class=per_class, progress=progress)
    rows = E.refresh_compression(task.params, rows)
    flat = [{k: v for k, v in r.items()} for r in rows]
    R.write_csv(d / "table.csv", flat)
    model = task.info.get("model")
    (d / "table.md").write_text(E.markdown_table(rows, model=model))
    needed = E.bits_needed(rows, within=1.0)
    if needed:
        R.write_csv(d / "bits_needed.csv", needed)
    fig = P.plot_sweep(rows, title=title or task.name, paper_top5=paper_top5)
    R.save_figure(fig, name, stem="accuracy_vs_bits")
    R.write_meta(d, {"task": task.name, **task.info, "configs": [c.key() for c in configs],
                     "limit": limit, "per_class": per_class}, time.perf_counter() - t0,
                 n_rows=len(rows))
    return rows
