"""The fake's Files and Batches endpoints (tests/support/fake_batches.py), driven through the
real `openai` SDK: what the batch mode of the tool is written against.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator

import openai
import pytest

from .support.fake_batches import BatchScript
from .support.fake_openai import FakeOpenAI, bio_for

pytestmark = pytest.mark.timeout(60)

MODEL = "gpt-4.1-mini"


@pytest.fixture(scope="module")
def server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(seed=7) as fake:
        yield fake


@pytest.fixture
def fake(server: FakeOpenAI) -> Iterator[FakeOpenAI]:
    server.reset()
    yield server
    server.reset()


@pytest.fixture
def client(fake: FakeOpenAI) -> Iterator[openai.OpenAI]:
    sdk = openai.OpenAI(base_url=fake.base_url, api_key="test", max_retries=0, timeout=10)
    yield sdk
    sdk.close()


def request_file(names: list[str], model: str = MODEL) -> bytes:
    """A request file with one model-mode request per name (custom_id = the name)."""
    lines = []
    for name in names:
        body = {"model": model, "input": f"Artist name: {name}\nAdditional data: none"}
        line = {"custom_id": name, "method": "POST", "url": "/v1/responses", "body": body}
        lines.append(json.dumps(line, ensure_ascii=False).encode("utf-8") + b"\n")
    return b"".join(lines)


Submit = Callable[..., str]


@pytest.fixture
def submit(client: openai.OpenAI) -> Submit:
    """Upload a request file for `names` and create its batch; returns the batch id."""

    def make(names: list[str], data: bytes | None = None, **metadata: str) -> str:
        content = data if data is not None else request_file(names)
        uploaded = client.files.create(file=("in.jsonl", io.BytesIO(content)), purpose="batch")
        batch = client.batches.create(
            input_file_id=uploaded.id,
            endpoint="/v1/responses",
            completion_window="24h",
            metadata=metadata or None,
        )
        return batch.id

    return make


def lines_of(client: openai.OpenAI, file_id: str | None) -> list[dict]:
    assert file_id is not None
    return [json.loads(line) for line in client.files.content(file_id).content.splitlines()]


def test_upload_read_and_delete_a_file(fake: FakeOpenAI, client: openai.OpenAI) -> None:
    data = request_file(["Björk"])
    uploaded = client.files.create(
        file=("requests.jsonl", io.BytesIO(data)),
        purpose="batch",
        expires_after={"anchor": "created_at", "seconds": 7 * 86400},
    )
    assert (uploaded.purpose, uploaded.bytes, uploaded.filename) == (
        "batch",
        len(data),
        "requests.jsonl",
    )
    assert uploaded.expires_at == uploaded.created_at + 7 * 86400
    assert client.files.retrieve(uploaded.id).id == uploaded.id
    assert client.files.content(uploaded.id).content == data
    assert [f.id for f in client.files.list(purpose="batch")] == [uploaded.id]
    assert client.files.delete(uploaded.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.files.content(uploaded.id)
    with pytest.raises(openai.BadRequestError):  # a batch input must be a .jsonl file
        client.files.create(file=("requests.txt", io.BytesIO(data)), purpose="batch")
    assert fake.total_requests == 0  # none of this is an online request


def test_a_batch_runs_for_its_polls_then_answers_every_line(
    fake: FakeOpenAI, client: openai.OpenAI, submit: Submit
) -> None:
    names = [f"Artist {i}" for i in range(30)]
    fake.batches.script(polls=2)
    batch_id = submit(names, job="j1", chunk="1")
    created = client.batches.retrieve  # the status advances on retrieve only
    assert [created(batch_id).status for _ in range(3)] == [
        "in_progress",
        "in_progress",
        "completed",
    ]
    batch = client.batches.retrieve(batch_id)
    assert batch.metadata == {"job": "j1", "chunk": "1"}
    assert (batch.request_counts.total, batch.request_counts.completed) == (30, 30)
    assert batch.error_file_id is None
    output = lines_of(client, batch.output_file_id)
    assert sorted(line["custom_id"] for line in output) == sorted(names)
    assert [line["custom_id"] for line in output] != names, "lines come back out of order"
    for line in output:
        assert line["error"] is None and line["response"]["status_code"] == 200
        body = line["response"]["body"]
        assert body["output"][0]["content"][0]["text"] == bio_for(line["custom_id"])
        assert body["model"] == MODEL
    assert fake.total_requests == 0 and fake.batch_calls("Artist 3") == 1


def test_error_lines_of_each_kind(fake: FakeOpenAI, client: openai.OpenAI, submit: Submit) -> None:
    kinds = {"A400": "bad_request", "A429": "rate_limit", "A500": "server_error", "Ahang": "hang"}
    for name, fault in kinds.items():
        fake.add_rule(fault, name=name)
    fake.add_rule("malformed", name="Abad")
    batch_id = submit(["ok", *kinds, "Abad"])
    batch = client.batches.retrieve(batch_id)
    assert batch.status == "completed"
    errors = {line["custom_id"]: line for line in lines_of(client, batch.error_file_id)}
    assert {
        name: line["response"]["status_code"] for name, line in errors.items() if line["response"]
    } == {
        "A400": 400,
        "A429": 429,
        "A500": 500,
    }
    assert errors["Ahang"]["response"] is None
    assert errors["Ahang"]["error"]["code"] == "batch_expired"
    output = {line["custom_id"]: line for line in lines_of(client, batch.output_file_id)}
    assert set(output) == {"ok", "Abad"}
    assert "output" not in output["Abad"]["response"]["body"]  # a 200 that is no response
    assert (batch.request_counts.completed, batch.request_counts.failed) == (2, 4)


def test_expired_with_partial_output(
    fake: FakeOpenAI, client: openai.OpenAI, submit: Submit
) -> None:
    fake.batches.script(outcome="expired", answered=3, shuffle=False)
    batch = client.batches.retrieve(submit(["a", "b", "c", "d", "e"]))
    assert batch.status == "expired" and batch.expired_at is not None
    assert [line["custom_id"] for line in lines_of(client, batch.output_file_id)] == ["a", "b", "c"]
    expired = lines_of(client, batch.error_file_id)
    assert [(line["custom_id"], line["error"]["code"]) for line in expired] == [
        ("d", "batch_expired"),
        ("e", "batch_expired"),
    ]


@pytest.mark.parametrize(
    ("script", "data", "code"),
    [
        (
            BatchScript(outcome="failed", error_code="token_limit_exceeded"),
            None,
            "token_limit_exceeded",
        ),
        (
            BatchScript(),
            request_file(["a"]) + request_file(["b"], model="other-model"),
            "mismatched_model",
        ),
        (BatchScript(), request_file(["a", "a"]), "duplicate_custom_id"),
        (BatchScript(), b"{not json\n", "invalid_json_line"),
    ],
)
def test_a_batch_can_fail_as_a_whole(
    fake: FakeOpenAI,
    client: openai.OpenAI,
    submit: Submit,
    script: BatchScript,
    data: bytes | None,
    code: str,
) -> None:
    fake.batches.script(script)
    batch = client.batches.retrieve(submit(["a", "b"], data))
    assert batch.status == "failed" and batch.failed_at is not None
    assert batch.errors is not None and batch.errors.data[0].code == code
    assert batch.output_file_id is None and batch.error_file_id is None


def test_cancel_then_cancelled_with_what_was_answered(
    fake: FakeOpenAI, client: openai.OpenAI, submit: Submit
) -> None:
    fake.batches.script(polls=5, answered=2, cancel_polls=1, shuffle=False)
    batch_id = submit(["a", "b", "c"])
    assert client.batches.retrieve(batch_id).status == "in_progress"
    assert client.batches.cancel(batch_id).status == "cancelling"
    assert client.batches.retrieve(batch_id).status == "cancelling"
    batch = client.batches.retrieve(batch_id)
    assert batch.status == "cancelled"
    assert [line["custom_id"] for line in lines_of(client, batch.output_file_id)] == ["a", "b"]
    assert [line["custom_id"] for line in lines_of(client, batch.error_file_id)] == ["c"]
    with pytest.raises(openai.ConflictError):  # an ended batch cannot be cancelled
        client.batches.cancel(batch_id)


def test_list_newest_first_with_pagination(client: openai.OpenAI, submit: Submit) -> None:
    ids = [submit([f"x{i}"], n=str(i)) for i in range(5)]
    page = client.batches.list(limit=2)
    assert [b.id for b in page.data] == ids[::-1][:2] and page.has_more
    assert [b.id for b in client.batches.list(limit=2, after=ids[3]).data] == [ids[2], ids[1]]
    assert [b.id for b in client.batches.list(limit=2)] == ids[::-1]  # the SDK's auto-paging
    assert [b.metadata for b in client.batches.list(limit=100)][-1] == {"n": "0"}


def test_duplicates_repeat_answers_with_new_response_ids(
    fake: FakeOpenAI, client: openai.OpenAI, submit: Submit
) -> None:
    fake.batches.script(duplicates=2)
    batch = client.batches.retrieve(submit(["a", "b", "c"]))
    output = lines_of(client, batch.output_file_id)
    assert len(output) == 5
    ids = [line["custom_id"] for line in output]
    assert sorted(set(ids)) == ["a", "b", "c"] and len(ids) - len(set(ids)) == 2
    assert len({line["response"]["body"]["id"] for line in output}) == 5


def test_api_faults_before_or_after_the_work(
    fake: FakeOpenAI, client: openai.OpenAI, submit: Submit
) -> None:
    fake.batches.fail_api("files.create", 500)
    with pytest.raises(openai.InternalServerError):
        client.files.create(file=("in.jsonl", io.BytesIO(request_file(["a"]))), purpose="batch")
    assert fake.batches.files == {}
    uploaded = client.files.create(
        file=("in.jsonl", io.BytesIO(request_file(["a"]))), purpose="batch"
    )
    fake.batches.fail_api("batches.create", 502, performed=True)
    with pytest.raises(openai.APIStatusError):
        client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/responses", completion_window="24h"
        )
    assert len(fake.batches.batches) == 1, "the batch exists although the answer was an error"
    assert fake.batches.calls["batches.create"] == 1


def test_reset_forgets_files_and_batches(fake: FakeOpenAI, submit: Submit) -> None:
    submit(["a"])
    fake.batches.script(polls=3)
    fake.reset()
    assert fake.batches.files == {} and fake.batches.batches == []
    assert not fake.batches.calls and fake.batch_calls("a") == 0
