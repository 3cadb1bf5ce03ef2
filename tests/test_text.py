"""Tests for artist_bio_gen.utils.text: stripping the citation tails of generated biographies."""

from __future__ import annotations

import random
import time

import pytest

from artist_bio_gen.utils.text import normalize_bio, strip_trailing_citations

BIO = "Ada Lovelace Band formed in Leeds in 1998.\n\nTheir debut album came out in 2001."

# (input, expected output) pairs where a trailing citation tail must go.
STRIPPED = {
    "sources-dash-bullets": (
        BIO + "\n\nSources:\n- https://pitchfork.com/x\n- https://en.wikipedia.org/wiki/Y",
        BIO,
    ),
    "bold-heading-markdown-links": (
        BIO + "\n\n**Sources:**\n* [Pitchfork](https://pitchfork.com/x)\n* [Wiki](https://w.org/y)",
        BIO,
    ),
    "bold-heading-colon-outside": (BIO + "\n\n**Sources**:\n- https://a.com", BIO),
    "atx-heading-numbered-blank-lines": (
        BIO + "\n\n### References\n\n1. [A review](https://a.com/r)\n\n2. https://b.org/\n",
        BIO,
    ),
    "citations-bullet-dots": (
        BIO + "\n\nCitations:\n\u2022 https://a.com\n\u2022 https://b.org",
        BIO,
    ),
    "uppercase-heading": (BIO + "\n\nSOURCES:\nhttps://a.com\nhttps://b.org", BIO),
    "lowercase-heading-no-colon": (BIO + "\n\nreferences\n- https://a.com", BIO),
    "singular-heading": (BIO + "\n\nSource: https://a.com/story", BIO),
    "title-dash-url-lines": (
        BIO + "\n\nReferences:\n- Pitchfork review - https://pitchfork.com/x\n"
        "- Wikipedia \u2013 Ada Lovelace Band: https://en.wikipedia.org/wiki/ALB",
        BIO,
    ),
    "title-paren-url-lines": (
        BIO + "\n\nSources:\n1) The Guardian (https://theguardian.com/a)",
        BIO,
    ),
    "footnote-numbered-lines": (BIO + "\n\nReferences:\n[1] https://a.com\n[2] https://b.org", BIO),
    "autolinks": (BIO + "\n\nSources:\n- <https://a.com>", BIO),
    "heading-with-inline-links": (
        BIO + "\n\nSources: [pitchfork.com](https://pitchfork.com/x), [wiki](https://w.org/y)",
        BIO,
    ),
    "rule-before-heading": (BIO + "\n\n---\n\n**Sources:**\n- https://a.com", BIO),
    "trailing-whitespace-after-block": (BIO + "\n\nSources:\n- https://a.com  \n\n \t\n", BIO),
    "parenthetical-markdown-links": (
        BIO
        + " ([pitchfork.com](https://pitchfork.com/x), "
        + "[wikipedia.org](https://en.wikipedia.org/wiki/Y))",
        BIO,
    ),
    "parenthetical-bare-urls": (BIO + " (https://a.com; https://b.org)", BIO),
    "parenthetical-url-with-parens": (
        BIO + " ([Foo (band)](https://en.wikipedia.org/wiki/Foo_(band)))",
        BIO,
    ),
    "parenthetical-no-space": (BIO + "([a.com](https://a.com))", BIO),
    "parenthetical-on-own-line": (BIO + "\n\n([a.com](https://a.com))\n", BIO),
    "two-parentheticals": (BIO + " (https://a.com) ([b](https://b.org))", BIO),
    "parenthetical-then-block": (
        BIO + " ([a](https://a.com))\n\nSources:\n- [a](https://a.com)",
        BIO,
    ),
    "block-then-parenthetical": (BIO + "\n\nSources:\n- https://a.com\n(https://b.org)", BIO),
    "two-blocks": (BIO + "\n\nSources:\n- https://a.com\n\nReferences:\n- https://b.org", BIO),
    "only-block": ("Sources:\n- https://a.com\n- https://b.org\n", ""),
    "only-parenthetical": ("([a.com](https://a.com))", ""),
    "crlf-block": (
        "Line one.\r\nLine two.\r\n\r\nSources:\r\n- https://a.com\r\n- https://b.org\r\n",
        "Line one.\r\nLine two.",
    ),
    "crlf-parenthetical": ("Line one.\r\nLine two. (https://a.com)\r\n", "Line one.\r\nLine two."),
    "non-ascii": (
        "Bj\u00f6rk Gu\u00f0mundsd\u00f3ttir \u2014 \u6771\u4eac\u3067\u516c\u6f14\u3002 "
        "([\u00e9t\u00e9.fr](https://\u00e9t\u00e9.fr/a))\n\nSources\uff1a\n- https://a.com",
        "Bj\u00f6rk Gu\u00f0mundsd\u00f3ttir \u2014 \u6771\u4eac\u3067\u516c\u6f14\u3002",
    ),
    "leading-whitespace-kept": ("\n  " + BIO + "\n\nSources:\n- https://a.com", "\n  " + BIO),
}

