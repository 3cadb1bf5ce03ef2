"""Streaming reader for the input CSV (legacy contract).

Format: UTF-8 CSV with standard (RFC 4180) quoting, one artist per record::

    artist_id,artist_name[,artist_data]

Rules:

* ``artist_id`` must parse as a UUID; it is normalised to the canonical lower-case form.
* ``artist_name`` must be non-empty; ``artist_data`` is optional free text (often a JSON
  object quoted as one CSV field, which may hold commas, quotes and newlines).
* Whitespace around fields is trimmed; an empty ``artist_data`` becomes ``None``.
* Blank lines (including rows whose fields are all empty, as spreadsheets export them)
  and rows whose first field starts with ``#`` are skipped.
* One header row (first field ``artist_id``, ``id`` or ``uuid``, any case) is skipped,
  but only when it is the first non-blank, non-comment row.
* A UTF-8 BOM and CRLF line endings are accepted.
* More than three fields (typically unquoted JSON containing commas): the fields from
  the third on are joined back with ``","`` and the result is stripped as a whole, so the
  user's text survives as it was written. Trailing empty fields are dropped first: they
  are spreadsheet padding (``id,name,,``), not text. Quote characters the CSV parser
  consumed cannot be restored; quote the field to keep them.
* A bad row (fewer than two fields, bad UUID, empty name, bytes that are not valid UTF-8,
  malformed CSV) is skipped with a warning naming the physical line where the record
  starts; the rest of the file is still read.
* A duplicate ``artist_id`` is yielded only the first time and reported.

Only the first ``MAX_LINE_WARNINGS`` problems per reader are logged at WARNING; after
that they are counted and logged at DEBUG so a broken million-line file cannot flood
the console.
"""

from __future__ import annotations

import binascii
import csv
import logging
import os
import re
import stat
import uuid
from collections.abc import Container, Generator, Iterator
from types import TracebackType
from typing import BinaryIO, NamedTuple

from ..errors import (
    InputEncodingError,
    InputFileError,
    InputFileNotFoundError,
    InputIsADirectoryError,
    InputPermissionError,
)
from ..models import ArtistData
from ..utils.encoding import SAMPLE_BYTES, encoding_problem
from ..utils.uuidset import UuidSet

# The legacy name: the input parser was ``core/parser.py``, and scripts that watch its
# logger for the per-line warnings keep seeing them.
logger = logging.getLogger("artist_bio_gen.core.parser")

#: Per-line problems logged at WARNING per reader before switching to DEBUG.
MAX_LINE_WARNINGS = 50

#: First-field values that mark the optional header row.
HEADER_NAMES = frozenset({"artist_id", "id", "uuid"})

# ``errors="surrogateescape"`` decodes each invalid byte to a lone surrogate in this range.
_SURROGATES = re.compile("[\udc80-\udcff]")
_SHOWN_CHARS = 60  # how much of a bad value a warning quotes


class _BadRow(Exception):
    """A row that cannot be used; the message is the reason shown to the user."""


def _shorten(text: str) -> str:
    """Return ``repr(text)``, cut short so one huge field cannot swamp the log."""
    if len(text) > _SHOWN_CHARS:
        text = text[:_SHOWN_CHARS] + "..."
    return repr(text)


def _canonical_id(text: str) -> str:
    """Return ``text`` as a canonical lower-case UUID string, or raise ``_BadRow``."""
    if not text:
        raise _BadRow("artist_id is empty")
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise _BadRow(f"{_shorten(text)} is not a valid UUID") from None


def _join_data(extra: list[str]) -> str | None:
    """Rebuild ``artist_data`` from the fields after the name (see the module docstring)."""
    while extra and not extra[-1].strip():
        extra = extra[:-1]
    data = ",".join(extra).strip()
    return data or None


