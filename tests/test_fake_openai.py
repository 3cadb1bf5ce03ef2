"""Tests for tests/support/fake_openai.py, driven through the real `openai` SDK.

Besides checking the fake, these pin down how the installed SDK reacts to each fault, which is
what the application's error handling is written against.
"""

from __future__ import annotations

import http.client
import json
import logging
import math
import os
import re
import resource
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx2
import openai
import pytest
from openai.types.responses import Response

try:  # tests/ imported as a package
    from tests.support.fake_openai import (
        CITATIONS_SUFFIX,
        FakeOpenAI,
        artist_name_from,
        bio_for,
        format_go_duration,
        tokens_for,
    )
except ModuleNotFoundError:  # pytest put tests/ itself on sys.path (no tests/__init__.py)
    from support.fake_openai import (
        CITATIONS_SUFFIX,
        FakeOpenAI,
        artist_name_from,
        bio_for,
        format_go_duration,
        tokens_for,
    )

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
    first, second = fake.requests
    assert (first.fault, second.fault) == ("rate_limit", "ok")
    # The SDK's own backoff for a first retry is 0.375-0.5 s; its log line shows it used
    # the server's value instead, and the arrival gap shows it really slept that long.
    assert "Retrying request in 0.200000 seconds" in caplog.text
    assert second.at - first.at >= 0.19


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
    assert [record.fault for record in fake.requests] == [
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


# -- enforced rate limits: helpers ----------------------------------------------------------------

# The units Go's time.Duration.String() uses; "ms" before "m" and "s" so it matches first.
_GO_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
_GO_PART = r"(\d+(?:\.\d+)?)(ms|us|µs|ns|h|m|s)"
_GO_DURATION = re.compile(rf"(?:{_GO_PART})+")
LIMIT_HEADERS = tuple(
    f"x-ratelimit-{part}-{kind}"
    for kind in ("requests", "tokens")
    for part in ("limit", "remaining", "reset")
)


def parse_go_duration(text: str) -> float:
    """Seconds in a Go duration string ("1h2m3s", "12ms", "0s"), the way a client reads it."""
    if not _GO_DURATION.fullmatch(text):
        raise ValueError(f"not a Go duration: {text!r}")
    return sum(float(number) * _GO_UNITS[unit] for number, unit in re.findall(_GO_PART, text))


Outcome = tuple[int, Mapping[str, str], Any]


def attempt(client: openai.OpenAI, name: str, **extra: Any) -> Outcome:
    """One request; (status, headers, parsed Response or the SDK's APIStatusError)."""
    try:
        raw = client.responses.with_raw_response.create(
            model="gpt-test", prompt={"id": "pmpt_bio", "variables": {"artist_name": name}}, **extra
        )
    except openai.APIStatusError as err:
        return err.status_code, err.response.headers, err
    return raw.status_code, raw.headers, raw.parse()


def limit_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {key: headers[key] for key in LIMIT_HEADERS if key in headers}


def statuses(outcomes: list[Outcome]) -> list[int]:
    return [status for status, _, _ in outcomes]


# -- enforced rate limits: Go durations -----------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.0, "0s"),
        (-1.0, "0s"),
        (0.012, "12ms"),
        (0.0001, "1ms"),  # rounded up: waiting the reset is always long enough
        (0.9999, "1s"),
        (1.0, "1s"),
        (1.5, "1.5s"),
        (59.9, "59.9s"),
        (60.0, "1m0s"),
        (360.0, "6m0s"),
        (179.56, "2m59.56s"),
        (3600.0, "1h0m0s"),
        (3723.0, "1h2m3s"),
    ],
)
def test_format_go_duration(seconds: float, text: str) -> None:
    assert format_go_duration(seconds) == text


def test_format_go_duration_round_trips_through_a_client_parser() -> None:
    for ms in [*range(0, 2000, 7), *range(2000, 8_000_000, 9973)]:
        seconds = ms / 1000
        assert parse_go_duration(format_go_duration(seconds)) == pytest.approx(seconds, abs=1e-9)
        # Off the millisecond grid: rounded up by less than a millisecond.
        parsed = parse_go_duration(format_go_duration(seconds + 0.0004))
        assert seconds + 0.0004 <= parsed <= seconds + 0.001 + 1e-9