# Inputs that must come back unchanged apart from trailing whitespace.
KEPT = {
    "plain": BIO,
    "middle-links": (
        "Listen on [Bandcamp](https://alb.bandcamp.com) (https://alb.bandcamp.com) before the "
        "tour.\nSee https://alb.example.com for dates. The album came out in 2001."
    ),
    "sources-in-sentence": BIO + "\n\nSources close to the band said a new album is finished.",
    "sources-colon-in-sentence": BIO + "\nSources: the band's own website and press kit.",
    "parenthetical-with-words": BIO + " (see https://a.com)",
    "parenthetical-with-words-after-links": BIO + " ([Pitchfork](https://p.com) said so)",
    "parenthetical-not-at-end": BIO + " ([a](https://a.com)) They toured Japan.",
    "parenthetical-then-period": BIO + " ([a](https://a.com)).",
    "ends-with-markdown-link": BIO + " Stream it on [Bandcamp](https://alb.bandcamp.com)",
    "ordinary-parenthetical": BIO + " (born 1970)",
    "aka-parenthetical": "DJ Foo (a.k.a. Foo Fighter)",
    "citation-markers": BIO + " ([1], [2])",
    "references-heading-then-prose": BIO + "\n\nReferences:\nTheir influences include Can.",
    "block-followed-by-prose": BIO + "\n\nSources:\n- https://a.com\nThey split in 2009.",
    "url-line-without-heading": BIO + "\nhttps://a.com",
    "prose-ending-in-url-under-heading": BIO + "\n\nSources:\nWe also read https://a.com",
    "trailing-rule-without-heading": BIO + "\n\n---",
    "empty": "",
    "non-ascii-prose": "Sébastien Tellier \u2014 « Divine » (2008), 東京 (ライブ)",
    "trailing-whitespace": BIO + " \n\t\r\n",
}


@pytest.mark.parametrize(("text", "expected"), STRIPPED.values(), ids=STRIPPED.keys())
def test_trailing_citations_are_stripped(text: str, expected: str) -> None:
    assert strip_trailing_citations(text) == expected


@pytest.mark.parametrize("text", KEPT.values(), ids=KEPT.keys())
def test_text_without_citation_tail_is_kept(text: str) -> None:
    assert strip_trailing_citations(text) == text.rstrip()


ALL_INPUTS = [text for text, _ in STRIPPED.values()] + list(KEPT.values())


@pytest.mark.parametrize("text", ALL_INPUTS)
def test_idempotent(text: str) -> None:
    once = strip_trailing_citations(text)
    assert strip_trailing_citations(once) == once


@pytest.mark.parametrize("text", ["   ", "\r\n\r\n", "\t \n"])
def test_whitespace_only_becomes_empty(text: str) -> None:
    assert strip_trailing_citations(text) == ""


def test_crlf_line_endings_inside_the_bio_are_preserved() -> None:
    text = "One.\r\nTwo.\r\n\r\nSources:\r\n- https://a.com\r\n"
    assert strip_trailing_citations(text).split("\r\n") == ["One.", "Two."]


def test_normalize_bio_maps_none_to_empty() -> None:
    assert normalize_bio(None) == ""


def test_normalize_bio_strips_citations_and_trailing_whitespace() -> None:
    assert normalize_bio("  Bio. (https://a.com)\n") == "  Bio."
    assert normalize_bio("Sources:\n- https://a.com") == ""


