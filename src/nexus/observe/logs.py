"""Process logging: one stderr handler for NEXUS and DBOS records, with every
message passed through the redactor (secrets never reach the logs)."""

from __future__ import annotations

import logging
import sys
from typing import TextIO

from nexus.runtime.redact import RedactingFilter, Redactor

_HANDLER_NAME = "nexus-stderr"
LOGGERS = ("nexus", "dbos", "uvicorn.error")


def configure(level: str, redactor: Redactor, stream: TextIO | None = None) -> logging.Handler:
    """Install (once) the redacting handler on the root logger; returns it.

    The filter sits on the handler, not on loggers, so every record that reaches
    it (NEXUS's, DBOS's, uvicorn's, by propagation) is redacted.
    """
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter(redactor))
    root = logging.getLogger()
    remove()
    root.addHandler(handler)
    for name in LOGGERS:
        logging.getLogger(name).setLevel(level.upper())
    return handler


def remove() -> None:
    """Take the handler off again (tests; embedding applications)."""
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