def _parse_fields(fields: list[str]) -> ArtistData:
    """Turn one data row into an ``ArtistData``; raise ``_BadRow`` with the reason."""
    if any(_SURROGATES.search(field) for field in fields):
        raise _BadRow("the row contains bytes that are not valid UTF-8 (save the file as UTF-8)")
    if len(fields) < 2:
        raise _BadRow("expected artist_id,artist_name[,artist_data] but found only one field")
    artist_id = _canonical_id(fields[0].strip())
    name = fields[1].strip()
    if not name:
        raise _BadRow("artist_name is empty")
    return ArtistData(artist_id, name, _join_data(fields[2:]))


def _open_input(path: str) -> BinaryIO:
    """Open the input CSV or raise ``InputFileError`` saying what is wrong and what to do."""
    _check_regular(path)
    try:
        _check_encoding(path)
        # Read as bytes: ``_Lines`` splits and decodes the lines itself.
        return open(path, "rb")
    except FileNotFoundError as exc:
        raise InputFileNotFoundError(
            f"Input file '{path}' does not exist; check the --input path."
        ) from exc
    except IsADirectoryError as exc:
        raise InputIsADirectoryError(_is_a_directory(path)) from exc
    except PermissionError as exc:
        if os.path.isdir(path):  # Windows reports a directory as permission denied
            raise InputIsADirectoryError(_is_a_directory(path)) from exc
        raise InputPermissionError(
            f"Input file '{path}' cannot be read (permission denied); "
            "fix its permissions or run as a user who can read it."
        ) from exc
    except OSError as exc:
        raise InputFileError(
            f"Input file '{path}' cannot be opened ({exc.strerror or exc}); check the --input path."
        ) from exc


