"""Recorded sessions shipped with NEXUS, for offline demos and tests."""

from __future__ import annotations

from pathlib import Path

DEMO_GOAL = "Write down the sprint notes, then turn them into a short report in report.md."


def demo_recording() -> Path:
    """The recorded demo session (export format), replayable with `--replay`."""
    return Path(__file__).with_name("demo.json")
