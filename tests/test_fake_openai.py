"""Tests for tests/support/fake_openai.py, driven through the real `openai` SDK.

Besides checking the fake, these pin down how the installed SDK reacts to each fault, which is
what the application's error handling is written against.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import resource
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx2
import openai
import pytest
from openai.types.responses import Response

try:  # tests/ imported as a package
    from tests.support.fake_openai import CITATIONS_SUFFIX, FakeOpenAI, artist_name_from, bio_for
except ModuleNotFoundError:  # pytest put tests/ itself on sys.path (no tests/__init__.py)
    from support.fake_openai import CITATIONS_SUFFIX, FakeOpenAI, artist_name_from, bio_for

pytestmark = pytest.mark.timeout(60)

MakeClient = Callable[..., openai.OpenAI]


@pytest.fixture(scope="module")
def server() -> Iterator[FakeOpenAI]:
    """One fake server for the whole module; starting threads per test is wasted time."""
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture
def fake(server: FakeOpenAI) -> Iterator[FakeOpenAI]:
    """The shared server with no rules, no latency, an open gate and zeroed counts."""
    server.reset()
    yield server
    server.reset()


@pytest.fixture
def make_client(fake: FakeOpenAI) -> Iterator[MakeClient]:
    """Factory for real SDK clients pointed at the fake; closes them after the test."""
    clients: list[openai.OpenAI] = []

    def make(*, max_retries: int = 0, timeout: float = 5.0) -> openai.OpenAI:
        client = openai.OpenAI(
            base_url=fake.base_url, api_key="test", max_retries=max_retries, timeout=timeout
        )
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def ask(client: openai.OpenAI, name: str, model: str = "gpt-test") -> Response:
    """One stored-prompt request for `name`, the way the application sends them."""
    return client.responses.create(
        model=model, prompt={"id": "pmpt_bio", "variables": {"artist_name": name}}
    )


# -- pure helpers ---------------------------------------------------------------------------------


def test_bio_for_is_deterministic_named_and_non_ascii() -> None:
    bio = bio_for("Nina Simone")
    assert bio == bio_for("Nina Simone")
    assert "Nina Simone" in bio
    assert bio != bio_for("Miles Davis")
    assert any(ord(ch) > 127 for ch in bio)
    assert bio_for(None)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"prompt": {"id": "p", "variables": {"artist_name": "Björk"}}}, "Björk"),
        ({"prompt": {"variables": {"artist_name": {"type": "input_text", "text": "Sia"}}}}, "Sia"),
        ({"input": "Write a bio.\nArtist name:  Aphex Twin \nArtist name: Other"}, "Aphex Twin"),
        ({"input": [{"role": "user", "content": "Artist name: Can"}]}, "Can"),
        ({"input": [{"content": [{"type": "input_text", "text": "Artist name: Low"}]}]}, "Low"),
        ({"input": "no name here"}, None),
        ({"input": "Artist name:   "}, None),
        ({"prompt": {"id": "p"}}, None),
        (["not", "a", "dict"], None),
    ],
)
def test_artist_name_from(body: object, expected: str | None) -> None:
    assert artist_name_from(body) == expected


# -- successful replies ---------------------------------------------------------------------------


def test_normal_call_returns_bio_usage_and_unique_ids(
    fake: FakeOpenAI, make_client: MakeClient
) -> None:
    client = make_client()
    first, second = ask(client, "Björk", model="gpt-bio"), ask(client, "Björk")
    assert first.output_text == second.output_text == bio_for("Björk")
    assert first.id.startswith("resp_") and second.id.startswith("resp_")
    assert first.id != second.id
    assert first.model == "gpt-bio" and first.status == "completed"
    assert first.usage is not None
    assert first.usage.input_tokens == 50
    assert first.usage.total_tokens == 50 + first.usage.output_tokens > 50
    assert fake.calls("Björk") == 2 and fake.succeeded("Björk") == 2
    assert fake.total_requests == 2


def test_strict_response_validation_accepts_the_reply(fake: FakeOpenAI) -> None:
    # Strict mode validates every field the SDK's model requires, so the payload is complete.
    with openai.OpenAI(
        base_url=fake.base_url, api_key="test", max_retries=0, _strict_response_validation=True
    ) as client:
        assert ask(client, "Sade").output_text == bio_for("Sade")


def test_model_mode_input_line_identifies_artist(fake: FakeOpenAI, make_client: MakeClient) -> None:
    reply = make_client().responses.create(
        model="gpt-test",
        instructions="You write biographies.",
        input="Write a short biography.\nArtist name: Fela Kuti\nArtist data: Nigerian",
    )
    assert reply.output_text == bio_for("Fela Kuti")
    assert fake.calls("Fela Kuti") == 1 and fake.succeeded("Fela Kuti") == 1


def test_unidentified_artist_is_counted_under_none(
    fake: FakeOpenAI, make_client: MakeClient
) -> None:
    reply = make_client().responses.create(model="gpt-test", input="hello")
    assert reply.output_text == bio_for(None)
    assert fake.calls(None) == 1


def test_empty_citations_and_text_override(fake: FakeOpenAI, make_client: MakeClient) -> None:
    fake.add_rule("empty", name="A", times=1)
    fake.add_rule("citations", name="B", times=1)
    fake.add_rule("ok", name="C", times=1, text="Custom — text")
    client = make_client()
    assert ask(client, "A").output_text == ""
    assert ask(client, "B").output_text == bio_for("B") + CITATIONS_SUFFIX
    assert ask(client, "C").output_text == "Custom — text"
    assert [fake.succeeded(n) for n in "ABC"] == [1, 1, 1]


# -- rate limits ----------------------------------------------------------------------------------


def test_rate_limit_reply_shape(fake: FakeOpenAI, make_client: MakeClient) -> None:
    fake.add_rule("rate_limit", retry_after=0.2)
    with pytest.raises(openai.RateLimitError) as info:
        ask(make_client(), "Prince")
    err = info.value
    assert err.status_code == 429
    assert err.code == "rate_limit_exceeded" and err.type == "requests"
    assert err.response.headers["retry-after"] == "0.2"
    assert "retry-after-ms" not in err.response.headers
    assert err.message.endswith("Please try again in 0.2s.")


def test_rate_limit_default_retry_after_is_one_second(
    fake: FakeOpenAI, make_client: MakeClient
) -> None:
    fake.add_rule("rate_limit")
    with pytest.raises(openai.RateLimitError) as info:
        ask(make_client(), "Prince")
    assert info.value.response.headers["retry-after"] == "1"


def test_sdk_retries_429_after_retry_after(
    fake: FakeOpenAI, make_client: MakeClient, caplog: pytest.LogCaptureFixture
) -> None:
    fake.add_rule("rate_limit", name="Prince", times=1, retry_after=0.2)
    with caplog.at_level(logging.INFO, logger="openai"):
        reply = ask(make_client(max_retries=2), "Prince")
    assert reply.output_text == bio_for("Prince")
    assert fake.calls("Prince") == 2 and fake.succeeded("Prince") == 1
    (_, first_fault, first_at), (_, second_fault, second_at) = fake.requests
    assert (first_fault, second_fault) == ("rate_limit", "ok")
    # The SDK's own backoff for a first retry is 0.375-0.5 s; its log line shows it used
    # the server's value instead, and the arrival gap shows it really slept that long.
    assert "Retrying request in 0.200000 seconds" in caplog.text
    assert second_at - first_at >= 0.19


def test_insufficient_quota_is_a_rate_limit_error_with_its_own_code(
    fake: FakeOpenAI, make_client: MakeClient
) -> None:
    fake.add_rule("insufficient_quota")
    with pytest.raises(openai.RateLimitError) as info:
        ask(make_client(max_retries=0), "Adele")
    err = info.value
    assert err.code == "insufficient_quota" and err.type == "insufficient_quota"
    assert err.message.startswith("Error code: 429 - You exceeded your current quota")
    assert "retry-after" not in err.response.headers
    assert fake.calls("Adele") == 1


def test_sdk_also_retries_insufficient_quota(fake: FakeOpenAI, make_client: MakeClient) -> None:
    # Surprise worth pinning: the SDK retries every 429, quota exhaustion included, so a
    # client that wants to stop on insufficient_quota must not rely on SDK retries.
    fake.add_rule("insufficient_quota", times=1)
    assert ask(make_client(max_retries=1), "Adele").output_text == bio_for("Adele")
    assert fake.calls("Adele") == 2


# -- other HTTP errors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "error", "status", "code"),
    [
        ("unauthorized", openai.AuthenticationError, 401, "invalid_api_key"),
        ("forbidden", openai.PermissionDeniedError, 403, None),
        ("not_found", openai.NotFoundError, 404, None),
        ("bad_request", openai.BadRequestError, 400, "invalid_request_error"),
        ("server_error", openai.InternalServerError, 500, None),
    ],
)
def test_http_errors_map_to_sdk_exceptions(
    fake: FakeOpenAI,
    make_client: MakeClient,
    fault: str,
    error: type[openai.APIStatusError],
    status: int,
    code: str | None,
) -> None:
    fake.add_rule(fault, name="Tom Waits")
    with pytest.raises(error) as info:
        ask(make_client(max_retries=0), "Tom Waits")
    assert info.value.status_code == status
    assert info.value.code == code
    assert fake.calls("Tom Waits") == 1 and fake.succeeded("Tom Waits") == 0


def test_not_found_names_the_prompt_id(fake: FakeOpenAI, make_client: MakeClient) -> None:
    fake.add_rule("not_found")
    with pytest.raises(openai.NotFoundError, match=r"Prompt with id 'pmpt_bio' not found\."):
        ask(make_client(), "Tom Waits")


def test_sdk_retries_server_error(fake: FakeOpenAI, make_client: MakeClient) -> None:
    fake.add_rule("server_error", times=1)
    assert ask(make_client(max_retries=1), "Tom Waits").output_text == bio_for("Tom Waits")
    assert fake.calls("Tom Waits") == 2 and fake.succeeded("Tom Waits") == 1


# -- transport-level faults -----------------------------------------------------------------------


def wait_until(predicate: Callable[[], bool], timeout: float = 3.0) -> bool:
    """Poll `predicate` until it holds or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def test_hang_times_out_and_server_survives(fake: FakeOpenAI, make_client: MakeClient) -> None:
    fake.add_rule("hang", name="Slowdive", times=1)
    client = make_client(max_retries=0, timeout=0.3)
    started = time.monotonic()
    with pytest.raises(openai.APITimeoutError):
        ask(client, "Slowdive")
    assert time.monotonic() - started < 2
    # The handler notices the client hung up and gives up without "answering".
    assert wait_until(lambda: fake.in_flight == 0)
    assert fake.succeeded("Slowdive") == 0
    assert ask(client, "Slowdive").output_text == bio_for("Slowdive")