# -- enforced rate limits: admission --------------------------------------------------------------


def test_no_limit_headers_unless_enforced_and_enforce_none_restores(
    fake: FakeOpenAI, make_client: MakeClient
) -> None:
    client = make_client()
    status, headers, _ = attempt(client, "Free")
    assert status == 200 and limit_headers(headers) == {}
    fake.enforce(rpm=6, window=10.0)  # holds 1 request, refills one per 10 s
    assert statuses([attempt(client, "Free") for _ in range(2)]) == [200, 429]
    fake.enforce(None)
    outcomes = [attempt(client, "Free") for _ in range(5)]
    assert statuses(outcomes) == [200] * 5
    assert all(limit_headers(headers) == {} for _, headers, _ in outcomes)
    fake.enforce(rpm=6, window=10.0)
    fake.reset()  # reset() turns it off too
    assert statuses([attempt(client, "Free") for _ in range(3)]) == [200] * 3
    assert fake.rate_limited == 0  # reset() zeroed the one 429 above


def test_burst_is_refused_exactly_past_the_capacity(
    fake: FakeOpenAI, make_client: MakeClient
) -> None:
    # 6 RPM over a 100 s window holds 10 requests and refills one every 10 s: the burst below
    # is over long before an 11th fits.
    fake.enforce(rpm=6, window=100.0)
    client = make_client()
    outcomes = [attempt(client, "Burst") for _ in range(15)]
    assert statuses(outcomes) == [200] * 10 + [429] * 5
    for _, headers, err in outcomes[10:]:
        assert isinstance(err, openai.RateLimitError)
        assert err.code == "rate_limit_exceeded" and err.type == "requests"
        assert re.search(
            r"Rate limit reached for gpt-test in organization org-fake on requests per min "
            r"\(RPM\): Limit 6, Used 6, Requested 1\. Please try again in (\S+)\.",
            err.message,
        )
        assert headers["x-ratelimit-remaining-requests"] == "0"
        assert int(headers["retry-after"]) >= 9  # ~10 s until one request fits
    assert [record.limited for record in fake.requests] == [False] * 10 + [True] * 5
    assert [record.fault for record in fake.requests][-1] == "limit_requests"
    assert fake.calls("Burst") == 15 and fake.succeeded("Burst") == 10
    assert fake.rate_limited == 5
    assert fake.rate_limited_by == {"requests": 5, "tokens": 0, "rule": 0}


def test_concurrent_burst_admits_exactly_the_capacity(
    fake: FakeOpenAI, make_client: MakeClient
) -> None:
    fake.enforce(rpm=6, window=100.0)  # 10 requests, then one per 10 s
    client = make_client(timeout=10)
    with ThreadPoolExecutor(max_workers=16) as pool:
        outcomes = list(pool.map(lambda i: attempt(client, f"Crowd {i}"), range(48)))
    assert Counter(statuses(outcomes)) == {200: 10, 429: 38}
    assert sum(not record.limited for record in fake.requests) == 10


def test_refused_request_takes_nothing_and_uses_no_rule(
    fake: FakeOpenAI, make_client: MakeClient
) -> None:
    fake.enforce(rpm=30, window=2.0)  # holds 1 request, refills one per 2 s
    client = make_client()
    assert attempt(client, "Rule")[0] == 200
    fake.add_rule("bad_request", times=1)
    status, _, err = attempt(client, "Rule")
    assert status == 429 and err.type == "requests"  # the limiter answers, the rule waits
    time.sleep(2.2)
    assert attempt(client, "Rule")[0] == 400  # the rule's turn; and the 400 was charged:
    assert attempt(client, "Rule")[0] == 429
    assert [record.fault for record in fake.requests] == [
        "ok",
        "limit_requests",
        "bad_request",
        "limit_requests",
    ]


