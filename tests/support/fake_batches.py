"""The Files and Batches endpoints of the fake OpenAI server (`fake_openai.FakeOpenAI`).

`BatchService` keeps the uploaded files and the batches in memory and answers the HTTP
requests the real SDK sends for them:

* ``POST /v1/files`` (multipart upload; ``purpose``, ``file``, ``expires_after``),
  ``GET /v1/files``, ``GET /v1/files/{id}``, ``GET /v1/files/{id}/content``,
  ``DELETE /v1/files/{id}``;
* ``POST /v1/batches``, ``GET /v1/batches`` (newest first, ``after``/``limit``),
  ``GET /v1/batches/{id}``, ``POST /v1/batches/{id}/cancel``.

A batch does its work when a retrieve finds it due: each request line of its input file is
answered by the fake's own rules (``FakeOpenAI.add_rule``: an "ok" rule answers with the
biography, "bad_request" makes that artist's line a 400 in the error file, "server_error" a
500, "rate_limit" a 429, "hang"/"drop" leave it unserved), without counting as an online
request. What happens to the batch as a whole is scripted per batch, in creation order
(`BatchService.script`), else it completes at its first retrieve::

    fake.batches.script(polls=3)                                  # in_progress for 3 retrieves
    fake.batches.script(outcome="failed", error_code="token_limit_exceeded")
    fake.batches.script(outcome="expired", answered=10)            # 10 answered, the rest
                                                                   # batch_expired
    fake.batches.script(duplicates=2)                              # two lines answered twice

The input is validated as the real API does at its "validating" step (JSON lines, unique
``custom_id``, ``POST`` to the batch's endpoint, one model per file, at most 50,000 lines and
200 MB): a bad file fails the batch with the API's error codes. Output lines come back in a
seeded random order unless a script says ``shuffle=False``.

`fail_api` makes one of the endpoints fail (``performed=True``: do the work, then answer the
error, as when a response is lost), for the tool's recovery paths.
"""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import default as default_policy
from typing import Any
from urllib.parse import parse_qs

__all__ = ["OPERATIONS", "BatchScript", "BatchService", "FakeBatch", "FakeFile"]

#: The endpoints `fail_api` can break, by the SDK method that calls them.
OPERATIONS: frozenset[str] = frozenset(
    {
        "files.create",
        "files.list",
        "files.retrieve",
        "files.content",
        "files.delete",
        "batches.create",
        "batches.list",
        "batches.retrieve",
        "batches.cancel",
    }
)
OUTCOMES: tuple[str, ...] = ("completed", "failed", "expired")
FINAL: frozenset[str] = frozenset({"completed", "failed", "expired", "cancelled"})
MAX_LINES = 50_000
MAX_BYTES = 200 * 1024 * 1024
ENDPOINTS: frozenset[str] = frozenset({"/v1/responses", "/v1/chat/completions", "/v1/embeddings"})
#: What answers one request line: (HTTP status, body), or None when the request was not
#: served before the batch ended (it becomes a `batch_expired` line).
Answerer = Callable[[Any], "tuple[int, dict[str, Any]] | None"]

_EXPIRED_MESSAGE = "This request could not be executed before the completion window expired."
_ERROR_MESSAGES = {
    "token_limit_exceeded": (
        "Enqueued token limit reached for fake-model in organization org-fake. Limit: "
        "90,000 enqueued tokens. Please try again once some in_progress batches have been "
        "completed."
    ),
    "invalid_request": "The batch input file is not valid.",
}