def test_hang_with_short_delay_answers_normally(fake: FakeOpenAI, make_client: MakeClient) -> None:
    fake.add_rule("hang", delay=0.2, times=1)
    started = time.monotonic()
    assert ask(make_client(timeout=5), "Low").output_text == bio_for("Low")
    assert time.monotonic() - started >= 0.2


def test_malformed_body_raises_json_decode_error(fake: FakeOpenAI, make_client: MakeClient) -> None:
    # The reply claims application/json, so the SDK calls response.json() and the decoder's
    # json.JSONDecodeError (a ValueError) escapes unwrapped: it is NOT an openai.OpenAIError
    # and is not retried, whatever max_retries says.
    fake.add_rule("malformed")
    with pytest.raises(json.JSONDecodeError) as info:
        ask(make_client(max_retries=2), "Can")
    assert not isinstance(info.value, openai.OpenAIError)
    assert fake.calls("Can") == 1


def test_drop_raises_connection_error(fake: FakeOpenAI, make_client: MakeClient) -> None:
    client = make_client(max_retries=0)
    ask(client, "Can")  # leaves a keep-alive connection for the drop to happen on
    fake.add_rule("drop", times=1)
    with pytest.raises(openai.APIConnectionError) as info:
        ask(client, "Can")
    assert not isinstance(info.value, openai.APITimeoutError)
    assert ask(client, "Can").output_text == bio_for("Can")
    assert fake.calls("Can") == 3 and fake.succeeded("Can") == 2


