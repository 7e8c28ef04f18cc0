"""Sweeps: quantize -> evaluate -> compare, resumable; the evaluate command's JSON."""

import json

import numpy as np
import pytest

from paper_repro import cli
from paper_repro.core import quantize as Q
from paper_repro.feedforward import sweep as E
from paper_repro.results import ResultsTable


@pytest.fixture(scope="module")
def digits():
    return E.digits_task()


def test_sweep_resumes_and_compares(digits, tmp_path):
    configs = E.sweep_configs(bits=[3, 6], schemes=["exponential"], fits=["corr"],
                              granularities=["tensor"], lloyd_max=False)
    table = ResultsTable(tmp_path / "sweep.csv")
    rows = E.run_sweep(digits, configs, table, progress=False, log=lambda *_: None)
    assert [r["label"] for r in rows] == ["float", "exponential/corr/tensor/3b",
                                          "exponential/corr/tensor/6b"]
    base, b3, b6 = rows
    assert base["n_images"] == b3["n_images"] == 449
    assert base["top1"] > 90  # the shipped digits CNN
    # more bits: at least as accurate (up to a few flipped images) and closer in r
    assert b6["r_mean"] > b3["r_mean"] > 0.9
    assert b6["top1_drop"] <= b3["top1_drop"] + 0.5
    assert b3["top1_drop_low"] <= b3["top1_drop"] <= b3["top1_drop_high"]
    assert b6["compression_ratio"] < b3["compression_ratio"]
    calls = []
    again = E.run_sweep(digits, configs, table, progress=False, log=calls.append)
    assert calls == [] and len(again) == 3  # nothing recomputed
    assert len(table.rows()) == 3


def test_storage_accounting_counts_bits_and_codebooks(digits):
    qp, report = E.quantize_params(digits.params, E.QuantConfig(scheme="linear", bits=4))
    acc = E.storage_accounting(digits.params, report)
    n = sum(int(np.size(x)) for _, x in Q.tree_paths(digits.params))
    nq = sum(r["size"] for r in report)
    assert acc["float_bytes"] == 4 * n
    assert acc["code_bytes"] == sum(-(-r["size"] * 4 // 8) for r in report)
    assert acc["codebook_bytes"] == 4 * len(report)  # one float32 scale per linear codebook
    assert acc["kept_float_bytes"] == 4 * (n - nq)
    assert 6.0 < acc["compression_ratio"] < 8.0  # 32/4 = 8 before overheads


def test_keep_float_leaves_layers_alone(digits):
    cfg = E.QuantConfig(scheme="linear", bits=2, keep_float=("^dense/",))
    qp, report = E.quantize_params(digits.params, cfg)
    assert all(not r["path"].startswith("dense/") for r in report)
    np.testing.assert_array_equal(qp["dense"]["kernel"], digits.params["dense"]["kernel"])
    with pytest.raises(ValueError, match="leaves nothing"):
        E.quantize_params(digits.params, E.QuantConfig(scheme="linear", bits=2,
                                                       keep_float=(".*",)))


def test_bits_needed_and_markdown():
    rows = [{"scheme": None, "top1": 70.0, "top5": 90.0},
            *[{"scheme": s, "fit": "corr", "granularity": "tensor", "bits": b,
               "top1": 70.0 - d, "top5": 90.0, "r_mean": 0.99, "compression_ratio": 32 / b}
              for s, ds in (("linear", {4: 5.0, 5: 0.8}), ("exponential", {4: 0.9, 5: 0.1}))
              for b, d in ds.items()]]
    need = {r["scheme"]: r["bits_needed"] for r in E.bits_needed(rows, within=1.0)}
    assert need == {"linear": 5, "exponential": 4}
    md = E.markdown_table(rows)
    assert md.count("\n") == 2 + 5 and "| float |" in md


def test_evaluate_command_json(capsys):
    assert cli.main(["evaluate", "--model", "digits_cnn", "--scheme", "linear", "--bits", "5",
                     "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    for k in ("model", "scheme", "fit", "bits", "granularity", "n_images", "top1", "top5",
              "compression_ratio"):
        assert k in out
    assert out["bits"] == 5 and out["n_images"] == 449 and out["compression_ratio"] > 4
    assert cli.main(["evaluate", "--model", "resnet50"]) == 2  # clear error, no traceback
    assert "--weights and --data are required" in capsys.readouterr().err


@pytest.mark.shared_data
def test_mobilenet_sample_quantized(shared_data):
    root = shared_data
    task = E.imagenet_task("mobilenet", alpha=0.75,
                           weights=root / "keras-weights" / "mobilenet_7_5_224_tf.h5",
                           data=root / "imagenet-val-1300" / "images",
                           labels=root / "imagenet-val-1300" / "labels.txt", policy="crop",
                           progress=False)
    f = E.evaluate_params(task, task.params, limit=200, progress=False)
    row, res = E.evaluate_config(task, E.QuantConfig(scheme="linear", bits=8, fit="max"),
                                 float_result=f, limit=200, progress=False)
    assert res.n_images == 200 and f.top1 > 0.7
    # 8-bit linear per tensor stays close to float (README table: 76.8 vs 78.1 on 1300)
    assert row["top1_drop"] < 5.0
    assert 3.5 < row["compression_ratio"] < 4.0


def test_planned_compression_matches_accounting(digits):
    for cfg in (E.QuantConfig(scheme="linear", bits=4),
                E.QuantConfig(scheme="exponential", bits=5, granularity="channel"),
                E.QuantConfig(scheme="lloyd_max", bits=3, granularity="channel"),
                E.QuantConfig(scheme="linear", bits=4, keep_float=("^dense/",))):
        _, report = E.quantize_params(digits.params, cfg)
        acc = E.storage_accounting(digits.params, report)
        assert E.planned_compression(digits.params, cfg) == pytest.approx(
            acc["compression_ratio"], rel=1e-12)
        row = {**cfg.key(), "keep_float": ",".join(cfg.keep_float)}
        assert E.config_of(row) == cfg


@pytest.mark.shared_data
def test_packed_file_evaluates_like_on_the_fly(shared_data, tmp_path, capsys):
    root = shared_data
    h5 = root / "keras-weights" / "mobilenet_7_5_224_tf.h5"
    data = ["--data", str(root / "imagenet-val-1300" / "images"), "--labels",
            str(root / "imagenet-val-1300" / "labels.txt"), "--policy", "crop", "--limit", "100"]
    q = ["--scheme", "exponential", "--fit", "corr", "--bits", "6", "--granularity", "channel"]
    out = tmp_path / "m.prq"
    assert cli.main(["pack", "--model", "mobilenet", "--alpha", "0.75", "--weights", str(h5),
                     *q, "--out", str(out), "--json"]) == 0
    capsys.readouterr()
    assert cli.main(["evaluate", "--model", "mobilenet", "--alpha", "0.75", "--weights",
                     str(out), *data, "--json"]) == 0
    packed = json.loads(capsys.readouterr().out)
    assert cli.main(["evaluate", "--model", "mobilenet", "--alpha", "0.75", "--weights",
                     str(h5), *data, *q, "--json"]) == 0
    fly = json.loads(capsys.readouterr().out)
    assert packed["top1"] == fly["top1"] and packed["top5"] == fly["top5"]
    assert packed["bits"] == 6 and packed["scheme"] == "exponential"
    assert packed["compression_ratio"] == pytest.approx(out.stat().st_size and
                                                        packed["float_bytes"] / out.stat().st_size)
