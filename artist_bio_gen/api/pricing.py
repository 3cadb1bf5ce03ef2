"""What a response cost: a dated table of list prices, and the arithmetic.

``PRICES`` holds OpenAI's public standard (list) prices in USD per million tokens as of
2025-08 (``PRICES_AS_OF``) for the models people commonly use with this tool. Prices change:
the table is a convenience, not a source of truth, and ``--price-input``/``--price-output``
(an override ``Price``) replace it for the run. A model not in the table has no price: its
cost is unknown (``None``, NULL in the ledger), never guessed.

**Which model.** A price is looked up by the model name the API *answered with*
(``response.model``, e.g. ``gpt-4.1-mini-2025-04-14``), not the one requested: a stored prompt
names its model on the server side. A name matches a table entry when it is the entry itself
or the entry followed by a snapshot date (``-YYYY-MM-DD``); among matches the longest entry
wins. Nothing looser: ``gpt-4.1`` never prices ``gpt-4.1-mini-...``, and variants priced
differently from their base name (``o3-pro`` at ten times ``o3``, ``o3-mini``,
``gpt-4o-realtime-preview``, ``gpt-4o-mini-search-preview``) stay unknown instead of being
billed at a wrong price.

**Service tiers.** The response's ``service_tier`` says how it was served and billed: ``flex``
(and the Batch API, ``batch``) cost half the standard price; ``default``, ``auto`` (a request
asking for ``auto`` is normally answered with the tier really used; a response still saying
``auto`` is charged as ``default``) and no tier at all cost the standard price. Any other tier
(``priority``, ``scale``, ...) is priced per model in ways this table does not hold: unknown.
An override is a standard-tier price too; the tier discount applies on top of it.

**Arithmetic.** Exact, in ``Decimal``: prices enter through their shortest decimal form
(``0.4`` is 0.4, not the nearest binary fraction), the cost is rounded once, up
(``ROUND_CEILING``), to 1e-9 USD, the scale of the ledger's ``NUMERIC(14,9)``, and returned as
a float. Every built-in price has at most three decimals (halved ones too), so a cost from the
table is exact to the nano-dollar and the rounding only ever touches an override with more
decimals; rounding up means an estimate checked against a budget never comes out low. A float
represents a number with nine decimals below 1e5 exactly enough to give it back unchanged
(``Decimal(repr(cost))``), which is how the ledger stores it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal

#: When the prices of ``PRICES`` were taken (OpenAI's public pricing page, standard tier).
PRICES_AS_OF = "2025-08"

#: The largest price per million tokens accepted (an override above it is surely a typo, and
#: it keeps any single response's cost well inside the ledger's NUMERIC(14,9)).
MAX_PRICE_PER_MILLION = 10_000.0

#: The scale of a cost: nano-dollars, as the ledger's ``cost_usd NUMERIC(14,9)``.
COST_QUANTUM = Decimal("1e-9")

_MILLION = Decimal(1_000_000)


@dataclass(frozen=True)
class Price:
    """USD per million tokens at the standard service tier."""

    input_per_million: float
    output_per_million: float

    def __post_init__(self) -> None:
        for name in ("input_per_million", "output_per_million"):
            value = getattr(self, name)
            if not (math.isfinite(value) and 0 <= value <= MAX_PRICE_PER_MILLION):
                raise ValueError(
                    f"{name} must be a number of USD per million tokens between 0 and "
                    f"{MAX_PRICE_PER_MILLION:g}, not {value!r}"
                )


#: Standard-tier list prices as of ``PRICES_AS_OF``, USD per million tokens (input, output).
PRICES: dict[str, Price] = {
    "gpt-5": Price(1.25, 10.00),
    "gpt-5-mini": Price(0.25, 2.00),
    "gpt-5-nano": Price(0.05, 0.40),
    "gpt-4.1": Price(2.00, 8.00),
    "gpt-4.1-mini": Price(0.40, 1.60),
    "gpt-4.1-nano": Price(0.10, 0.40),
    "gpt-4o": Price(2.50, 10.00),
    "gpt-4o-mini": Price(0.15, 0.60),
    "o3": Price(2.00, 8.00),
    "o4-mini": Price(1.10, 4.40),
}

#: Price multipliers by the response's ``service_tier`` (lower-case); a tier not listed here
#: has no known price.
TIER_FACTORS: dict[str | None, Decimal] = {
    None: Decimal(1),
    "default": Decimal(1),
    "auto": Decimal(1),
    "flex": Decimal("0.5"),
    "batch": Decimal("0.5"),
}

_SNAPSHOT = re.compile(r"-[0-9]{4}-[0-9]{2}-[0-9]{2}")


def known_model(model: str | None) -> str | None:
    """The table entry that prices ``model`` (e.g. ``gpt-4.1-mini`` for
    ``gpt-4.1-mini-2025-04-14``), or None."""
    if not model:
        return None
    name = model.strip().lower()
    matches = [
        known
        for known in PRICES
        if name == known or (name.startswith(known) and _SNAPSHOT.fullmatch(name[len(known) :]))
    ]
    return max(matches, key=len) if matches else None


def price_for(model: str | None, *, override: Price | None = None) -> Price | None:
    """The price of ``model`` (the name the API answered with): ``override`` when given,
    else the table's; None when unknown."""
    if override is not None:
        return override
    known = known_model(model)
    return PRICES[known] if known is not None else None


def cost_decimal(
    price: Price | None, input_tokens: int, output_tokens: int, service_tier: str | None = None
) -> Decimal | None:
    """``cost_usd`` as an exact ``Decimal`` (nine decimals); None when the price or the tier
    is unknown."""
    if input_tokens < 0 or output_tokens < 0:
        raise ValueError(f"token counts cannot be negative ({input_tokens}, {output_tokens})")
    if price is None:
        return None
    factor = TIER_FACTORS.get(service_tier.strip().lower() if service_tier else None)
    if factor is None:
        return None
    per_million = input_tokens * _decimal(price.input_per_million) + output_tokens * _decimal(
        price.output_per_million
    )
    return (per_million * factor / _MILLION).quantize(COST_QUANTUM, rounding=ROUND_CEILING)


def cost_usd(
    price: Price | None, input_tokens: int, output_tokens: int, service_tier: str | None = None
) -> float | None:
    """What ``input_tokens`` and ``output_tokens`` cost at ``price`` on ``service_tier``, in
    USD rounded up to 1e-9; None when the price or the tier is unknown."""
    cost = cost_decimal(price, input_tokens, output_tokens, service_tier)
    return None if cost is None else float(cost)


def _decimal(value: float) -> Decimal:
    # repr is the shortest decimal that reads back as the same float: 0.4 -> Decimal("0.4").
    return Decimal(repr(float(value)))
