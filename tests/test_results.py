"""The results cache and the experiment runner: hits, misses, versions, resumes, locks, bytes."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing as mp

import numpy as np
import pytest

import paper_repro
from paper_repro import results as R
from paper_repro.experiments import base


@pytest.fixture
def root(tmp_path, monkeypatch):
    monkeypatch.setenv("PAPER_REPRO_RESULTS", str(tmp_path))
    monkeypatch.delenv("PAPER_REPRO_FORCE", raising=False)
    return tmp_path


def _counter():
    calls = []

    def compute():
        calls.append(1)
        return {"x": np.arange(3.0) * len(calls)}
    return compute, calls


def test_run_or_load_hit_miss_force(root):
    compute, calls = _counter()
    a = R.run_or_load("t", {"seed": 0}, compute)
    b = R.run_or_load("t", {"seed": 0}, compute)
    assert len(calls) == 1 and np.array_equal(a["x"], b["x"])
    R.run_or_load("t", {"seed": 1}, compute)  # config change -> recompute
    assert len(calls) == 2
    R.run_or_load("t", {"seed": 1}, compute, force=True)
    assert len(calls) == 3


def test_numerics_version_change_recomputes(root, monkeypatch):
    compute, calls = _counter()
    R.run_or_load("t", {"seed": 0}, compute)
    monkeypatch.setattr(R, "NUMERICS_VERSION", paper_repro.NUMERICS_VERSION + 1)
    R.run_or_load("t", {"seed": 0}, compute)
    assert len(calls) == 2
    meta = json.loads((root / "t" / "meta.json").read_text())
    assert meta["numerics_version"] == paper_repro.NUMERICS_VERSION + 1


def test_truncated_data_is_recomputed(root):
    compute, calls = _counter()
    R.run_or_load("t", {"seed": 0}, compute)
    p = root / "t" / "data.npz"
    p.write_bytes(p.read_bytes()[:20])
    out = R.run_or_load("t", {"seed": 0}, compute)
    assert len(calls) == 2 and out["x"].shape == (3,)


def test_meta_is_deterministic_and_keeps_commit_when_data_unchanged(root):
    R.run_or_load("t", {"seed": 0}, lambda: {"x": np.ones(2)})
    meta_path = root / "t" / "meta.json"
    meta = json.loads(meta_path.read_text())
    assert set(meta) == {"config", "config_hash", "numerics_version", "versions",
                         "computed_by"}
    assert "platform" not in meta["versions"]
    fake = {**meta, "computed_by": {"commit": "0" * 40, "tree_dirty": False}}
    meta_path.write_text(json.dumps(fake, indent=2, sort_keys=True) + "\n")
    before = meta_path.read_bytes()
    R.run_or_load("t", {"seed": 0}, lambda: {"x": np.ones(2)}, force=True)  # same bytes
    assert meta_path.read_bytes() == before


def test_write_if_changed_leaves_file_alone(tmp_path):
    p = tmp_path / "f.txt"
    assert R.write_if_changed(p, "a")
    mtime = p.stat().st_mtime_ns
    assert not R.write_if_changed(p, "a")
    assert p.stat().st_mtime_ns == mtime


def test_dumps_is_strict_json():
    s = R.dumps({"top1": float("nan"), "x": [float("inf"), 1.0]})
    assert json.loads(s) == {"top1": None, "x": [None, 1.0]}


def test_results_table_resume_dedupe_and_version(tmp_path, monkeypatch):
    t = R.ResultsTable(tmp_path / "sweep.csv")
    t.append({"bits": 4}, {"top1": 1.0})
    t.append({"bits": 4}, {"top1": 2.0})
    t.append({"bits": 5}, {"top1": 3.0})
    assert [r["top1"] for r in t.rows()] == [2.0, 3.0]
    assert t.done({"bits": 4}) and not t.done({"bits": 6})
    monkeypatch.setattr(R, "NUMERICS_VERSION", 99)
    assert not t.done({"bits": 4})  # rows of another numerics version do not count


def _append_many(path, start):
    t = R.ResultsTable(path)
    for i in range(start, start + 20):
        t.append({"i": i % 25}, {"v": i})


def test_results_table_concurrent_appends_never_duplicate(tmp_path):
    path = tmp_path / "sweep.csv"
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_append_many, args=(path, s)) for s in (0, 10)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    keys = [line.split(",")[0] for line in path.read_text().splitlines()[1:]]
    assert len(keys) == len(set(keys)) == 25


def _toy(compute_calls, inputs=()):
    def compute(config, ctx):
        compute_calls.append(config["n"])
        return {"y": np.arange(config["n"], dtype=np.float64)}

    def plot(data, config):
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots()
        ax.plot(data["y"], label="y")
        ax.set_xlabel("i")
        ax.legend()
        return fig
    return base.Experiment(name="toy/exp", title="toy", config=lambda smoke: {"n": 2 if smoke
                                                                              else 5},
                           compute=compute, plots={"toy": plot},
                           tables={"t.csv": lambda d, c: [{"i": int(i)} for i in d["y"]]},
                           inputs=inputs)


def test_experiment_rerun_is_byte_stable(root):
    calls = []
    exp = _toy(calls)
    out = base.run(exp, smoke=False)
    assert out.status == "computed" and calls == [5]
    files = {p.name: p.read_bytes() for p in (root / "toy/exp").iterdir()}
    assert {"data.npz", "meta.json", "toy.png", "toy.pdf", "t.csv"} <= set(files)
    out2 = base.run(exp, smoke=False)
    assert out2.status == "reused" and calls == [5]
    assert {p.name: p.read_bytes() for p in (root / "toy/exp").iterdir()} == files


def test_missing_inputs_skip_and_keep_saved_results(root, monkeypatch):
    calls = []
    exp = _toy(calls)
    base.run(exp, smoke=False)
    saved = (root / "toy/exp" / "data.npz").read_bytes()
    gated = _toy(calls, inputs=("mobilenet-0.75-keras",))
    monkeypatch.setattr(base, "resolve_inputs", lambda names: ({}, list(names)))
    changed = dataclasses.replace(gated, config=lambda smoke: {"n": 7})  # stale saved data
    out = base.run(changed, smoke=False)
    assert out.status == "skipped" and "mobilenet-0.75-keras" in out.message
    assert calls == [5]  # nothing recomputed
    assert (root / "toy/exp" / "data.npz").read_bytes() == saved
    assert "toy" in out.figures  # the saved results are still shown


def test_smoke_runs_never_touch_results(tmp_path, monkeypatch):
    monkeypatch.delenv("PAPER_REPRO_RESULTS", raising=False)
    monkeypatch.setattr(R, "ROOT", tmp_path)
    calls = []
    out = base.run(_toy(calls), smoke=True)
    assert out.dir == tmp_path / "build" / "smoke-results" / "toy/exp"
    assert calls == [2]


def test_every_declared_experiment_has_smoke_and_full_configs():
    exps = base.all_experiments()
    assert {"quantizers", "hopfield/capacity_vs_bits", "storage", "explorer",
            "imagenet/mobilenet_0.75_val1300", "datafree/digits"} <= set(exps)
    for e in exps.values():
        full, smoke = e.config(False), e.config(True)
        assert json.dumps(full, sort_keys=True) != json.dumps(smoke, sort_keys=True), e.name
        assert e.notebook, e.name


def test_truncated_float_result_of_a_sweep_is_recomputed(tmp_path, capsys):
    from paper_repro.feedforward import sweep as E

    task = E.digits_task()
    table = R.ResultsTable(tmp_path / "sweep.csv")
    cfg = E.QuantConfig(scheme="linear", fit="corr", bits=4)
    rows = E.run_sweep(task, [cfg], table, limit=40, progress=False, log=lambda *_: None)
    (npz,) = tmp_path.glob("float_*.npz")
    good = npz.read_bytes()
    npz.write_bytes(good[: len(good) // 2])  # a run killed while writing, by another tool
    cfg2 = E.QuantConfig(scheme="exponential", fit="corr", bits=4)
    rows2 = E.run_sweep(task, [cfg, cfg2], table, limit=40, progress=False,
                        log=lambda *_: None)
    assert "unreadable" in capsys.readouterr().out
    assert npz.read_bytes() == good  # rewritten whole, with the same float result
    assert [r["top1"] for r in rows2 if r["label"] == "float"] == \
        [r["top1"] for r in rows if r["label"] == "float"]
    assert len(rows2) == 3