@dataclass
class BatchScript:
    """What one batch does (see the module docstring)."""

    #: How it ends when nobody cancels it: "completed", "failed" or "expired".
    outcome: str = "completed"
    #: Retrieves that answer "in_progress" before it ends.
    polls: int = 0
    #: A failed batch's `errors.data[0].code` (e.g. "token_limit_exceeded").
    error_code: str = "invalid_request"
    #: Requests answered, in file order, before an expired or cancelled batch stopped
    #: (None: all for "completed", none when cancelled).
    answered: int | None = None
    #: Output lines in a (seeded) random order.
    shuffle: bool = True
    #: This many answered requests appear twice in the output file (new response ids).
    duplicates: int = 0
    #: After a cancel, retrieves that still answer "cancelling".
    cancel_polls: int = 0

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {OUTCOMES}, not {self.outcome!r}")
        if self.polls < 0 or self.cancel_polls < 0 or self.duplicates < 0:
            raise ValueError("polls, cancel_polls and duplicates must be >= 0")
        if self.answered is not None and self.answered < 0:
            raise ValueError("answered must be >= 0 or None")


@dataclass
class FakeFile:
    """An uploaded (or generated) file."""

    id: str
    filename: str
    purpose: str
    data: bytes
    created_at: int
    expires_at: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.data),
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "expires_at": self.expires_at,
            "status_details": None,
        }

    def lines(self) -> list[dict[str, Any]]:
        """The file's JSON lines."""
        return [json.loads(line) for line in self.data.splitlines() if line.strip()]


@dataclass
class FakeBatch:
    """One batch and where it stands."""

    id: str
    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: dict[str, str] | None
    created_at: int
    script: BatchScript
    status: str = "validating"
    polls_left: int = 0
    cancel_polls_left: int = 0
    output_file_id: str | None = None
    error_file_id: str | None = None
    errors: list[dict[str, Any]] | None = None
    counts: dict[str, int] = field(
        default_factory=lambda: {"total": 0, "completed": 0, "failed": 0}
    )
    model: str | None = None
    times: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": self.id,
            "object": "batch",
            "endpoint": self.endpoint,
            "errors": None if self.errors is None else {"object": "list", "data": self.errors},
            "input_file_id": self.input_file_id,
            "completion_window": self.completion_window,
            "status": self.status,
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "created_at": self.created_at,
            "expires_at": self.created_at + 86_400,
            "request_counts": dict(self.counts),
            "metadata": self.metadata,
            "model": self.model,
        }
        for name in (
            "in_progress_at",
            "finalizing_at",
            "completed_at",
            "failed_at",
            "expired_at",
            "cancelling_at",
            "cancelled_at",
        ):
            data[name] = self.times.get(name)
        return data


@dataclass
class _ApiFault:
    operation: str
    status: int
    remaining: int
    performed: bool


class _HttpError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


#: A routed reply: (HTTP status, body bytes, content type).
Reply = tuple[int, bytes, str]


def _json_reply(status: int, payload: dict[str, Any]) -> Reply:
    return status, json.dumps(payload, ensure_ascii=False).encode("utf-8"), "application/json"


def _error_reply(status: int, message: str, code: str | None = None) -> Reply:
    error = {"message": message, "type": "invalid_request_error", "param": None, "code": code}
    return _json_reply(status, {"error": error})


