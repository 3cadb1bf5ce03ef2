"""Clean generated biographies: drop the citation tails that web-search answers append.

Everything here is a hand-written scanner rather than one big regular expression, so that the
cost stays linear in the input length even on long, hostile or malformed text (nested quantifiers
over "links separated by anything" are the classic catastrophic-backtracking trap).

The API client (``api/client.py``) is the only caller in the tool, yet this stays in ``utils``:
it is pure text processing that needs nothing from the API layer, and
``artist_bio_gen.utils.text.strip_trailing_citations`` is a public import path that scripts
written for the legacy tool use. Moving it up into ``api/`` would leave this module
re-exporting from a higher layer.
"""

from __future__ import annotations

import logging
from enum import Enum

logger = logging.getLogger(__name__)

# Words that introduce a citation section. Plural forms come first so "Sources" is not read as
# "Source" followed by a stray "s".
_HEADING_WORDS = ("sources", "source", "references", "reference", "citations", "citation")
# Markdown decoration that may precede a heading word: "### References", "**Sources", "> Sources".
_HEADING_LEAD = "#*_> \t"
# Decoration, colons and dashes that may follow it: "Sources:", "**Sources:**", "Sources —".
_HEADING_TRAIL = "*_:\uff1a-\u2013\u2014 \t"
_URL_PREFIXES = ("https://", "http://", "www.")
# Punctuation allowed between links ("a, b", "a; b", "a | b", "a · b", "<a>") besides whitespace.
_SEPARATORS = frozenset(",;|\u00b7\u2022-\u2013\u2014/<>.:")
# Characters that end a bare URL token: list punctuation and the closing half of "<url>".
_URL_STOP = frozenset(',;|<>"')
# Sentence punctuation that sticks to the end of a URL without being part of it.
_URL_TRAILING_PUNCT = ".:!?'\""
# What may end the title in a "Title - https://..." or "Title: https://..." source line.
_TITLE_SEPARATORS = frozenset("-\u2013\u2014:|.,;")
_BULLETS = frozenset("-*+\u2022")
# Nested parenthesised groups of links are rare; a small cap keeps the recursion (and the repeated
# scanning it implies) bounded whatever the input.
_MAX_NESTING = 3


class _LineKind(Enum):
    """How a single line takes part in a trailing citation block."""

    BLANK = "blank"
    LINK = "link"
    HEADING = "heading"
    OTHER = "other"


def strip_trailing_citations(text: str) -> str:
    """Return ``text`` without the citation block or link-only parenthetical at its end.

    Removes, repeatedly until nothing changes, a final "Sources:" / "References:" / "Citations:"
    section made only of link lines and a final parenthetical made only of links, then trailing
    whitespace. Leading text, and links or the word "Sources" inside the prose, are untouched.
    The result is a fixed point, so applying the function twice changes nothing more. Returns ""
    when the whole text was a citation block.
    """
    try:
        cleaned = _strip(text)
    except Exception:
        # A clean-up step must never cost us a paid-for biography: keep the text as generated.
        logger.exception("Could not strip trailing citations; keeping the text unchanged")
        return text.rstrip()
    removed = len(text.rstrip()) - len(cleaned)
    if removed:
        logger.debug("Stripped %d characters of trailing citations", removed)
    return cleaned


def normalize_bio(text: str | None) -> str:
    """Return the biography ready to store: citations stripped, ``None`` read as ``""``.

    The API may hand back no ``output_text`` at all; callers treat the empty result as a failure,
    so mapping ``None`` to ``""`` gives them one case to check instead of two.
    """
    if text is None:
        return ""
    return strip_trailing_citations(text)


def _strip(text: str) -> str:
    """Apply the two removal rules until neither matches; work on an end index, slice once.

    The block rule goes first, so that a source line such as "Title (https://...)" is removed
    with its block rather than losing only its parenthesis. Moving an index instead of
    re-slicing keeps many small removals (dozens of parentheticals) linear in the text length.
    """
    end = _rstrip_end(text, len(text))
    # After a failed block scan, the block rule keeps failing while the end stays inside or below
    # the line that stopped the scan: the parenthesis rule only shortens the last line, and a
    # shortened line never turns into a heading, nor a prose line into a link line. Skipping
    # those rescans keeps a long run of link lines from being rescanned once per parenthesis.
    block_fails_after: int | None = None
    while end > 0:
        trusted = block_fails_after is not None and end > block_fails_after
        if not trusted:
            new_end, block_fails_after = _strip_block(text, end)
            if new_end != end:
                end = new_end
                continue
        new_end = _strip_parenthetical(text, end)
        if new_end != end:
            end = new_end
            continue
        if not trusted:
            break
        # Confirm with a real scan before stopping, so the result is a true fixed point even if
        # the reasoning above missed a case; this costs one extra scan, not one per step.
        block_fails_after = None
    return text[:end]