def _check_regular(path: str) -> None:
    """Refuse a pipe, socket or device: a run reads its input more than once (the encoding
    check, the count for the progress total, every ``--resume``), and a pipe can be read
    only once, so the second reading would silently see no artists (or block)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return  # opening it says what is wrong
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise InputFileError(
            f"Input '{path}' is not a regular file (a pipe or a device), and a run reads its "
            "input more than once; save the CSV to a file and pass that path with --input."
        )


def _is_a_directory(path: str) -> str:
    return f"Input file '{path}' is a directory; pass the path of a CSV file with --input."


def _check_encoding(path: str) -> None:
    """Refuse a file that is not UTF-8 at all (see ``utils/encoding.py``)."""
    with open(path, "rb") as handle:
        sample = handle.read(SAMPLE_BYTES + 1)
    complete = len(sample) <= SAMPLE_BYTES
    problem = encoding_problem(sample[:SAMPLE_BYTES], complete=complete)
    if problem is None:
        return
    raise InputEncodingError(
        f"Input file '{path}' is not UTF-8: it looks like {problem.looks_like}; save it as "
        'UTF-8 (in a spreadsheet: "CSV UTF-8") and run again.',
        "utf-8",
        sample[problem.offset : problem.offset + 1],
        0,
        f"not UTF-8 text ({problem.looks_like})",
    )


_BOM = b"\xef\xbb\xbf"
_BLOCK = 1 << 20  # bytes read from the file at a time while done lines are passed over
#: Bytes read at a time otherwise: a megabyte copied per block for lines parsed one by one
#: buys nothing, and such large short-lived buffers fragment the heap (measured: peak RSS
#: of a 50,000-artist run 1.3 points higher with 1 MiB blocks than with these).
_SMALL_BLOCK = 1 << 16
#: Bytes the fast path takes in one go right after a line it had to leave to the csv module
#: (the next line may be one too); quadrupled up to ``_BLOCK`` while every line is done.
_MIN_WINDOW = 256
#: A fast-path try that passes over fewer lines than this was not worth its cost...
_WORTHWHILE = 32
#: ...and the csv module alone reads up to this many records before the next try.
_MAX_BACKOFF = 1024


def _done_line_pattern() -> re.Pattern[bytes]:
    """A line the fast path may count as done without the csv module.

    Its first field is a UUID in the 8-4-4-4-12 form (bare or in quotes, no spaces), and
    the line is one whole record: every other field is empty, unquoted without a quote at
    its start, or quoted and closed right before the next comma or the end of the line; no
    CR but the one of a CRLF, no NUL. Anything else (the header, comments, blank lines,
    quoted newlines, odd spacing) goes through the csv module. The one group is the id with
    its opening quote if it has one (the look-behinds pair the quotes).
    """
    hex_ = "[0-9a-fA-F]"
    uuid_text = f"{hex_}{{8}}-{hex_}{{4}}-{hex_}{{4}}-{hex_}{{4}}-{hex_}{{12}}"
    plain = '[^"\\r\\n\\x00,][^\\r\\n\\x00,]*+'
    quoted = '"[^"\\r\\n\\x00]*+(?:""[^"\\r\\n\\x00]*+)*+"'
    field = f"(?:{quoted}|{plain}|)"
    quoted_id = '(?<="[-0-9a-fA-F]{36})"'
    bare_id = '(?<!"[-0-9a-fA-F]{36})'
    pattern = f'(?m)^("?{uuid_text})(?:{quoted_id}|{bare_id})(?:,{field})*+\\r?\\n'
    return re.compile(pattern.encode("ascii"))


_DONE_LINE = _done_line_pattern()


class _Lines:
    """The physical lines of the input, read in large blocks of bytes.

    Lines end as a text file opened with ``newline=""`` ends them for the csv module (at
    ``\n``, ``\r\n`` or a lone ``\r``); a BOM at the start is dropped; each line is decoded
    with ``surrogateescape``, so a bad byte becomes a marker the row check reports. Reading
    the bytes also lets ``skip_done`` pass over a resume's done lines in bulk.
    """

    def __init__(
        self, file: BinaryIO, block: int = _SMALL_BLOCK, *, offset: int = 0, lines: int = 0
    ) -> None:
        """Read ``file`` from byte ``offset``, the start of line ``lines + 1``."""
        self._file = file
        self._block = block
        self._buf = b""
        self._pos = 0  # where the unread lines of _buf start
        self._base = offset  # the file offset of _buf[0]
        if offset:
            file.seek(offset)
        self._eof = False
        self._first = not offset  # a BOM counts only at the very start
        self._window = 0  # set by skip_done
        #: Lines consumed so far.
        self.count = lines

    @property
    def offset(self) -> int:
        """The file offset of the first byte not consumed yet."""
        return self._base + self._pos

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        end = self._line_end()
        if end is None:
            raise StopIteration
        line = self._buf[self._pos : end]
        self._pos = end
        self.count += 1
        return line.decode("utf-8", "surrogateescape")

    def _more(self) -> bool:
        """Append the next block to the unread bytes; False at the end of the file."""
        if self._eof:
            return False
        # At least as much as is unread: a line of many blocks is copied a few times only.
        block = self._file.read(max(self._block, len(self._buf) - self._pos))
        if self._first:
            self._first = False
            if block.startswith(_BOM):
                block = block[len(_BOM) :]
                self._base = len(_BOM)
        if not block:
            self._eof = True
            return False
        self._base += self._pos
        self._buf = self._buf[self._pos :] + block
        self._pos = 0
        return True

    def _line_end(self) -> int | None:
        """Where the next line ends (past its line break); None at the end of the file."""
        while True:
            buf, pos = self._buf, self._pos
            newline = buf.find(b"\n", pos)
            cr = buf.find(b"\r", pos, len(buf) if newline < 0 else newline)
            if cr >= 0:
                if cr + 1 == newline:
                    return newline + 1
                # A CR as the last byte read may be the first half of a CRLF.
                if cr + 1 < len(buf) or self._eof:
                    return cr + 1
            elif newline >= 0:
                return newline + 1
            elif self._eof:
                return len(buf) if pos < len(buf) else None
            self._more()

    def skip_done(self, done: UuidSet, max_window: int) -> int:
        """Consume the lines right ahead that ``_DONE_LINE`` accepts and whose id is in
        ``done``; returns how many. Stops before the first other line (the caller parses it).

        A window of lines is checked at once: ``findall`` gives their ids (as many as there
        are lines when every line qualifies), the ids are decoded together and looked up
        together (``UuidSet.leading_members``), all in C. No window is longer than
        ``max_window`` bytes: with the csv module's field size limit there, no field of a
        window is one the csv module would refuse.
        """
        pattern = _DONE_LINE
        skipped = 0
        self._window = max(1, min(self._window or _MIN_WINDOW, max_window))
        while True:
            if len(self._buf) - self._pos < self._window and self._more():
                continue
            buf, pos = self._buf, self._pos
            end = buf.rfind(b"\n", pos, pos + self._window) + 1
            if end <= pos:  # no whole line ahead within the window
                return skipped
            ids = pattern.findall(buf, pos, end)
            lines = buf.count(b"\n", pos, end)
            if len(ids) != lines:  # some line does not qualify: take those before it
                end = self._qualifying_end(pattern, pos, end)
                ids = pattern.findall(buf, pos, end)
            hexes = b"".join(ids).translate(None, b'-"')
            members = done.leading_members(binascii.unhexlify(hexes))
            if members < len(ids) or len(ids) < lines:
                self._window = min(_MIN_WINDOW, max_window)
                self._advance(members)
                return skipped + members
            self._pos = end
            self.count += lines
            skipped += lines
            self._window = min(self._window * 4, max_window)

    def _qualifying_end(self, pattern: re.Pattern[bytes], pos: int, end: int) -> int:
        """The end of the run of lines from ``pos`` that ``pattern`` accepts."""
        while pos < end and (match := pattern.match(self._buf, pos, end)) is not None:
            pos = match.end()
        return pos

    def _advance(self, lines: int) -> None:
        """Consume ``lines`` whole lines (each ends with a newline)."""
        for _ in range(lines):
            self._pos = self._buf.index(b"\n", self._pos) + 1
        self.count += lines


class InputPosition(NamedTuple):
    """A point in the input between two records, and the reader's counts up to it."""

    #: Bytes before it (a BOM included).
    offset: int = 0
    #: Physical lines before it.
    lines: int = 0
    #: Records before it whose artist is done (yielded ones, once they are committed).
    done: int = 0
    bad_lines: int = 0
    #: Blank, comment and header lines before it.
    skipped_lines: int = 0


