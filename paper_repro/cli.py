"""The ``paper-repro`` command line.

Each subcommand lives in ``paper_repro/commands/<name>.py`` with two functions,
``add_parser(subparsers)`` and ``run(args) -> int``; this file only collects them (modules
whose name starts with ``_`` are helpers, not subcommands). Run ``paper-repro --help`` for the
list, ``paper-repro <command> --help`` for details.

Errors: every exception a command raises ends the program with one line on stderr,
``paper-repro <command>: error: <message>``, and exit code 2 (``--debug`` prints the
traceback as well); argument errors found by the parser read the same. Output piped into a
program that stops reading (``paper-repro hopfield theory | head -3``) ends quietly with exit
code 141 (128 + SIGPIPE, as for other Unix tools). Help texts are plain text: the
reStructuredText markup of the module docstrings they come from is converted in one place
(:func:`plain_text`).
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import re
import sys
import traceback

from paper_repro import __version__, commands

EXIT_USER_ERROR = 2
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for `yes | head -1`
EXIT_INTERRUPTED = 130  # 128 + SIGINT

# Exceptions whose message is written for the user as is; any other type is named in the line.
_PLAIN_MESSAGE = (ValueError, FileNotFoundError)


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line on stderr (exit code 2).

    Subparsers inherit the class (``add_subparsers`` uses ``type(self)``)."""

    def error(self, message: str):
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {_one_line(message)} "
                                   f"(see {self.prog} --help)\n")


_ROLE = re.compile(r":[a-z]+(?::[a-z]+)?:`~?([^`]+)`")


def plain_text(text: str | None) -> str | None:
    """A help text without reStructuredText markup: ``` ``x`` ``` and ``:func:`~a.b` `` become
    ``x`` and ``b``, a paragraph's closing ``::`` becomes ``:``."""
    if not text:
        return text

    def role(m: re.Match) -> str:
        target = m.group(1)
        return target.rsplit(".", 1)[-1] if m.group(0).count("`~") else target

    text = _ROLE.sub(role, text)
    text = re.sub(r"``(.+?)``", r"\1", text, flags=re.S)
    text = re.sub(r"(\S)::$", r"\1:", text, flags=re.M)  # "Examples::" -> "Examples:"
    text = re.sub(r"^\s*::\s*$\n?", "", text, flags=re.M)  # a lone "::" line
    return text


def _plain_help(parser: argparse.ArgumentParser) -> None:
    """Convert every help text of ``parser`` and its subparsers (recursively) to plain text."""
    parser.description = plain_text(parser.description)
    parser.epilog = plain_text(parser.epilog)
    for action in parser._actions:
        if action.help not in (None, argparse.SUPPRESS):
            action.help = plain_text(action.help)
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                choice.help = plain_text(choice.help)
            for sub in dict.fromkeys(action.choices.values()):  # aliases share a parser
                _plain_help(sub)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="paper-repro",
        description=(
            "Quantize trained network weights without retraining (linear, exponential, "
            "Lloyd-Max levels chosen by maximizing correlation) and measure what it costs: "
            "Hopfield memories and ImageNet CNNs."
        ),
        epilog="Example: paper-repro correlation --density laplace --scheme exponential "
        "--fit corr --bits 4 --json",
    )
    parser.add_argument("--version", action="version", version=f"paper-repro {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="on an error, print the full traceback as well as the one-line "
                             "message")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        mod = importlib.import_module(f"paper_repro.commands.{info.name}")
        p = mod.add_parser(sub)
        p.set_defaults(_run=mod.run)
    _plain_help(parser)
    return parser


def _one_line(message: object) -> str:
    return " ".join(str(message).split())


def error_line(exc: BaseException) -> str:
    """The one-line message for ``exc``: its text, prefixed by its type unless the type is a
    user error whose message says it all (``ValueError``, ``FileNotFoundError``)."""
    text = _one_line(exc)
    if isinstance(exc, _PLAIN_MESSAGE) and text:
        return text
    name = type(exc).__name__
    if isinstance(exc, MemoryError):
        return f"{name}: out of memory{': ' + text if text else ''}; use a smaller input " \
               "(--limit, --batch-size) or a machine with more memory"
    return f"{name}: {text}" if text else name


def _silence_stdout() -> None:
    """After EPIPE: point stdout at /dev/null so the interpreter's final flush stays quiet."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


def _flush_stdout() -> bool:
    """Flush stdout; ``False`` when the reader has gone away (EPIPE)."""
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _silence_stdout()
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 success, 2 error, 141 closed pipe)."""
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
    except SystemExit:  # --help, --version, usage errors: argparse has printed them
        if not _flush_stdout():
            return EXIT_BROKEN_PIPE
        raise
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    if not getattr(args, "_run", None):
        parser.print_help()
        return 0 if _flush_stdout() else EXIT_BROKEN_PIPE
    try:
        code = int(args._run(args) or 0)
        if not _flush_stdout():
            return EXIT_BROKEN_PIPE
        return code
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        print(f"paper-repro {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:  # noqa: BLE001 - every error becomes one line (see module doc)
        if args.debug:
            traceback.print_exc()
        hint = "" if isinstance(e, _PLAIN_MESSAGE) or args.debug else \
            " (paper-repro --debug ... prints the traceback)"
        print(f"paper-repro {args.command}: error: {error_line(e)}{hint}", file=sys.stderr)
        return EXIT_USER_ERROR


if __name__ == "__main__":
    sys.exit(main())
