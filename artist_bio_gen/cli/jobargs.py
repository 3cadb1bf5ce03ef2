"""The options every subcommand that looks at an existing job shares (``verify``,
``status``, ``batch cancel``): which job, which database, how loud."""

from __future__ import annotations

import argparse

from ..config import DEFAULT_OUTPUT


def add_output_option(parser: argparse.ArgumentParser) -> None:
    """``--output PATH``: the job, named by its JSONL."""
    parser.add_argument(
        "--output",
        metavar="PATH",
        default=DEFAULT_OUTPUT,
        help=f"the job's JSONL (default {DEFAULT_OUTPUT})",
    )


def add_database_and_verbose_options(parser: argparse.ArgumentParser) -> None:
    """``--db-url URL`` (else ``DATABASE_URL``) and ``--verbose``."""
    parser.add_argument("--db-url", metavar="URL", help="postgresql:// URL (env DATABASE_URL)")
    parser.add_argument("--verbose", action="store_true", help="debug logging and tracebacks")