def test_bucket_refills_at_the_rate(fake: FakeOpenAI, make_client: MakeClient) -> None:
    fake.enforce(rpm=30, window=10.0)  # holds 5, refills 0.5 a second
    client = make_client()
    assert statuses([attempt(client, "Drip") for _ in range(6)]) == [200] * 5 + [429]
    _, headers, err = attempt(client, "Drip")
    # One request takes 2 s to refill, less what came back since the first (full) arrival.
    records = fake.requests
    expected = 2.0 - (records[-1].at - records[0].at)
    wait = parse_go_duration(re.search(r"try again in (\S+)\.", err.message)[1])
    assert expected <= wait <= expected + 0.001  # rounded up to the ms
    assert headers["retry-after"] == str(math.ceil(expected))
    time.sleep(2.2)  # 1.1 requests' worth
    after = [attempt(client, "Drip") for _ in range(2)]
    assert statuses(after) == [200, 429]
    # Exactly what refilled since the first arrival (when it was full), less 6 requests taken;
    # the header floors it to whole 1/30ths of the minute, i.e. 1/6 of a request.
    records = fake.requests
    assert [record.limited for record in records] == [False] * 5 + [True] * 2 + [False, True]
    level = 5 + 0.5 * (records[-2].at - records[0].at) - 6
    remaining = int(after[0][1]["x-ratelimit-remaining-requests"]) / 30 * 5  # in requests
    assert level - 1 / 6 - 1e-6 <= remaining <= level + 1e-6


def test_admitted_rate_under_hammering_matches_the_limit(fake: FakeOpenAI) -> None:
    rpm, window, seconds = 1200, 1.0, 3.0  # 20 a second, 20 at once
    fake.enforce(rpm=rpm, window=window)
    client = openai.OpenAI(base_url=fake.base_url, api_key="test", max_retries=0, timeout=10)
    deadline = time.monotonic() + seconds
    counts: Counter[int] = Counter()
    lock = threading.Lock()

    def hammer(worker: int) -> None:
        while time.monotonic() < deadline:
            status = attempt(client, f"Hammer {worker}")[0]
            with lock:
                counts[status] += 1

    try:
        with ThreadPoolExecutor(max_workers=16) as pool:
            list(pool.map(hammer, range(16), timeout=30))
    finally:
        client.close()
    records = fake.requests
    admitted = [record.at for record in records if not record.limited]
    assert counts[200] == len(admitted) and counts[429] == fake.rate_limited > 0
    # The bucket was full at the first arrival and ~empty at the last one.
    span = records[-1].at - records[0].at
    assert span > 2.0
    rate = (len(admitted) - rpm * window / 60) / span
    assert rate == pytest.approx(rpm / 60, rel=0.10)
    # Never more than a full bucket plus one window's refill within any window.
    for index, start in enumerate(admitted):
        within = sum(1 for at in admitted[index:] if at < start + window)
        assert within <= 2 * rpm * window / 60 + 1


@pytest.mark.slow
def test_limiter_is_exact_with_1024_simultaneous_connections(fake: FakeOpenAI) -> None:
    size, rpm, window = 1024, 600, 60.0  # holds 600, refills 10 a second
    fake.enforce(rpm=rpm, window=window)
    limits = httpx2.Limits(max_connections=size, max_keepalive_connections=size)
    client = openai.OpenAI(
        base_url=fake.base_url,
        api_key="test",
        max_retries=0,
        timeout=60,
        http_client=openai.DefaultHttpxClient(limits=limits),
    )
    fake.hold()  # every request is decided on arrival, then all are answered together
    try:
        with ThreadPoolExecutor(max_workers=size) as pool:
            futures = [pool.submit(attempt, client, f"Band {i}") for i in range(size)]
            arrived = fake.wait_for_requests(size, timeout=45)
            fake.release()
            outcomes = [future.result(timeout=45) for future in futures]
    finally:
        fake.release()
        client.close()
    assert arrived
    records = fake.requests
    admitted = sum(not record.limited for record in records)
    span = records[-1].at - records[0].at
    assert rpm * window / 60 <= admitted <= rpm * window / 60 + rpm / 60 * span + 1
    assert Counter(statuses(outcomes)) == {200: admitted, 429: size - admitted}


# -- enforced rate limits: headers ----------------------------------------------------------------


