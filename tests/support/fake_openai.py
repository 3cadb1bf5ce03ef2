"""A scriptable fake of the OpenAI Responses API for tests.

`FakeOpenAI` runs a real HTTP/1.1 server on 127.0.0.1 so the real `openai` SDK (and its HTTP
stack, retries and timeouts) is exercised end to end, while tests decide per artist what the
"API" does: answer, rate-limit, fail, hang, send garbage or drop the connection.

Typical use::

    with FakeOpenAI() as fake:
        fake.add_rule("rate_limit", name="Björk", times=1, retry_after=0.2)
        client = OpenAI(base_url=fake.base_url, api_key="test")
        ...
        assert fake.calls("Björk") == 2

Rate limits the way OpenAI enforces them (off by default, see `FakeOpenAI.enforce`)::

    fake.enforce(rpm=600, tpm=90_000, window=1.0, retry_after="ms")

Each limit is a bucket holding `limit * window / 60` that refills continuously at `limit / 60`
per second; a request is admitted only if both buckets have room for it (1 request, and the
tokens its reply will be charged), else it gets a 429 `rate_limit_exceeded` and takes nothing.
Every reply then carries `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` headers.

429 storms and other fault mixes, deterministic for a seed (`FakeOpenAI(seed=...)`)::

    fake.add_rule("rate_limit", fraction=0.3)  # 30% of requests
    fake.add_rule("server_error", fraction=0.1)  # another 10%, not 10% of the other 70%
    fake.add_rule("drop", every=20)  # every 20th request that gets this far

The Files and Batches endpoints (`fake.batches`, see `fake_batches.py`) answer each request
line of a batch with the same rules, without counting it as an online request
(`total_requests`, `calls`, `requests` stay about /v1/responses; `batch_calls` counts lines)::

    fake.batches.script(outcome="expired", answered=10)
    fake.add_rule("bad_request", name="Björk")  # her line is a 400 in the error file

As a process of its own (``make demo``): ``python -m tests.support.fake_openai`` prints its
base URL and answers every request with a stand-in biography until SIGTERM (``serve``).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import random
import re
import select
import socket
import sys
import threading
import time
import uuid
import zlib
from collections import Counter, deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from .fake_batches import BatchService

__all__ = [
    "FAULTS",
    "FakeOpenAI",
    "RequestRecord",
    "artist_name_from",
    "bio_for",
    "format_go_duration",
    "tokens_for",
]

# Every fault `FakeOpenAI.add_rule` accepts.
FAULTS: frozenset[str] = frozenset(
    {
        "ok",
        "empty",
        "citations",
        "rate_limit",
        "insufficient_quota",
        "server_error",
        "unauthorized",
        "forbidden",
        "not_found",
        "bad_request",
        "hang",
        "malformed",
        "drop",
        "flex_unavailable",
    }
)
# Faults answered before the rate limiter: never turned away by it and never charged to it
# (like the real API's auth and quota checks, and flex's "not charged" capacity refusal).
_UNCHARGED: frozenset[str] = frozenset(
    {"invalid_json", "rate_limit", "insufficient_quota", "unauthorized", "flex_unavailable"}
)
# Settings `FakeOpenAI.enforce` accepts.
RETRY_AFTER_MODES: tuple[str | None, ...] = ("seconds", "ms", "both", "mixed", None)
RESET_FORMATS: tuple[str, ...] = ("go", "seconds", "bare")
HEADER_STYLES: tuple[str, ...] = ("truthful", "missing", "-1", "0", "garbage")
_LIMITS_URL = "https://platform.openai.com/account/rate-limits"
# Slack for float drift in bucket arithmetic (levels are sums of many small refills).
_EPSILON = 1e-9

CITATIONS_SUFFIX = "\n\nSources:\n- https://example.com/a\n- https://example.org/b"
INPUT_TOKENS = 50
DEFAULT_HANG_SECONDS = 3600.0
# Pause used when a waiting client unexpectedly sends data, so the wait loop cannot spin.
_SPIN_GUARD_SECONDS = 0.05
# Bounded so a long soak test cannot grow the log without limit.
_MAX_RECORDS = 100_000
_ARTIST_LINE = re.compile(r"^[ \t]*Artist name:[ \t]*(.*?)[ \t]*$", re.MULTILINE)
_DISCONNECTS = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, TimeoutError)

_GENRES = (
    "art-pop",
    "free jazz",
    "Nordic folk",
    "Afrobeat",
    "chamber électronique",
    "Krautrock",
    "bossa nova",
    "post-punk",
)
_CITIES = ("Zürich", "Montréal", "São Paulo", "Reykjavík", "Kraków", "Köln", "Tromsø", "Besançon")

# fault -> (HTTP status, error.type, error.code, error.param, message template).
# Templates may use {model}, {name}, {prompt_id} and {retry_after}.
# Shapes follow real OpenAI error bodies.
_ERRORS: dict[str, tuple[int, str, str | None, str | None, str]] = {
    "rate_limit": (
        429,
        "requests",
        "rate_limit_exceeded",
        None,
        "Rate limit reached for {model} in organization org-fake on requests per min (RPM): "
        "Limit 500, Used 500, Requested 1. Please try again in {retry_after}s.",
    ),
    "insufficient_quota": (
        429,
        "insufficient_quota",
        "insufficient_quota",
        None,
        "You exceeded your current quota, please check your plan and billing details. For more "
        "information on this error, read the docs: "
        "https://platform.openai.com/docs/guides/error-codes/api-errors.",
    ),
    "server_error": (
        500,
        "server_error",
        None,
        None,
        "The server had an error while processing your request. Sorry about that!",
    ),
    "unauthorized": (
        401,
        "invalid_request_error",
        "invalid_api_key",
        None,
        "Incorrect API key provided: sk-fake***. You can find your API key at "
        "https://platform.openai.com/account/api-keys.",
    ),
    "forbidden": (
        403,
        "invalid_request_error",
        None,
        None,
        "Project `proj_fake` does not have access to model `{model}`.",
    ),
    "not_found": (
        404,
        "invalid_request_error",
        None,
        "prompt",
        "Prompt with id '{prompt_id}' not found.",
    ),
    "bad_request": (
        400,
        "invalid_request_error",
        "invalid_request_error",
        "input",
        "Invalid 'input': the request for artist '{name}' was rejected.",
    ),
    "invalid_json": (
        400,
        "invalid_request_error",
        None,
        None,
        "We could not parse the JSON body of your request.",
    ),
    # Flex processing out of capacity. OpenAI documents it as "429 Resource Unavailable", not
    # charged; the body's type and code here are this fake's choice (the real ones are not
    # documented), chosen so it cannot be mistaken for `rate_limit_exceeded`.
    "flex_unavailable": (
        429,
        "resource_unavailable",
        "resource_unavailable",
        None,
        "Resource Unavailable: flex processing has no capacity for {model} right now. Retry "
        "later, or send the request without service_tier='flex'.",
    ),
}


def bio_for(name: str | None) -> str:
    """Return the deterministic biography the fake writes for `name`.

    The text names the artist and contains non-ASCII characters ("é", "—", "ü", ...) so that
    code writing it with `ensure_ascii=False` is exercised. `None` (artist not identified)
    gets a generic biography.
    """
    who = name if name else "This unnamed artist"
    # crc32 rather than hash(): stable across processes and PYTHONHASHSEED values.
    seed = zlib.crc32(who.encode("utf-8"))
    genre = _GENRES[seed % len(_GENRES)]
    city = _CITIES[(seed >> 8) % len(_CITIES)]
    year = 1960 + seed % 60
    return (
        f"{who} is an artist rooted in {genre} who emerged from {city}'s café scene in {year}. "
        f"Critics praise {who}'s naïve warmth — part über-precise arrangement, part reverie. "
        f"{who} still tours widely and remains a touchstone for younger musicians."
    )


def _text_of(value: Any) -> str | None:
    """Text of a prompt variable or content part: a plain string or an `input_text` object."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("text"), str):
        return value["text"]
    return None