def _rstrip_end(text: str, end: int) -> int:
    """Return the end index of ``text[:end]`` once trailing whitespace is dropped."""
    while end > 0 and text[end - 1].isspace():
        end -= 1
    return end


# --- parenthesis rule: a final parenthetical that holds only links ------------------------------


def _strip_parenthetical(text: str, end: int) -> int:
    """Return the new end if ``text[:end]`` ends with a link-only "( ... )", else ``end``."""
    if text[end - 1] != ")":
        return end
    open_idx = _matching_open(text, end - 1)
    # "[title](https://...)" ends with a parenthesis too, but that is a link in the prose.
    if open_idx < 0 or (open_idx > 0 and text[open_idx - 1] == "]"):
        return end
    # Depth 1: the same nesting budget as a parenthesised group inside a source line.
    if not _is_link_only(text[open_idx + 1 : end - 1], depth=1):
        return end
    return _rstrip_end(text, open_idx)


def _matching_open(text: str, close_idx: int) -> int:
    """Index of the "(" matching the ")" at ``close_idx``, searching back within one line.

    Stopping at the line break bounds a failed search by the length of the last line.
    """
    depth = 0
    for idx in range(close_idx, -1, -1):
        char = text[idx]
        if char == ")":
            depth += 1
        elif char == "(":
            depth -= 1
            if depth == 0:
                return idx
        elif char == "\n":
            return -1
    return -1


# --- block rule: a final "Sources:" section of link lines ---------------------------------------


def _strip_block(text: str, end: int) -> tuple[int, int | None]:
    """Strip a final heading + link lines from ``text[:end]``.

    Lines are examined bottom-up; blank and link lines are skipped until a heading (success) or
    any other line (failure) is met. Returns the new end and, on failure, the start of the line
    that stopped the scan (0 if the scan reached the top), else ``None``.
    """
    line_end = end
    while line_end > 0:
        start = text.rfind("\n", 0, line_end) + 1
        kind = _classify_line(text[start:line_end])
        if kind is _LineKind.HEADING:
            return _rstrip_end(text, _swallow_rule_above(text, start)), None
        if kind is _LineKind.OTHER:
            return end, start
        line_end = start - 1  # step over the newline onto the previous line
    return end, 0


def _swallow_rule_above(text: str, start: int) -> int:
    """Extend the removal over a "---" rule that separates the prose from the heading.

    Models often draw a horizontal rule before "Sources:"; left behind it would dangle at the end.
    """
    rule_end = _rstrip_end(text, start)
    rule_start = text.rfind("\n", 0, rule_end) + 1
    if _is_horizontal_rule(text[rule_start:rule_end].strip()):
        return rule_start
    return start


def _is_horizontal_rule(line: str) -> bool:
    """True for markdown rules such as "---", "***", "___" or "- - -"."""
    compact = line.replace(" ", "")
    return len(compact) >= 3 and compact[0] in "-*_" and compact == compact[0] * len(compact)


def _classify_line(line: str) -> _LineKind:
    """Classify one line (without its newline; a trailing CR is whitespace) for rule 2."""
    stripped = line.strip()
    if not stripped:
        return _LineKind.BLANK
    remainder = _heading_remainder(stripped)
    if remainder is not None and (not remainder or _is_link_only(remainder)):
        return _LineKind.HEADING
    body = _strip_bullet(stripped)
    if not body:
        return _LineKind.BLANK  # a bullet with nothing after it carries no prose
    if _is_link_only(body) or _is_titled_link(body):
        return _LineKind.LINK
    return _LineKind.OTHER


def _heading_remainder(line: str) -> str | None:
    """For a heading line, the text after the heading word and its decoration; else ``None``.

    "Sources close to the band" yields "close to the band", which is not link-only, so the
    caller keeps such a sentence; "Sources: https://a.com" yields the link.
    """
    head = line.lstrip(_HEADING_LEAD)
    for word in _HEADING_WORDS:
        if head[: len(word)].lower() != word:
            continue
        rest = head[len(word) :]
        if rest[:1].isalnum():
            return None  # "Sourced", "Referenced": a different word, not a heading
        return rest.lstrip(_HEADING_TRAIL)
    return None


