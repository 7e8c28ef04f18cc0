"""Argument checks and output helpers shared by the subcommands (not a subcommand itself).

Every check raises ``ValueError`` (or ``FileNotFoundError``) with a one-line message that
names the flag and says what to do; :mod:`paper_repro.cli` prints it on one line with exit
code 2. Commands call these before any loading or evaluation starts, so a bad argument never
costs a float evaluation first.

- argparse types: :func:`positive_int`, :func:`finite_float`, :func:`positive_float`,
  :func:`scheme_list`;
- value checks: :func:`check_bits`, :func:`check_avg_bits`, :func:`check_regex`,
  :func:`check_file`, :func:`check_dir`;
- flag bookkeeping: :func:`given` (which of some flags were set), :func:`refuse`
  (an error naming flags a model or mode does not use);
- output: :func:`dumps_json` / :func:`print_json` (always valid JSON: NaN and infinities
  become ``null``, NumPy scalars and arrays plain numbers and lists).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

# Widths the mixed-width allocation chooses from (paper_repro.feedforward.repairs.quantize_model).
AVG_BITS_CHOICES = (2, 3, 4, 5, 6, 7, 8)


# ----------------------------------------------------------------------------- argparse types


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def finite_float(text: str) -> float:
    """argparse type: a finite float (``nan`` and ``inf`` refused)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite float > 0."""
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return value


def scheme_list(text: str) -> tuple[str, ...]:
    """argparse type: comma-separated level families (``exponential,lloyd_max``), each one
    of :data:`paper_repro.core.quantize.SCHEMES`."""
    from paper_repro.core import quantize as Q

    names = tuple(dict.fromkeys(x.strip() for x in text.split(",") if x.strip()))
    bad = [x for x in names if x not in Q.SCHEMES]
    if not names or bad:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated level families from {', '.join(Q.SCHEMES)}, got "
            f"{text!r}")
    return names


# ----------------------------------------------------------------------------- value checks


def check_bits(scheme: str, bits: int, *, fit: str = "corr", granularity: str = "tensor",
               rounding: str = "linear", flag: str = "--bits") -> None:
    """``ValueError`` unless ``bits`` is a valid width for ``scheme`` (and the knobs agree)."""
    from paper_repro.core import quantize as Q

    try:
        Q.check_args(scheme, bits, fit, granularity, rounding)
    except ValueError as e:
        raise ValueError(f"{flag}: {e}") from None


def check_avg_bits(scheme: str, avg_bits: float, *, fit: str = "corr",
                   granularity: str = "tensor", rounding: str = "linear") -> None:
    """``ValueError`` unless ``avg_bits`` is finite and inside the range the mixed-width
    allocation can reach for ``scheme`` (its narrowest and widest width among
    :data:`AVG_BITS_CHOICES`; codebooks may still push the narrowest allocation above it)."""
    from paper_repro.core import quantize as Q

    if not isinstance(avg_bits, (int, float)) or not math.isfinite(avg_bits):
        raise ValueError(f"--avg-bits must be a finite number, got {avg_bits!r}")
    ok = []
    for b in AVG_BITS_CHOICES:
        try:
            Q.check_args(scheme, b, fit, granularity, rounding)
            ok.append(b)
        except ValueError:
            pass
    if not ok:
        raise ValueError(f"--avg-bits: scheme {scheme!r} has no width in "
                         f"{AVG_BITS_CHOICES[0]}..{AVG_BITS_CHOICES[-1]} to allocate; "
                         "use --bits")
    if not min(ok) <= avg_bits <= max(ok):
        raise ValueError(f"--avg-bits {avg_bits:g} is outside the widths the allocation chooses "
                         f"from for {scheme!r}: use {min(ok)}..{max(ok)}")


def check_regex(pattern: str, flag: str) -> re.Pattern:
    """The compiled ``pattern``; ``ValueError`` naming ``flag`` when it is not a regex."""
    try:
        return re.compile(pattern)
    except re.error as e:
        raise ValueError(f"{flag} {pattern!r} is not a valid regular expression ({e})") from None


def check_file(path: str | os.PathLike, flag: str, *, what: str = "file") -> Path:
    """``path`` if it names a regular file: ``FileNotFoundError`` when absent, ``ValueError``
    for a folder, FIFO or device (which would block or never end when read)."""
    p = Path(path).expanduser()
    try:
        st = p.stat()
    except FileNotFoundError:
        raise FileNotFoundError(f"{flag} {path}: no such {what}") from None
    except OSError as e:
        raise ValueError(f"{flag} {path}: cannot be read ({e.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        kind = "a folder" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise ValueError(f"{flag} {path} is {kind}; give a {what}")
    return p


def check_dir(path: str | os.PathLike, flag: str) -> Path:
    """``path`` if it names a folder (``FileNotFoundError`` / ``ValueError`` otherwise)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"{flag} {path}: no such folder")
    if not p.is_dir():
        raise ValueError(f"{flag} {path} is not a folder")
    return p


# ----------------------------------------------------------------------------- flag bookkeeping


def _is_set(value: Any) -> bool:
    return value is not None and value is not False and value != [] and value != ()


def given(args: argparse.Namespace, flags: Mapping[str, str]) -> list[str]:
    """The flags (``{dest: "--flag"}``) whose value in ``args`` is set: not None, False or
    empty (so such flags need ``default=None``, ``store_true`` or an empty list)."""
    return [flag for dest, flag in flags.items() if _is_set(getattr(args, dest, None))]


def refuse(flags: Iterable[str], why: str, *, alternative: str | None = None) -> None:
    """``ValueError`` naming ``flags`` (if any), ``why`` they are not used, and what to do:
    drop them, or the ``alternative``."""
    flags = list(flags)
    if flags:
        one = len(flags) == 1
        raise ValueError(f"{', '.join(flags)} {'is' if one else 'are'} not used {why}; "
                         f"drop {'it' if one else 'them'}"
                         + (f" or {alternative}" if alternative else ""))


# ----------------------------------------------------------------------------- output


def _plain(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {(k if isinstance(k, str) else str(k)): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _plain(obj.tolist())
    if isinstance(obj, np.generic):
        return _plain(obj.item())
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return obj


def dumps_json(obj: Any, **kwargs: Any) -> str:
    """``json.dumps`` that always gives valid JSON: NaN / infinities as ``null``, NumPy values
    as plain numbers and lists, paths as strings (anything else raises ``TypeError``)."""
    return json.dumps(_plain(obj), allow_nan=False, **kwargs)


def print_json(obj: Any, **kwargs: Any) -> None:
    """Print :func:`dumps_json` of ``obj``."""
    print(dumps_json(obj, **kwargs))
