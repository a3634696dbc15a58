"""Redaction of secrets before anything is written to the journal or the logs.

Two sources: values registered as secret (API keys from settings, vault values
later), and patterns of well-known credential shapes.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from typing import Any

MASK = "[REDACTED]"

# Shapes of credentials that should never be stored, whoever registered them.
_PATTERNS = [
    r"(?i:(?<=bearer ))[A-Za-z0-9._~+/=-]{8,}",  # Authorization: Bearer <token>
    r"\bsk-[A-Za-z0-9_-]{16,}",  # OpenAI-style keys (sk-..., sk-proj-...)
    r"\bgh[pousr]_[A-Za-z0-9]{30,}",  # GitHub tokens
    r"\bgithub_pat_[A-Za-z0-9_]{40,}",
    r"\bxox[abprs]-[A-Za-z0-9-]{10,}",  # Slack
    r"\bAKIA[0-9A-Z]{16}\b",  # AWS access key id
    r"\bAIza[0-9A-Za-z_-]{35}",  # Google API key
    r"\bgsk_[A-Za-z0-9]{20,}",  # Groq
    r"(?<=://)[^/\s:@]+:[^@\s/]+(?=@)",  # user:password@ in URLs
    r"(?i:(?<=api[_-]key=))[^&\s\"']{6,}",  # ?api_key=... query strings
]
_SHAPES = re.compile("|".join(f"(?:{p})" for p in _PATTERNS))
# `Redactor.needed` pre-checks literals that every match of `_PATTERNS` contains
# (lower-cased): "bearer ", "sk-", "gh", "xox", "akia", "aiza", "gsk_", "@", "api".
# Keep it in step when adding a pattern.


class Redactor:
    """Masks secrets in strings and nested JSON-like data.

    Thread-safe; `register` may be called at any time (new leases, rotated keys).
    """

    def __init__(self, secrets: list[str] | None = None) -> None:
        self._lock = threading.Lock()
        self._values: set[str] = set()
        self._exact: re.Pattern[str] | None = None
        self._in_json: re.Pattern[str] | None = None
        for value in secrets or ():
            self.register(value)

    def register(self, value: str) -> None:
        """Treat `value` as secret from now on. Values shorter than 4 characters are
        refused: masking them would shred ordinary text."""
        if len(value) < 4:
            raise ValueError("a secret must be at least 4 characters long")
        with self._lock:
            if value in self._values:
                return
            self._values.add(value)
            # Longest first, so a secret containing another is masked whole.
            ordered = sorted(self._values, key=len, reverse=True)
            self._exact = re.compile("|".join(re.escape(v) for v in ordered))
            # The same values as they appear inside JSON text (quotes, backslashes,
            # control characters escaped), for the fast check in `needed`.
            forms = {json.dumps(v, ensure_ascii=False)[1:-1] for v in ordered} | set(ordered)
            self._in_json = re.compile(
                "|".join(re.escape(v) for v in sorted(forms, key=len, reverse=True))
            )

    def needed(self, json_text: str) -> bool:
        """Whether JSON text may hold a secret: one scan, so the common clean event
        skips the walk through its structure. A superset check: JSON escaping only
        lengthens runs of the shapes' character classes."""
        in_json = self._in_json
        if in_json is not None and in_json.search(json_text):
            return True
        # Every shape starts with one of these literals; substring tests are far
        # cheaper than the full alternation, and most events contain none of them.
        t = json_text.lower()
        if not (
            "bearer " in t
            or "sk-" in t
            or "gh" in t
            or "xox" in t
            or "akia" in t
            or "aiza" in t
            or "gsk_" in t
            or "@" in t
            or "api" in t
        ):
            return False
        return _SHAPES.search(json_text) is not None

    def text(self, value: str) -> str:
        """`value` with every secret masked."""
        exact = self._exact
        if exact is not None:
            value = exact.sub(MASK, value)
        return _SHAPES.sub(MASK, value)

    def data(self, value: Any) -> Any:
        """A copy of JSON-like `value` with secrets masked in every string (keys too)."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {self.text(str(k)): self.data(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.data(v) for v in value]
        return value


class RedactingFilter(logging.Filter):
    """A logging filter that masks secrets in every record's final message."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        record.msg = self.redactor.text(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = self.redactor.text(
                logging.Formatter().formatException(record.exc_info)
            )
        elif record.exc_text:
            record.exc_text = self.redactor.text(record.exc_text)
        return True
