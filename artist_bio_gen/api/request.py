"""What is sent to the Responses API for one artist.

Two modes:

* **Stored prompt** (``--prompt-id``, optional ``--prompt-version``): the legacy request,
  ``prompt = {"id", "version"?, "variables": {"artist_name", "artist_data"}}``. ``--model``
  may be given too and then overrides the prompt's model.
* **Model** (``--model`` without a prompt id), for users without stored prompts and for
  OpenAI-compatible servers: ``instructions`` is the built-in template below (or the text of
  ``--instructions-file``) and ``input`` names the artist and its data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, TypedDict

from ..errors import ConfigError
from ..models import NO_ARTIST_DATA, ArtistData

if TYPE_CHECKING:
    # Types only: the SDK itself is imported where it is first needed (see api/client.py).
    from openai.types.responses import ResponsePromptParam

DEFAULT_INSTRUCTIONS = """\
You are a music journalist writing reference biographies for a music catalogue.
Write a factual biography of the artist named in the input, in English, in two to four
short paragraphs: origins, career highlights, style and influence. Use the additional data
(links, profiles) only to identify the right artist. If you are not sure who the artist is,
say so briefly instead of inventing facts. Plain text only: no headings, no lists, no
citations or links."""

#: The user message in model mode. A stable first line also lets tests and proxies see
#: which artist a request is for.
INPUT_TEMPLATE = "Artist name: {artist_name}\nAdditional data: {artist_data}"


@dataclass(frozen=True)
class PromptSettings:
    """How requests are built; part of the frozen run configuration."""

    prompt_id: str | None = None
    prompt_version: str | None = None
    model: str | None = None
    instructions: str = DEFAULT_INSTRUCTIONS

    @property
    def uses_stored_prompt(self) -> bool:
        """True when requests reference a stored prompt."""
        return bool(self.prompt_id)


#: The ``service_tier`` values the tool sends (``--service-tier``).
ServiceTier = Literal["auto", "default", "flex"]
SERVICE_TIERS: tuple[ServiceTier, ...] = ("auto", "default", "flex")


class ResponseRequest(TypedDict, total=False):
    """The keyword arguments of ``client.responses.create`` this tool sends."""

    prompt: ResponsePromptParam
    model: str
    instructions: str
    input: str
    service_tier: ServiceTier


def prompt_variables(artist: ArtistData) -> dict[str, str]:
    """The legacy prompt variables (the placeholder stands in for missing data)."""
    return {"artist_name": artist.name, "artist_data": artist.data or NO_ARTIST_DATA}


def build_request(
    artist: ArtistData, settings: PromptSettings, service_tier: ServiceTier | None = None
) -> ResponseRequest:
    """Keyword arguments for ``client.responses.create`` for one artist."""
    request = _prompt_request(artist, settings)
    if service_tier is not None:
        request["service_tier"] = service_tier
    return request


def _prompt_request(artist: ArtistData, settings: PromptSettings) -> ResponseRequest:
    variables = prompt_variables(artist)
    if settings.prompt_id:  # uses_stored_prompt, spelled out so the id is known to be a str
        # {**variables}: the same pairs, as the dict of wider values the SDK's type asks for.
        prompt: ResponsePromptParam = {"id": settings.prompt_id, "variables": {**variables}}
        if settings.prompt_version:
            prompt["version"] = settings.prompt_version
        request: ResponseRequest = {"prompt": prompt}
        if settings.model:
            request["model"] = settings.model
        return request
    if settings.model is None:
        # resolve_config refuses a configuration with neither a prompt id nor a model.
        raise ConfigError("No prompt configured; pass --prompt-id or --model.")
    return {
        "model": settings.model,
        "instructions": settings.instructions,
        "input": INPUT_TEMPLATE.format(**variables),
    }