@pytest.mark.parametrize(
    "text",
    [
        ")",
        "(",
        "()",
        ")(",
        "[](",
        "[x](",
        "[x]()",
        "(())",
        "(https://)",
        "(www.)",
        "Sources:",
        "- ",
        "1.",
        "[1]",
        "\ud800 (https://a.com)",
        "\x00\r\u2028\u0085",
        "**",
        "[" * 50 + "](https://a.com)" + ")" * 50,
    ],
)
def test_never_raises_on_odd_input(text: str) -> None:
    result = strip_trailing_citations(text)
    assert isinstance(result, str)
    assert strip_trailing_citations(result) == result


# --- randomized idempotence ----------------------------------------------------------------

PROSE_FRAGMENTS = [
    "The band formed in Leeds in 1998.",
    "Sources close to the band said the record is finished.",
    "Their second album (released in 2004) went gold.",
    "Listen on [Bandcamp](https://alb.bandcamp.com) before the tour.",
    "See https://alb.example.com for tour dates.",
    "Bj\u00f6rk once called them \u00abthe best\u00bb.",
    "They split in 2009 (briefly).",
    "Stream it on [Spotify](https://open.spotify.com/a)",
    "References to Can and Neu! run through their work.",
]

CITATION_TAILS = [
    " ([pitchfork.com](https://pitchfork.com/x))",
    " (https://a.com; https://b.org)",
    "\n\nSources:\n- https://a.com\n- [b](https://b.org)",
    "\n\n**References:**\n\n1. [Review](https://r.com/1)\n2. Wiki - https://w.org/2",
    "\n\n---\n### Citations\n\u2022 <https://c.net>",
    "\n([x](https://x.io))",
    "\n\nSource: https://s.com/story",
]


def _random_bio(rng: random.Random) -> str:
    """Compose prose from fragments; the last one never ends with a citation tail."""
    parts = [rng.choice(PROSE_FRAGMENTS) for _ in range(rng.randint(1, 6))]
    text = parts[0]
    for part in parts[1:]:
        text += rng.choice([" ", "\n", "\n\n", "\r\n"]) + part
    return text + rng.choice(["", " ", "\n", "\r\n", "\n\n  "])


def test_randomized_bios_are_kept_and_tails_are_stripped() -> None:
    rng = random.Random(20240229)
    for _ in range(500):
        bio = _random_bio(rng)
        assert strip_trailing_citations(bio) == bio.rstrip()
        tails = "".join(rng.choice(CITATION_TAILS) for _ in range(rng.randint(1, 3)))
        with_tails = bio.rstrip() + tails + rng.choice(["", "\n", "  \r\n"])
        once = strip_trailing_citations(with_tails)
        assert once == bio.rstrip(), with_tails
        assert strip_trailing_citations(once) == once


def test_randomized_fragment_soup_is_idempotent() -> None:
    # Arbitrary interleavings (tails in the middle, tails glued to prose) must still settle.
    rng = random.Random(7)
    pieces = PROSE_FRAGMENTS + CITATION_TAILS + ["(", ")", "[", "]", "\n", "Sources:", "- "]
    for _ in range(500):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 12)))
        once = strip_trailing_citations(text)
        assert strip_trailing_citations(once) == once, text


# --- complexity guard ----------------------------------------------------------------------

SIZE = 200_000


def _big(unit: str) -> str:
    return unit * (SIZE // len(unit) + 1)


BIG_INPUTS = {
    "long-prose-with-block": _big("The band played on. ") + "\n\nSources:\n- https://a.com",
    "many-parentheticals": "Bio." + _big(" (https://a.com)"),
    "many-paren-lines": "Bio.\n" + _big("(https://a.com)\n"),
    "many-link-lines-no-heading": "Bio.\n" + _big("- https://a.com\n"),
    "many-blocks": "Bio." + _big("\nSources:\n- https://a.com\n"),
    "open-parens": _big("("),
    "close-parens": _big(")"),
    "nested-parens": "(" * (SIZE // 2) + ")" * (SIZE // 2),
    "open-brackets": _big("[") + ")",
    "bracket-soup": _big("[a](") + ")",
    "giant-parenthetical": "Bio. (" + _big("https://a.com, ") + ")",
    "giant-word-parenthetical": "(" + _big("word ") + ")",
    "single-giant-url": "Sources: https://" + _big("a"),
}


@pytest.mark.parametrize("text", BIG_INPUTS.values(), ids=BIG_INPUTS.keys())
def test_large_inputs_finish_quickly(text: str) -> None:
    started = time.perf_counter()
    once = strip_trailing_citations(text)
    strip_trailing_citations(once)
    assert time.perf_counter() - started < 2.0