def test_headers_are_truthful_on_every_reply(fake: FakeOpenAI, make_client: MakeClient) -> None:
    # 10 requests (1 a second) and 1,000 tokens (100 a second): each request takes far more
    # than refills between two of them, so remaining falls even on a slow machine.
    rpm, tpm, window = 60, 6000, 10.0
    fake.enforce(rpm=rpm, tpm=tpm, window=window)
    fake.add_rule("server_error", name="Broken")
    client = make_client()
    outcomes = [attempt(client, "Truth") for _ in range(4)] + [attempt(client, "Broken")]
    assert statuses(outcomes) == [200] * 4 + [500]  # error replies carry them too
    first = outcomes[0][2]
    cost = first.usage.total_tokens
    assert cost == tokens_for("Truth") == 50 + len(bio_for("Truth")) // 4
    remaining = []
    for _, headers, _ in outcomes:
        assert headers["x-ratelimit-limit-requests"] == str(rpm)
        assert headers["x-ratelimit-limit-tokens"] == str(tpm)
        for kind, limit in (("requests", rpm), ("tokens", tpm)):
            left = int(headers[f"x-ratelimit-remaining-{kind}"])
            reset = parse_go_duration(headers[f"x-ratelimit-reset-{kind}"])
            # Both describe one bucket: full again once the missing part refills.
            assert (limit - left - 1) / limit * window - 1e-3 <= reset
            assert reset <= (limit - left) / limit * window + 1e-3
        remaining.append(int(headers["x-ratelimit-remaining-requests"]))
    # A full bucket minus one request is exactly 9/10 of the minute's 60.
    assert remaining[0] == 54
    assert int(outcomes[0][1]["x-ratelimit-remaining-tokens"]) == (1000 - cost) * 6
    assert remaining == sorted(remaining, reverse=True) and remaining[-1] < remaining[0]


def test_limiter_429_carries_headers(fake: FakeOpenAI, make_client: MakeClient) -> None:
    fake.enforce(rpm=6, tpm=60_000, window=10.0)  # 1 request, refills in 10 s
    client = make_client()
    attempt(client, "Full")
    status, headers, _ = attempt(client, "Full")
    assert status == 429
    assert headers["x-ratelimit-limit-requests"] == "6"
    assert headers["x-ratelimit-remaining-requests"] == "0"  # less than 1/6 of the bucket
    assert 0 < parse_go_duration(headers["x-ratelimit-reset-requests"]) <= 10.0
    assert headers["x-ratelimit-limit-tokens"] == "60000"


@pytest.mark.parametrize(
    ("reset_format", "shape"),
    [
        ("go", r"0s|[1-9]\d*ms|(\d+h)?(\d+m)?\d+(\.\d+)?s"),
        ("seconds", r"\d+(\.\d+)?s"),
        ("bare", r"\d+(\.\d+)?"),
    ],
)
def test_reset_formats(
    fake: FakeOpenAI, make_client: MakeClient, reset_format: str, shape: str
) -> None:
    # 1 RPM and 60 TPM refill 1 request and 1 token a second: resets of minutes.
    fake.enforce(rpm=1, tpm=60, window=600.0, reset_format=reset_format)
    _, headers, _ = attempt(make_client(), "Shape")
    for kind, expected in (("requests", 60.0), ("tokens", float(tokens_for("Shape")))):
        value = headers[f"x-ratelimit-reset-{kind}"]
        assert re.fullmatch(shape, value), value
        seconds = parse_go_duration(value) if reset_format == "go" else float(value.rstrip("s"))
        assert seconds == pytest.approx(expected, abs=0.002)
    if reset_format == "go":
        cost = tokens_for("Shape")
        assert headers["x-ratelimit-reset-requests"] == "1m0s"
        assert headers["x-ratelimit-reset-tokens"] == f"{cost // 60}m{cost % 60}s"


@pytest.mark.parametrize(
    ("style", "expected"),
    [
        ("missing", {}),
        ("-1", dict.fromkeys(LIMIT_HEADERS, "-1")),
        ("0", dict.fromkeys(LIMIT_HEADERS, "0")),
        (
            "garbage",
            {
                key: {"limit": "unlimited", "remaining": "n/a", "reset": "soon"}[key.split("-")[2]]
                for key in LIMIT_HEADERS
            },
        ),
    ],
)
def test_broken_header_styles_still_enforce(
    fake: FakeOpenAI, make_client: MakeClient, style: str, expected: dict[str, str]
) -> None:
    fake.enforce(rpm=6, tpm=60_000, window=10.0, headers=style)  # 1 request
    client = make_client()
    outcomes = [attempt(client, "Odd") for _ in range(2)]
    assert statuses(outcomes) == [200, 429]
    assert [limit_headers(headers) for _, headers, _ in outcomes] == [expected, expected]


