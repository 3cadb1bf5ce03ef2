"""The lines of the Batch API's files: what a request file holds, what a result line means.

**Request lines.** One per artist: ``{"custom_id": <artist id>, "method": "POST", "url":
"/v1/responses", "body": <request>}``, where the body is exactly what ``build_request``
gives the same artist's online request (without ``service_tier``: a batch is its own
tier). A batch file holds one model, so batch mode needs ``--model`` (``config.py`` says
so): with a stored prompt the body is the prompt plus that model, as an online request with
``--model`` sends it.

**Result lines** (the output and the error file alike, in any order, keyed by
``custom_id``) are classified by ``parse_result_line``:

==================================================  ================================
line                                                meaning
==================================================  ================================
``response.status_code`` 200, a readable response   ``answer``: commit it
``error`` set, no response (``batch_expired``)      ``unanswered``: submit it again
429 ``rate_limit_exceeded``                         ``unanswered``: submit it again
429 ``insufficient_quota``                          ``failed`` with ``insufficient_quota``
other 4xx, 5xx                                      ``failed`` with the code online mode
                                                    gives that status (``failure_codes``)
200 whose body is not a response                    ``failed`` with ``bad_response``
not JSON, no ``custom_id``                          ``unreadable``
==================================================  ================================

What a failure then means (recorded against the artist, or stopping the run) is the failure
code table's business, exactly as online: ``bad_request`` (400) and ``server_error`` (5xx)
count towards ``--max-attempts``; ``auth``, ``forbidden``, ``not_found`` and
``insufficient_quota`` are systemic.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Final, Literal

from ..models import ArtistData, GeneratedBio
from .answer import Answer, UnusableAnswer, read_answer
from .call import answer_cost, generated_bio
from .pricing import Price
from .request import PromptSettings, build_request

#: The endpoint every request line posts to (and the batch's ``endpoint``).
BATCH_ENDPOINT: Final = "/v1/responses"
#: The service tier batch answers are billed at (``api/pricing``: half the standard price),
#: whatever tier the response body names.
BATCH_TIER = "batch"

ResultKind = Literal["answer", "failed", "unanswered", "unreadable"]


def request_line(artist: ArtistData, settings: PromptSettings) -> bytes:
    """The request file's line for ``artist`` (UTF-8, ending in a newline)."""
    line = {
        "custom_id": artist.artist_id,
        "method": "POST",
        "url": BATCH_ENDPOINT,
        "body": build_request(artist, settings),
    }
    return (json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")


@dataclass(frozen=True)
class ResultLine:
    """One line of an output or error file, classified (see the module docstring)."""

    kind: ResultKind
    #: The line's ``custom_id`` (the artist id); None when unreadable.
    artist_id: str | None
    #: The response of an ``answer``.
    response: Answer | None = None
    #: ``failed``: a failure code of ``failure_codes``; ``unanswered``: the API's code
    #: (``batch_expired``, ``rate_limited``, ...).
    code: str | None = None
    reason: str = ""


def parse_result_line(line: bytes) -> ResultLine:
    """Classify one result line; never raises."""
    try:
        record = json.loads(line)
    except ValueError:
        return ResultLine("unreadable", None, reason="not JSON")
    if not isinstance(record, dict) or not isinstance(record.get("custom_id"), str):
        return ResultLine("unreadable", None, reason="no custom_id")
    artist_id: str = record["custom_id"]
    response = record.get("response")
    if not isinstance(response, dict):
        error = record.get("error")
        error = error if isinstance(error, dict) else {}
        code = str(error.get("code") or "batch_expired")
        return ResultLine("unanswered", artist_id, code=code, reason=str(error.get("message", "")))
    status = response.get("status_code")
    body = response.get("body")
    if status == 200:
        return _answer(artist_id, body)
    return _failure(artist_id, status if isinstance(status, int) else 0, body)


def _answer(artist_id: str, body: object) -> ResultLine:
    # read_answer checks the id and the creation time; a batch body without an output list
    # is unusable too (not an empty answer).
    if not isinstance(body, dict) or not isinstance(body.get("output"), list):
        return _unusable(artist_id)
    try:
        return ResultLine("answer", artist_id, response=read_answer(body))
    except UnusableAnswer:
        return _unusable(artist_id)


def _unusable(artist_id: str) -> ResultLine:
    return ResultLine(
        "failed", artist_id, code="bad_response", reason="unusable answer in the batch output"
    )


def _failure(artist_id: str, status: int, body: object) -> ResultLine:
    error = body.get("error") if isinstance(body, dict) else None
    error = error if isinstance(error, dict) else {}
    detail = " ".join(str(error.get("message") or "").split())[:300]
    reason = f"HTTP {status}: {detail}" if detail else f"HTTP {status}"
    if status == 429:
        if error.get("code") == "insufficient_quota":
            return ResultLine("failed", artist_id, code="insufficient_quota", reason=reason)
        return ResultLine("unanswered", artist_id, code="rate_limited", reason=reason)
    return ResultLine("failed", artist_id, code=_status_code(status), reason=reason)


def _status_code(status: int) -> str:
    """The failure code online mode gives an HTTP error (``api/call._classify``)."""
    known = {400: "bad_request", 401: "auth", 403: "forbidden", 404: "not_found", 408: "timeout"}
    if status in known:
        return known[status]
    return "server_error" if status >= 500 else "api_error"


def answer_bio(artist: ArtistData, answer: Answer, price: Price | None) -> GeneratedBio:
    """The bio of a batch answer, priced at the batch tier (``ApiCallError`` with
    ``empty_response`` when it holds no text)."""
    return generated_bio(artist, answer, BATCH_TIER, answer_cost(answer, BATCH_TIER, price))