def _input_text(value: Any) -> str:
    """Flatten a Responses `input` (a string or a list of messages) to plain text."""
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        return ""
    parts: list[str] = []
    for item in value:
        content = item.get("content") if isinstance(item, dict) else None
        pieces = content if isinstance(content, list) else [content]
        parts.extend(text for text in map(_text_of, pieces) if text is not None)
    return "\n".join(parts)


def artist_name_from(body: Any) -> str | None:
    """Identify the artist a Responses request is about, or None if it cannot be told.

    A stored prompt's `artist_name` variable wins; otherwise the first `Artist name: <name>`
    line of the input is used.
    """
    if not isinstance(body, dict):
        return None
    prompt = body.get("prompt")
    if isinstance(prompt, dict) and isinstance(prompt.get("variables"), dict):
        name = _text_of(prompt["variables"].get("artist_name"))
        if name is not None:
            return name
    match = _ARTIST_LINE.search(_input_text(body.get("input")))
    return match.group(1) if match and match.group(1) else None


def _output_tokens(text: str) -> int:
    """Output tokens the fake bills for `text` (about 4 characters a token)."""
    return len(text) // 4


def _reply_text(fault: str, name: str | None, text: str | None = None) -> str:
    """The text a reply under `fault` carries; for faults that do not answer with text, the
    biography the request would have got (what the limiter charges, see `tokens_for`)."""
    if fault == "empty":
        return ""
    reply = text if text is not None else bio_for(name)
    return reply + CITATIONS_SUFFIX if fault == "citations" else reply


def tokens_for(name: str | None, fault: str = "ok", text: str | None = None) -> int:
    """Tokens one request for `name` costs: `INPUT_TOKENS` plus the output tokens of its reply.

    This is the reply's `usage.total_tokens` and what the enforced TPM limit charges when the
    request is admitted. `fault`/`text` are a rule's: "empty" replies cost only the input,
    "citations" more, `text` replaces the biography; faults that answer no text (errors,
    "hang", "drop", ...) are charged as the biography they would have returned.
    """
    return INPUT_TOKENS + _output_tokens(_reply_text(fault, name, text))


def format_go_duration(seconds: float) -> str:
    """`seconds` as OpenAI writes its reset headers: a Go `time.Duration` string to the ms.

    Rounded up to the millisecond (waiting that long is always enough), then Go's shapes:
    "0s", "12ms", "1s", "1.5s", "59.9s", "6m0s", "2m59.56s", "1h2m3s".
    """
    ms = max(0, math.ceil(seconds * 1000 - 1e-6))
    if ms == 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    whole, frac = divmod(rest, 1000)
    secs = f"{whole}.{frac:03d}".rstrip("0") if frac else f"{whole}"
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


def _format_reset(seconds: float, style: str) -> str:
    """A reset header value in `style` (see `RESET_FORMATS`)."""
    if style == "go":
        return format_go_duration(seconds)
    value = f"{max(0, math.ceil(seconds * 1000 - 1e-6)) / 1000:g}"
    return f"{value}s" if style == "seconds" else value


def _echo_tier(tier: str | None) -> str:
    """The `service_tier` a successful reply reports for a request that asked for `tier`."""
    if tier in (None, "auto"):
        return "default"
    return "priority" if tier == "fast" else str(tier)


