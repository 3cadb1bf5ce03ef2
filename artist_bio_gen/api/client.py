"""Calling the Responses API and sorting its failures.

Retries are the SDK's own (``max_retries``, exponential backoff honouring ``Retry-After``);
this module only decides what a failure that survived them means:

* **stop the run** (``systemic``): a rejected key (401/403), an unknown prompt or model (404)
  and ``insufficient_quota`` fail every artist the same way, so the run stops at once instead
  of paying for N identical failures;
* **fail this artist**: everything else (400 for this input, timeouts, 5xx, rate limits that
  outlasted the retries, a malformed or empty answer). ``--resume`` retries them later.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..models import ApiResponse, ArtistData, TokenUsage
from ..utils.text import normalize_bio
from .request import PromptSettings, build_request

if TYPE_CHECKING:
    import openai

logger = logging.getLogger(__name__)

# The SDK is imported where it is first needed, not at module import: it takes about half a
# second, which a run refused at start (lock held, bad option) should not have to pay.


@dataclass(frozen=True)
class Generated:
    """A usable bio from the API (not yet committed)."""

    response: ApiResponse
    tokens: TokenUsage


class ApiCallError(Exception):
    """An API call that failed after the SDK's retries.

    ``code`` is stable and machine-readable; ``systemic`` is ``"config"`` or ``"quota"`` when
    the failure would repeat for every artist, else None.
    """

    def __init__(self, code: str, message: str, systemic: str | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.systemic = systemic


def create_openai_client(
    api_key: str | None,
    base_url: str | None = None,
    *,
    timeout: float = 120.0,
    max_retries: int = 3,
    max_connections: int = 64,
) -> openai.OpenAI:
    """An SDK client whose connection pool fits the number of workers.

    The SDK's default pool holds 1,000 connections; with more workers than connections the
    extra threads would queue inside the HTTP client instead of calling the API.
    """
    import httpx2
    import openai

    limits = httpx2.Limits(
        max_connections=max_connections, max_keepalive_connections=max_connections
    )
    http_client = openai.DefaultHttpxClient(limits=limits)
    return openai.OpenAI(
        api_key=api_key,
        base_url=base_url or None,
        timeout=timeout,
        max_retries=max_retries,
        http_client=http_client,
    )


def call_openai_api(
    client: openai.OpenAI, artist: ArtistData, settings: PromptSettings, api_key: str | None = None
) -> Generated:
    """Ask for one artist's bio; raises ``ApiCallError`` when no usable bio came back.

    ``api_key`` is only used to scrub the key out of error messages.
    """
    import openai

    try:
        response = client.responses.create(**build_request(artist, settings))
    except openai.OpenAIError as exc:
        raise classify_api_error(exc, settings, api_key) from exc
    except ValueError as exc:
        # The SDK lets a 200 reply whose body is not JSON surface as a JSONDecodeError.
        raise ApiCallError("bad_response", f"unusable answer from the API: {exc}") from exc
    text = normalize_bio(response.output_text)
    if not text.strip():
        raise ApiCallError("empty_response", f"the API returned no text (response {response.id})")
    return Generated(
        response=ApiResponse(
            artist_id=artist.artist_id,
            artist_name=artist.name,
            artist_data=artist.data,
            response_text=text,
            response_id=response.id,
            created=int(response.created_at),
        ),
        tokens=_usage(response),
    )


def _usage(response: object) -> TokenUsage:
    # OpenAI-compatible servers may omit usage; a missing count is 0, not a failure.
    usage = getattr(response, "usage", None)
    if usage is None:
        return TokenUsage()
    return TokenUsage(
        getattr(usage, "input_tokens", 0) or 0,
        getattr(usage, "output_tokens", 0) or 0,
        getattr(usage, "total_tokens", 0) or 0,
    )


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
            "config",
        )
    if isinstance(exc, openai.PermissionDeniedError):
        return ApiCallError(
            "forbidden",
            f"The API refused access (HTTP 403: {_detail(exc)}); check the key's project "
            "and permissions.",
            "config",
        )
    if isinstance(exc, openai.NotFoundError):
        return ApiCallError("not_found", _not_found_message(exc, settings), "config")
    if isinstance(exc, openai.RateLimitError):
        return _rate_limit(exc)
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


def _rate_limit(exc: openai.RateLimitError) -> ApiCallError:
    if exc.code == "insufficient_quota":
        return ApiCallError(
            "insufficient_quota",
            "The API account has no quota left (insufficient_quota); add credit or raise "
            "the limit, then run again with --resume.",
            "quota",
        )
    return ApiCallError("rate_limited", f"rate limited after retries: {_detail(exc)}")


def _per_artist(exc: openai.OpenAIError) -> ApiCallError:
    import openai

    if isinstance(exc, openai.APITimeoutError):
        return ApiCallError("timeout", "the request timed out (after retries)")
    if isinstance(exc, openai.APIConnectionError):
        return ApiCallError("connection_error", f"could not reach the API: {_detail(exc)}")
    if isinstance(exc, openai.BadRequestError):
        return ApiCallError("bad_request", f"the API rejected this request: {_detail(exc)}")
    if isinstance(exc, openai.APIStatusError):
        return ApiCallError(
            "server_error" if exc.status_code >= 500 else "api_error",
            f"HTTP {exc.status_code}: {_detail(exc)}",
        )
    return ApiCallError("bad_response", f"unusable answer from the API: {_detail(exc)}")


def _detail(exc: openai.OpenAIError) -> str:
    # APIError.message is the server's own sentence; str(exc) adds a dump of the body.
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return " ".join(str(message).split())[:300]