class ArtistReader:
    """Iterate the artists of an input CSV lazily, one record at a time.

    The file is opened by the constructor, so a missing or unreadable file raises
    ``InputFileError`` before any work starts. Memory stays flat apart from the set of
    ids seen so far (a ``UuidSet``: ~16-53 bytes per id).

    ``skip_ids`` holds canonical ids that are already done: their rows are not yielded.
    ``start`` (a ``position()`` of an earlier reader of the same bytes) begins there: the
    lines before it are not read, and their counts carry over.

    Counters, updated while iterating:

    * ``rows``: artists yielded;
    * ``skipped_lines``: blank lines, comment lines and the header row;
    * ``error_lines``: bad rows (each logged with its line number);
    * ``duplicate_lines``: rows repeating an id seen earlier in the file;
    * ``already_done``: rows whose id is in ``skip_ids``;
    * ``lines_read``: physical lines consumed so far;
    * ``exhausted``: True once the end of the file was reached.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        skip_ids: Container[str] | None = None,
        start: InputPosition | None = None,
    ):
        self.path = os.fspath(path)
        start = start or InputPosition()
        self.rows = 0
        self.skipped_lines = start.skipped_lines
        self.error_lines = start.bad_lines
        self.duplicate_lines = 0
        self.already_done = start.done
        self.lines_read = start.lines
        self.exhausted = False
        self._skip_ids = skip_ids
        self._seen = UuidSet()
        # Until the first non-blank, non-comment row.
        self._header_possible = not (start.done or start.bad_lines)
        self._problems = 0  # per-line warnings issued, for flood control
        self._file = _open_input(self.path)
        # A resume's done lines are passed over in bulk when the done ids are a UuidSet.
        self._done_fast = skip_ids if isinstance(skip_ids, UuidSet) and len(skip_ids) else None
        block = _BLOCK if self._done_fast is not None else _SMALL_BLOCK
        self._lines = _Lines(self._file, block, offset=start.offset, lines=start.lines)
        self._backoff = 0  # records to leave to the csv module after a poor fast-path try
        self._wait = 0  # of which still to go
        self._records = self._iterate()

    # -- iteration -------------------------------------------------------------------

    def __iter__(self) -> Iterator[ArtistData]:
        return self

    def __next__(self) -> ArtistData:
        return next(self._records)

    def _iterate(self) -> Generator[ArtistData, None, None]:
        """Yield the usable artists; closes the file when the end is reached."""
        done = self._skip_ids if self._skip_ids is not None else ()
        try:
            for line, fields in self._csv_records():
                # A resume reads millions of done rows: they are recognised by their id
                # alone, before any other check, and never enter the duplicate set.
                if fields and fields[0].strip() in done:
                    self.already_done += 1
                    continue
                artist = self._handle(fields, line)
                if artist is not None:
                    self.rows += 1
                    yield artist
            self.exhausted = True
        finally:
            self._file.close()

    def _csv_records(self) -> Iterator[tuple[int, list[str]]]:
        """Yield ``(first physical line, fields)`` for each CSV record.

        A record can span lines (newlines inside quotes), so its first line is one past
        the last line of the previous record. Malformed CSV is reported and skipped.
        """
        reader = csv.reader(self._lines)
        while True:
            try:
                self._skip_done_lines()
            except OSError as exc:
                raise self._read_error(exc) from exc
            start = self.lines_read + 1
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                self._bad_row(start, f"malformed CSV ({exc}; an unbalanced quote?)")
                if self._lines.count < start:  # nothing consumed: cannot make progress
                    return
                self.lines_read = self._lines.count
                continue
            except OSError as exc:
                raise self._read_error(exc) from exc
            self.lines_read = self._lines.count
            yield start, fields

    def _read_error(self, exc: OSError) -> InputFileError:
        return InputFileError(
            f"Input file '{self.path}' could not be read after line "
            f"{self.lines_read} ({exc.strerror or exc}); check the disk and try again."
        )

    def _skip_done_lines(self) -> None:
        """Pass over the done lines ahead without the csv module (see ``_Lines.skip_done``);
        they count exactly as the csv path would count them: done, and one line each."""
        if self._done_fast is None:
            return
        if self._wait:
            self._wait -= 1
            return
        window = min(_BLOCK, csv.field_size_limit())
        skipped = self._lines.skip_done(self._done_fast, window)
        self.already_done += skipped
        self.lines_read = self._lines.count
        # A try pays off over many lines; where done lines are few or alternate with others
        # (the new artists, a retry of many failures) the csv module alone is cheaper, so
        # each poor try waits twice as many records before the next (at most _MAX_BACKOFF).
        if skipped >= _WORTHWHILE:
            self._backoff = 0
        else:
            self._backoff = self._wait = min(self._backoff * 2 + 1, _MAX_BACKOFF)

    # -- one record ------------------------------------------------------------------

    def _handle(self, fields: list[str], line: int) -> ArtistData | None:
        """Classify one record, update the counters and return it if it is to be yielded."""
        if self._is_skippable(fields):
            self.skipped_lines += 1
            return None
        try:
            artist = _parse_fields(fields)
        except _BadRow as exc:
            self._bad_row(line, str(exc))
            return None
        if self._skip_ids is not None and artist.artist_id in self._skip_ids:
            self.already_done += 1  # done, written in another case or form
            return None
        if not self._seen.add(artist.artist_id):
            self.duplicate_lines += 1
            self._warn(
                "%s line %d: artist_id %s already appeared earlier in the file; processed once",
                self.path,
                line,
                artist.artist_id,
            )
            return None
        return artist

    def _is_skippable(self, fields: list[str]) -> bool:
        """True for blank lines, ``#`` comments and the header row."""
        first = fields[0].strip() if fields else ""
        if first.startswith("#") or not any(field.strip() for field in fields):
            return True
        header_possible, self._header_possible = self._header_possible, False
        return header_possible and first.lower() in HEADER_NAMES

    # -- reporting -------------------------------------------------------------------

    def _bad_row(self, line: int, reason: str) -> None:
        """Count and report a row that is skipped because it is unusable."""
        self.error_lines += 1
        self._warn("%s line %d: %s; row skipped", self.path, line, reason)

    def _warn(self, message: str, *args: object) -> None:
        """Log a per-line problem, at WARNING only for the first ``MAX_LINE_WARNINGS``."""
        self._problems += 1
        if self._problems <= MAX_LINE_WARNINGS:
            logger.warning(message, *args)
            return
        if self._problems == MAX_LINE_WARNINGS + 1:
            logger.warning(
                "%s: more than %d problem lines; further problems are counted but only "
                "logged at DEBUG (use --verbose to see them)",
                self.path,
                MAX_LINE_WARNINGS,
            )
        logger.debug(message, *args)

    def position(self) -> InputPosition:
        """Where the reader is: a reader started there reads what this one has not read and
        ends with the same counts. Records whose id was done or repeated count as done: a
        reader started there knows them only as lines it does not read again."""
        return InputPosition(
            self._lines.offset,
            self.lines_read,
            self.rows + self.already_done + self.duplicate_lines,
            self.error_lines,
            self.skipped_lines,
        )

    # -- resource handling -----------------------------------------------------------

    def close(self) -> None:
        """Close the file; iterating afterwards yields nothing more."""
        self._records.close()  # runs the generator's finally (if started)
        self._file.close()

    def __enter__(self) -> ArtistReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


