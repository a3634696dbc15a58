"""Formats shared by the CLI, the API docs and the dashboard."""

from __future__ import annotations


def money(usd: float) -> str:
    """US dollars, readable from $0.000001 to $10,000: four significant digits
    below a cent, cents above, thousands separated."""
    if usd == 0:
        return "$0"
    if abs(usd) >= 0.01:
        return f"${usd:,.2f}"
    return f"${usd:.4g}" if abs(usd) >= 1e-4 else f"${usd:.6f}".rstrip("0")