def test_sdk_retries_a_dropped_connection(fake: FakeOpenAI, make_client: MakeClient) -> None:
    # A drop is a transport error, so the SDK resends: an artist can be sent (and billed) twice.
    fake.add_rule("drop", times=1)
    assert ask(make_client(max_retries=1), "Can").output_text == bio_for("Can")
    assert fake.calls("Can") == 2


# -- rules ----------------------------------------------------------------------------------------


def test_rules_first_match_wins_and_times_run_out(
    fake: FakeOpenAI, make_client: MakeClient
) -> None:
    fake.add_rule("bad_request", name="X", times=2)
    fake.add_rule("server_error", times=1)
    client = make_client()
    for _ in range(2):
        with pytest.raises(openai.BadRequestError):
            ask(client, "X")
    with pytest.raises(openai.InternalServerError):  # the global rule was not used up by X
        ask(client, "X")
    assert ask(client, "X").output_text == bio_for("X")
    assert [fault for _, fault, _ in fake.requests] == [
        "bad_request",
        "bad_request",
        "server_error",
        "ok",
    ]


def test_named_rule_leaves_other_artists_alone(fake: FakeOpenAI, make_client: MakeClient) -> None:
    fake.add_rule("unauthorized", name="X")
    client = make_client()
    assert ask(client, "Y").output_text == bio_for("Y")
    with pytest.raises(openai.AuthenticationError):
        ask(client, "X")
    fake.clear_rules()
    assert ask(client, "X").output_text == bio_for("X")


