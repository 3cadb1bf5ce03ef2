"""What the tool reads from a Responses API answer, straight from its JSON body.

A run reads six things from each answer: its id, model, creation time, service tier, token
usage and the text of its ``output_text`` parts. Building the SDK's ``Response`` model for
that (nested pydantic objects for every output item and part) cost about a tenth of a
worker's CPU per artist, on the path every artist takes; reading the decoded JSON costs a
few microseconds. The rules are the SDK's own (``Response.output_text``: the ``output_text``
parts of the ``message`` items, joined), and as leniently as the SDK builds its model: a
field the bio does not need may be missing or odd. Online answers (``api/call.py``) and
batch answers (``api/batchfile.py``) are read by the same function.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from ..models import TokenUsage


class UnusableAnswer(ValueError):
    """A body that holds no answer (not an object, or without an id)."""


@dataclass(frozen=True)
class Answer:
    """The parts of one answer a bio is made of."""

    response_id: str
    #: The model that answered (None when the body does not say: its price is unknown).
    model: str | None
    #: Unix seconds (the body's ``created_at``).
    created_at: int
    #: The tier that served it, when the body says.
    service_tier: str | None
    usage: TokenUsage
    #: The ``output_text`` parts of the ``message`` items, joined ("" when none).
    output_text: str


def read_answer(body: object) -> Answer:
    """The ``Answer`` in a decoded response body; ``UnusableAnswer`` when it holds none."""
    if not isinstance(body, Mapping):
        raise UnusableAnswer("the body is not a JSON object")
    response_id = body.get("id")
    if not isinstance(response_id, str) or not response_id:
        raise UnusableAnswer("the body has no response id")
    created = body.get("created_at")
    if isinstance(created, bool) or not isinstance(created, int | float):
        raise UnusableAnswer("the body has no creation time")
    if not math.isfinite(created):
        raise UnusableAnswer("the body's creation time is not a number")
    return Answer(
        response_id=response_id,
        model=_text_or_none(body.get("model")),
        created_at=int(created),
        service_tier=_text_or_none(body.get("service_tier")),
        usage=_usage(body.get("usage")),
        output_text=_output_text(body.get("output")),
    )


def _text_or_none(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _count(usage: Mapping[str, object], key: str) -> int:
    value = usage.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _usage(usage: object) -> TokenUsage:
    # OpenAI-compatible servers may omit usage; a missing count is 0, not a failure.
    if not isinstance(usage, Mapping):
        return TokenUsage()
    return TokenUsage(
        _count(usage, "input_tokens"), _count(usage, "output_tokens"), _count(usage, "total_tokens")
    )


def _output_text(output: object) -> str:
    if not isinstance(output, list):
        return ""
    texts: list[str] = []
    for item in output:
        if not isinstance(item, Mapping) or item.get("type") != "message":
            continue
        parts = item.get("content")
        for part in parts if isinstance(parts, list) else ():
            if isinstance(part, Mapping) and part.get("type") == "output_text":
                text = part.get("text")
                if isinstance(text, str):
                    texts.append(text)
    return "".join(texts)
