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
"""

from __future__ import annotations

import contextlib
import json
import re
import select
import socket
import sys
import threading
import time
import uuid
import zlib
from collections import Counter, deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, NamedTuple
from urllib.parse import urlsplit

__all__ = ["FAULTS", "FakeOpenAI", "RequestRecord", "artist_name_from", "bio_for"]

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
    }
)

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


def _response_payload(model: str, text: str) -> dict[str, Any]:
    """A completed Responses API object whose `output_text` is `text`."""
    output_tokens = len(text) // 4
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


class RequestRecord(NamedTuple):
    """One request as seen by the fake: artist name, fault applied, `time.monotonic()` arrival."""

    name: str | None
    fault: str
    at: float


@dataclass
class _Rule:
    """A scripted fault; `remaining` None means it never runs out."""

    fault: str
    name: str | None
    remaining: int | None
    retry_after: float | None
    delay: float | None
    text: str | None

    def matches(self, name: str | None) -> bool:
        return self.name is None or self.name == name


@dataclass(frozen=True)
class _Plan:
    """What one request will get: the fault plus the parameters of the rule that chose it."""

    fault: str
    retry_after: float | None = None
    delay: float | None = None
    text: str | None = None


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
        """Only POST /v1/responses exists here; anything else is an OpenAI-style 404."""
        error = {"message": "Unknown path.", "type": "invalid_request_error", "code": None}
        self._send_json(404, {"error": error})

    def do_POST(self) -> None:
        raw = self._read_body()
        if urlsplit(self.path).path.rstrip("/") != "/v1/responses":
            self.do_GET()
            return
        try:
            body: Any = json.loads(raw)
        except ValueError:
            body = None
        fake = self.server.fake
        name = artist_name_from(body)
        plan = fake._begin(name, parseable=isinstance(body, dict))
        self._name, self._pending = name, True
        try:
            if fake._wait_gate() and self._pause(fake.latency):
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
        if plan.fault == "drop":
            self._drop()
        elif plan.fault == "malformed":
            self._malformed()
        elif plan.fault in _ERRORS:
            self._error(plan, body, name, model)
        elif plan.fault == "hang" and not self._pause(plan.delay or DEFAULT_HANG_SECONDS):
            return
        else:
            self._success(plan, name, model)

    def _success(self, plan: _Plan, name: str | None, model: str) -> None:
        if plan.fault == "empty":
            text = ""
        else:
            text = plan.text if plan.text is not None else bio_for(name)
            if plan.fault == "citations":
                text += CITATIONS_SUFFIX
        self._settle(success=True)
        self._send_json(200, _response_payload(model, text))

    def _error(self, plan: _Plan, body: Any, name: str | None, model: str) -> None:
        prompt = body.get("prompt") if isinstance(body, dict) else None
        prompt_id = prompt.get("id") if isinstance(prompt, dict) else None
        wait = f"{plan.retry_after if plan.retry_after is not None else 1:g}"
        payload = _error_payload(
            plan.fault, model=model, name=name, prompt_id=prompt_id or "x", retry_after=wait
        )
        # Deliberately no `retry-after-ms`: the SDK prefers it, and tests script Retry-After.
        headers = {"Retry-After": wait} if plan.fault == "rate_limit" else None
        self._send_json(_ERRORS[plan.fault][0], payload, headers)

    def _malformed(self) -> None:
        # Claims to be JSON but is cut off mid-object, like a proxy truncating a reply.
        self._send_bytes(200, b'{"id": "resp_truncated", "object": "response", "outp')

    def _drop(self) -> None:
        # No status line, no headers: the socket is shut down when the handler returns.
        self.close_connection = True


class FakeOpenAI:
    """A scriptable fake OpenAI Responses API server on 127.0.0.1.

    All public methods are thread-safe and may be called while requests are being served.
    Point the SDK at it with `OpenAI(base_url=fake.base_url, api_key="test")`.

    Attributes:
        latency: seconds every request waits (after the gate) before it is answered.
    """

    def __init__(self, *, latency: float = 0.0) -> None:
        """Create a stopped fake; call `start()` or use it as a context manager."""
        self.latency = latency
        self._lock = threading.Condition()
        self._rules: list[_Rule] = []
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
    ) -> None:
        """Apply `fault` to requests for artist `name` (every request if None).

        The rule covers the next `times` matching requests (forever if None). Rules are
        checked in the order added and the first match wins. `retry_after` is the
        Retry-After of "rate_limit" (default 1 s), `delay` how long "hang" waits (default
        3600 s) and `text` replaces the biography of "ok"/"citations" replies.
        """
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; expected one of {sorted(FAULTS)}")
        if times is not None and times < 0:
            raise ValueError("times must be >= 0 or None")
        if times == 0:
            return
        with self._lock:
            self._rules.append(_Rule(fault, name, times, retry_after, delay, text))

    def clear_rules(self) -> None:
        """Forget every rule: all later requests succeed normally."""
        with self._lock:
            self._rules.clear()

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
        """Back to a fresh state: no rules, no latency, gate open, counts zeroed."""
        self.clear_rules()
        self.release()
        self.latency = 0.0
        self.reset_counts()

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
    def requests(self) -> list[RequestRecord]:
        """A copy of the request log as `(name, fault, monotonic time)` records, oldest first.

        `fault` is the scripted fault, "ok" when no rule matched, or "invalid_json" for a
        body that was not a JSON object. Only the latest 100,000 requests are kept.
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
            self._records.clear()
            self._concurrent_max = self._in_flight

    # -- used by the handler --------------------------------------------------------------------

    def _begin(self, name: str | None, *, parseable: bool) -> _Plan:
        """Count an arriving request and pick (consuming) the rule that applies to it."""
        with self._lock:
            plan = self._take_rule(name) if parseable else _Plan("invalid_json")
            self._total += 1
            self._calls[name] += 1
            self._records.append(RequestRecord(name, plan.fault, time.monotonic()))
            self._in_flight += 1
            self._concurrent_max = max(self._concurrent_max, self._in_flight)
            self._lock.notify_all()
            return plan

    def _take_rule(self, name: str | None) -> _Plan:
        for index, rule in enumerate(self._rules):
            if not rule.matches(name):
                continue
            if rule.remaining is not None:
                rule.remaining -= 1
                if rule.remaining <= 0:
                    del self._rules[index]
            return _Plan(rule.fault, rule.retry_after, rule.delay, rule.text)
        return _Plan("ok")

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
