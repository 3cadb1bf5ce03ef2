"""The legacy interface, pinned: what scripts written for the legacy tool rely on.

Every public name from every legacy import path, exercised; the legacy exceptions (a missing
input is a ``FileNotFoundError``, a file that is not UTF-8 a ``UnicodeDecodeError``); ``main``
exiting with ``SystemExit``; the legacy modules' loggers; the JSONL record (key order, types,
``ensure_ascii=False``); the exit codes; input that is not UTF-8; and taking over a legacy
output file with ``--resume``.
"""

from __future__ import annotations

import importlib
import inspect
import json
import logging
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from artist_bio_gen import exit_codes
from artist_bio_gen.errors import ArtistBioGenError, InputFileError

from .support.checks import assert_mirror, read_jsonl
from .support.cli import TEST_API_KEY, MakeJob, cli_env, logging_restored
from .support.database import TestDatabase
from .support.fake_openai import FakeOpenAI

# Each legacy import path and the names scripts import from it.
LEGACY_NAMES: dict[str, tuple[str, ...]] = {
    "artist_bio_gen": (
        "ArtistData",
        "ParseResult",
        "ApiResponse",
        "ProcessingStats",
        "DatabaseConfig",
        "DatabaseResult",
        "parse_input_file",
        "write_jsonl_output",
        "append_jsonl_response",
        "initialize_jsonl_output",
        "process_artists_concurrent",
        "create_openai_client",
        "call_openai_api",
        "create_db_connection_pool",
        "validate_database_url",
        "update_artist_bio",
        "main",
        "create_argument_parser",
        "setup_logging",
        "EXIT_SUCCESS",
        "EXIT_INPUT_ERROR",
        "EXIT_CONFIG_ERROR",
        "EXIT_API_FAILURES",
        "EXIT_INTERRUPTED",
        "EXIT_UNEXPECTED_ERROR",
    ),
    "artist_bio_gen.models": (
        "ArtistData",
        "ParseResult",
        "ApiResponse",
        "ProcessingStats",
        "DatabaseConfig",
        "DatabaseResult",
    ),
    "artist_bio_gen.core": (
        "parse_input_file",
        "write_jsonl_output",
        "append_jsonl_response",
        "initialize_jsonl_output",
        "process_artists_concurrent",
    ),
    "artist_bio_gen.cli": ("main", "create_argument_parser"),
    "artist_bio_gen.core.output": (
        "write_jsonl_output",
        "append_jsonl_response",
        "initialize_jsonl_output",
        "get_processed_artist_ids",
    ),
    "artist_bio_gen.core.parser": ("parse_input_file",),
    "artist_bio_gen.utils.text": ("strip_trailing_citations",),
}

ARTIST_1 = "3f1c2b4a-5d6e-4f70-8a91-b2c3d4e5f601"
ARTIST_2 = "3f1c2b4a-5d6e-4f70-8a91-b2c3d4e5f602"
ARTIST_3 = "3f1c2b4a-5d6e-4f70-8a91-b2c3d4e5f603"


@pytest.mark.parametrize(
    ("module", "name"),
    [(module, name) for module, names in LEGACY_NAMES.items() for name in names],
)
def test_every_legacy_name_is_importable_from_its_path(module: str, name: str) -> None:
    value = getattr(importlib.import_module(module), name)
    home = getattr(importlib.import_module("artist_bio_gen"), name, None)
    if home is not None:
        assert value is home  # one object, whichever path a script uses