def test_add_rule_validates_arguments(fake: FakeOpenAI) -> None:
    with pytest.raises(ValueError, match="unknown fault"):
        fake.add_rule("teapot")
    with pytest.raises(ValueError):
        fake.add_rule("ok", times=-1)


# -- gate, concurrency, bookkeeping ---------------------------------------------------------------


def test_hold_blocks_until_release(fake: FakeOpenAI, make_client: MakeClient) -> None:
    client = make_client(timeout=10)
    results: list[str] = []
    fake.hold()
    worker = threading.Thread(target=lambda: results.append(ask(client, "Nico").output_text))
    worker.start()
    assert fake.wait_for_requests(1, timeout=5)
    assert fake.calls("Nico") == 1
    worker.join(timeout=0.3)
    assert worker.is_alive() and not results
    assert fake.in_flight == 1 and fake.succeeded("Nico") == 0
    fake.release()
    worker.join(timeout=5)
    assert results == [bio_for("Nico")]


def test_wait_for_requests_times_out(fake: FakeOpenAI) -> None:
    started = time.monotonic()
    assert fake.wait_for_requests(1, timeout=0.1) is False
    assert time.monotonic() - started >= 0.1


def test_concurrent_requests_are_served_in_parallel(
    fake: FakeOpenAI, make_client: MakeClient
) -> None:
    fake.latency = 0.2
    client = make_client(timeout=10)
    names = [f"Artist {i}" for i in range(20)]
    # The gate lines all 20 up first, so the check does not depend on thread start-up speed.
    fake.hold()
    with ThreadPoolExecutor(max_workers=20) as pool:
        futures = [pool.submit(lambda n=n: ask(client, n).output_text) for n in names]
        assert fake.wait_for_requests(20, timeout=10)
        assert fake.in_flight == 20
        released = time.monotonic()
        fake.release()
        texts = [future.result() for future in futures]
    assert time.monotonic() - released < 2  # 20 x 0.2 s latency would take 4 s serially
    assert texts == [bio_for(n) for n in names]
    assert fake.concurrent_max == 20


@pytest.mark.slow
def test_1024_simultaneous_connections(fake: FakeOpenAI) -> None:
    # The application keeps up to 1024 requests in flight; all must be accepted at once.
    # The SDK's default pool stops at 1000 connections (the rest queue client-side), hence
    # an explicit http_client.
    size = 1024
    limits = httpx2.Limits(max_connections=size, max_keepalive_connections=size)
    http_client = openai.DefaultHttpxClient(limits=limits)
    client = openai.OpenAI(
        base_url=fake.base_url, api_key="test", max_retries=0, timeout=30, http_client=http_client
    )
    names = [f"Band {i}" for i in range(size)]
    fake.hold()
    try:
        with ThreadPoolExecutor(max_workers=size) as pool:
            futures = [pool.submit(lambda n=n: ask(client, n).id) for n in names]
            arrived = fake.wait_for_requests(size, timeout=30)
            in_flight = fake.in_flight
            fake.release()
            ids = [future.result() for future in futures]
    finally:
        client.close()
    assert arrived and in_flight == size
    assert len(set(ids)) == size
    assert fake.total_requests == fake.concurrent_max == size


def test_reset_counts(fake: FakeOpenAI, make_client: MakeClient) -> None:
    ask(make_client(), "Z")
    fake.reset_counts()
    assert fake.total_requests == 0 and fake.calls("Z") == 0 and fake.succeeded("Z") == 0
    assert fake.requests == [] and fake.concurrent_max == 0


