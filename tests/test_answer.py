"""Reading an answer from its JSON body (``api/answer.py``), against the SDK's own model."""

from __future__ import annotations

from typing import Any

import pytest
from openai.types.responses import Response

from artist_bio_gen.api.answer import UnusableAnswer, read_answer
from artist_bio_gen.models import TokenUsage


def _message(*parts: dict[str, Any]) -> dict[str, Any]:
    return {"type": "message", "id": "msg_1", "role": "assistant", "content": list(parts)}


def _text(text: Any) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": []}


def _body(output: list[Any], **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": "resp_1",
        "object": "response",
        "created_at": 1764670000,
        "model": "gpt-5-mini-2025-08-07",
        "status": "completed",
        "output": output,
        "usage": {"input_tokens": 120, "output_tokens": 80, "total_tokens": 200},
    }
    body.update(fields)
    return body


BODIES = {
    "one part": _body([_message(_text("A singer."))]),
    "parts and items joined": _body(
        [_message(_text("First. "), _text("Second.")), _message(_text(" Third."))]
    ),
    "reasoning and refusal skipped": _body(
        [
            {"type": "reasoning", "id": "rs_1", "summary": []},
            _message({"type": "refusal", "refusal": "no"}, _text("Kept.")),
        ]
    ),
    "no output": _body([]),
    "null text": _body([_message(_text(None), _text("Only this."))]),
    "no usage": _body([_message(_text("x"))], usage=None),
    "tier": _body([_message(_text("x"))], service_tier="flex"),
}


@pytest.mark.parametrize("name", list(BODIES))
def test_the_answer_reads_as_the_sdk_model_does(name: str) -> None:
    body = BODIES[name]
    model = Response.construct(**body)
    answer = read_answer(body)
    assert answer.output_text == model.output_text
    assert answer.response_id == model.id
    assert answer.model == model.model
    assert answer.created_at == int(model.created_at)
    assert answer.service_tier == body.get("service_tier")
    usage = body["usage"] or {}
    assert answer.usage == TokenUsage(
        usage.get("input_tokens", 0), usage.get("output_tokens", 0), usage.get("total_tokens", 0)
    )


def test_odd_fields_the_bio_does_not_need_are_read_leniently() -> None:
    body = _body(
        [_message(_text("Text."), "not a part"), "not an item", {"type": "message"}],
        model=None,
        usage={"input_tokens": True, "output_tokens": -3, "total_tokens": "9"},
        created_at=1764670000.9,
    )
    answer = read_answer(body)
    assert answer.output_text == "Text."
    assert answer.model is None  # its price is then unknown
    assert answer.usage == TokenUsage()
    assert answer.created_at == 1764670000


@pytest.mark.parametrize(
    "body",
    [
        [1, 2],
        "text",
        _body([], id=None),
        _body([], id=""),
        _body([], created_at=None),
        _body([], created_at=True),
        _body([], created_at=float("nan")),
    ],
)
def test_a_body_without_an_answer_is_unusable(body: object) -> None:
    with pytest.raises(UnusableAnswer):
        read_answer(body)