# -- enforced rate limits: retry headers ----------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "present"),
    [
        ("seconds", {"retry-after"}),
        ("ms", {"retry-after-ms"}),
        ("both", {"retry-after", "retry-after-ms"}),
        (None, set()),
    ],
)
def test_retry_after_per_setting(
    fake: FakeOpenAI, make_client: MakeClient, mode: str | None, present: set[str]
) -> None:
    fake.enforce(rpm=6, window=10.0, retry_after=mode)  # 1 request, refills in 10 s
    client = make_client()
    attempt(client, "Wait")
    status, headers, err = attempt(client, "Wait")
    assert status == 429
    assert {key for key in ("retry-after", "retry-after-ms") if key in headers} == present
    first, refused = fake.requests
    expected = 10.0 - (refused.at - first.at)  # until the one request has refilled
    wait = parse_go_duration(re.search(r"try again in (\S+)\.", err.message)[1])
    assert expected <= wait <= expected + 0.001
    if "retry-after" in present:
        assert headers["retry-after"] == str(math.ceil(expected))  # whole seconds, rounded up
    if "retry-after-ms" in present:
        assert int(headers["retry-after-ms"]) == math.ceil(wait * 1000 - 1e-6)


def test_retry_after_mixed_cycles(fake: FakeOpenAI, make_client: MakeClient) -> None:
    fake.enforce(rpm=6, window=10.0, retry_after="mixed")  # 1 request, refills in 10 s
    client = make_client()
    outcomes = [attempt(client, "Mixed") for _ in range(5)]
    assert statuses(outcomes) == [200] + [429] * 4
    seen = [
        tuple(key for key in ("retry-after", "retry-after-ms") if key in headers)
        for _, headers, _ in outcomes[1:]
    ]
    assert seen == [("retry-after",), ("retry-after-ms",), (), ("retry-after",)]


def test_sdk_waits_the_servers_retry_after_ms(
    fake: FakeOpenAI, make_client: MakeClient, caplog: pytest.LogCaptureFixture
) -> None:
    fake.enforce(rpm=60, window=1.0, retry_after="ms")  # 1 request, refills in 1 s
    client = make_client(max_retries=2)
    with caplog.at_level(logging.INFO, logger="openai"):
        replies = [ask(client, "Paced") for _ in range(2)]
    assert [reply.output_text for reply in replies] == [bio_for("Paced")] * 2
    first, refused, retried = fake.requests
    assert refused.limited and not retried.limited
    assert fake.rate_limited == 1 and fake.succeeded("Paced") == 2
    # The SDK slept what the server asked (not its own 0.5-1 s backoff) and was then admitted.
    match = re.search(r"Retrying request in ([\d.]+) seconds", caplog.text)
    expected = 1.0 - (refused.at - first.at)
    assert match and float(match[1]) == pytest.approx(expected, abs=0.0011)
    assert retried.at - refused.at >= float(match[1]) - 0.01


# -- enforced rate limits: tokens -----------------------------------------------------------------