def _strip_bullet(line: str) -> str:
    """Drop a list marker ("-", "*", "•", "+", "1.", "1)", "[1]") from a stripped line."""
    if line[0] in _BULLETS and (len(line) == 1 or line[1].isspace()):
        return line[1:].lstrip()
    digits = len(line) - len(line.lstrip("0123456789"))
    if 0 < digits <= 3 and line[digits : digits + 1] in (".", ")"):
        rest = line[digits + 1 :]
        if not rest or rest[0].isspace():
            return rest.lstrip()
    if line.startswith("["):
        close = line.find("]", 1, 6)
        label = line[1:close]
        rest = line[close + 1 :]
        if close > 1 and label.isascii() and label.isdigit() and (not rest or rest[0].isspace()):
            return rest.lstrip()
    return line


def _is_titled_link(body: str) -> bool:
    """True for source lines such as "Title - https://...", "Title: [x](https://...)".

    The title may be any words, but it must end with a separator or be followed by a bracketed
    link ("Title (https://...)"), so that prose which merely ends with a URL does not qualify.
    """
    start = _first_link_start(body)
    if start <= 0:
        return False
    prefix = body[:start].rstrip()
    if not prefix:
        return False
    if prefix[-1] not in _TITLE_SEPARATORS and body[start] not in "([<":
        return False
    return _is_link_only(body[start:])


def _first_link_start(body: str) -> int:
    """Index where the first link of ``body`` begins, including its "[title](" or "(" / "<"."""
    hits = [idx for idx in (body.find(prefix) for prefix in _URL_PREFIXES) if idx >= 0]
    if not hits:
        return -1
    url = min(hits)
    start = url
    bracket = body.rfind("[", 0, url)
    # The URL is a markdown target (or sits inside a markdown title) when the nearest "[" before
    # it is either still open or closed by the "](" right in front of the URL.
    if bracket >= 0 and body.rfind("]", bracket, url) in (-1, url - 2):
        start = bracket
    if start > 0 and body[start - 1] in "(<":
        start -= 1
    return start


# --- the shared grammar: "only links and separators" -----------------------------------------


def _is_link_only(text: str, depth: int = 0) -> bool:
    """True if ``text`` holds at least one link and otherwise only separators.

    Links are bare URLs ("https://...", "www..."), markdown links "[any title](url)" and
    parenthesised groups that are themselves link-only. Any other word makes it False; the scan
    stops at the first such word, so a failed check is cheap.
    """
    found = False
    idx = 0
    while idx < len(text):
        char = text[idx]
        if char.isspace() or char in _SEPARATORS:
            idx += 1
            continue
        idx = _link_part_end(text, idx, depth)
        if idx < 0:
            return False
        found = True
    return found


def _link_part_end(text: str, idx: int, depth: int) -> int:
    """End index of the link starting at ``idx``, or -1 if no link starts there."""
    if text[idx] == "[":
        return _markdown_link_end(text, idx)
    if text[idx] == "(":
        return _paren_group_end(text, idx, depth)
    return _url_token_end(text, idx)


def _markdown_link_end(text: str, idx: int) -> int:
    """End index of "[title](url ...)" starting at ``idx``, or -1."""
    title_end = text.find("]", idx + 1)
    if title_end < 0 or text[title_end + 1 : title_end + 2] != "(":
        return -1
    if "[" in text[idx + 1 : title_end]:
        return -1  # nested brackets are not a plain link title
    target_end = _matching_close(text, title_end + 1)
    if target_end < 0:
        return -1
    # The target may carry a quoted title after the URL: [x](https://a.com "A").
    target = text[title_end + 2 : target_end].split(maxsplit=1)
    if not target or not _is_url(target[0].strip("<>")):
        return -1
    return target_end + 1


def _paren_group_end(text: str, idx: int, depth: int) -> int:
    """End index of a link-only "( ... )" group starting at ``idx``, or -1."""
    if depth >= _MAX_NESTING:
        return -1
    close = _matching_close(text, idx)
    if close < 0 or not _is_link_only(text[idx + 1 : close], depth + 1):
        return -1
    return close + 1


def _url_token_end(text: str, idx: int) -> int:
    """End index of the bare URL starting at ``idx``, or -1 if the token there is not a URL."""
    end = idx
    while end < len(text) and not text[end].isspace() and text[end] not in _URL_STOP:
        end += 1
    return end if _is_url(text[idx:end]) else -1


def _matching_close(text: str, open_idx: int) -> int:
    """Index of the ")" matching the "(" at ``open_idx``, or -1."""
    depth = 0
    for idx in range(open_idx, len(text)):
        char = text[idx]
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0:
                return idx
    return -1


def _is_url(token: str) -> bool:
    """True for "https://host...", "http://host..." or "www.host..." (sentence punctuation ok)."""
    token = token.rstrip(_URL_TRAILING_PUNCT)
    for prefix in _URL_PREFIXES:
        if token[: len(prefix)].lower() == prefix:
            return token[len(prefix) : len(prefix) + 1].isalnum()
    return False