class BatchService:
    """Files and batches of one fake server; thread-safe."""

    def __init__(self, answer: Answerer, seed: int = 0) -> None:
        """`answer` answers one request line (the fake's rules); `seed` orders output lines."""
        self._answer = answer
        self._seed = seed
        self._rng = random.Random(seed)
        self._lock = threading.RLock()
        self.files: dict[str, FakeFile] = {}
        #: Every batch, in creation order.
        self.batches: list[FakeBatch] = []
        self._scripts: deque[BatchScript] = deque()
        self._faults: list[_ApiFault] = []
        #: Calls per operation (see `OPERATIONS`), failed ones included.
        self.calls: Counter[str] = Counter()

    # -- scripting and inspection ---------------------------------------------------------------

    def script(self, script: BatchScript | None = None, **fields: Any) -> None:
        """Script the next batch created without a script (`BatchScript` or its fields)."""
        with self._lock:
            self._scripts.append(script if script is not None else BatchScript(**fields))

    def fail_api(
        self, operation: str, status: int = 500, *, times: int = 1, performed: bool = False
    ) -> None:
        """Answer the next `times` calls of `operation` with HTTP `status`; with `performed`
        the work is done first (an upload stored, a batch created), as when only the
        response was lost."""
        if operation not in OPERATIONS:
            raise ValueError(f"unknown operation {operation!r}; expected one of {OPERATIONS}")
        with self._lock:
            self._faults.append(_ApiFault(operation, status, times, performed))

    def reset(self) -> None:
        """No files, no batches, no scripts or faults, counts zeroed."""
        with self._lock:
            self.files.clear()
            self.batches.clear()
            self._scripts.clear()
            self._faults.clear()
            self.calls.clear()
            self._rng = random.Random(self._seed)

    def batch(self, batch_id: str) -> FakeBatch:
        """The batch with this id (KeyError if none)."""
        with self._lock:
            return next(b for b in self.batches if b.id == batch_id)

    def input_lines(self, batch: FakeBatch) -> list[dict[str, Any]]:
        """The request lines of a batch's input file (empty if the file was deleted)."""
        file = self.files.get(batch.input_file_id)
        return file.lines() if file is not None else []

    def output_lines(self, batch: FakeBatch) -> list[dict[str, Any]]:
        """The lines of a batch's output file (empty when there is none)."""
        file = self.files.get(batch.output_file_id or "")
        return file.lines() if file is not None else []

    def error_lines(self, batch: FakeBatch) -> list[dict[str, Any]]:
        """The lines of a batch's error file (empty when there is none)."""
        file = self.files.get(batch.error_file_id or "")
        return file.lines() if file is not None else []

    def files_with_purpose(self, purpose: str) -> list[FakeFile]:
        """The stored files of one purpose ("batch": uploaded inputs)."""
        with self._lock:
            return [f for f in self.files.values() if f.purpose == purpose]

    # -- HTTP -----------------------------------------------------------------------------------

    def handle(
        self, method: str, path: str, query: str, content_type: str, body: bytes
    ) -> Reply | None:
        """The reply to a request for this service, or None when the path is not ours."""
        parts = path.strip("/").split("/")
        if parts[:1] != ["v1"] or len(parts) < 2 or parts[1] not in ("files", "batches"):
            return None
        route = self._route(method, parts[1:])
        if route is None:
            return None
        operation, action = route
        with self._lock:
            self.calls[operation] += 1
            fault = self._take_fault(operation)
            try:
                if fault is not None and not fault.performed:
                    raise _HttpError(fault.status, f"The server had an error ({operation}).")
                reply = action(parse_qs(query), content_type, body)
                if fault is not None:
                    raise _HttpError(fault.status, f"The server had an error ({operation}).")
            except _HttpError as exc:
                return _error_reply(exc.status, str(exc), exc.code)
            return reply

    def _route(
        self, method: str, parts: list[str]
    ) -> tuple[str, Callable[[dict[str, list[str]], str, bytes], Reply]] | None:
        kind, rest = parts[0], parts[1:]
        ident = rest[0] if rest else None
        table: dict[tuple[str, str, int, str | None], tuple[str, Any]] = {
            ("POST", "files", 0, None): ("files.create", self._upload),
            ("GET", "files", 0, None): ("files.list", self._list_files),
            ("GET", "files", 1, None): ("files.retrieve", lambda q, c, b: self._file_reply(ident)),
            ("GET", "files", 2, "content"): ("files.content", lambda q, c, b: self._content(ident)),
            ("DELETE", "files", 1, None): ("files.delete", lambda q, c, b: self._delete(ident)),
            ("POST", "batches", 0, None): ("batches.create", self._create),
            ("GET", "batches", 0, None): ("batches.list", self._list_batches),
            ("GET", "batches", 1, None): (
                "batches.retrieve",
                lambda q, c, b: self._retrieve(ident),
            ),
            ("POST", "batches", 2, "cancel"): (
                "batches.cancel",
                lambda q, c, b: self._cancel(ident),
            ),
        }
        sub = rest[1] if len(rest) == 2 else None
        return table.get((method, kind, len(rest), sub))

    def _take_fault(self, operation: str) -> _ApiFault | None:
        for fault in self._faults:
            if fault.operation == operation:
                fault.remaining -= 1
                if fault.remaining <= 0:
                    self._faults.remove(fault)
                return fault
        return None

    # -- files ----------------------------------------------------------------------------------

    def _upload(self, query: dict[str, list[str]], content_type: str, body: bytes) -> Reply:
        fields, filename, data = _parse_multipart(content_type, body)
        purpose = fields.get("purpose")
        if purpose is None or data is None:
            raise _HttpError(400, "'file' and 'purpose' are required.")
        expires: int | None = None
        now = int(time.time())
        if "expires_after[seconds]" in fields:
            if fields.get("expires_after[anchor]") != "created_at":
                raise _HttpError(400, "expires_after[anchor] must be 'created_at'.")
            seconds = int(fields["expires_after[seconds]"])
            if not 3600 <= seconds <= 2_592_000:
                raise _HttpError(400, "expires_after[seconds] must be between 3600 and 2592000.")
            expires = now + seconds
        if purpose == "batch" and not (filename or "").endswith(".jsonl"):
            raise _HttpError(400, "Batch input files must be .jsonl files.")
        file = self._store_file(filename or "upload", purpose, data, expires)
        return _json_reply(200, file.to_json())

    def _store_file(
        self, filename: str, purpose: str, data: bytes, expires: int | None = None
    ) -> FakeFile:
        file = FakeFile(f"file-{uuid.uuid4().hex}", filename, purpose, data, int(time.time()))
        file.expires_at = expires
        self.files[file.id] = file
        return file

    def _list_files(self, query: dict[str, list[str]], content_type: str, body: bytes) -> Reply:
        purpose = query.get("purpose", [None])[0]
        files = [f.to_json() for f in reversed(self.files.values()) if purpose in (None, f.purpose)]
        return _json_reply(200, _page(files, query))

    def _file(self, file_id: str | None) -> FakeFile:
        file = self.files.get(file_id or "")
        if file is None:
            raise _HttpError(404, f"No such File object: {file_id}")
        return file

    def _file_reply(self, file_id: str | None) -> Reply:
        return _json_reply(200, self._file(file_id).to_json())

    def _content(self, file_id: str | None) -> Reply:
        return 200, self._file(file_id).data, "application/octet-stream"

    def _delete(self, file_id: str | None) -> Reply:
        file = self._file(file_id)
        del self.files[file.id]
        return _json_reply(200, {"id": file.id, "object": "file", "deleted": True})

    # -- batches --------------------------------------------------------------------------------

    def _create(self, query: dict[str, list[str]], content_type: str, body: bytes) -> Reply:
        try:
            params = json.loads(body)
        except ValueError:
            raise _HttpError(400, "We could not parse the JSON body of your request.") from None
        file = self._file(params.get("input_file_id"))
        if file.purpose != "batch":
            raise _HttpError(400, f"File {file.id} was not uploaded with purpose 'batch'.")
        if params.get("endpoint") not in ENDPOINTS:
            raise _HttpError(400, f"Invalid endpoint {params.get('endpoint')!r}.")
        if params.get("completion_window") != "24h":
            raise _HttpError(400, "completion_window must be '24h'.")
        metadata = params.get("metadata")
        _check_metadata(metadata)
        script = self._scripts.popleft() if self._scripts else BatchScript()
        batch = FakeBatch(
            id=f"batch_{uuid.uuid4().hex}",
            input_file_id=file.id,
            endpoint=params["endpoint"],
            completion_window="24h",
            metadata=metadata,
            created_at=int(time.time()),
            script=script,
            polls_left=script.polls,
        )
        self.batches.append(batch)
        return _json_reply(200, batch.to_json())

    def _list_batches(self, query: dict[str, list[str]], content_type: str, body: bytes) -> Reply:
        return _json_reply(200, _page([b.to_json() for b in reversed(self.batches)], query))

    def _find(self, batch_id: str | None) -> FakeBatch:
        for batch in self.batches:
            if batch.id == batch_id:
                return batch
        raise _HttpError(404, f"No batch found with id '{batch_id}'.")

    def _retrieve(self, batch_id: str | None) -> Reply:
        batch = self._find(batch_id)
        self._advance(batch)
        return _json_reply(200, batch.to_json())

    def _cancel(self, batch_id: str | None) -> Reply:
        batch = self._find(batch_id)
        if batch.status in FINAL or batch.status == "cancelling":
            raise _HttpError(409, f"Cannot cancel a batch with status '{batch.status}'.")
        batch.status = "cancelling"
        batch.times["cancelling_at"] = int(time.time())
        batch.cancel_polls_left = batch.script.cancel_polls
        return _json_reply(200, batch.to_json())

    def _advance(self, batch: FakeBatch) -> None:
        """One retrieve's worth of progress."""
        now = int(time.time())
        if batch.status in FINAL:
            return
        if batch.status == "cancelling":
            if batch.cancel_polls_left > 0:
                batch.cancel_polls_left -= 1
                return
            self._run(batch, batch.script.answered or 0)
            self._end(batch, "cancelled", now)
            return
        if batch.status == "validating":
            problem = self._validate(batch)
            if problem is not None:
                batch.errors = [problem]
                self._end(batch, "failed", now)
                return
        if batch.polls_left > 0:
            batch.polls_left -= 1
            batch.status = "in_progress"
            batch.times.setdefault("in_progress_at", now)
            return
        script = batch.script
        if script.outcome == "failed":
            message = _ERROR_MESSAGES.get(
                script.error_code, f"The batch failed: {script.error_code}."
            )
            batch.errors = [
                {"code": script.error_code, "message": message, "param": None, "line": None}
            ]
            self._end(batch, "failed", now)
            return
        answered = None if script.outcome == "completed" else (script.answered or 0)
        self._run(batch, answered)
        self._end(batch, script.outcome, now)

    def _end(self, batch: FakeBatch, status: str, now: int) -> None:
        batch.status = status
        batch.times[f"{status}_at"] = now
        if status != "failed":
            batch.times.setdefault("finalizing_at", now)

    def _validate(self, batch: FakeBatch) -> dict[str, Any] | None:
        """The first problem of the input file, as the API's `errors.data` entry, or None."""
        file = self.files.get(batch.input_file_id)
        if file is None:
            return _problem("invalid_file", "The input file was deleted.")
        if len(file.data) > MAX_BYTES:
            return _problem("file_too_large", "The input file is larger than 200 MB.")
        lines = file.data.splitlines()
        if len(lines) > MAX_LINES:
            return _problem("too_many_requests", "The input file holds more than 50,000 requests.")
        seen: set[str] = set()
        models: set[str] = set()
        for number, raw in enumerate(lines, 1):
            problem = _line_problem(raw, number, batch.endpoint, seen, models)
            if problem is not None:
                return problem
        batch.model = next(iter(models), None)
        return None

    def _run(self, batch: FakeBatch, answered: int | None) -> None:
        """Answer the first `answered` requests (all when None); the rest expire."""
        requests = [json.loads(line) for line in self.files[batch.input_file_id].data.splitlines()]
        outputs: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        for index, request in enumerate(requests):
            reply = self._answer(request["body"]) if answered is None or index < answered else None
            line = _result_line(request["custom_id"], reply)
            (outputs if reply is not None and reply[0] == 200 else errors).append(line)
        ok = list(outputs)
        for line in ok[: batch.script.duplicates]:
            again = self._answer(
                next(r["body"] for r in requests if r["custom_id"] == line["custom_id"])
            )
            outputs.append(_result_line(line["custom_id"], again))
        if batch.script.shuffle:
            self._rng.shuffle(outputs)
            self._rng.shuffle(errors)
        batch.counts = {
            "total": len(requests),
            "completed": len(ok),
            "failed": len(errors),
        }
        stem = batch.id
        if outputs:
            batch.output_file_id = self._store_file(
                f"{stem}_output.jsonl", "batch_output", _jsonl(outputs)
            ).id
        if errors:
            batch.error_file_id = self._store_file(
                f"{stem}_error.jsonl", "batch_output", _jsonl(errors)
            ).id