# The documented legacy signatures: (parameter name, default or REQUIRED) in order. A script
# may pass any of these by position or by keyword, so names, order and defaults are the
# contract; type hints may be wider than the legacy ones.
REQUIRED = inspect.Parameter.empty
LEGACY_SIGNATURES: dict[str, list[tuple[str, object]]] = {
    "ArtistData": [("artist_id", REQUIRED), ("name", REQUIRED), ("data", None)],
    "ParseResult": [("artists", REQUIRED), ("skipped_lines", REQUIRED), ("error_lines", REQUIRED)],
    "ApiResponse": [
        ("artist_id", REQUIRED),
        ("artist_name", REQUIRED),
        ("artist_data", REQUIRED),
        ("response_text", REQUIRED),
        ("response_id", REQUIRED),
        ("created", REQUIRED),
        ("db_status", None),
        ("error", None),
    ],
    "DatabaseResult": [("success", REQUIRED), ("rows_affected", REQUIRED), ("error", None)],
    "parse_input_file": [("file_path", REQUIRED), ("skip_processed_ids", None)],
    "write_jsonl_output": [
        ("responses", REQUIRED),
        ("output_path", REQUIRED),
        ("prompt_id", REQUIRED),
        ("version", None),
    ],
    "append_jsonl_response": [
        ("response", REQUIRED),
        ("output_path", REQUIRED),
        ("prompt_id", REQUIRED),
        ("version", None),
        ("create_if_missing", True),
    ],
    "initialize_jsonl_output": [("output_path", REQUIRED), ("overwrite_existing", False)],
    "get_processed_artist_ids": [("output_path", REQUIRED)],
    "strip_trailing_citations": [("text", REQUIRED)],
    "validate_database_url": [("url", REQUIRED)],
    "main": [("argv", None)],
    "create_argument_parser": [],
}


def _legacy_object(name: str) -> object:
    for module, names in LEGACY_NAMES.items():
        if name in names:
            return getattr(importlib.import_module(module), name)
    raise AssertionError(f"{name} is in no legacy path")