def test_tpm_charges_each_replys_tokens(fake: FakeOpenAI, make_client: MakeClient) -> None:
    cost = 50 + len(bio_for("Tokens")) // 4  # input + output tokens of the bio it returns
    short = 50 + len("short") // 4
    tpm = 2 * cost + 60  # with a 60 s window: room for two bios, then 60 tokens
    fake.enforce(rpm=1000, tpm=tpm, window=60.0)
    client = make_client()
    first, second, third = (attempt(client, "Tokens") for _ in range(3))
    assert statuses([first, second, third]) == [200, 200, 429]
    assert first[2].usage.total_tokens == cost
    assert int(first[1]["x-ratelimit-remaining-tokens"]) == tpm - cost
    # 60 tokens left, plus what refilled (tpm / 60 a second) between the two.
    records = fake.requests
    refilled = tpm / 60 * (records[1].at - records[0].at)
    assert int(second[1]["x-ratelimit-remaining-tokens"]) == math.floor(60 + refilled + 1e-6)
    err = third[2]
    assert err.type == "tokens" and err.code == "rate_limit_exceeded"
    assert f"on tokens per min (TPM): Limit {tpm}, Used " in err.message
    assert f", Requested {cost}. Please try again in " in err.message
    # The 429 took nothing: not a request either.
    assert int(third[1]["x-ratelimit-remaining-requests"]) >= int(
        second[1]["x-ratelimit-remaining-requests"]
    )
    # A reply with a short text costs less, so it fits where a bio does not.
    fake.add_rule("ok", text="short", times=1)
    status, _, reply = attempt(client, "Tokens")
    assert status == 200 and reply.usage.total_tokens == short <= 60
    assert [record.tokens for record in fake.requests] == [cost, cost, 0, short]
    assert fake.rate_limited_by == {"requests": 0, "tokens": 1, "rule": 0}


def test_both_limits_short_names_requests(fake: FakeOpenAI, make_client: MakeClient) -> None:
    cost = tokens_for("Both")
    fake.enforce(rpm=6, tpm=6 * cost, window=10.0)  # 1 request, exactly 1 reply's tokens
    client = make_client()
    assert attempt(client, "Both")[0] == 200
    status, headers, err = attempt(client, "Both")
    assert status == 429 and err.type == "requests"  # like OpenAI: RPM is named first
    # Though the tokens ran out too: less than one reply's worth (the limit, scaled) is left.
    assert int(headers["x-ratelimit-remaining-tokens"]) < 6 * cost
    assert fake.rate_limited_by == {"requests": 1, "tokens": 0, "rule": 0}


def test_request_larger_than_the_token_bucket(fake: FakeOpenAI, make_client: MakeClient) -> None:
    fake.enforce(tpm=60, window=60.0)  # 60 tokens: less than any bio
    client = make_client()
    status, headers, err = attempt(client, "Huge")
    assert status == 429 and err.type == "tokens"
    assert "Request too large for gpt-test" in err.message
    assert f"Limit 60, Requested {tokens_for('Huge')}" in err.message
    assert "retry-after" not in headers and "retry-after-ms" not in headers
    assert "x-ratelimit-remaining-requests" not in headers  # no RPM limit set
    assert headers["x-ratelimit-remaining-tokens"] == "60"
    # Named for its size even when the requests ran out too.
    fake.enforce(rpm=6, tpm=300, window=10.0)  # 1 request, 50 tokens
    fake.add_rule("ok", text="", times=1)  # costs exactly the 50 input tokens
    assert attempt(client, "Tiny")[0] == 200
    status, _, err = attempt(client, "Huge")
    assert status == 429 and err.type == "tokens"
    assert err.message.startswith("Error code: 429 - Request too large")


def test_enforce_validates_arguments(fake: FakeOpenAI) -> None:
    bad: list[dict[str, Any]] = [
        {"rpm": 0},
        {"tpm": -5},
        {"rpm": 60, "window": 0},
        {"rpm": 30, "window": 1.0},  # holds half a request
        {"rpm": 60, "retry_after": "sometimes"},
        {"rpm": 60, "reset_format": "iso8601"},
        {"rpm": 60, "headers": "lies"},
    ]
    for kwargs in bad:
        with pytest.raises(ValueError):
            fake.enforce(**kwargs)


# -- storms ---------------------------------------------------------------------------------------


def storm_outcome(client: openai.OpenAI, name: str) -> str:
    """What one request got, as the client sees it."""
    try:
        ask(client, name)
    except openai.RateLimitError as err:
        assert err.code == "rate_limit_exceeded" and err.response.headers["retry-after"] == "1"
        return "rate_limit"
    except openai.InternalServerError:
        return "server_error"
    except json.JSONDecodeError:
        return "malformed"
    except openai.APIConnectionError:
        return "drop"
    return "ok"