def _problem(code: str, message: str, line: int | None = None) -> dict[str, Any]:
    return {"code": code, "message": message, "param": None, "line": line}


def _line_problem(
    raw: bytes, number: int, endpoint: str, seen: set[str], models: set[str]
) -> dict[str, Any] | None:
    try:
        request = json.loads(raw)
    except ValueError:
        return _problem("invalid_json_line", "This line is not parseable as valid JSON.", number)
    if not isinstance(request, dict) or not isinstance(request.get("body"), dict):
        return _problem(
            "invalid_request", "Each line needs custom_id, method, url and body.", number
        )
    custom_id = request.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        return _problem("missing_required_parameter", "custom_id is required.", number)
    if custom_id in seen:
        return _problem("duplicate_custom_id", f"The custom_id {custom_id} is repeated.", number)
    seen.add(custom_id)
    if request.get("method") != "POST" or request.get("url") != endpoint:
        return _problem("invalid_url", f"Each request must POST to {endpoint}.", number)
    model = request["body"].get("model")
    if not isinstance(model, str) or not model:
        return _problem("missing_required_parameter", "Each request needs a model.", number)
    models.add(model)
    if len(models) > 1:
        return _problem("mismatched_model", "All requests of a batch must use one model.", number)
    return None


def _result_line(custom_id: str, reply: tuple[int, dict[str, Any]] | None) -> dict[str, Any]:
    line_id = f"batch_req_{uuid.uuid4().hex}"
    if reply is None:
        error = {"code": "batch_expired", "message": _EXPIRED_MESSAGE}
        return {"id": line_id, "custom_id": custom_id, "response": None, "error": error}
    status, body = reply
    response = {"status_code": status, "request_id": f"req_{uuid.uuid4().hex}", "body": body}
    return {"id": line_id, "custom_id": custom_id, "response": response, "error": None}


