"""Tests for the streaming input reader and the legacy ``parse_input_file``."""

from __future__ import annotations

import logging
import os
import random
import tracemalloc
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from artist_bio_gen.core import reader as parser
from artist_bio_gen.core.parser import parse_input_file
from artist_bio_gen.core.reader import ArtistReader
from artist_bio_gen.errors import InputFileError
from artist_bio_gen.models import ArtistData
from artist_bio_gen.utils.uuidset import UuidSet

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "artists.csv"
LOGGER = "artist_bio_gen.core.parser"

ID1 = "11111111-1111-4111-8111-111111111111"
ID2 = "22222222-2222-4222-8222-222222222222"
ID3 = "33333333-3333-4333-8333-333333333333"
ID4 = "44444444-4444-4444-8444-444444444444"


def write_csv(tmp_path: Path, text: str | bytes, *, name: str = "artists.csv") -> Path:
    """Write ``text`` byte for byte (no newline translation) and return the path."""
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    return path


def read_all(path: Path, **kwargs: object) -> tuple[list[ArtistData], ArtistReader]:
    with ArtistReader(path, **kwargs) as reader:  # type: ignore[arg-type]
        return list(reader), reader


def warnings_of(caplog: pytest.LogCaptureFixture, level: int = logging.WARNING) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == level]


# -- the basic format -------------------------------------------------------------------


def test_reads_ids_names_and_data_with_normalisation(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path,
        "artist_id,artist_name,artist_data\n"
        f"  {ID1.upper()} ,  Björk Guðmundsdóttir  , Icelandic singer \n"
        f"{ID2.replace('-', '')},Second,\n"
        f"{ID3},Third\n"
        f'{ID4},Fourth,"   "\n',
    )
    artists, reader = read_all(path)
    assert artists == [
        ArtistData(ID1, "Björk Guðmundsdóttir", "Icelandic singer"),
        ArtistData(ID2, "Second", None),
        ArtistData(ID3, "Third", None),
        ArtistData(ID4, "Fourth", None),
    ]
    assert (reader.rows, reader.skipped_lines, reader.error_lines) == (4, 1, 0)


def test_quoted_json_with_commas_quotes_and_newlines_is_one_field(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path,
        f'{ID1},"Earth, Wind & Fire","{{""genre"": ""funk, soul"",\n""note"": ""a\nb""}}"\n',
    )
    artists, _ = read_all(path)
    assert artists == [
        ArtistData(ID1, "Earth, Wind & Fire", '{"genre": "funk, soul",\n"note": "a\nb"}')
    ]


def test_extra_fields_are_joined_back_preserving_the_text(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path,
        f'{ID1},One,{{"spotify": "x", "instagram": "@y"}}\n'
        f"{ID2},Two, a ,  b , c  \n"
        f"{ID3},Three,text,,\n"
        f"{ID4},Four,,,\n",
    )
    artists, reader = read_all(path)
    assert [a.data for a in artists] == [
        '{"spotify": "x", "instagram": "@y"}',
        "a ,  b , c",  # inner whitespace kept; only the whole is stripped
        "text",  # trailing empty fields are spreadsheet padding
        None,
    ]
    assert reader.error_lines == 0


def test_blank_comment_and_header_lines_are_skipped_and_counted(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path,
        '\n# a comment, with "commas"\n   \nID,name,data\n'
        f"{ID1},One\n,,\n  # indented comment\n\n{ID2},Two\n",
    )
    artists, reader = read_all(path)
    assert [a.artist_id for a in artists] == [ID1, ID2]
    # blank, comment, whitespace-only, header, ",,", indented comment, blank
    assert reader.skipped_lines == 7
    assert reader.error_lines == 0


@pytest.mark.parametrize("header", ["artist_id", "ARTIST_ID", "id", "Uuid"])
def test_header_names_are_recognised_in_any_case(tmp_path: Path, header: str) -> None:
    path = write_csv(tmp_path, f"{header},name\n{ID1},One\n")
    artists, reader = read_all(path)
    assert [a.artist_id for a in artists] == [ID1]
    assert (reader.skipped_lines, reader.error_lines) == (1, 0)


