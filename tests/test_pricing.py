"""Prices and costs (pure: no database, no server)."""

from __future__ import annotations

import math
import re
from decimal import Decimal

import pytest

from artist_bio_gen.api import pricing
from artist_bio_gen.api.pricing import (
    PRICES,
    PRICES_AS_OF,
    Price,
    cost_decimal,
    cost_usd,
    known_model,
    price_for,
)


def test_the_table_is_dated_and_holds_the_common_models() -> None:
    assert re.fullmatch(r"20[0-9]{2}-[0-9]{2}", PRICES_AS_OF)
    doc = pricing.__doc__ or ""
    assert PRICES_AS_OF in doc and "--price-input" in doc and "--price-output" in doc
    expected = {
        "gpt-5",
        "gpt-5-mini",
        "gpt-5-nano",
        "gpt-4.1",
        "gpt-4.1-mini",
        "gpt-4.1-nano",
        "gpt-4o",
        "gpt-4o-mini",
        "o3",
        "o4-mini",
    }
    assert set(PRICES) == expected
    for price in PRICES.values():
        assert 0 < price.input_per_million <= price.output_per_million


@pytest.mark.parametrize(
    ("answered", "entry"),
    [
        ("gpt-4.1-mini", "gpt-4.1-mini"),
        ("gpt-4.1-mini-2025-04-14", "gpt-4.1-mini"),  # a dated snapshot
        ("gpt-4.1-2025-04-14", "gpt-4.1"),
        ("gpt-4.1-nano-2025-04-14", "gpt-4.1-nano"),  # never the shorter gpt-4.1
        ("gpt-5-2025-08-07", "gpt-5"),
        ("gpt-5-mini-2025-08-07", "gpt-5-mini"),
        ("gpt-5-nano", "gpt-5-nano"),
        ("gpt-4o-2024-08-06", "gpt-4o"),
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
        ("o3-2025-04-16", "o3"),
        ("o4-mini-2025-04-16", "o4-mini"),
        ("  GPT-4o  ", "gpt-4o"),  # case and stray blanks
        # Variants priced differently from their base name stay unknown.
        ("o3-pro", None),
        ("o3-pro-2025-06-10", None),
        ("o3-mini", None),
        ("gpt-4o-realtime-preview", None),
        ("gpt-4o-mini-search-preview-2025-03-11", None),
        ("gpt-4.1-micro", None),
        ("gpt-4.1-mini-latest", None),
        ("gpt-4.1-mini-2025-04", None),  # not a snapshot date
        ("gpt-4", None),
        ("llama-3-70b", None),
        ("", None),
        (None, None),
    ],
)
def test_lookup_by_the_model_that_answered(answered: str | None, entry: str | None) -> None:
    assert known_model(answered) == entry
    assert price_for(answered) == (PRICES[entry] if entry else None)


def test_an_override_wins_over_the_table_and_prices_unknown_models() -> None:
    override = Price(3.0, 12.0)
    assert price_for("gpt-4.1-mini-2025-04-14", override=override) == override
    assert price_for("my-local-model", override=override) == override
    assert price_for(None, override=override) == override
    assert price_for("my-local-model") is None


@pytest.mark.parametrize(
    "bad", [-0.01, math.inf, math.nan, pricing.MAX_PRICE_PER_MILLION + 1], ids=repr
)
def test_a_price_must_be_a_sane_number(bad: float) -> None:
    with pytest.raises(ValueError, match="USD per million tokens"):
        Price(bad, 1.0)
    with pytest.raises(ValueError, match="output_per_million"):
        Price(1.0, bad)


