"""Session labels: the one set of rules for their keys and sizes.

Labels come from outside (API bodies, the dashboard form, `--label K=V`, list
filters), so they are bounded and their keys restricted before they reach the
journal, SQL or a page: a key is a short identifier, a value a short line of text.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from nexus.errors import ConfigError

KEY_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,62}$"
"""A label key: 1-63 characters, letters, digits and `_ . : / -`, not starting
with punctuation (the shape of Kubernetes label keys, without their prefix rule)."""
MAX_LABELS = 32
MAX_VALUE = 256

_KEY = re.compile(KEY_PATTERN)


def check_key(key: str) -> str:
    """`key` if it is a valid label key, else `ConfigError` saying what a key may be."""
    if not isinstance(key, str) or not _KEY.fullmatch(key):
        shown = key if isinstance(key, str) and len(key) <= 80 else f"{str(key)[:80]}…"
        raise ConfigError(
            f"label key {shown!r} is invalid: 1-63 letters, digits or _ . : / -, "
            "starting with a letter or digit"
        )
    return key


def check_value(key: str, value: str) -> str:
    """`value` if it may be the value of label `key`, else `ConfigError`."""
    if not isinstance(value, str):
        raise ConfigError(f"label {key!r}: the value must be a string")
    if len(value) > MAX_VALUE:
        raise ConfigError(f"label {key!r}: the value is {len(value)} characters, over {MAX_VALUE}")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ConfigError(f"label {key!r}: the value may not hold control characters")
    return value


def check_labels(labels: Mapping[str, str] | None) -> dict[str, str]:
    """A validated copy of a session's labels; `ConfigError` naming the first bad one."""
    if not labels:
        return {}
    if len(labels) > MAX_LABELS:
        raise ConfigError(f"a session has at most {MAX_LABELS} labels, not {len(labels)}")
    return {check_key(k): check_value(k, v) for k, v in labels.items()}


def parse_filter(text: str) -> tuple[str, str]:
    """`"KEY=VALUE"` (a list filter) as a validated `(key, value)`."""
    key, sep, value = text.partition("=")
    if not sep:
        raise ConfigError(f"a label filter is KEY=VALUE, not {text[:80]!r}")
    return check_key(key), check_value(key, value)
