"""How NEXUS writes amounts for people: one money format for the CLI, the API's
documentation and the dashboard.

Agent costs span ten orders of magnitude: a 106-token session on Groq costs
$0.00000587, a long one on a frontier model tens of dollars. Fixed decimals fail
one end or the other (`$0.0000`, or `$0.` once trailing zeros were stripped:
issue 8), so amounts under a dollar keep three significant digits.
"""

from __future__ import annotations

import math

SMALLEST = 0.000001
"""The smallest amount written in digits; anything above zero and below it reads `<$0.000001`."""


def money(usd: float) -> str:
    """US dollars, readable from $0.000001 to $10,000 and beyond.

    `$0`, `<$0.000001`, `$0.00000587`, `$0.0223`, `$0.50`, `$1.27`, `$1,204.50`.
    Under a dollar: three significant digits, at least two decimals. From a
    dollar up: cents, with thousands separated.

    Raises:
        ValueError: for a negative, infinite or NaN amount (no cost can be one).
    """
    if not math.isfinite(usd) or usd < 0:
        raise ValueError(f"a cost is a finite amount of at least $0, not {usd!r}")
    if usd == 0:
        return "$0"
    if usd < SMALLEST:
        return f"<${SMALLEST:.6f}"
    if usd >= 0.995:  # would round to $1.00 at two decimals: write cents
        return f"${usd:,.2f}"
    decimals = 2 - math.floor(math.log10(usd))  # three significant digits
    text = f"{usd:.{decimals}f}".rstrip("0")
    whole, _, cents = text.partition(".")
    return f"${whole}.{cents.ljust(2, '0')}"
