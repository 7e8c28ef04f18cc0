"""Subcommands of ``paper-repro``: one module each, with ``add_parser`` and ``run``."""