def _jsonl(lines: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(line, ensure_ascii=False).encode("utf-8") + b"\n" for line in lines)


def _page(items: list[dict[str, Any]], query: dict[str, list[str]]) -> dict[str, Any]:
    """A cursor page of `items` (already newest first) after `after`, at most `limit`."""
    limit = int(query.get("limit", ["20"])[0])
    if not 1 <= limit <= 100:
        raise _HttpError(400, "limit must be between 1 and 100.")
    after = query.get("after", [None])[0]
    start = 0
    if after is not None:
        ids = [item["id"] for item in items]
        start = ids.index(after) + 1 if after in ids else len(items)
    page = items[start : start + limit]
    return {
        "object": "list",
        "data": page,
        "first_id": page[0]["id"] if page else None,
        "last_id": page[-1]["id"] if page else None,
        "has_more": start + limit < len(items),
    }


def _check_metadata(metadata: Any) -> None:
    if metadata is None:
        return
    if not isinstance(metadata, dict) or len(metadata) > 16:
        raise _HttpError(400, "metadata must be an object of at most 16 pairs.")
    for key, value in metadata.items():
        if not isinstance(value, str) or len(key) > 64 or len(value) > 512:
            raise _HttpError(400, "metadata keys are at most 64 characters, values 512 (strings).")


def _parse_multipart(
    content_type: str, body: bytes
) -> tuple[dict[str, str], str | None, bytes | None]:
    """(text fields, file name, file bytes) of a multipart/form-data body."""
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    message = BytesParser(policy=default_policy).parsebytes(head + body)
    fields: dict[str, str] = {}
    filename: str | None = None
    data: bytes | None = None
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if not isinstance(name, str) or not isinstance(payload, bytes):
            continue
        if part.get_filename() is not None or name == "file":
            filename, data = part.get_filename(), payload
        else:
            fields[name] = payload.decode("utf-8")
    return fields, filename, data
