"""``artist-bio-gen verify``: compare a job's JSONL with the database, optionally repair it."""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from .. import exit_codes
from ..config import load_environment
from ..core.jsonl import JsonlWriter
from ..core.ledger import DatabaseLedger, JsonlOnlyLedger, Ledger
from ..core.lock import RunLock
from ..core.recovery import VerifyReport, verify
from ..database.connection import create_db_connection_pool, describe_database, require_database_url
from ..database.schema import ensure_ledger
from ..database.store import BioStore
from ..errors import UsageError
from ..jobfiles import JobPaths, Manifest, read_manifest, write_manifest
from ..models import DatabaseConfig
from ..utils.logging import setup_logging
from .jobargs import add_database_and_verbose_options, add_output_option

logger = logging.getLogger(__name__)


def add_verify_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``verify``."""
    add_output_option(parser)
    parser.add_argument(
        "--repair",
        action="store_true",
        help="cut a torn tail and append committed bios the JSONL lacks (from the database)",
    )
    add_database_and_verbose_options(parser)


def create_verify_parser() -> argparse.ArgumentParser:
    """The parser of ``artist-bio-gen verify``."""
    parser = argparse.ArgumentParser(
        prog="artist-bio-gen verify",
        description=(
            "Report whether a job's JSONL mirrors its committed bios: line and row counts,\n"
            "bios missing on either side, torn tail, duplicate ids, differing text. Exits 0\n"
            "when they agree, 6 when they do not."
        ),
        epilog="example:\n  artist-bio-gen verify --output out.jsonl --repair",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_verify_arguments(parser)
    return parser


def run_verify(argv: Sequence[str]) -> int:
    """Entry point of the ``verify`` subcommand; returns the exit code."""
    args = create_verify_parser().parse_args(list(argv))
    env = load_environment()
    url = args.db_url or env.get("DATABASE_URL")
    setup_logging(args.verbose, secrets=(url,))
    paths = JobPaths(Path(args.output))
    manifest = read_manifest(paths)
    if manifest is None:
        raise UsageError(
            f"{paths.output} has no job manifest ({paths.manifest.name}); nothing to verify."
        )
    with contextlib.ExitStack() as stack:
        store = _open_store(manifest, url, stack)
        if args.repair:
            _repair(paths, manifest, store)
        report = verify(paths.output, manifest, store)
    print_report(paths, report, sys.stdout)
    return exit_codes.EXIT_SUCCESS if report.consistent else exit_codes.EXIT_OUT_OF_SYNC


def _open_store(
    manifest: Manifest, url: str | None, stack: contextlib.ExitStack
) -> BioStore | None:
    """The job's ledger (None for a job without a database)."""
    if manifest.settings.database is None:
        return None
    config = DatabaseConfig(url=require_database_url(url), pool_size=2)
    where = describe_database(config.url)
    pool = stack.enter_context(create_db_connection_pool(config))
    ensure_ledger(pool, where)
    # verify reads the ledger only; the user's table is never touched.
    return BioStore(pool, config)


def _repair(paths: JobPaths, manifest: Manifest, store: BioStore | None) -> None:
    ledger: Ledger = (
        DatabaseLedger(store, manifest.job_ref) if store else JsonlOnlyLedger(paths.output)
    )
    with RunLock(paths.run_lock), JsonlWriter(paths.output) as writer:
        result, manifest = ledger.reconcile(manifest, writer, None)
        write_manifest(paths, manifest)
        logger.info(
            "repair: cut %d torn bytes, appended %d lines", writer.repaired_bytes, result.appended
        )


def print_report(paths: JobPaths, report: VerifyReport, out: TextIO) -> None:
    """Write the human-readable report."""
    rows = [
        ("JSONL lines", report.jsonl_lines),
        ("distinct ids in JSONL", report.jsonl_ids),
        ("committed rows", report.committed_rows),
        ("missing in JSONL", report.missing_in_jsonl_count),
        ("missing in database", report.missing_in_db_count),
        ("text differs", report.text_mismatch_count),
        ("duplicate ids", report.duplicate_count),
        ("unreadable lines", report.unreadable_lines),
        ("torn tail bytes", report.torn_tail_bytes),
    ]
    out.write(f"verify {paths.output}\n")
    for label, value in rows:
        out.write(f"  {label:<24}{value:,}\n")
    for label, ids in (
        ("missing in JSONL", report.missing_in_jsonl),
        ("missing in database", report.missing_in_db),
        ("text differs", report.text_mismatches),
        ("duplicate ids", report.duplicate_ids),
    ):
        if ids:
            out.write(f"  {label}: {', '.join(ids)}\n")
    out.write("  result: " + ("consistent\n" if report.consistent else "DIFFERENT (exit 6)\n"))