@pytest.mark.parametrize(
    ("model", "tokens_in", "tokens_out", "tier", "expected"),
    [
        # gpt-4.1-mini: 0.40 / 1.60 per million
        ("gpt-4.1-mini-2025-04-14", 1_000_000, 0, None, "0.4"),
        ("gpt-4.1-mini-2025-04-14", 0, 1_000_000, None, "1.6"),
        ("gpt-4.1-mini-2025-04-14", 1234, 567, None, "0.0014008"),  # 0.0004936 + 0.0009072
        ("gpt-4.1-mini-2025-04-14", 1234, 567, "default", "0.0014008"),
        ("gpt-4.1-mini-2025-04-14", 1234, 567, "auto", "0.0014008"),
        ("gpt-4.1-mini-2025-04-14", 1234, 567, "DEFAULT", "0.0014008"),
        ("gpt-4.1-mini-2025-04-14", 1234, 567, "flex", "0.0007004"),  # half
        ("gpt-4.1-mini-2025-04-14", 1234, 567, "batch", "0.0007004"),
        # gpt-5-nano: 0.05 / 0.40; flex halves to 0.025 / 0.20, still exact at 1e-9
        ("gpt-5-nano", 1, 0, None, "0.00000005"),
        ("gpt-5-nano", 1, 0, "flex", "0.000000025"),
        ("gpt-5-nano", 3, 1, "flex", "0.000000275"),
        # gpt-5: 1.25 / 10
        ("gpt-5", 2500, 1800, None, "0.0211250"),
        ("o4-mini", 100, 100, None, "0.00055"),
        ("gpt-4o", 0, 0, None, "0"),
    ],
)
def test_costs_are_exact(
    model: str, tokens_in: int, tokens_out: int, tier: str | None, expected: str
) -> None:
    price = price_for(model)
    assert cost_decimal(price, tokens_in, tokens_out, tier) == Decimal(expected)
    assert cost_usd(price, tokens_in, tokens_out, tier) == float(Decimal(expected))


def test_every_table_cost_is_exact_to_the_nano_dollar_on_every_tier() -> None:
    """No built-in price has more than three decimals, halved or not: nothing is rounded."""
    for price in PRICES.values():
        for tier in (None, "flex"):
            for tokens in (1, 7, 999_999):
                factor = Decimal("0.5") if tier else Decimal(1)
                exact = (
                    (
                        tokens * Decimal(repr(price.input_per_million))
                        + tokens * Decimal(repr(price.output_per_million))
                    )
                    * factor
                    / Decimal(1_000_000)
                )
                assert cost_decimal(price, tokens, tokens, tier) == exact


def test_rounding_is_up_to_the_nano_dollar_and_floats_carry_it_back_exactly() -> None:
    odd = Price(0.0001234, 0.0)  # more decimals than the ledger keeps
    assert cost_decimal(odd, 1, 0) == Decimal("0.000000001")  # 1.234e-10, rounded up
    assert cost_decimal(odd, 10, 0) == Decimal("0.000000002")  # 1.234e-9
    assert cost_decimal(Price(0.1, 0.2), 1, 1) == Decimal("0.000000300")  # 0.1 is 0.1
    # A nine-decimal cost survives float -> repr -> Decimal unchanged (how the ledger gets it).
    for text in ("0.000000001", "0.123456789", "1234.567891234", "99999.999999999"):
        assert Decimal(repr(float(Decimal(text)))) == Decimal(text)
    big = cost_usd(Price(pricing.MAX_PRICE_PER_MILLION, pricing.MAX_PRICE_PER_MILLION), 1, 1)
    assert big == 0.02


@pytest.mark.parametrize("tier", ["priority", "scale", "something-new"])
def test_a_tier_without_a_known_price_gives_no_cost(tier: str) -> None:
    assert cost_usd(price_for("gpt-5"), 100, 100, tier) is None


def test_an_unknown_price_gives_no_cost_and_bad_counts_are_refused() -> None:
    assert cost_usd(None, 100, 100) is None
    assert cost_usd(price_for("unknown-model"), 100, 100, "flex") is None
    with pytest.raises(ValueError, match="negative"):
        cost_usd(price_for("gpt-5"), -1, 0)
