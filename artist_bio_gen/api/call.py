"""One artist's request to the Responses API, with the run's pacing and retries.

The tool owns the retry loop; the SDK clients are created with ``max_retries=0``. The SDK
retries every 429 on its own, per request and uncoordinated, including
``insufficient_quota`` (which no retry can fix): with dozens of workers that is a
thundering herd against a limit that needs the whole run to slow down. Here:

* every HTTP request first passes the run's ``Pacer`` (rate limits, budgets), which may
  hold it back or refuse it (``NotSent``);
* a 429 ``rate_limit_exceeded`` (or a flex "Resource Unavailable") is reported to the pacer,
  which slows the whole run, and the request goes back through it: it is not a failure of
  the artist and not a retry counted against ``--max-retries``;
* ``insufficient_quota``, 401, 403 and 404 are never retried (``failure_codes`` says they
  stop the run);
* timeouts, dropped connections and 5xx are retried up to ``--max-retries`` times with a
  jittered exponential backoff, each retry passing the pacer again;
* anything else fails this artist with a code from ``failure_codes``.
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from ..errors import ArtistBioGenError
from ..failure_codes import failure
from ..models import ArtistData, GeneratedBio, TokenUsage
from ..utils.text import normalize_bio
from .answer import Answer, read_answer
from .client import ClientPool
from .pricing import Price, cost_usd, price_for
from .ratelimit import RateLimitHeaders, parse_rate_limit_headers, parse_retry_after
from .request import PromptSettings, ResponseRequest, ServiceTier, build_request

if TYPE_CHECKING:
    from collections.abc import Mapping

    import openai
    from openai import RequestOptions

logger = logging.getLogger(__name__)

#: Backoff before the n-th retry of a timeout, dropped connection or 5xx: 0.5 s doubling up
#: to 8 s, minus up to a quarter at random so that workers failing together spread out.
_BACKOFF_FIRST = 0.5
_BACKOFF_MAX = 8.0


class ApiCallError(Exception):
    """An API call that failed for this artist (after the retries it deserved).

    ``code`` is one of ``failure_codes.FAILURE_CODES`` (stable, machine-readable); the table
    says whether it stops the run.
    """

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = failure(code).code  # an unknown code is a bug: fail here, not later
        self.message = message


class NotSent(Exception):
    """The request was not sent: the run is stopping (``error`` None), or a limit was
    reached (``error`` says which; the run stops with it)."""

    def __init__(self, error: ArtistBioGenError | None = None):
        super().__init__(str(error) if error else "the run is stopping")
        self.error = error


class Ticket(Protocol):
    """What the pacer handed out for one request (opaque to this module)."""


class Pacer(Protocol):
    """Passes every HTTP request of a run: rate limits and budgets (``core/throttle.py``)."""

    def before_request(self, retry: bool = False) -> Ticket:
        """Wait until a request may go (``retry``: another attempt of the same artist's
        request); raise ``NotSent`` when it must not."""
        ...

    def answered(
        self,
        ticket: Ticket,
        headers: RateLimitHeaders,
        usage: TokenUsage,
        cost: float | None,
        model: str | None,
    ) -> None:
        """A response came back, billed: ``usage``, ``cost`` (None: the price of ``model``,
        the model that answered, is unknown)."""
        ...

    def rate_limited(
        self, ticket: Ticket, headers: RateLimitHeaders, retry_after: float | None
    ) -> None:
        """A 429 that is not ``insufficient_quota``: slow the run down; nothing was billed."""
        ...

    def failed(self, ticket: Ticket, headers: RateLimitHeaders | None) -> None:
        """The request failed without a usable answer (nothing billed)."""
        ...


class _NoPacing:
    """The pacer of a bare call (the legacy function, without a run around it)."""

    def before_request(self, retry: bool = False) -> Ticket:
        return self

    def answered(
        self,
        ticket: Ticket,
        headers: RateLimitHeaders,
        usage: TokenUsage,
        cost: float | None,
        model: str | None,
    ) -> None:
        return None

    def rate_limited(
        self, ticket: Ticket, headers: RateLimitHeaders, retry_after: float | None
    ) -> None:
        return None  # not called: a bare call retries a 429 like a 5xx (see _Call)

    def failed(self, ticket: Ticket, headers: RateLimitHeaders | None) -> None:
        return None


@dataclass(frozen=True)
class CallOptions:
    """How each artist's request is sent and retried."""

    #: Retries of a timeout, dropped connection or 5xx (429s are not counted: see above).
    max_retries: int = 3
    service_tier: ServiceTier | None = None
    #: ``--price-input``/``--price-output``, instead of the built-in table.
    price: Price | None = None
    pacer: Pacer | None = None
    rng: random.Random | None = None