@pytest.mark.parametrize("name", sorted(LEGACY_SIGNATURES))
def test_legacy_signatures_keep_their_names_order_and_defaults(name: str) -> None:
    parameters = inspect.signature(_legacy_object(name)).parameters.values()
    positional = [
        (p.name, p.default)
        for p in parameters
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    assert positional == LEGACY_SIGNATURES[name]
    # Anything added since must be optional (keyword-only or with a default).
    assert all(p.default is not REQUIRED for p in parameters if p.kind is p.KEYWORD_ONLY)


def test_the_named_tuples_are_immutable_tuples() -> None:
    from artist_bio_gen import ArtistData, DatabaseResult

    artist = ArtistData(ARTIST_1, "Björk")
    assert isinstance(artist, tuple) and tuple(artist) == (ARTIST_1, "Björk", None)
    with pytest.raises(AttributeError):
        artist.name = "x"  # type: ignore[misc]
    assert DatabaseResult(True, 1) == (True, 1, None)


def test_the_exit_codes_keep_their_values() -> None:
    pinned = {
        "EXIT_SUCCESS": 0,
        "EXIT_INPUT_FILE_ERROR": 1,
        "EXIT_INPUT_ERROR": 2,
        "EXIT_CONFIG_ERROR": 3,
        "EXIT_API_FAILURES": 4,
        "EXIT_RUN_ABORTED": 5,
        "EXIT_OUT_OF_SYNC": 6,
        "EXIT_LIMIT_REACHED": 7,
        "EXIT_UNEXPECTED_ERROR": 10,
        "EXIT_LOCKED": 75,
        "EXIT_INTERRUPTED": 130,
    }
    assert {name: getattr(exit_codes, name) for name in pinned} == pinned


# -- parse_input_file -------------------------------------------------------------------------


def _csv(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


def test_parse_input_file_reads_the_legacy_format_and_logs_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from artist_bio_gen import ArtistData, ParseResult, parse_input_file

    path = _csv(
        tmp_path / "a.csv",
        "artist_id,artist_name,artist_data\n"
        f'{ARTIST_1},Björk,"{{""spotify"": ""x""}}"\n'
        "# a comment\n"
        f"not-a-uuid,Nobody,\n"
        f"{ARTIST_2},  Sigur Rós  ,\n",
    )
    caplog.set_level(logging.INFO, logger="artist_bio_gen.core.parser")

    result = parse_input_file(path)

    assert isinstance(result, ParseResult)
    assert result.artists == [
        ArtistData(ARTIST_1, "Björk", '{"spotify": "x"}'),
        ArtistData(ARTIST_2, "Sigur Rós", None),
    ]
    assert (result.skipped_lines, result.error_lines) == (2, 1)  # header + comment; bad id
    parsed = [r for r in caplog.records if r.name == "artist_bio_gen.core.parser"]
    assert any(r.levelno == logging.INFO and "Parsed 2 artists" in r.getMessage() for r in parsed)


def test_parse_input_file_skips_ids_already_processed(tmp_path: Path) -> None:
    from artist_bio_gen.core.parser import parse_input_file

    path = _csv(tmp_path / "a.csv", f"{ARTIST_1},One\n{ARTIST_2},Two\n")
    result = parse_input_file(path, skip_processed_ids={ARTIST_1})
    assert [a.artist_id for a in result.artists] == [ARTIST_2]


def test_a_missing_input_raises_file_not_found(tmp_path: Path) -> None:
    from artist_bio_gen import parse_input_file

    with pytest.raises(FileNotFoundError) as raised:
        parse_input_file(tmp_path / "nope.csv")
    assert isinstance(raised.value, InputFileError)  # and the tool's own error
    assert "does not exist" in str(raised.value)


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be"])
def test_a_utf16_input_raises_unicode_decode_error(tmp_path: Path, encoding: str) -> None:
    """UTF-16 with a byte-order mark ("utf-16") and without one: refused, not read as an
    empty list of artists."""
    from artist_bio_gen import parse_input_file

    path = _csv(tmp_path / "a.csv", f"artist_id,artist_name\n{ARTIST_1},Björk\n", encoding)
    with pytest.raises(UnicodeDecodeError) as raised:
        parse_input_file(path)
    assert isinstance(raised.value, ArtistBioGenError)
    assert "not UTF-8" in str(raised.value) and "save it as UTF-8" in str(raised.value)


def test_a_latin1_input_raises_unicode_decode_error(tmp_path: Path) -> None:
    from artist_bio_gen import parse_input_file

    text = f"{ARTIST_1},Björk\n{ARTIST_2},Sigur Rós\n{ARTIST_3},Mø\n"
    with pytest.raises(UnicodeDecodeError, match="Latin-1"):
        parse_input_file(_csv(tmp_path / "a.csv", text, "latin-1"))


# -- the output functions ---------------------------------------------------------------------


def _response(artist_id: str, name: str, **fields: object):  # type: ignore[no-untyped-def]
    from artist_bio_gen import ApiResponse

    values: dict[str, object] = {
        "artist_id": artist_id,
        "artist_name": name,
        "artist_data": None,
        "response_text": f"A bio of {name}.",
        "response_id": f"resp_{name.lower()[:3]}",
        "created": 1_700_000_000,
        "db_status": "updated",
    }
    values.update(fields)
    return ApiResponse(**values)  # type: ignore[arg-type]


def test_append_and_read_back_in_a_new_directory(tmp_path: Path) -> None:
    from artist_bio_gen import append_jsonl_response
    from artist_bio_gen.core.output import get_processed_artist_ids

    out = tmp_path / "new" / "dir" / "out.jsonl"
    append_jsonl_response(_response(ARTIST_1, "Björk"), out, "pmpt_1")
    append_jsonl_response(_response(ARTIST_2, "Mø", artist_data="x"), str(out), "pmpt_1", "3")

    records = read_jsonl(out)
    assert [r["artist_id"] for r in records] == [ARTIST_1, ARTIST_2]
    assert get_processed_artist_ids(out) == {ARTIST_1, ARTIST_2}


def test_the_jsonl_record_is_pinned(tmp_path: Path) -> None:
    """Key order, types, ensure_ascii=False, version only when given, top-level
    artist_data only when non-empty, db_status "null" with the database off."""
    from artist_bio_gen.core.output import write_jsonl_output

    out = tmp_path / "out.jsonl"
    write_jsonl_output(
        [
            _response(ARTIST_1, "Björk", artist_data='{"x": 1}'),
            _response(ARTIST_2, "Mø", db_status=None),
        ],
        out,
        "pmpt_1",
        "2",
    )
    first, second = out.read_bytes().splitlines()
    assert "Björk".encode() in first  # not \u00f6
    assert json.loads(first) == {
        "artist_id": ARTIST_1,
        "artist_name": "Björk",
        "request": {
            "prompt_id": "pmpt_1",
            "variables": {"artist_name": "Björk", "artist_data": '{"x": 1}'},
            "version": "2",
        },
        "response_text": "A bio of Björk.",
        "response_id": "resp_bjö",
        "created": 1_700_000_000,
        "db_status": "updated",
        "error": None,
        "artist_data": '{"x": 1}',
    }
    assert list(json.loads(first)) == [
        "artist_id",
        "artist_name",
        "request",
        "response_text",
        "response_id",
        "created",
        "db_status",
        "error",
        "artist_data",
    ]
    record = json.loads(second)
    assert "artist_data" not in record
    assert record["request"]["variables"]["artist_data"] == "No additional data provided"
    assert record["db_status"] == "null"
    assert isinstance(record["created"], int)


def test_initialize_moves_an_old_output_aside_instead_of_truncating(tmp_path: Path) -> None:
    from artist_bio_gen import initialize_jsonl_output

    out = tmp_path / "out.jsonl"
    out.write_text('{"artist_id": "x"}\n', encoding="utf-8")
    moved = initialize_jsonl_output(out, overwrite_existing=True)
    assert moved is not None and moved.read_text(encoding="utf-8") == '{"artist_id": "x"}\n'
    assert out.exists() and out.stat().st_size == 0
    assert initialize_jsonl_output(out) is None  # an existing file is left alone


def test_processed_ids_of_a_legacy_file_leave_out_its_failures(tmp_path: Path) -> None:
    from artist_bio_gen.core.output import get_processed_artist_ids

    out = tmp_path / "out.jsonl"
    lines = [
        json.dumps({"artist_id": ARTIST_1, "response_text": "Bio.", "error": None}),
        json.dumps({"artist_id": ARTIST_2, "response_text": "", "error": "APIError: boom"}),
        json.dumps({"artist_id": ARTIST_3, "db_status": "error", "error": None}),
        '{"artist_id": "torn',
    ]
    out.write_text("\n".join(lines), encoding="utf-8")
    assert get_processed_artist_ids(out) == {ARTIST_1}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "Björk is an Icelandic singer.\n\nSources:\n- https://a.example/1\n- https://b.example",
            "Björk is an Icelandic singer.",
        ),
        ("A bio (https://a.example, https://b.example)", "A bio"),
        (
            "See https://a.example for more. Still prose.",
            "See https://a.example for more. Still prose.",
        ),
        ("Plain bio.", "Plain bio."),
    ],
)
def test_strip_trailing_citations_legacy_cases(text: str, expected: str) -> None:
    from artist_bio_gen.utils.text import strip_trailing_citations

    assert strip_trailing_citations(text) == expected
    assert strip_trailing_citations(expected) == expected  # idempotent