def _response_payload(model: str, text: str, service_tier: str = "default") -> dict[str, Any]:
    """A completed Responses API object whose `output_text` is `text`."""
    output_tokens = _output_tokens(text)
    return {
        "id": f"resp_{uuid.uuid4().hex}",
        "object": "response",
        "created_at": int(time.time()),
        "status": "completed",
        "model": model,
        "error": None,
        "incomplete_details": None,
        "output": [
            {
                "type": "message",
                "id": f"msg_{uuid.uuid4().hex}",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": text, "annotations": []}],
            }
        ],
        # Required by the SDK's model; included so strict response validation also passes.
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "service_tier": service_tier,
        "usage": {
            "input_tokens": INPUT_TOKENS,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": INPUT_TOKENS + output_tokens,
        },
    }


def _error_payload(fault: str, **fields: Any) -> dict[str, Any]:
    """The `{"error": {...}}` body the real API sends for `fault`; `fields` fill the message."""
    _, err_type, code, param, template = _ERRORS[fault]
    message = template.format(**fields)
    return {"error": {"message": message, "type": err_type, "param": param, "code": code}}


def _check_choice(label: str, value: str | None, choices: tuple[str | None, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{label} must be one of {choices!r}, not {value!r}")


def _wait_readable(socks: list[socket.socket], timeout: float) -> list[socket.socket]:
    """The sockets of `socks` that become readable (or hung up) within `timeout` seconds.

    Not select.select(): it raises ValueError for descriptors >= 1024 (FD_SETSIZE), which a
    server with ~1000 keep-alive connections reaches, and the handler would then drop the
    connection without an answer. poll() has no such limit.
    """
    if not hasattr(select, "poll"):  # Windows: select() there has no descriptor-number limit
        return select.select(socks, [], [], timeout)[0]
    poller = select.poll()
    by_fd = {sock.fileno(): sock for sock in socks}
    for fd in by_fd:
        poller.register(fd, select.POLLIN)
    return [by_fd[fd] for fd, _ in poller.poll(max(timeout, 0.0) * 1000.0)]


def _service_tier_of(body: Any) -> str | None:
    """The `service_tier` a request body asks for, if it names one."""
    tier = body.get("service_tier") if isinstance(body, dict) else None
    return tier if isinstance(tier, str) else None


def _retry_after_headers(wait: float, mode: str | None) -> dict[str, str]:
    """Retry-After headers for a wait of `wait` seconds; `mode` as in `FakeOpenAI.enforce`."""
    headers: dict[str, str] = {}
    if mode in ("seconds", "both"):
        headers["retry-after"] = str(max(1, math.ceil(wait - 1e-6)))
    if mode in ("ms", "both"):
        headers["retry-after-ms"] = str(max(1, math.ceil(wait * 1000 - 1e-6)))
    return headers


class RequestRecord(NamedTuple):
    """One request as seen by the fake.

    `name`: the artist; `fault`: what it was answered with (see `FakeOpenAI.requests`); `at`:
    `time.monotonic()` at arrival, which is also when the limiter decided on it;
    `service_tier`: the request's `service_tier` (None if it sent none); `tokens`: tokens
    charged for it (`tokens_for`), 0 for a request that was not charged.
    """

    name: str | None
    fault: str
    at: float
    service_tier: str | None = None
    tokens: int = 0

    @property
    def limited(self) -> bool:
        """True if the enforced limiter turned this request away (see `FakeOpenAI.enforce`)."""
        return self.fault.startswith("limit_")


@dataclass
class _Rule:
    """A scripted fault; `remaining` None means it never runs out.

    `every`/`fraction` make it fire on only some of the requests it matches (see `add_rule`);
    `seen` counts the matching requests that reached it, for `every`.
    """

    fault: str
    name: str | None
    remaining: int | None
    retry_after: float | None
    delay: float | None
    text: str | None
    every: int | None = None
    fraction: float | None = None
    seen: int = 0

    def matches(self, name: str | None, tier: str | None) -> bool:
        if self.name is not None and self.name != name:
            return False
        return self.fault != "flex_unavailable" or tier == "flex"


@dataclass(frozen=True)
class _Rejection:
    """Why the limiter turned a request away, for its 429 body and Retry-After headers."""

    kind: str  # "requests" or "tokens": the limit that was short
    limit: int  # that limit, per minute
    used: int  # how much of it was used, per minute (limit - remaining)
    requested: int
    wait: float  # seconds until the request would fit (inf: it never will)
    retry_after: str | None  # "seconds", "ms", "both" or None: the headers to send


@dataclass(frozen=True)
class _Plan:
    """What one request will get: the fault plus the parameters of the rule that chose it.

    `headers` are the x-ratelimit-* headers (empty when no limit is enforced), `rejection` is
    set when the limiter refused the request (then `fault` is "limit_requests"/"limit_tokens").
    """

    fault: str
    retry_after: float | None = None
    delay: float | None = None
    text: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    rejection: _Rejection | None = None
    tokens: int = 0


class _Bucket:
    """One per-minute limit as a bucket: holds `limit * window / 60`, refills `limit / 60`/s."""

    def __init__(self, limit: int, window: float, now: float) -> None:
        self.limit = limit
        self.capacity = limit * window / 60.0
        self.rate = limit / 60.0
        self.level = self.capacity
        self._at = now

    def refill(self, now: float) -> None:
        if now > self._at:
            self.level = min(self.capacity, self.level + (now - self._at) * self.rate)
            self._at = now

    def has_room(self, amount: int) -> bool:
        return self.level + _EPSILON >= amount

    def wait_for(self, amount: int) -> float:
        """Seconds until `amount` fits (inf if it never can)."""
        if amount > self.capacity + _EPSILON:
            return math.inf
        return max(0.0, (amount - self.level) / self.rate)

    @property
    def remaining(self) -> int:
        """The level scaled to the per-minute limit (remaining / limit = fill fraction)."""
        return max(0, math.floor(self.level / self.capacity * self.limit + 1e-6))

    @property
    def reset(self) -> float:
        """Seconds until the bucket is full again."""
        return max(0.0, (self.capacity - self.level) / self.rate)


class _Limiter:
    """The limits `FakeOpenAI.enforce` set; used only under the fake's lock."""

    def __init__(
        self,
        rpm: int | None,
        tpm: int | None,
        *,
        window: float,
        retry_after: str | None,
        reset_format: str,
        headers: str,
        now: float,
    ) -> None:
        self.buckets: dict[str, _Bucket] = {}
        if rpm is not None:
            self.buckets["requests"] = _Bucket(rpm, window, now)
        if tpm is not None:
            self.buckets["tokens"] = _Bucket(tpm, window, now)
        self._retry_after = retry_after
        self._mixed = itertools.cycle(("seconds", "ms", None))
        self._reset_format = reset_format
        self._style = headers

    def admit(self, now: float, tokens: int) -> _Rejection | None:
        """Take 1 request and `tokens` tokens if every bucket has room; else take nothing."""
        need = {"requests": 1, "tokens": tokens}
        for bucket in self.buckets.values():
            bucket.refill(now)
        short = [kind for kind, bucket in self.buckets.items() if not bucket.has_room(need[kind])]
        if not short:
            for kind, bucket in self.buckets.items():
                bucket.level = max(0.0, bucket.level - need[kind])
            return None
        waits = {kind: self.buckets[kind].wait_for(need[kind]) for kind in short}
        # A request that can never fit is named for that; else requests before tokens, like
        # the real API's messages. The wait is until every short bucket has room.
        kind = next((k for k in short if math.isinf(waits[k])), short[0])
        bucket = self.buckets[kind]
        wait = max(waits.values())
        mode = next(self._mixed) if self._retry_after == "mixed" else self._retry_after
        used = bucket.limit - bucket.remaining
        return _Rejection(kind, bucket.limit, used, need[kind], wait, mode)

    def headers(self) -> dict[str, str]:
        """The x-ratelimit-* headers for the buckets' current state, in the configured style."""
        if self._style == "missing":
            return {}
        out: dict[str, str] = {}
        for kind, bucket in self.buckets.items():
            values = (
                str(bucket.limit),
                str(bucket.remaining),
                _format_reset(bucket.reset, self._reset_format),
            )
            if self._style in ("-1", "0"):
                values = (self._style,) * 3
            elif self._style == "garbage":
                values = ("unlimited", "n/a", "soon")
            for part, value in zip(("limit", "remaining", "reset"), values, strict=True):
                out[f"x-ratelimit-{part}-{kind}"] = value
        return out


class _Server(ThreadingHTTPServer):
    """Threaded HTTP server tuned for up to ~1000 concurrent keep-alive clients."""

    daemon_threads = True
    # Do not join handler threads on close: a "hang" handler may be mid-sleep.
    block_on_close = False
    request_queue_size = 2048
    allow_reuse_address = True

    def __init__(self, fake: FakeOpenAI) -> None:
        self.fake = fake
        super().__init__(("127.0.0.1", 0), _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Stay quiet about disconnects (expected); print anything else, it is a fake bug."""
        if not isinstance(sys.exc_info()[1], _DISCONNECTS):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    """Serves one connection (possibly many keep-alive requests) for a FakeOpenAI."""

    protocol_version = "HTTP/1.1"
    # Headers and body go out as two writes; without TCP_NODELAY, Nagle plus delayed ACKs can
    # add ~40 ms to every response.
    disable_nagle_algorithm = True
    server: _Server
    # The request being served still counts as in flight (see `_settle`).
    _pending = False
    _name: str | None = None

    def setup(self) -> None:
        super().setup()
        self.server.fake._track_connection(self.connection, add=True)

    def finish(self) -> None:
        self.server.fake._track_connection(self.connection, add=False)
        with contextlib.suppress(OSError):
            super().finish()

    def handle(self) -> None:
        try:
            super().handle()
        except (*_DISCONNECTS, ValueError):
            # The client went away (or stop() closed the socket) mid-request: nothing to answer.
            self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the default per-request stderr logging."""

    def do_GET(self) -> None:
        """The Files and Batches endpoints; anything else is an OpenAI-style 404."""
        if not self._batch_route("GET", b""):
            self._not_found()

    def do_DELETE(self) -> None:
        """DELETE /v1/files/{id}; anything else is an OpenAI-style 404."""
        raw = self._read_body()
        if not self._batch_route("DELETE", raw):
            self._not_found()

    def _not_found(self) -> None:
        error = {"message": "Unknown path.", "type": "invalid_request_error", "code": None}
        self._send_json(404, {"error": error})

    def _batch_route(self, method: str, raw: bytes) -> bool:
        """Answer a Files or Batches request; False when the path is not one of theirs."""
        url = urlsplit(self.path)
        content_type = self.headers.get("Content-Type", "")
        reply = self.server.fake.batches.handle(method, url.path, url.query, content_type, raw)
        if reply is None:
            return False
        status, payload, kind = reply
        self._send_bytes(status, payload, content_type=kind)
        return True

    def do_POST(self) -> None:
        raw = self._read_body()
        if urlsplit(self.path).path.rstrip("/") != "/v1/responses":
            if not self._batch_route("POST", raw):
                self._not_found()
            return
        try:
            body: Any = json.loads(raw)
        except ValueError:
            body = None
        fake = self.server.fake
        name = artist_name_from(body)
        plan = fake._begin(name, body)
        self._name, self._pending = name, True
        try:
            # The limiter's 429s come from the gateway: at once, without the model's latency.
            if fake._wait_gate() and (plan.rejection is not None or self._pause(fake.latency)):
                self._serve(plan, body, name)
        finally:
            self._settle(success=False)

    def _settle(self, *, success: bool) -> None:
        """End the current request's bookkeeping once; called just before replying.

        Settling before the reply is written means a client never sees its answer while the
        fake still counts the request as in flight (or not yet succeeded).
        """
        if self._pending:
            self._pending = False
            self.server.fake._end(self._name, success=success)

    # -- request/response plumbing ------------------------------------------------------------

    def _read_body(self) -> bytes:
        """Read the request body, honouring Content-Length (or chunked encoding)."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _read_chunked(self) -> bytes:
        chunks: list[bytes] = []
        while True:
            size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                # Skip any trailers up to the blank line that ends the body.
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(chunks)
            chunks.append(self.rfile.read(size))
            self.rfile.readline()

    def _send_bytes(
        self,
        status: int,
        payload: bytes,
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
    ) -> None:
        self._settle(success=False)
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("x-request-id", f"req_{uuid.uuid4().hex}")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(payload)
        self.wfile.flush()

    def _send_json(
        self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None
    ) -> None:
        # ensure_ascii=False: real API output is UTF-8, and clients must decode it as such.
        data = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        self._send_bytes(status, data, headers=headers)

    def _pause(self, seconds: float) -> bool:
        """Wait `seconds`; return False early if the client disconnects or the fake stops."""
        deadline = time.monotonic() + seconds
        wakeup = self.server.fake._wakeup
        while (left := deadline - time.monotonic()) > 0:
            # Sleeping in poll() instead of time.sleep() lets a hung-up client or stop() end
            # the wait at once, without 1000 parked threads polling.
            readable = _wait_readable([self.connection, wakeup], left)
            if wakeup in readable or (readable and self._client_gone()):
                return False
            if readable:
                # The client sent more bytes while waiting (it should not); don't spin.
                time.sleep(min(left, _SPIN_GUARD_SECONDS))
        return True

    def _client_gone(self) -> bool:
        try:
            return self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    # -- faults ---------------------------------------------------------------------------------

    def _serve(self, plan: _Plan, body: Any, name: str | None) -> None:
        """Answer the request as `plan` says."""
        model = body.get("model") if isinstance(body, dict) else None
        model = model if isinstance(model, str) and model else "fake-model"
        if plan.rejection is not None:
            self._limited(plan.rejection, plan.headers, model)
        elif plan.fault == "drop":
            self._drop()
        elif plan.fault == "malformed":
            self._malformed(plan.headers)
        elif plan.fault in _ERRORS:
            self._error(plan, body, name, model)
        elif plan.fault == "hang" and not self._pause(plan.delay or DEFAULT_HANG_SECONDS):
            return
        else:
            self._success(plan, body, name, model)

    def _success(self, plan: _Plan, body: Any, name: str | None, model: str) -> None:
        text = _reply_text(plan.fault, name, plan.text)
        tier = _echo_tier(_service_tier_of(body))
        self._settle(success=True)
        self._send_json(200, _response_payload(model, text, tier), plan.headers)

    def _error(self, plan: _Plan, body: Any, name: str | None, model: str) -> None:
        prompt = body.get("prompt") if isinstance(body, dict) else None
        prompt_id = prompt.get("id") if isinstance(prompt, dict) else None
        wait = f"{plan.retry_after if plan.retry_after is not None else 1:g}"
        payload = _error_payload(
            plan.fault, model=model, name=name, prompt_id=prompt_id or "x", retry_after=wait
        )
        headers = dict(plan.headers)
        if plan.fault == "rate_limit":
            # Deliberately no `retry-after-ms`: the SDK prefers it, and tests script Retry-After.
            headers["Retry-After"] = wait
        self._send_json(_ERRORS[plan.fault][0], payload, headers)

    def _limited(self, rejection: _Rejection, headers: dict[str, str], model: str) -> None:
        """The 429 the limiter sends: which limit, how much of it is used, when to retry."""
        per_min = (
            "requests per min (RPM)" if rejection.kind == "requests" else "tokens per min (TPM)"
        )
        if math.isinf(rejection.wait):
            message = (
                f"Request too large for {model} in organization org-fake on {per_min}: "
                f"Limit {rejection.limit}, Requested {rejection.requested}. The input or output "
                f"tokens must be reduced in order to run successfully. Visit {_LIMITS_URL} to "
                "learn more."
            )
        else:
            message = (
                f"Rate limit reached for {model} in organization org-fake on {per_min}: "
                f"Limit {rejection.limit}, Used {rejection.used}, Requested "
                f"{rejection.requested}. Please try again in {format_go_duration(rejection.wait)}. "
                f"Visit {_LIMITS_URL} to learn more."
            )
            headers = {**headers, **_retry_after_headers(rejection.wait, rejection.retry_after)}
        error = {"message": message, "type": rejection.kind, "param": None}
        self._send_json(429, {"error": {**error, "code": "rate_limit_exceeded"}}, headers)

    def _malformed(self, headers: dict[str, str]) -> None:
        # Claims to be JSON but is cut off mid-object, like a proxy truncating a reply.
        self._send_bytes(
            200, b'{"id": "resp_truncated", "object": "response", "outp', headers=headers
        )

    def _drop(self) -> None:
        # No status line, no headers: the socket is shut down when the handler returns.
        self.close_connection = True


class FakeOpenAI:
    """A scriptable fake OpenAI Responses API server on 127.0.0.1.

    All public methods are thread-safe and may be called while requests are being served.
    Point the SDK at it with `OpenAI(base_url=fake.base_url, api_key="test")`.

    Attributes:
        latency: seconds every request waits (after the gate) before it is answered; the
            enforced limiter's 429s do not wait it (the real API refuses at its gateway).
    """

    def __init__(self, *, latency: float = 0.0, seed: int = 0) -> None:
        """Create a stopped fake; call `start()` or use it as a context manager.

        `seed` seeds the draws of `fraction` rules (see `add_rule`, `reseed`).
        """
        self.latency = latency
        self._lock = threading.Condition()
        self._rules: list[_Rule] = []
        self._seed = seed
        self._rng = random.Random(seed)
        self._limiter: _Limiter | None = None
        self._rate_limited: Counter[str] = Counter()
        self._calls: Counter[str | None] = Counter()
        self._succeeded: Counter[str | None] = Counter()
        self._records: deque[RequestRecord] = deque(maxlen=_MAX_RECORDS)
        self._total = 0
        self._in_flight = 0
        self._concurrent_max = 0
        self._gate_open = threading.Event()
        self._gate_open.set()
        self._stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        # Made by start(). stop() closes the writer; the reader then stays readable (EOF),
        # which wakes every handler blocked in select() in `_Handler._pause`.
        self._wakeup: socket.socket
        self._wakeup_writer: socket.socket
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._batch_calls: Counter[str | None] = Counter()
        #: The Files and Batches endpoints (see `fake_batches.BatchService`).
        self.batches = BatchService(self._batch_answer, seed=seed)

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> FakeOpenAI:
        """Bind an ephemeral port and serve in a background thread. Returns self."""
        if self._server is not None:
            raise RuntimeError("FakeOpenAI is already running")
        self._stopping.clear()
        self._wakeup, self._wakeup_writer = socket.socketpair()
        self._server = _Server(self)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="fake-openai",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, wake blocked handlers and close every open connection."""
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()
        self._wakeup_writer.close()
        self._gate_open.set()
        server.shutdown()
        server.server_close()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            # Unblocks handler threads parked in recv() on idle keep-alive connections.
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        """`http://127.0.0.1:<port>/v1`, ready for `OpenAI(base_url=...)`."""
        if self._server is None:
            raise RuntimeError("FakeOpenAI is not running")
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    # -- scripting ----------------------------------------------------------------------------

    def add_rule(
        self,
        fault: str,
        *,
        name: str | None = None,
        times: int | None = None,
        retry_after: float | None = None,
        delay: float | None = None,
        text: str | None = None,
        every: int | None = None,
        fraction: float | None = None,
    ) -> None:
        """Apply `fault` to requests for artist `name` (every request if None).

        The rule covers the next `times` matching requests (forever if None). Rules are
        checked in the order added and the first match wins. `retry_after` is the
        Retry-After of "rate_limit" (default 1 s), `delay` how long "hang" waits (default
        3600 s) and `text` replaces the biography of "ok"/"citations" replies.

        "flex_unavailable" (429, type and code "resource_unavailable", message "Resource
        Unavailable: ...", no Retry-After, not charged) matches only requests whose body
        has `"service_tier": "flex"`; other requests pass it by.

        Storms: with `every=N` the rule fires on every Nth matching request that reaches it
        (the Nth, 2Nth, ...); with `fraction=F` on a share F of them. Each request draws one
        number from the fake's seeded RNG and the `fraction` rules it matches split [0, 1)
        in the order added, so fractions add up: rate_limit 0.3 then server_error 0.1 is
        30% + 10% of the requests, not 10% of the 70% left. A request a storm rule does not
        fire on goes on to the next rule. `times` then counts firings.

        With `FakeOpenAI.enforce` on, a request the limiter turns away uses up no `times`.
        """
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; expected one of {sorted(FAULTS)}")
        if times is not None and times < 0:
            raise ValueError("times must be >= 0 or None")
        if every is not None and every < 1:
            raise ValueError("every must be >= 1 or None")
        if fraction is not None and not 0.0 < fraction <= 1.0:
            raise ValueError("fraction must be in (0, 1] or None")
        if every is not None and fraction is not None:
            raise ValueError("give every or fraction, not both")
        if times == 0:
            return
        rule = _Rule(fault, name, times, retry_after, delay, text, every, fraction)
        with self._lock:
            self._rules.append(rule)

    def clear_rules(self) -> None:
        """Forget every rule: all later requests succeed normally."""
        with self._lock:
            self._rules.clear()

    def reseed(self, seed: int) -> None:
        """Restart the draws of `fraction` rules from `seed` (`reset()`: the constructor's)."""
        with self._lock:
            self._rng = random.Random(seed)

    def enforce(
        self,
        rpm: int | None = None,
        tpm: int | None = None,
        *,
        window: float = 1.0,
        retry_after: str | None = "seconds",
        reset_format: str = "go",
        headers: str = "truthful",
    ) -> None:
        """Enforce OpenAI-style rate limits from now on; `enforce(None)` turns them off.

        `rpm`/`tpm` are per-minute limits (None: that limit is not enforced). Each is a bucket
        holding `limit * window / 60` (600 RPM with `window=1.0` holds 10 requests) that
        refills continuously at `limit / 60` per second; both start full, and calling
        `enforce` again refills them. A request that reaches the limiter (every fault but
        the uncharged ones: invalid JSON, "rate_limit", "insufficient_quota", "unauthorized",
        "flex_unavailable") is admitted, on arrival, if each bucket holds what it costs (1
        request; `tokens_for` its reply); admitting takes that from both. Otherwise it gets,
        at once, a 429 `{"type": "requests"|"tokens", "code": "rate_limit_exceeded"}` whose
        message names the limit like OpenAI's ("Rate limit reached for <model> in
        organization org-fake on requests per min (RPM): Limit 600, Used 600, Requested 1.
        Please try again in 100ms. ..."), and takes nothing, from the buckets nor from rules.
        A request larger than the whole token bucket gets "Request too large ..." (no retry
        headers: waiting will not help).

        Every reply to /v1/responses then carries, per enforced limit (`-requests`,
        `-tokens`), as of that request's admission:
        `x-ratelimit-limit-*` the per-minute limit; `x-ratelimit-remaining-*` the bucket's
        content scaled to the minute (an integer; remaining / limit is how full it is);
        `x-ratelimit-reset-*` the time until it is full again, in `reset_format`:
        "go" (OpenAI's Go durations: "0s", "12ms", "1.5s", "6m0s", "2m59.56s", "1h2m3s"),
        "seconds" ("0.012s", "360s") or "bare" (no unit: "0.012", "360").
        `headers` breaks them the way some compatible servers do: "truthful" (default),
        "missing" (none sent), "-1" or "0" (every value that), "garbage" (limit
        "unlimited", remaining "n/a", reset "soon").

        `retry_after` picks the limiter's 429 retry headers: "seconds" (`retry-after`, whole
        seconds rounded up, at least 1), "ms" (`retry-after-ms` only, rounded up), "both",
        None (neither), or "mixed" (seconds, ms, none in turn, like a real API that sends
        them sometimes).

        Admission is decided under the fake's lock in arrival order, without queueing, so it
        stays exact with 1,024 concurrent connections; as on the real API, a request costing
        many tokens can be starved by cheaper ones.
        """
        if rpm is None and tpm is None:
            with self._lock:
                self._limiter = None
            return
        for label, limit in (("rpm", rpm), ("tpm", tpm)):
            if limit is not None and limit < 1:
                raise ValueError(f"{label} must be >= 1 or None")
        if not window > 0:
            raise ValueError("window must be > 0 seconds")
        if rpm is not None and rpm * window / 60.0 < 1.0:
            raise ValueError(f"rpm={rpm} with window={window}s holds no whole request")
        _check_choice("retry_after", retry_after, RETRY_AFTER_MODES)
        _check_choice("reset_format", reset_format, RESET_FORMATS)
        _check_choice("headers", headers, HEADER_STYLES)
        with self._lock:
            self._limiter = _Limiter(
                rpm,
                tpm,
                window=window,
                retry_after=retry_after,
                reset_format=reset_format,
                headers=headers,
                now=time.monotonic(),
            )

    def hold(self) -> None:
        """Make requests block (after being counted) until `release()` or `stop()`."""
        self._gate_open.clear()

    def release(self) -> None:
        """Let held and future requests proceed."""
        self._gate_open.set()

    def wait_for_requests(self, n: int, timeout: float) -> bool:
        """Wait until `total_requests` reaches `n`; False if `timeout` passes first.

        Held requests count as arrived, so after `hold()` this tells when n are parked.
        """
        with self._lock:
            return self._lock.wait_for(lambda: self._total >= n, timeout=timeout)

    def reset(self) -> None:
        """Back to a fresh state: no rules, no limits, no latency, gate open, counts zeroed,
        `fraction` draws restarted from the seed."""
        self.clear_rules()
        self.enforce(None)
        self.reseed(self._seed)
        self.release()
        self.latency = 0.0
        self.reset_counts()
        self.batches.reset()
        with self._lock:
            self._batch_calls.clear()

    # -- bookkeeping ----------------------------------------------------------------------------

    @property
    def total_requests(self) -> int:
        """Requests to /v1/responses since start or the last `reset_counts()`."""
        with self._lock:
            return self._total

    def calls(self, name: str | None) -> int:
        """Requests seen for artist `name`, failed ones included."""
        with self._lock:
            return self._calls[name]

    def succeeded(self, name: str | None) -> int:
        """Well-formed 200 replies delivered for `name` ("ok", "empty", "citations")."""
        with self._lock:
            return self._succeeded[name]

    @property
    def rate_limited(self) -> int:
        """429 `rate_limit_exceeded` replies decided (limiter and "rate_limit" rules)."""
        with self._lock:
            return self._rate_limited.total()

    @property
    def rate_limited_by(self) -> dict[str, int]:
        """`rate_limited` split by cause: "requests"/"tokens" (the limiter's buckets) and "rule"."""
        with self._lock:
            return {key: self._rate_limited[key] for key in ("requests", "tokens", "rule")}

    @property
    def requests(self) -> list[RequestRecord]:
        """A copy of the request log (`RequestRecord`s), oldest first.

        `fault` is the scripted fault, "ok" when no rule matched, "invalid_json" for a
        body that was not a JSON object, or "limit_requests"/"limit_tokens" when the enforced
        limiter turned the request away (`record.limited`). Only the latest 100,000 requests
        are kept.
        """
        with self._lock:
            return list(self._records)

    @property
    def in_flight(self) -> int:
        """Requests currently being handled (held, sleeping or answering)."""
        with self._lock:
            return self._in_flight

    @property
    def concurrent_max(self) -> int:
        """Highest number of requests in flight at once since the last `reset_counts()`."""
        with self._lock:
            return self._concurrent_max

    def reset_counts(self) -> None:
        """Zero every counter and the request log (requests in flight stay in flight)."""
        with self._lock:
            self._total = 0
            self._calls.clear()
            self._succeeded.clear()
            self._rate_limited.clear()
            self._records.clear()
            self._concurrent_max = self._in_flight

    def batch_calls(self, name: str | None) -> int:
        """Batch request lines answered (or left unserved) for artist `name`."""
        with self._lock:
            return self._batch_calls[name]

    def _batch_answer(self, body: Any) -> tuple[int, dict[str, Any]] | None:
        """One request line of a batch, answered by the rules: (status, body), or None when
        the rule leaves it unserved ("hang", "drop"): the batch reports it as expired.

        The line is not an online request: it is counted by `batch_calls` only, and the
        enforced rate limits (a separate pool for batches, as on the real API) do not see it.
        """
        name = artist_name_from(body)
        with self._lock:
            self._batch_calls[name] += 1
            index = self._match_rule(name, None)
            rule = self._rules[index] if index is not None else None
            if index is not None:
                self._use_rule(index)
        fault = rule.fault if rule is not None else "ok"
        model = body.get("model") if isinstance(body, dict) else None
        model = model if isinstance(model, str) and model else "fake-model"
        if fault in ("ok", "empty", "citations"):
            text = _reply_text(fault, name, rule.text if rule is not None else None)
            # Real batch answers report the tier they would have had online, not "batch".
            return 200, _response_payload(model, text, "default")
        if fault == "malformed":
            return 200, {"id": "resp_truncated", "object": "response"}
        if fault in _ERRORS:
            prompt = body.get("prompt") if isinstance(body, dict) else None
            prompt_id = prompt.get("id") if isinstance(prompt, dict) else None
            payload = _error_payload(
                fault, model=model, name=name, prompt_id=prompt_id or "x", retry_after="1"
            )
            return _ERRORS[fault][0], payload
        return None

    # -- used by the handler --------------------------------------------------------------------

    def _begin(self, name: str | None, body: Any) -> _Plan:
        """Count an arriving request and decide its answer: rule, then limiter."""
        tier = _service_tier_of(body)
        with self._lock:
            # Read the clock under the lock, so decisions and records are in time order.
            now = time.monotonic()
            plan = self._decide(name, tier, now) if isinstance(body, dict) else None
            if plan is None:
                plan = _Plan("invalid_json", headers=self._limit_headers())
            self._total += 1
            self._calls[name] += 1
            self._records.append(RequestRecord(name, plan.fault, now, tier, plan.tokens))
            self._in_flight += 1
            self._concurrent_max = max(self._concurrent_max, self._in_flight)
            self._lock.notify_all()
            return plan

    def _decide(self, name: str | None, tier: str | None, now: float) -> _Plan:
        """Pick the rule for a request, let the limiter admit or refuse it (lock held)."""
        index = self._match_rule(name, tier)
        rule = self._rules[index] if index is not None else None
        plan = (
            _Plan("ok")
            if rule is None
            else _Plan(rule.fault, rule.retry_after, rule.delay, rule.text)
        )
        charged = plan.fault not in _UNCHARGED
        tokens = tokens_for(name, plan.fault, plan.text) if charged else 0
        limiter = self._limiter
        if limiter is not None and charged:
            rejection = limiter.admit(now, tokens)
            if rejection is not None:
                self._rate_limited[rejection.kind] += 1
                fault = f"limit_{rejection.kind}"
                return _Plan(fault, headers=limiter.headers(), rejection=rejection)
        if index is not None:
            self._use_rule(index)
        if plan.fault == "rate_limit":
            self._rate_limited["rule"] += 1
        return _Plan(
            plan.fault,
            plan.retry_after,
            plan.delay,
            plan.text,
            headers=self._limit_headers(),
            tokens=tokens,
        )

    def _match_rule(self, name: str | None, tier: str | None) -> int | None:
        """Index of the first rule that fires for this request (lock held)."""
        draw = self._rng.random()  # one per request, so the sequence depends on arrivals only
        edge = 0.0  # the fraction rules matched so far own [0, edge)
        for index, rule in enumerate(self._rules):
            if not rule.matches(name, tier):
                continue
            if rule.every is not None:
                rule.seen += 1
                if rule.seen % rule.every:
                    continue
            elif rule.fraction is not None:
                start, edge = edge, edge + rule.fraction
                if not start <= draw < edge:
                    continue
            return index
        return None

    def _use_rule(self, index: int) -> None:
        rule = self._rules[index]
        if rule.remaining is not None:
            rule.remaining -= 1
            if rule.remaining <= 0:
                del self._rules[index]

    def _limit_headers(self) -> dict[str, str]:
        return self._limiter.headers() if self._limiter is not None else {}

    def _end(self, name: str | None, *, success: bool) -> None:
        with self._lock:
            self._in_flight -= 1
            if success:
                self._succeeded[name] += 1

    def _wait_gate(self) -> bool:
        """Block while held; False if the fake is stopping (stop() opens the gate)."""
        self._gate_open.wait()
        return not self._stopping.is_set()

    def _track_connection(self, conn: socket.socket, *, add: bool) -> None:
        with self._lock:
            if add:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)


# -- as a process (make demo) -----------------------------------------------------------------


def serve(argv: list[str] | None = None) -> int:
    """Serve the fake as a process until SIGTERM or SIGINT (``make demo`` runs it so).

    The first line on stdout is the base URL (``http://127.0.0.1:<port>/v1``), printed once
    the server listens; every request is answered with a stand-in biography, after
    ``--latency`` seconds.
    """
    import argparse
    import signal

    parser = argparse.ArgumentParser(
        prog="python -m tests.support.fake_openai",
        description="A stand-in for the OpenAI API on 127.0.0.1: every biography it returns "
        "is made up from the artist's name. For tests and the demo, never for real bios.",
    )
    parser.add_argument("--latency", type=float, default=0.0, help="seconds per request")
    args = parser.parse_args(argv)
    stop = threading.Event()

    def request_stop(signum: int, frame: object) -> None:
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, request_stop)
    with FakeOpenAI(latency=args.latency) as fake:
        print(fake.base_url, flush=True)
        while not stop.wait(0.2):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(serve())