def test_header_is_only_skipped_as_the_first_data_row(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write_csv(tmp_path, f"{ID1},One\nartist_id,artist_name\n{ID2},Two\n")
    caplog.set_level(logging.WARNING, logger=LOGGER)
    artists, reader = read_all(path)
    assert [a.artist_id for a in artists] == [ID1, ID2]
    assert (reader.skipped_lines, reader.error_lines) == (0, 1)
    assert warnings_of(caplog) == [f"{path} line 2: 'artist_id' is not a valid UUID; row skipped"]


def test_bom_and_crlf_are_accepted(tmp_path: Path) -> None:
    text = f'artist_id,artist_name,artist_data\r\n{ID1},One,"x\r\ny"\r\n{ID2},Two,plain\r\n'
    path = write_csv(tmp_path, b"\xef\xbb\xbf" + text.encode())
    artists, reader = read_all(path)
    # The BOM must not stick to "artist_id" (else the header is a bad row) and no \r leaks.
    assert artists == [ArtistData(ID1, "One", "x\r\ny"), ArtistData(ID2, "Two", "plain")]
    assert (reader.skipped_lines, reader.error_lines) == (1, 0)


def test_bom_without_header_keeps_the_first_id(tmp_path: Path) -> None:
    path = write_csv(tmp_path, b"\xef\xbb\xbf" + f"{ID1},One\n".encode())
    artists, _ = read_all(path)
    assert artists == [ArtistData(ID1, "One", None)]


# -- bad rows and their line numbers -----------------------------------------------------


def test_bad_rows_are_skipped_with_line_and_reason(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write_csv(
        tmp_path,
        "artist_id,artist_name\n"  # 1
        f"{ID1},One\n"  # 2
        "abc,Bad id\n"  # 3
        f"{ID2}\n"  # 4
        f"{ID3},   \n"  # 5
        ",No id\n"  # 6
        f"{ID4},Four\n",  # 7
    )
    caplog.set_level(logging.WARNING, logger=LOGGER)
    artists, reader = read_all(path)
    assert [a.artist_id for a in artists] == [ID1, ID4]
    assert (reader.rows, reader.error_lines, reader.skipped_lines) == (2, 4, 1)
    assert warnings_of(caplog) == [
        f"{path} line 3: 'abc' is not a valid UUID; row skipped",
        f"{path} line 4: expected artist_id,artist_name[,artist_data] but found only one field;"
        " row skipped",
        f"{path} line 5: artist_name is empty; row skipped",
        f"{path} line 6: artist_id is empty; row skipped",
    ]


def test_line_numbers_count_physical_lines_after_multiline_records(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write_csv(
        tmp_path,
        "artist_id,artist_name,artist_data\r\n"  # 1
        f'{ID1},One,"{{""bio"": ""line one\r\n'  # 2
        "line two\r\n"  # 3
        'line three""}"\r\n'  # 4
        "bad-1,Two\r\n"  # 5
        '\r\nbad-2,"Multi\nline",data\n'  # 6 blank, 7-8 bad record
        f"{ID1},Dup\n",  # 9
    )
    caplog.set_level(logging.WARNING, logger=LOGGER)
    artists, reader = read_all(path)
    assert artists == [ArtistData(ID1, "One", '{"bio": "line one\r\nline two\r\nline three"}')]
    assert warnings_of(caplog) == [
        f"{path} line 5: 'bad-1' is not a valid UUID; row skipped",
        f"{path} line 7: 'bad-2' is not a valid UUID; row skipped",
        f"{path} line 9: artist_id {ID1} already appeared earlier in the file; processed once",
    ]
    assert reader.lines_read == 9


def test_invalid_utf8_on_one_line_leaves_other_rows_intact(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = (
        f"{ID1},Caf\xc3\xa9 Tacvba\n".encode("latin-1")  # valid UTF-8 (é)
        + f"{ID2},Caf".encode()
        + b"\xe9 Latin-1\n"  # a lone latin-1 byte: not UTF-8
        + b"# comment with bad byte \xff\n"
        + f"{ID3},Three\n".encode()
    )
    path = write_csv(tmp_path, data)
    caplog.set_level(logging.WARNING, logger=LOGGER)
    artists, reader = read_all(path)
    assert artists == [ArtistData(ID1, "Café Tacvba", None), ArtistData(ID3, "Three", None)]
    assert (reader.error_lines, reader.skipped_lines) == (1, 1)
    [message] = warnings_of(caplog)
    assert message.startswith(f"{path} line 2: ")
    assert "not valid UTF-8" in message


def test_oversized_malformed_field_is_one_bad_row(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A field beyond csv's size limit (e.g. a runaway quote) must not abort the file.
    path = write_csv(tmp_path, f"{ID1},One\n{ID2},{'x' * 200_000}\n{ID3},Three\n")
    caplog.set_level(logging.WARNING, logger=LOGGER)
    artists, reader = read_all(path)
    assert [a.artist_id for a in artists] == [ID1, ID3]
    assert reader.error_lines == 1
    [message] = warnings_of(caplog)
    assert message.startswith(f"{path} line 2: malformed CSV")


def test_long_bad_values_are_shortened_in_warnings(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write_csv(tmp_path, f"{'z' * 5000},Name\n")
    caplog.set_level(logging.WARNING, logger=LOGGER)
    read_all(path)
    [message] = warnings_of(caplog)
    assert len(message) < 300
    assert "is not a valid UUID" in message


# -- duplicates, skip_ids ----------------------------------------------------------------


def test_duplicates_are_yielded_once_and_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write_csv(tmp_path, f"{ID1},One\n{ID2},Two\n{ID1.upper()},Again\n{ID2},Again\n")
    caplog.set_level(logging.WARNING, logger=LOGGER)
    artists, reader = read_all(path)
    assert [(a.artist_id, a.name) for a in artists] == [(ID1, "One"), (ID2, "Two")]
    assert (reader.rows, reader.duplicate_lines, reader.error_lines) == (2, 2, 0)
    assert warnings_of(caplog) == [
        f"{path} line 3: artist_id {ID1} already appeared earlier in the file; processed once",
        f"{path} line 4: artist_id {ID2} already appeared earlier in the file; processed once",
    ]


@pytest.mark.parametrize("container", [set, UuidSet], ids=["set", "UuidSet"])
def test_skip_ids_are_not_yielded_and_are_counted(tmp_path: Path, container: type) -> None:
    path = write_csv(tmp_path, f"{ID1},One\n{ID2},Two\n{ID3.upper()},Three\n{ID2},Dup\n")
    artists, reader = read_all(path, skip_ids=container([ID2, ID3]))
    assert [a.artist_id for a in artists] == [ID1]
    # Done rows are recognised first, by id alone: the repeated ID2 is done again, and done
    # ids never enter the duplicate set (a resume over millions of them stays lean).
    assert (reader.rows, reader.already_done, reader.duplicate_lines) == (1, 3, 0)


def _resume_input(rng: random.Random, done: list[str], new: list[str]) -> bytes:
    """A resume's input: runs of done lines in every form the fast path takes or leaves to
    the csv module, with new, bad, duplicate, blank, comment and multi-line rows between."""
    rests = [
        ",Name",
        ",Name,data",
        ',"Na,me","{""k"": ""v""}"',
        ',O"Brien',
        ',"multi\nline",x',
        ',"unclosed',
        ",",
        ',"q"x',
        "",
        "," + "z" * 300,
    ]
    lines = [b"\xef\xbb\xbfartist_id,artist_name,artist_data\r\n"]
    for _ in range(3000):
        artist = rng.choice(done) if rng.random() < 0.9 else rng.choice(new)
        if rng.random() < 0.8:  # the common case: a plain done line
            lines.append(f"{artist},Name\n".encode())
            continue
        form = rng.choice([artist, f'"{artist}"', artist.upper(), f" {artist}"])
        if rng.random() < 0.1:
            form = rng.choice(["", "#comment", "not-a-uuid", f'"{artist}', f'{artist}"'])
        end = rng.choice(["\n", "\r\n", "\r"])
        lines.append((form + rng.choice(rests) + end).encode("utf-8"))
    lines.append(rng.choice(done).encode() + b",last")  # no newline at the end
    return b"".join(lines)


@dataclass(frozen=True)
class _NotAUuidSet:
    """The same membership as ``ids``, but not a ``UuidSet``: the reader's fast path is off."""

    ids: UuidSet

    def __contains__(self, value: object) -> bool:
        return value in self.ids


@pytest.mark.parametrize(("seed", "worthwhile"), [(1, 1), (2, 1), (3, parser._WORTHWHILE)])
def test_done_lines_passed_over_in_bulk_count_exactly_like_the_csv_path(
    tmp_path: Path, seed: int, worthwhile: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ``UuidSet`` of done ids takes the fast path, the same ids behind another container
    the csv module alone: the rows and every counter must agree (small blocks and windows,
    so that lines and CRLFs straddle them; fast-path tries after every poor one)."""
    rng = random.Random(seed)
    done = [str(uuid.UUID(int=rng.getrandbits(128))) for _ in range(200)]
    new = [str(uuid.UUID(int=rng.getrandbits(128))) for _ in range(50)]
    path = write_csv(tmp_path, _resume_input(rng, done, new))
    monkeypatch.setattr(parser, "_BLOCK", 997)
    monkeypatch.setattr(parser, "_MIN_WINDOW", 64)
    monkeypatch.setattr(parser, "_WORTHWHILE", worthwhile)
    fast_calls = []
    real = UuidSet.leading_members
    monkeypatch.setattr(
        UuidSet, "leading_members", lambda s, blob: fast_calls.append(1) or real(s, blob)
    )

    def outcome(skip: object) -> tuple[object, ...]:
        artists, reader = read_all(path, skip_ids=skip)
        counts = (reader.rows, reader.skipped_lines, reader.error_lines, reader.duplicate_lines)
        return artists, counts, reader.already_done, reader.lines_read, reader.exhausted

    by_csv = outcome(_NotAUuidSet(UuidSet(done)))
    assert not fast_calls
    by_fast_path = outcome(UuidSet(done))
    assert fast_calls, "the fast path was never taken"
    assert by_fast_path == by_csv
    assert by_csv[2] > 2000  # most lines were done


def test_a_failed_artist_among_done_lines_is_still_yielded(tmp_path: Path) -> None:
    """A done prefix with one artist that is not done (it failed): that one is read, the
    rest counted as done, the line numbers exact."""
    done = [str(uuid.UUID(int=i + 1)) for i in range(5000)]
    rows = [f"{artist},Artist {i}" for i, artist in enumerate(done)]
    rows.insert(2500, f"{ID1},Failed before")
    path = write_csv(tmp_path, "artist_id,artist_name\n" + "\n".join(rows) + f"\n{ID2},New\n")
    artists, reader = read_all(path, skip_ids=UuidSet(done))
    assert [(a.artist_id, a.name) for a in artists] == [(ID1, "Failed before"), (ID2, "New")]
    assert (reader.already_done, reader.rows, reader.lines_read) == (5000, 2, 5003)


# -- warning flood control --------------------------------------------------------------


def test_warnings_switch_to_debug_after_fifty(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bad = "".join(f"bad{i},Name\n" for i in range(70))
    path = write_csv(tmp_path, f"{ID1},One\n{bad}{ID1},Dup\n{ID2},Two\n")
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    artists, reader = read_all(path)
    assert [a.artist_id for a in artists] == [ID1, ID2]
    assert (reader.error_lines, reader.duplicate_lines) == (70, 1)

    warned = warnings_of(caplog, logging.WARNING)
    assert len(warned) == parser.MAX_LINE_WARNINGS + 1
    assert warned[0] == f"{path} line 2: 'bad0' is not a valid UUID; row skipped"
    assert warned[49] == f"{path} line 51: 'bad49' is not a valid UUID; row skipped"
    assert "only logged at DEBUG" in warned[50] and "--verbose" in warned[50]

    debugged = warnings_of(caplog, logging.DEBUG)
    assert len(debugged) == 21  # 20 more bad rows + the duplicate, nothing lost
    assert debugged[0] == f"{path} line 52: 'bad50' is not a valid UUID; row skipped"
    assert debugged[-1].startswith(f"{path} line 72: artist_id {ID1} already appeared")

    # Flood control is per reader: a new reader warns again.
    caplog.clear()
    read_all(path)
    assert len(warnings_of(caplog, logging.WARNING)) == parser.MAX_LINE_WARNINGS + 1


# -- opening errors ---------------------------------------------------------------------


def test_missing_file_raises_at_construction(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    with pytest.raises(InputFileError) as info:
        ArtistReader(path)
    assert str(info.value) == f"Input file '{path}' does not exist; check the --input path."
    with pytest.raises(InputFileError):
        parse_input_file(path)


def test_directory_raises_input_file_error(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match="is a directory; pass the path of a CSV file"):
        ArtistReader(tmp_path)


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root can read any file"
)
def test_unreadable_file_raises_input_file_error(tmp_path: Path) -> None:
    path = write_csv(tmp_path, f"{ID1},One\n")
    path.chmod(0)
    try:
        with pytest.raises(InputFileError, match="permission denied"):
            ArtistReader(path)
    finally:
        path.chmod(0o600)


def test_permission_error_is_reported_as_input_file_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Simulated, because the test may run as root (who can read anything).
    path = write_csv(tmp_path, f"{ID1},One\n")

    def denied(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(parser, "open", denied, raising=False)
    with pytest.raises(InputFileError) as info:
        ArtistReader(path)
    assert str(info.value).startswith(f"Input file '{path}' cannot be read (permission denied)")


# -- streaming and lifecycle ------------------------------------------------------------


def test_counters_advance_lazily_while_iterating(tmp_path: Path) -> None:
    rows = "".join(f"{uuid.UUID(int=i + 1)},Artist {i}\n" for i in range(1000))
    path = write_csv(tmp_path, "artist_id,artist_name\n" + rows)
    with ArtistReader(path) as reader:
        assert (reader.rows, reader.lines_read) == (0, 0)  # nothing read before iterating
        first = next(reader)
        assert first.name == "Artist 0"
        assert (reader.rows, reader.skipped_lines, reader.lines_read) == (1, 1, 2)
        assert sum(1 for _ in reader) == 999
        assert reader.rows == 1000


def test_streaming_memory_stays_small_on_a_large_file(tmp_path: Path) -> None:
    count = 50_000
    data = "x" * 600
    path = tmp_path / "big.csv"
    with path.open("w", encoding="utf-8") as out:
        for i in range(count):
            out.write(f"{uuid.UUID(int=i + 1)},Artist {i},{data}\n")
    file_size = path.stat().st_size
    assert file_size > 30_000_000

    tracemalloc.start()
    try:
        with ArtistReader(path) as reader:
            seen = sum(1 for _ in reader)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert seen == count
    # Holding the file (or the artists) would need more than its size; streaming needs
    # the seen-id set (~2 MB here) and a few buffers.
    assert peak < 8_000_000, f"peak {peak} bytes for a {file_size}-byte file"


def test_close_stops_iteration(tmp_path: Path) -> None:
    path = write_csv(tmp_path, f"{ID1},One\n{ID2},Two\n")
    reader = ArtistReader(path)
    assert next(reader).artist_id == ID1
    reader.close()
    assert list(reader) == []
    reader.close()  # closing twice is harmless


def test_close_before_iterating(tmp_path: Path) -> None:
    path = write_csv(tmp_path, f"{ID1},One\n")
    with ArtistReader(path) as reader:
        pass
    assert list(reader) == []
    assert reader.rows == 0


# -- legacy whole-file API and the example ------------------------------------------------


def test_parse_input_file_counts_like_the_legacy_function(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path,
        "artist_id,artist_name,artist_data\n# comment\n\n"
        f"{ID1},One,data one\n{ID2},Two\nnope,Bad\n{ID3},Three\n{ID1},Dup\n",
    )
    result = parse_input_file(path, skip_processed_ids={ID2})
    assert result.artists == [ArtistData(ID1, "One", "data one"), ArtistData(ID3, "Three", None)]
    # header + comment + blank + already processed (ID2) + duplicate (ID1)
    assert result.skipped_lines == 5
    assert result.error_lines == 1


def test_parse_input_file_accepts_a_str_path(tmp_path: Path) -> None:
    path = write_csv(tmp_path, f"{ID1},One\n")
    assert parse_input_file(str(path)).artists == [ArtistData(ID1, "One", None)]


def test_example_file_processes_cleanly(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    result = parse_input_file(EXAMPLE)
    assert result.error_lines == 0
    assert len(result.artists) >= 20
    assert warnings_of(caplog) == []
    assert len({a.artist_id for a in result.artists}) == len(result.artists)
    assert all(uuid.UUID(a.artist_id).version == 4 for a in result.artists)
    assert any(a.data is None for a in result.artists)
    assert any(not a.name.isascii() for a in result.artists)
    assert any(a.data and a.data.startswith('{"') for a in result.artists)
    assert result.skipped_lines >= 3  # header, comments and blank lines


def test_estimate_rows_is_an_upper_bound_without_the_header(tmp_path: Path) -> None:
    """The progress estimate counts lines, minus a header row."""
    from artist_bio_gen.core.reader import estimate_rows

    path = tmp_path / "a.csv"
    rows = b"00000000-0000-4000-8000-000000000001,A\r\n00000000-0000-4000-8000-000000000002,B\r\n"
    path.write_bytes(b"\xef\xbb\xbfartist_id,artist_name\r\n" + rows)
    assert estimate_rows(path) == 2
    path.write_bytes(b"# comment\n" + rows)
    assert estimate_rows(path) == 3  # an estimate: the comment counts
    path.write_bytes(b"00000000-0000-4000-8000-000000000001,A")
    assert estimate_rows(path) == 1
    path.write_bytes(b"artist_id,artist_name\n" + rows + b"00000000-0000-4000-8000-000000000003,C")
    assert estimate_rows(path) == 3  # a last line without its newline still counts
    path.write_bytes(b"")
    assert estimate_rows(path) == 0


def test_count_input_lines_counts_blank_and_comment_lines_across_blocks(tmp_path: Path) -> None:
    """The progress total leaves out what the reader skips: blank and ``#`` lines, each of
    a run of blank lines, also where a line start falls on the counter's 1 MiB block
    boundary; one pass counts the physical lines too."""
    from artist_bio_gen.core.reader import count_input_lines

    def skipped(data: bytes) -> int | None:
        path.write_bytes(data)
        counted = count_input_lines(path)
        return None if counted is None else counted.skipped

    path = tmp_path / "a.csv"
    row = b"00000000-0000-4000-8000-000000000001,A\n"
    assert skipped(b"# first\n" + row + b"\n" + row + b"\r\n# note\n" + row + b"#x") == 5
    assert count_input_lines(path) == (8, 5)  # the last line, "#x", has no newline
    assert skipped(row + b"\n\n\n" + row + b"\r\n\r\n\r\n" + row) == 6  # runs, LF and CRLF
    block = 1 << 20
    filler = b"x" * (block - 1) + b"\n"  # the newline is the block's last byte
    assert skipped(filler + b"# on the boundary\n" + row) == 1
    assert skipped(filler[:-1] + b"\r\n\r\n" + row) == 1  # a blank CRLF line across it
    assert skipped(filler + b"\n" + row) == 1  # a blank line right after it
    assert skipped(row * 3) == 0
    assert count_input_lines(tmp_path / "missing.csv") is None
