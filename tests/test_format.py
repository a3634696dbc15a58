"""The one money format (`nexus.format.money`) over the range agent costs span:
from a one-token call on a cheap model to a month of a frontier one."""

from __future__ import annotations

import math

import pytest

from nexus.format import money


def test_money_is_readable_from_a_millionth_of_a_dollar_to_ten_thousand() -> None:
    amounts = [0, 1e-7, 1e-6, 1.5e-6, 5.87e-6, 4e-5, 0.000106, 0.0042, 0.0223, 0.0999]
    amounts += [0.1, 0.5, 0.994, 0.996, 1, 1.27, 1204.5, 9999.999, 10_000, 1_234_567.891]
    assert [money(v) for v in amounts] == [
        "$0",
        "<$0.000001",
        "$0.000001",
        "$0.0000015",
        "$0.00000587",  # the README's 106-token Groq session (issue 8 saw `$0.`)
        "$0.00004",
        "$0.000106",
        "$0.0042",
        "$0.0223",
        "$0.0999",
        "$0.10",
        "$0.50",
        "$0.994",
        "$1.00",
        "$1.00",
        "$1.27",
        "$1,204.50",
        "$10,000.00",
        "$10,000.00",
        "$1,234,567.89",
    ]


def test_money_keeps_three_significant_digits_at_every_scale_below_a_dollar() -> None:
    """No small amount collapses to zero digits: 1.23 at every power of ten."""
    assert [money(1.23 * 10**-k) for k in range(1, 7)] == [
        "$0.123",
        "$0.0123",
        "$0.00123",
        "$0.000123",
        "$0.0000123",
        "$0.00000123",
    ]


@pytest.mark.parametrize("amount", [-0.01, -1e-9, math.inf, math.nan])
def test_money_refuses_an_amount_no_cost_can_be(amount: float) -> None:
    with pytest.raises(ValueError, match="a cost is a finite amount of at least \\$0"):
        money(amount)