_DEFAULT_OPTIONS = CallOptions()

#: The request options ``responses.create`` gives the SDK (the API key as a bearer token).
_POST_OPTIONS: RequestOptions = {"security": {"bearer_auth": True}}


def call_openai_api(
    client: openai.OpenAI | ClientPool,
    artist: ArtistData,
    settings: PromptSettings,
    api_key: str | None = None,
    options: CallOptions = _DEFAULT_OPTIONS,
) -> GeneratedBio:
    """Ask for one artist's bio; raises ``ApiCallError`` when no usable bio came back.

    ``client`` is an SDK client or a ``ClientPool`` (then the calling thread's client is
    used). ``api_key`` is only used to scrub the key out of error messages. Raises
    ``NotSent`` when the pacer refuses the request (the run is stopping or at a limit).
    """
    sdk_client = client.client() if isinstance(client, ClientPool) else client
    request = build_request(artist, settings, options.service_tier)
    call = _Call(sdk_client, options, settings, api_key)
    return call.run(artist, request)


@dataclass
class _Call:
    """The attempts of one artist's request."""

    sdk: openai.OpenAI
    options: CallOptions
    settings: PromptSettings
    api_key: str | None
    retries: int = 0

    @property
    def pacer(self) -> Pacer:
        return self.options.pacer or _NoPacing()

    def run(self, artist: ArtistData, request: ResponseRequest) -> GeneratedBio:
        retry = False
        while True:
            ticket = self.pacer.before_request(retry)
            outcome = self._attempt(ticket, request)
            if outcome is not None:
                return self._bio(artist, ticket, *outcome)
            retry = True

    def _attempt(
        self, ticket: Ticket, request: ResponseRequest
    ) -> tuple[Answer, RateLimitHeaders] | None:
        """One HTTP request: the answer and its headers, or None to go round again.

        Sent with the SDK's generic ``post`` (its auth, base URL, headers, timeouts and error
        classes, as ``responses.create`` uses them) and taken back as the raw HTTP response:
        ``responses.create`` would first run the request through the SDK's type-driven
        transform (about 4% of a worker's CPU per artist, for a body ``build_request`` makes
        plain JSON already) and build its ``Response`` model from the body (about 9%, for
        the five fields ``api/answer.py`` reads from the decoded JSON).
        """
        import httpx2
        import openai

        try:
            response = self.sdk.post(
                "/responses", cast_to=httpx2.Response, body=request, options=_POST_OPTIONS
            )
            headers = parse_rate_limit_headers(response.headers)
        except openai.RateLimitError as exc:
            self._rate_limited(ticket, exc)
            return None
        except openai.OpenAIError as exc:
            self._failed(ticket, exc)
            return None
        try:
            return read_answer(json.loads(response.content)), headers
        except ValueError as exc:
            # A 200 whose body is not JSON, or JSON without an answer (UnusableAnswer).
            self.pacer.failed(ticket, headers)
            raise ApiCallError("bad_response", f"unusable answer from the API: {exc}") from exc

    def _rate_limited(self, ticket: Ticket, exc: openai.RateLimitError) -> None:
        if exc.code == "insufficient_quota" or self.options.pacer is None:
            # No retry can fix an empty account; a bare call has no run to slow down, so
            # it retries a 429 like a 5xx, up to --max-retries.
            self._failed(ticket, exc)
            return
        headers = exc.response.headers
        self.pacer.rate_limited(ticket, parse_rate_limit_headers(headers), _retry_after(headers))

    def _failed(self, ticket: Ticket, exc: openai.OpenAIError) -> None:
        """Raise the artist's failure, or return after the backoff to try again."""
        response = getattr(exc, "response", None)
        headers = parse_rate_limit_headers(response.headers) if response is not None else None
        self.pacer.failed(ticket, headers)
        error = classify_api_error(exc, self.settings, self.api_key)
        if not failure(error.code).retried or self.retries >= self.options.max_retries:
            raise error from exc
        self.retries += 1
        logger.debug("retry %d after %s: %s", self.retries, error.code, error.message)
        time.sleep(self._backoff())

    def _backoff(self) -> float:
        rng = self.options.rng or random
        delay = min(_BACKOFF_FIRST * 2 ** (self.retries - 1), _BACKOFF_MAX)
        return float(delay * (1 - 0.25 * rng.random()))

    def _bio(
        self, artist: ArtistData, ticket: Ticket, answer: Answer, headers: RateLimitHeaders
    ) -> GeneratedBio:
        tier = answer.service_tier or self.options.service_tier
        cost = answer_cost(answer, tier, self.options.price)
        self.pacer.answered(ticket, headers, answer.usage, cost, answer.model)
        return generated_bio(artist, answer, tier, cost)


