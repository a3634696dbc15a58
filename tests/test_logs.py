"""Process logs pass through the redactor: a registered secret or a key-shaped
string in a log message or an exception never reaches the output."""

from __future__ import annotations

import io
import logging

from nexus.observe.logs import configure, remove
from nexus.runtime.redact import Redactor


def test_secrets_are_masked_in_messages_and_tracebacks() -> None:
    """Messages, arguments and exception text from nexus.* loggers are redacted."""
    redactor = Redactor(["canary-1b2c3d4e"])
    out = io.StringIO()
    configure("info", redactor, stream=out)
    try:
        log = logging.getLogger("nexus.loop")
        log.info("calling with %s", "canary-1b2c3d4e")
        try:
            raise RuntimeError("token sk-" + "A" * 24 + " rejected")
        except RuntimeError:
            log.exception("provider failed for key %s", "canary-1b2c3d4e")
        logging.getLogger("dbos").warning("url postgresql://u:hunter22@db/x")
    finally:
        remove()
    text = out.getvalue()
    assert "canary-1b2c3d4e" not in text and "sk-AAAA" not in text and "hunter22" not in text
    assert text.count("[REDACTED]") == 4
    assert "RuntimeError: token [REDACTED] rejected" in text
