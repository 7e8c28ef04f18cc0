"""Tests of the command line (paper_repro.cli, paper_repro.commands._args and the argument
checks of evaluate, correlation, hopfield and weights).

Every user error is one line on stderr with exit code 2 and no traceback, found before any
model is loaded or evaluated; ``--json`` output is strict JSON; output cut short by the
reader (``| head``) ends quietly; help texts carry no reStructuredText markup.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from paper_repro import cli
from paper_repro.commands import _args as A
from paper_repro.feedforward import sweep

REPO = Path(__file__).resolve().parent.parent


def strict_json(text: str):
    """``json.loads`` that refuses NaN / Infinity (not JSON)."""

    def bad(name):
        raise ValueError(f"{name} is not valid JSON")

    return json.loads(text, parse_constant=bad)


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    try:
        rc = cli.main([str(a) for a in argv])
    except SystemExit as e:  # argparse usage errors
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_line_error(rc, err, *needles):
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert "error:" in lines[0]
    for n in needles:
        assert n in lines[0], (n, lines[0])


@pytest.fixture
def no_evaluation(monkeypatch):
    """Fail the test if anything is loaded or evaluated."""

    def forbidden(*a, **k):
        raise AssertionError("argument errors must be found before loading or evaluating")

    monkeypatch.setattr(sweep, "digits_task", forbidden)
    monkeypatch.setattr(sweep, "imagenet_task", forbidden)
    monkeypatch.setattr(sweep, "evaluate_params", forbidden)
    monkeypatch.setattr(sweep, "evaluate_config", forbidden)


@pytest.fixture
def files(tmp_path):
    """A weights file, a data folder with a labels file, and a FIFO."""
    (tmp_path / "w.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(100))
    (tmp_path / "data").mkdir()
    (tmp_path / "labels.txt").write_text("a.JPEG 1\n")
    os.mkfifo(tmp_path / "fifo")
    return tmp_path


# ----------------------------------------------------------------------------- evaluate

DIGITS = ["evaluate", "--model", "digits_cnn"]
BAD_EVALUATE = [
    # flags the model does not use
    (DIGITS + ["--data", "x"], ["--data", "digits_cnn"]),
    (DIGITS + ["--labels", "x", "--policy", "crop", "--batch-size", "7"],
     ["--labels, --policy, --batch-size", "drop them"]),
    (DIGITS + ["--alpha", "0.5"], ["--alpha"]),
    # quantization flags without --scheme: the float model would be evaluated silently
    (DIGITS + ["--bits", "3"], ["--bits", "without --scheme"]),
    (DIGITS + ["--avg-bits", "3"], ["--avg-bits", "without --scheme"]),
    (DIGITS + ["--granularity", "channel", "--gain"], ["--granularity, --gain"]),
    (DIGITS + ["--bias-correction"], ["--bias-correction"]),
    # widths
    (DIGITS + ["--scheme", "linear"], ["needs --bits"]),
    (DIGITS + ["--scheme", "linear", "--bits", "12"], ["--bits", "use 2..8"]),
    (DIGITS + ["--scheme", "linear", "--bits", "1"], ["--bits", "use 2..8"]),
    (DIGITS + ["--scheme", "sign", "--bits", "2"], ["--bits", "use 1..1"]),
    (DIGITS + ["--scheme", "lloyd_max", "--fit", "max", "--bits", "3"], ["fit='corr'"]),
    (DIGITS + ["--scheme", "linear", "--avg-bits", "9"], ["--avg-bits 9", "use 2..8"]),
    (DIGITS + ["--scheme", "linear", "--avg-bits", "1.5"], ["--avg-bits 1.5", "use 2..8"]),
    (DIGITS + ["--scheme", "linear", "--avg-bits", "nan"], ["--avg-bits", "finite"]),
    (DIGITS + ["--scheme", "linear", "--avg-bits", "inf"], ["--avg-bits", "finite"]),
    (DIGITS + ["--scheme", "sign", "--avg-bits", "3"], ["--avg-bits", "use --bits"]),
    (DIGITS + ["--scheme", "linear", "--bits", "8", "--avg-bits", "3"], ["not both"]),
    # counts
    (DIGITS + ["--limit", "0"], ["--limit", ">= 1"]),
    (DIGITS + ["--limit", "-3"], ["--limit", ">= 1"]),
    (DIGITS + ["--per-class", "0"], ["--per-class", ">= 1"]),
    (DIGITS + ["--limit", "ten"], ["--limit", "integer"]),
    # regexes
    (DIGITS + ["--scheme", "linear", "--bits", "4", "--select", "conv("],
     ["--select", "regular expression"]),
    (DIGITS + ["--scheme", "linear", "--bits", "4", "--keep-float", "["],
     ["--keep-float", "regular expression"]),
    # models and files
    (["evaluate", "--model", "resnet"], ["unknown model 'resnet'"]),
    (["evaluate", "--model", "mobilenet"], ["--weights and --data are required"]),
    (["evaluate", "--model", "vgg16", "--alpha", "0.5", "--weights", "{w}", "--data", "{d}"],
     ["no width multiplier"]),
    (["evaluate", "--model", "mobilenet", "--weights", "{tmp}/none.h5", "--data", "{d}"],
     ["--weights", "no such weight file"]),
    (["evaluate", "--model", "mobilenet", "--weights", "{tmp}/fifo", "--data", "{d}"],
     ["--weights", "not a regular file"]),
    (["evaluate", "--model", "mobilenet", "--weights", "{w}", "--data", "{w}"],
     ["--data", "not a folder"]),
    (["evaluate", "--model", "mobilenet", "--weights", "{w}", "--data", "{d}", "--labels",
      "{tmp}/fifo"], ["--labels", "not a regular file"]),
    (["evaluate", "--model", "mobilenet", "--weights", "{w}", "--data", "{d}", "--policy",
      "stretch"], ["--policy", "unknown crop policy"]),
    (["evaluate", "--model", "mobilenet", "--weights", "{w}", "--data", "{d}", "--policy",
      "resize100"], ["--policy", "< crop size 224"]),
    (["evaluate", "--model", "mobilenet", "--weights", "{w}", "--data", "{d}",
      "--batch-size", "0"], ["--batch-size", ">= 1"]),
    (["evaluate", "--model", "mobilenet", "--weights", "{w}", "--data", "{d}", "--scheme",
      "exponential", "--bits", "9"], ["--bits", "use 2..8"]),
]


@pytest.mark.parametrize("argv,needles", BAD_EVALUATE,
                         ids=[" ".join(a[2:]) for a, _ in BAD_EVALUATE])
def test_evaluate_argument_errors(argv, needles, files, no_evaluation, capsys):
    subst = {"w": files / "w.h5", "d": files / "data", "tmp": files}
    argv = [a.format(**subst) for a in argv]
    rc, out, err = run_cli(capsys, *argv)
    assert out == ""
    assert_one_line_error(rc, err, *needles)


def test_evaluate_fills_defaults_and_accepts_good_arguments(files):
    from paper_repro.commands import evaluate

    parser = cli.build_parser()
    args = parser.parse_args(["evaluate", "--model", "mobilenet", "--alpha", "0.75", "--weights",
                              str(files / "w.h5"), "--data", str(files / "data")])
    evaluate.check_args(args)
    assert (args.policy, args.batch_size, args.fit, args.granularity) == (
        "resize", 50, "corr", "tensor")
    args = parser.parse_args(DIGITS + ["--scheme", "exponential", "--avg-bits", "3.5",
                                       "--granularity", "channel", "--limit", "5"])
    evaluate.check_args(args)
    assert args.avg_bits == 3.5 and args.bits is None and args.select == r".*kernel"


def test_evaluate_digits_json_is_strict_and_labels_match(capsys):
    rc, out, err = run_cli(capsys, *DIGITS, "--scheme", "linear", "--avg-bits", "4",
                           "--limit", "40", "--json")
    assert rc == 0, err
    row = strict_json(out)
    assert row["label"] == "linear/corr/tensor/avg4b" and row["avg_bits"] == 4.0
    assert row["bits"] == 0  # no single width: the layers have their own
    assert row["n_images"] == 40
    assert 0 <= row["top1"] <= 100 and row["float_top1"] >= 90
    assert row["top1_drop"] == pytest.approx(row["float_top1"] - row["top1"], abs=1e-3)


# ----------------------------------------------------------------------------- errors


ERRORS = [OSError("disk on fire"), PermissionError(13, "Permission denied", "/x"),
          KeyError("conv1"), IndexError("list index out of range"),
          AssertionError("shapes differ"), re.error("missing ), unterminated subpattern"),
          EOFError("Ran out of input"), zipfile.BadZipFile("File is not a zip file"),
          MemoryError(), RuntimeError("XLA failed\nsecond line"), ValueError("bad value")]


@pytest.mark.parametrize("exc", ERRORS, ids=[type(e).__name__ for e in ERRORS])
def test_every_exception_is_one_line_exit_2(exc, monkeypatch, capsys):
    from paper_repro.commands import correlation

    def boom(args):
        raise exc

    monkeypatch.setattr(correlation, "run", boom)
    rc, out, err = run_cli(capsys, "correlation")
    assert_one_line_error(rc, err, "paper-repro correlation: error:")
    if not isinstance(exc, ValueError):
        assert type(exc).__name__ in err
    # --debug adds the traceback, still exit 2 and the same last line
    rc, out, err = run_cli(capsys, "--debug", "correlation")
    assert rc == 2 and "Traceback" in err
    assert err.strip().splitlines()[-1].startswith("paper-repro correlation: error:")


def test_keyboard_interrupt_is_one_line(monkeypatch, capsys):
    from paper_repro.commands import correlation

    def stop(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(correlation, "run", stop)
    rc, _, err = run_cli(capsys, "correlation")
    assert rc == 130 and err.strip() == "paper-repro correlation: interrupted"


def test_usage_errors_are_one_line(capsys):
    rc, out, err = run_cli(capsys, "evaluate", "--model", "digits_cnn", "--bits", "abc")
    assert_one_line_error(rc, err, "--bits", "invalid int value", "--help")
    rc, out, err = run_cli(capsys, "evaluate")
    assert_one_line_error(rc, err, "--model")
    rc, out, err = run_cli(capsys, "nosuchcommand")
    assert_one_line_error(rc, err, "nosuchcommand")


def test_other_commands_validate_first(capsys):
    cases = [
        (["correlation", "--bits", "0"], ["--bits", "2..8"]),
        (["correlation", "--n", "7"], ["--n", "--fit corr"]),
        (["correlation", "--fit", "max", "--n", "0"], ["--n", ">= 1"]),
        (["correlation", "--base", "0.5"], ["--base", "exponential"]),
        (["correlation", "--scheme", "exponential", "--base", "1.5"], ["(0, 1)"]),
        (["correlation", "--scheme", "exponential", "--base", "nan"], ["finite"]),
        (["hopfield", "theory", "--bits", "4", "9"], ["--bits", "2..8"]),
        (["hopfield", "theory", "--bits", "1"], ["--bits", "2..8"]),
        (["weights", "fetch", "mobilenet", "--timeout", "0"], ["--timeout", "> 0"]),
        (["weights", "fetch", "mobilenet", "--alpha", "-1"], ["--alpha", "> 0"]),
        (["weights", "info", "/nonexistent/file.h5"], ["no weight file"]),
    ]
    for argv, needles in cases:
        rc, out, err = run_cli(capsys, *argv)
        assert out == "", argv
        assert_one_line_error(rc, err, *needles)


def test_correlation_json_is_strict(capsys):
    rc, out, err = run_cli(capsys, "correlation", "--scheme", "exponential", "--bits", "3",
                           "--json")
    assert rc == 0, err
    res = strict_json(out)
    assert res["n_levels"] == 7 and 0.9 < res["r"] < 1


def test_dumps_json_never_writes_nan():
    text = A.dumps_json({"a": float("nan"), "b": [np.float32(1.5), np.inf, -np.inf],
                         "c": np.arange(3), "d": np.int64(7), "e": Path("/x"),
                         "f": {1: np.bool_(True)}})
    assert strict_json(text) == {"a": None, "b": [1.5, None, None], "c": [0, 1, 2], "d": 7,
                                 "e": "/x", "f": {"1": True}}
    with pytest.raises(TypeError):
        A.dumps_json({"x": object()})


def test_argparse_types():
    assert A.positive_int("3") == 3
    assert A.finite_float("2.5") == 2.5
    for f, text in [(A.positive_int, "0"), (A.positive_int, "1.5"), (A.finite_float, "nan"),
                    (A.finite_float, "-inf"), (A.positive_float, "0"), (A.positive_float, "x")]:
        with pytest.raises(argparse.ArgumentTypeError):
            f(text)
    assert A.given(argparse.Namespace(a=None, b=False, c=[], d=0, e="x"),
                   {"a": "--a", "b": "--b", "c": "--c", "d": "--d", "e": "--e"}) == ["--d", "--e"]


# ----------------------------------------------------------------------------- help texts


def _all_parsers(parser, prefix=()):
    yield prefix, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _all_parsers(sub, (*prefix, name))


def test_help_texts_are_plain_text():
    parser = cli.build_parser()
    seen = 0
    for path, p in _all_parsers(parser):
        text = p.format_help()  # also checks that every help string formats (no stray %)
        seen += 1
        assert "``" not in text, path
        assert not re.search(r":(func|mod|class|data|meth):`", text), path
        assert not re.search(r"\S::$", text, re.M), path
    assert seen >= 12
    assert cli.plain_text("Run ``x --y``, see :func:`~a.b.fit` and :mod:`a.b`. Example::") == \
        "Run x --y, see fit and a.b. Example:"


# ----------------------------------------------------------------------------- pipes


def _cli_process(*argv):
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
    return subprocess.Popen([sys.executable, "-m", "paper_repro.cli", *argv], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.parametrize("argv", [["weights", "list"], ["evaluate", "--help"],
                                  ["correlation", "--json"]])
def test_closed_pipe_ends_quietly(argv):
    """The reader goes away before anything is written (``| head -0``): no traceback, no
    'Exception ignored' message, exit code 141 (as for `yes | head`)."""
    proc = _cli_process(*argv)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    rc = proc.wait(timeout=300)
    assert err == ""
    # argparse swallows write errors of --help itself, which then exits 0
    assert rc in ((0, cli.EXIT_BROKEN_PIPE) if "--help" in argv else (cli.EXIT_BROKEN_PIPE,))


def test_pipe_into_head_prints_the_first_lines():
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
    out = subprocess.run(f"'{sys.executable}' -m paper_repro.cli weights list | head -2",
                         shell=True, cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.stderr == ""
    assert out.stdout.splitlines()[0].split()[:2] == ["name", "input"]
    assert len(out.stdout.splitlines()) == 2


def test_error_line_texts():
    assert cli.error_line(ValueError("a\n  b")) == "a b"
    assert cli.error_line(KeyError("conv1")) == "KeyError: 'conv1'"
    assert cli.error_line(AssertionError()) == "AssertionError"
    assert "out of memory" in cli.error_line(MemoryError())
    assert math.isfinite(cli.EXIT_BROKEN_PIPE)
