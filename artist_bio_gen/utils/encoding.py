"""Telling a CSV that is not UTF-8 at all from a UTF-8 CSV with a bad line.

Spreadsheet programs save "Unicode text" as UTF-16, and older tools write Latin-1 or
Windows-1252. Read as UTF-8, such a file yields nothing but bad rows (or nothing at all), so
it is refused up front with one sentence saying how to fix it. A UTF-8 file with one
stray Latin-1 line is different: that line is skipped with a warning and the rest is read.

Only the first ``SAMPLE_BYTES`` are looked at, so the check costs nothing on a big file.
"""

from __future__ import annotations

from dataclasses import dataclass

SAMPLE_BYTES = 64 * 1024

# Longest first: the UTF-32 little-endian mark starts with the UTF-16 one.
_BYTE_ORDER_MARKS = (
    (b"\x00\x00\xfe\xff", "UTF-32 (big-endian byte-order mark)"),
    (b"\xff\xfe\x00\x00", "UTF-32 (little-endian byte-order mark)"),
    (b"\xfe\xff", "UTF-16 (big-endian byte-order mark)"),
    (b"\xff\xfe", "UTF-16 (little-endian byte-order mark)"),
)


@dataclass(frozen=True)
class EncodingProblem:
    """Why a file is not UTF-8 text: what it looks like and the first offending byte."""

    looks_like: str
    offset: int


def encoding_problem(sample: bytes, *, complete: bool) -> EncodingProblem | None:
    """The problem with ``sample`` (a file's first bytes), or None when it reads as UTF-8.

    ``complete``: the sample is the whole file (else its last, possibly cut, line is
    ignored).
    """
    for mark, name in _BYTE_ORDER_MARKS:
        if sample.startswith(mark):
            return EncodingProblem(name, 0)
    nul = sample.find(b"\x00")
    if nul >= 0:
        # Text in UTF-8 never holds a NUL byte; UTF-16 without a mark holds one per ASCII
        # character.
        return EncodingProblem("UTF-16 without a byte-order mark (it holds NUL bytes)", nul)
    return _single_byte_encoding(sample, complete)


def _single_byte_encoding(sample: bytes, complete: bool) -> EncodingProblem | None:
    """Lines that are not UTF-8 while no line is UTF-8 beyond ASCII: a whole file in
    Latin-1, Windows-1252 or similar, not one stray line."""
    lines = sample.split(b"\n")
    if not complete:
        lines = lines[:-1]
    bad, good, first_bad, offset = 0, 0, -1, 0
    for line in lines:
        if not line.isascii():
            try:
                line.decode("utf-8")
                good += 1
            except UnicodeDecodeError as exc:
                bad += 1
                if first_bad < 0:
                    first_bad = offset + exc.start
        offset += len(line) + 1
    if bad >= 2 and good == 0:
        return EncodingProblem("a single-byte encoding such as Latin-1 or Windows-1252", first_bad)
    return None