def test_server_is_quiet(
    fake: FakeOpenAI, make_client: MakeClient, capfd: pytest.CaptureFixture[str]
) -> None:
    fake.add_rule("drop", name="D", times=1)
    client = make_client()
    ask(client, "Q")
    with pytest.raises(openai.APIConnectionError):
        ask(client, "D")
    assert capfd.readouterr().err == ""


# -- raw HTTP -------------------------------------------------------------------------------------


def raw_connection(fake: FakeOpenAI) -> http.client.HTTPConnection:
    host_port = fake.base_url.removeprefix("http://").removesuffix("/v1")
    return http.client.HTTPConnection(host_port, timeout=5)


def test_keep_alive_with_exact_content_length(fake: FakeOpenAI) -> None:
    conn = raw_connection(fake)
    try:
        for name in ("Émilie", "Jürgen"):
            body = json.dumps({"input": f"Artist name: {name}"}, ensure_ascii=False).encode()
            conn.request("POST", "/v1/responses", body, {"Content-Type": "application/json"})
            reply = conn.getresponse()
            data = reply.read()
            assert reply.status == 200
            assert int(reply.headers["Content-Length"]) == len(data)
            assert reply.headers["Content-Type"] == "application/json"
            assert bio_for(name).encode() in data  # UTF-8, not \\u escapes
            assert not reply.will_close
        assert fake.concurrent_max == 1 and fake.total_requests == 2
    finally:
        conn.close()


def test_chunked_request_body_is_read(fake: FakeOpenAI) -> None:
    conn = raw_connection(fake)
    try:
        parts = [b'{"input": "Artist name: ', b'Chunky"}']
        conn.request("POST", "/v1/responses", iter(parts), encode_chunked=True)
        reply = conn.getresponse()
        assert reply.status == 200
        assert json.loads(reply.read())["output"][0]["content"][0]["text"] == bio_for("Chunky")
    finally:
        conn.close()


def test_invalid_json_and_unknown_path(fake: FakeOpenAI) -> None:
    conn = raw_connection(fake)
    try:
        conn.request("POST", "/v1/responses", b"{nope", {"Content-Type": "application/json"})
        reply = conn.getresponse()
        assert reply.status == 400
        assert "could not parse" in json.loads(reply.read())["error"]["message"]
        conn.request("GET", "/v1/models")
        reply = conn.getresponse()
        assert reply.status == 404
        reply.read()
    finally:
        conn.close()
    assert fake.calls(None) == 1 and fake.requests[0].fault == "invalid_json"


# -- lifecycle ------------------------------------------------------------------------------------


def test_stop_unblocks_held_requests_and_is_idempotent() -> None:
    fake = FakeOpenAI().start()
    errors: list[BaseException] = []
    client = openai.OpenAI(base_url=fake.base_url, api_key="test", max_retries=0, timeout=10)

    def call() -> None:
        try:
            ask(client, "Held")
        except openai.APIError as exc:
            errors.append(exc)

    fake.hold()
    worker = threading.Thread(target=call)
    worker.start()
    assert fake.wait_for_requests(1, timeout=5)
    started = time.monotonic()
    fake.stop()
    worker.join(timeout=5)
    client.close()
    assert not worker.is_alive()
    assert time.monotonic() - started < 3
    assert len(errors) == 1 and isinstance(errors[0], openai.APIConnectionError)
    assert wait_until(lambda: fake.in_flight == 0)  # the held handler was woken, not leaked
    fake.stop()
    with pytest.raises(RuntimeError):
        _ = fake.base_url


def test_latency_on_a_connection_above_descriptor_1024(
    fake: FakeOpenAI, make_client: MakeClient
) -> None:
    # With ~1000 keep-alive connections the server's sockets get descriptors >= 1024, which
    # select.select() rejects (FD_SETSIZE): the fake used to drop such a connection without
    # an answer while it waited out the latency (connection_error at 1,024 workers).
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < 1200:
        pytest.skip("needs a file-descriptor limit above 1200")
    fake.latency = 0.05
    filler: list[int] = []
    try:
        while not filler or filler[-1] < 1030:
            filler.append(os.open(os.devnull, os.O_RDONLY))
        response = ask(make_client(), "High Descriptor")  # server side: a descriptor >= 1030
    finally:
        for fd in filler:
            os.close(fd)
    assert response.output_text == bio_for("High Descriptor")
    assert fake.total_requests == 1