#: A newline that starts a line the reader skips: a ``#`` comment or a blank line. Only the
#: newline itself is consumed, so runs of blank lines count one by one.
_SKIPPED_LINE_START = re.compile(rb"\n(?=#|\r?\n)")


class LineCount(NamedTuple):
    """The lines of an input file, counted without parsing it."""

    #: Physical lines (a last line without a newline counts).
    lines: int
    #: Blank and ``#`` comment lines among them (the reader skips them). A line of spaces
    #: only, or a ``#`` that starts a line inside a quoted field, is not told apart: the
    #: figure feeds the progress bar's total, never a decision.
    skipped: int


def count_input_lines(path: str | os.PathLike[str], offset: int = 0) -> LineCount | None:
    """Count the file at ``path`` from byte ``offset`` (the start of a line) in one pass of
    large blocks (about 0.03 s per million lines); None when it is not a regular file: a
    pipe can be read only once."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return None
        lines = skipped = 0
        # A virtual newline before the first line; then the last two bytes read, held back
        # because a newline there is judged by the bytes that follow it.
        tail = b"\n"
        with open(path, "rb") as handle:
            handle.seek(offset)
            while block := handle.read(1 << 20):
                lines += block.count(b"\n")
                data = tail + block
                tail = data[-2:]
                skipped += len(_SKIPPED_LINE_START.findall(data))
                skipped -= len(_SKIPPED_LINE_START.findall(tail))
        skipped += len(_SKIPPED_LINE_START.findall(tail))
    except OSError:
        return None
    return LineCount(lines + (not tail.endswith(b"\n")), skipped)


def count_lines(path: str | os.PathLike[str]) -> int | None:
    """The physical lines of the file at ``path`` (None when it is not a regular file)."""
    counted = count_input_lines(path)
    return None if counted is None else counted.lines


def has_header(path: str | os.PathLike[str]) -> bool:
    """Whether the file's first line looks like the header row (first field ``artist_id``,
    ``id`` or ``uuid``)."""
    with open(path, "rb") as handle:
        first = handle.readline()
    head = first.lstrip(b"\xef\xbb\xbf").split(b",", 1)[0].strip().lower()
    return head.decode("utf-8", "replace") in HEADER_NAMES


def estimate_rows(path: str | os.PathLike[str]) -> int:
    """About how many artist rows the file holds, without parsing it.

    Counts lines (blank and comment lines included) and drops a header: an estimate for
    progress display ("about N to go"), never used for decisions.
    """
    lines = count_lines(path)
    if lines is None:
        return 0
    return max(lines - has_header(path), 0)