def answer_cost(answer: Answer, service_tier: str | None, price: Price | None) -> float | None:
    """What an answer cost at ``service_tier`` (``price``: the override, else the table's
    price of the model that answered; None: unknown)."""
    known = price_for(answer.model, override=price)
    usage = answer.usage
    return cost_usd(known, usage.input_tokens, usage.output_tokens, service_tier)


def generated_bio(
    artist: ArtistData, answer: Answer, service_tier: str | None, cost: float | None
) -> GeneratedBio:
    """The bio an answer holds, citations stripped; ``ApiCallError("empty_response")``
    when no text is left. Online answers and batch answers (``api/batchfile.py``) alike."""
    text = normalize_bio(answer.output_text)
    if not text.strip():
        raise ApiCallError(
            "empty_response", f"the API returned no text (response {answer.response_id})"
        )
    return GeneratedBio(
        artist=artist,
        response_id=answer.response_id,
        text=text,
        created=answer.created_at,
        tokens=answer.usage,
        model=answer.model,
        service_tier=service_tier,
        cost_usd=cost,
    )


def _retry_after(headers: Mapping[str, str]) -> float | None:
    return parse_retry_after(headers, now=time.time())


def classify_api_error(
    exc: openai.OpenAIError, settings: PromptSettings, api_key: str | None = None
) -> ApiCallError:
    """Turn an SDK exception into an ``ApiCallError`` with a code and a clear message."""
    error = _classify(exc, settings)
    if api_key:
        error.message = error.message.replace(api_key, "***")
        error.args = (error.message,)
    return error


def _classify(exc: openai.OpenAIError, settings: PromptSettings) -> ApiCallError:
    import openai

    if isinstance(exc, openai.AuthenticationError):
        return ApiCallError(
            "auth",
            "The API rejected the key (HTTP 401); check OPENAI_API_KEY or --openai-api-key.",
        )
    if isinstance(exc, openai.PermissionDeniedError):
        return ApiCallError(
            "forbidden",
            f"The API refused access (HTTP 403: {_detail(exc)}); check the key's project "
            "and permissions.",
        )
    if isinstance(exc, openai.NotFoundError):
        return ApiCallError("not_found", _not_found_message(exc, settings))
    if isinstance(exc, openai.RateLimitError):
        if exc.code == "insufficient_quota":
            return ApiCallError(
                "insufficient_quota",
                "The API account has no quota left (insufficient_quota); add credit or raise "
                "the limit, then run again with --resume.",
            )
        return ApiCallError("rate_limited", f"rate limited: {_detail(exc)}")
    return _per_artist(exc)


def _not_found_message(exc: openai.APIStatusError, settings: PromptSettings) -> str:
    if settings.uses_stored_prompt:
        what = f"prompt '{settings.prompt_id}'"
        if settings.prompt_version:
            what += f" version '{settings.prompt_version}'"
        fix = "check --prompt-id / OPENAI_PROMPT_ID and --prompt-version"
    else:
        what = f"model '{settings.model}'"
        fix = "check --model / OPENAI_MODEL and OPENAI_BASE_URL"
    return f"The API does not know {what} (HTTP 404: {_detail(exc)}); {fix}."


def _per_artist(exc: openai.OpenAIError) -> ApiCallError:
    import openai

    if isinstance(exc, openai.APITimeoutError):
        return ApiCallError("timeout", "the request timed out")
    if isinstance(exc, openai.APIConnectionError):
        return ApiCallError("connection_error", f"could not reach the API: {_detail(exc)}")
    if isinstance(exc, openai.BadRequestError):
        return ApiCallError("bad_request", f"the API rejected this request: {_detail(exc)}")
    if isinstance(exc, openai.APIStatusError):
        return _status_error(exc)
    return ApiCallError("bad_response", f"unusable answer from the API: {_detail(exc)}")


def _status_error(exc: openai.APIStatusError) -> ApiCallError:
    message = f"HTTP {exc.status_code}: {_detail(exc)}"
    if exc.status_code == 408:
        return ApiCallError("timeout", message)  # the server gave up waiting: as a timeout
    return ApiCallError("server_error" if exc.status_code >= 500 else "api_error", message)


def _detail(exc: openai.OpenAIError) -> str:
    # APIError.message is the server's own sentence; str(exc) adds a dump of the body.
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return " ".join(str(message).split())[:300]