# -- main() and the command line --------------------------------------------------------------


@pytest.fixture
def restored_logging() -> Iterator[None]:
    """``main`` sets up logging for the process; the next test must not inherit it."""
    with logging_restored():
        yield


@pytest.mark.usefixtures("restored_logging")
def test_main_exits_with_the_code(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Like the legacy main, ``main()`` raises SystemExit: 0 for a dry run, 1 for a missing
    input file."""
    from artist_bio_gen import main

    csv_path = _csv(tmp_path / "a.csv", f"{ARTIST_1},Björk\n")
    with pytest.raises(SystemExit) as dry:
        main(["--input-file", str(csv_path), "--prompt-id", "p", "--dry-run"])
    assert dry.value.code == exit_codes.EXIT_SUCCESS
    assert json.loads(capsys.readouterr().out.splitlines()[0])["artist_id"] == ARTIST_1

    with pytest.raises(SystemExit) as missing:
        main(["--input-file", str(tmp_path / "nope.csv"), "--prompt-id", "p", "--dry-run"])
    assert missing.value.code == exit_codes.EXIT_INPUT_FILE_ERROR
    assert "does not exist" in capsys.readouterr().err


def test_every_legacy_flag_is_accepted() -> None:
    from artist_bio_gen import create_argument_parser

    args = create_argument_parser().parse_args(
        [
            "--input-file", "a.csv", "--output", "o.jsonl", "--prompt-id", "p", "--version",
            "2", "--max-workers", "8", "--dry-run", "--verbose", "--resume", "--enable-db",
            "--test-mode", "--db-url", "postgresql://u@h/d", "--openai-api-key", "sk-x",
            "--quota-monitoring", "false", "--quota-threshold", "0.5", "--daily-limit",
            "100", "--pause-duration", "2", "--quota-log-interval", "10",
        ]
    )  # fmt: skip
    assert (args.input, args.prompt_version, args.max_workers) == ("a.csv", "2", 8)
    assert (args.quota_monitoring, args.daily_limit, args.pause_duration) == (False, 100, 2.0)


@pytest.mark.usefixtures("restored_logging")
@pytest.mark.parametrize("flag", ["--enable-db", "--pause-duration", "--daily-limit"])
def test_a_flag_whose_behaviour_changed_prints_a_notice(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str
) -> None:
    from artist_bio_gen.cli.main import run_command

    csv_path = _csv(tmp_path / "a.csv", f"{ARTIST_1},Björk\n")
    value = [] if flag == "--enable-db" else ["3"]
    code = run_command(["--input", str(csv_path), "--model", "m", "--dry-run", flag, *value])
    assert code == exit_codes.EXIT_SUCCESS
    notices = [line for line in capsys.readouterr().err.splitlines() if "notice:" in line]
    assert len(notices) == 1 and flag in notices[0]


def test_a_legacy_script_runs_unchanged(tmp_path: Path) -> None:
    """A script written for the legacy package, in a process of its own."""
    csv_path = _csv(tmp_path / "a.csv", f"artist_id,artist_name\n{ARTIST_1},Björk\n")
    script = textwrap.dedent(
        f"""
        import sys
        from artist_bio_gen import ApiResponse, append_jsonl_response, main, parse_input_file

        result = parse_input_file({str(csv_path)!r})
        artist = result.artists[0]
        append_jsonl_response(
            ApiResponse(artist.artist_id, artist.name, artist.data, "A bio.", "resp_1", 1),
            {str(tmp_path / "legacy" / "out.jsonl")!r},
            "pmpt_legacy",
        )
        try:
            main(["--input-file", {str(csv_path)!r}, "--prompt-id", "p", "--dry-run"])
        except SystemExit as exc:
            print("exit", exc.code)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=cli_env(), timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("exit 0")
    records = read_jsonl(tmp_path / "legacy" / "out.jsonl")
    assert records[0]["artist_id"] == ARTIST_1 and records[0]["response_text"] == "A bio."


# -- input that is not UTF-8 ------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le"], ids=["with-bom", "without-bom"])
def test_the_cli_refuses_a_utf16_input_before_any_request(
    make_job: MakeJob, fake_openai: FakeOpenAI, encoding: str
) -> None:
    job = make_job(3, seed=901)
    job.csv.write_bytes(job.csv.read_text(encoding="utf-8").encode(encoding))

    result = job.run(*job.input_args("--prompt-id", "p"))

    assert result.code == exit_codes.EXIT_INPUT_FILE_ERROR, result.stderr
    assert "is not UTF-8" in result.stderr and "UTF-16" in result.stderr
    assert "save it as UTF-8" in result.stderr and "Traceback" not in result.stderr
    assert fake_openai.total_requests == 0
    assert not job.out.exists()


def test_one_latin1_line_in_a_utf8_file_is_skipped_and_named(
    make_job: MakeJob, fake_openai: FakeOpenAI, database: TestDatabase
) -> None:
    job = make_job(4, seed=902)
    lines = job.csv.read_bytes().splitlines(keepends=True)
    bad = job.artists[1]
    lines[2] = f"{bad.artist_id},Bjórk Latin-1\n".encode("latin-1")  # line 3 of the file
    lines.append(f"{uuid.uuid4()},Sigur Rós\n".encode())  # real UTF-8 beyond ASCII
    job.csv.write_bytes(b"".join(lines))

    result = job.run(*job.input_args("--prompt-id", "p"))

    assert result.code == exit_codes.EXIT_SUCCESS, result.stderr
    assert "line 3" in result.stderr and "not valid UTF-8" in result.stderr
    assert fake_openai.calls("Bjórk Latin-1") == 0
    committed = {r["artist_id"] for r in assert_mirror(job.out, database)}
    assert bad.artist_id not in committed
    assert {a.artist_id for a in job.artists if a is not bad} <= committed


# -- taking over a legacy output --------------------------------------------------------------


def _legacy_line(artist_id: str, name: str, **fields: object) -> bytes:
    record: dict[str, object] = {
        "artist_id": artist_id,
        "artist_name": name,
        "request": {
            "prompt_id": "pmpt_old",
            "variables": {"artist_name": name, "artist_data": "No additional data provided"},
        },
        "response_text": f"Legacy bio of {name}.",
        "response_id": f"resp_{uuid.uuid4().hex}",
        "created": 1_700_000_000,
        "db_status": "updated",
        "error": None,
    }
    record.update(fields)
    return (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")


def test_a_legacy_output_with_errors_and_a_torn_tail_is_taken_over(
    make_job: MakeJob, fake_openai: FakeOpenAI, database: TestDatabase
) -> None:
    """A legacy out.jsonl (no manifest) with good lines, failed lines and a torn last line:
    ``--resume --input`` cuts the torn tail, keeps every whole legacy line byte for byte,
    requests only the failed and the new artists, and mirrors them in the database."""
    job = make_job(8, seed=903)
    good, failed, torn, fresh = job.artists[:3], job.artists[3:5], job.artists[5], job.artists[6:]
    whole = b"".join(
        [
            *(_legacy_line(a.artist_id, a.name) for a in good),
            *(
                _legacy_line(a.artist_id, a.name, response_text="", error="APIError: boom")
                for a in failed
            ),
        ]
    )
    job.out.write_bytes(whole + _legacy_line(torn.artist_id, torn.name)[:50])

    result = job.run(*job.input_args("--prompt-id", "pmpt_new", "--resume"))

    assert result.code == exit_codes.EXIT_SUCCESS, result.stderr
    data = job.out.read_bytes()
    assert data.startswith(whole)
    redone = [*failed, torn, *fresh]
    assert {a.name: fake_openai.calls(a.name) for a in job.artists} == {
        **{a.name: 0 for a in good},
        **{a.name: 1 for a in redone},
    }
    new_records = [json.loads(line) for line in data[len(whole) :].splitlines()]
    assert sorted(r["artist_id"] for r in new_records) == sorted(a.artist_id for a in redone)
    assert {row["artist_id"] for row in database.ledger()} == {a.artist_id for a in redone}
    assert TEST_API_KEY not in result.stderr