def test_storm_fractions_are_what_was_asked(fake: FakeOpenAI, make_client: MakeClient) -> None:
    asked = {"rate_limit": 0.3, "server_error": 0.1, "malformed": 0.05, "drop": 0.05}
    for fault, fraction in asked.items():
        fake.add_rule(fault, fraction=fraction)
    client = make_client()
    n = 500
    seen = [storm_outcome(client, f"Storm {i % 7}") for i in range(n)]
    # What the client saw is what the fake says it did.
    assert seen == [record.fault for record in fake.requests]
    counts = Counter(seen)
    for fault, fraction in {**asked, "ok": 0.5}.items():
        sigma = math.sqrt(n * fraction * (1 - fraction))
        assert abs(counts[fault] - n * fraction) <= 4 * sigma, (fault, counts)
    assert fake.rate_limited == counts["rate_limit"]
    assert fake.rate_limited_by["rule"] == counts["rate_limit"]
    # Seeded: the same seed replays the same sequence.
    fake.reseed(0)
    fake.reset_counts()
    assert [storm_outcome(client, "Replay") for _ in range(100)] == seen[:100]
    fake.reseed(1)
    assert [storm_outcome(client, "Other") for _ in range(100)] != seen[:100]


def test_every_nth_request(fake: FakeOpenAI, make_client: MakeClient) -> None:
    fake.add_rule("server_error", every=3)
    fake.add_rule("rate_limit", name="Only", every=2, times=1)
    client = make_client()
    assert [storm_outcome(client, "Nth") for _ in range(7)] == ["ok", "ok", "server_error"] * 2 + [
        "ok"
    ]
    # A named storm rule counts only its artist; `times` counts firings.
    # "Only" #2 is the server_error rule's 9th and never reaches the rate_limit rule, so
    # that rule's 2nd request is "Only" #3.
    outcomes = [storm_outcome(client, "Only") for _ in range(6)]
    assert outcomes == ["ok", "server_error", "rate_limit", "ok", "server_error", "ok"]


def test_storm_rule_validation(fake: FakeOpenAI) -> None:
    for kwargs in (
        {"every": 0},
        {"fraction": 0.0},
        {"fraction": 1.5},
        {"every": 2, "fraction": 0.5},
    ):
        with pytest.raises(ValueError):
            fake.add_rule("server_error", **kwargs)


# -- flex processing ------------------------------------------------------------------------------


def test_flex_unavailable_hits_only_flex_requests(
    fake: FakeOpenAI, make_client: MakeClient
) -> None:
    fake.add_rule("flex_unavailable")
    client = make_client()
    plain = attempt(client, "Flexy")
    flex = attempt(client, "Flexy", service_tier="flex")
    priority = attempt(client, "Flexy", service_tier="priority")
    auto = attempt(client, "Flexy", service_tier="auto")
    assert statuses([plain, flex, priority, auto]) == [200, 429, 200, 200]
    assert [plain[2].service_tier, priority[2].service_tier, auto[2].service_tier] == [
        "default",
        "priority",
        "default",
    ]
    err = flex[2]
    assert isinstance(err, openai.RateLimitError)  # a 429, though not a rate limit
    assert err.code == "resource_unavailable" and err.type == "resource_unavailable"
    assert err.message.startswith("Error code: 429 - Resource Unavailable")
    assert "retry-after" not in flex[1]
    assert [record.service_tier for record in fake.requests] == [None, "flex", "priority", "auto"]
    assert [record.fault for record in fake.requests] == ["ok", "flex_unavailable", "ok", "ok"]
    assert fake.rate_limited == 0


def test_flex_success_echoes_the_tier_and_refusal_is_not_charged(
    fake: FakeOpenAI, make_client: MakeClient
) -> None:
    fake.enforce(rpm=6, window=100.0)  # 10 requests
    fake.add_rule("flex_unavailable", times=2)
    client = make_client()
    outcomes = [attempt(client, "Cheap", service_tier="flex") for _ in range(3)]
    assert statuses(outcomes) == [429, 429, 200]
    assert outcomes[2][2].service_tier == "flex"
    # Both refusals left the bucket full; only the success took a request.
    assert [h["x-ratelimit-remaining-requests"] for _, h, _ in outcomes] == ["6", "6", "5"]
    assert [record.tokens for record in fake.requests] == [0, 0, tokens_for("Cheap")]
