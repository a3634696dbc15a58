"""Redaction: registered secrets, credential shapes, nested data, logging, and a canary
that must never reach the database files."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import pytest

from nexus.runtime.journal import Journal
from nexus.runtime.redact import MASK, RedactingFilter, Redactor
from nexus.storage import open_store

# Credential-shaped strings, built at run time so no scanner mistakes them for leaks.
OPENAI = "sk-" + "proj-" + "A1b2C3d4E5f6G7h8I9j0"
GITHUB = "ghp_" + "a" * 36
GITHUB_PAT = "github_pat_" + "B" * 22 + "_" + "c" * 40
SLACK = "xoxb-" + "1234567890-abcdefghij"
AWS = "AKIA" + "ABCDEFGHIJKLMNOP"
GOOGLE = "AIza" + "Sy" + "A" * 33
GROQ = "gsk_" + "Z" * 24
BEARER = "eyJhbGciOi.payload.sig"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"Authorization: Bearer {BEARER}", f"Authorization: Bearer {MASK}"),
        (f"authorization: bearer {BEARER}", f"authorization: bearer {MASK}"),
        (f"key={OPENAI} end", f"key={MASK} end"),
        (f"token {GITHUB}.", f"token {MASK}."),
        (f"pat {GITHUB_PAT}", f"pat {MASK}"),
        (f"slack {SLACK}", f"slack {MASK}"),
        (f"aws {AWS} id", f"aws {MASK} id"),
        (f"google {GOOGLE}", f"google {MASK}"),
        (f"groq {GROQ}", f"groq {MASK}"),
        ("postgres://admin:hunter22@db.local:5432/x", f"postgres://{MASK}@db.local:5432/x"),
        ("GET /v1?api_key=abcdef123&q=1", f"GET /v1?api_key={MASK}&q=1"),
        ("GET /v1?API-KEY=abcdef123", f"GET /v1?API-KEY={MASK}"),
    ],
    ids=[
        "bearer",
        "bearer-lower",
        "openai",
        "github",
        "github-pat",
        "slack",
        "aws",
        "google",
        "groq",
        "url-password",
        "api-key-query",
        "api-key-dash",
    ],
)
def test_credential_shapes_are_masked(text: str, expected: str) -> None:
    """Each well-known credential shape is masked without registering it."""
    assert Redactor().text(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "a bearer of good news",  # too short after "bearer "
        "sk-short",
        "ask-for-help",
        "AKIA-not-a-key",
        "https://example.com/path?page=2",
        "https://user@example.com/",  # user without password
        "api_key=abc",  # too short to be a key
        "plain text with numbers 1234567890",
    ],
)
def test_ordinary_text_is_left_alone(text: str) -> None:
    """Text that only resembles a credential is not masked."""
    assert Redactor().text(text) == text


def test_registered_values_are_masked_anywhere() -> None:
    """A registered value is masked wherever it appears, also inside words, and a
    secret containing another registered one is masked whole."""
    redactor = Redactor(["tok-1234"])
    redactor.register("tok-1234-extended")
    assert redactor.text("a tok-1234 b xtok-1234y c tok-1234-extended") == (
        f"a {MASK} b x{MASK}y c {MASK}"
    )
    redactor.register("tok-1234")  # registering twice is harmless
    assert redactor.text("tok-1234") == MASK


@pytest.mark.parametrize("value", ["", "a", "abc"])
def test_short_secrets_are_refused(value: str) -> None:
    """Secrets under 4 characters are refused: masking them would shred text."""
    with pytest.raises(ValueError, match="at least 4 characters"):
        Redactor().register(value)


def test_nested_data_is_masked_everywhere_including_keys() -> None:
    """data() masks strings at every depth, dict keys too, returns a copy, and leaves
    non-strings as they are."""
    redactor = Redactor(["s3cret-value"])
    original = {
        "plain": "nothing here",
        "s3cret-value": "as a key",
        "list": ["x", f"Bearer {BEARER}", {"deep": ["s3cret-value!"]}],
        "tuple": ("s3cret-value", 1),
        "numbers": [1, 2.5, None, True],
    }
    assert redactor.data(original) == {
        "plain": "nothing here",
        MASK: "as a key",
        "list": ["x", f"Bearer {MASK}", {"deep": [f"{MASK}!"]}],
        "tuple": [MASK, 1],
        "numbers": [1, 2.5, None, True],
    }
    assert original["list"][2] == {"deep": ["s3cret-value!"]}  # type: ignore[index]


@pytest.fixture
def captured() -> tuple[logging.Logger, io.StringIO]:
    """A logger writing through a redacting handler into a buffer."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    handler.addFilter(RedactingFilter(Redactor(["canary-4d2f"])))
    logger = logging.getLogger("nexus.test.redact")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    yield logger, buffer
    logger.removeHandler(handler)
    logger.propagate = True


def test_log_filter_masks_secret_arguments(captured: tuple[logging.Logger, io.StringIO]) -> None:
    """A secret passed as a %-argument, or in the message itself, never reaches the log."""
    logger, buffer = captured
    logger.warning("calling %s with key %s", "provider", "canary-4d2f")
    logger.info("header Bearer %s", BEARER)
    assert buffer.getvalue() == (
        f"WARNING calling provider with key {MASK}\nINFO header Bearer {MASK}\n"
    )


def test_log_filter_masks_exception_text(captured: tuple[logging.Logger, io.StringIO]) -> None:
    """A secret inside an exception message is masked in the formatted traceback."""
    logger, buffer = captured
    try:
        raise RuntimeError(f"connect failed with key canary-4d2f and {OPENAI}")
    except RuntimeError:
        logger.exception("request failed")
    out = buffer.getvalue()
    assert out.startswith("ERROR request failed\nTraceback")
    assert f"RuntimeError: connect failed with key {MASK} and {MASK}" in out
    assert "canary-4d2f" not in out and OPENAI not in out


def test_canary_secret_never_reaches_the_database_files(tmp_path: Path) -> None:
    """A registered canary in payloads (values, keys, nested) and in a failure reason is
    absent from the bytes of the .db, -wal and -shm files afterwards."""
    canary = "CANARY-7f3a9c1e"
    path = tmp_path / "nexus.db"
    store = open_store(path)
    journal = Journal(store, Redactor([canary]))
    journal.append(
        "s1",
        "session.created",
        {"agent": "a", "goal": f"use {canary}", "priority": 0, "labels": {"k": canary}},
    )
    journal.append("s1", "tool.call", {"arguments": f'{{"key": "{canary}"}}', canary: [canary]})
    journal.append("s1", "llm.response", {"message": {"content": f"the key is {canary}"}})
    event = journal.append(
        "s1", "session.failed", {"reason": f"bad {canary}"}, reason=f"provider said {canary}"
    )
    assert canary not in str(event.to_dict())
    row = store.session("s1")
    assert row is not None and row.reason == f"provider said {MASK}"
    assert row.labels == {"k": MASK}

    files = [p for p in tmp_path.iterdir() if p.name.startswith("nexus.db")]
    assert {p.name for p in files} >= {"nexus.db", "nexus.db-wal"}
    for p in files:
        assert canary.encode() not in p.read_bytes(), p.name
    store.close()  # checkpoints the WAL into the main file
    for p in tmp_path.iterdir():
        assert canary.encode() not in p.read_bytes(), p.name
    assert MASK.encode() in path.read_bytes()


def test_log_filter_masks_already_formatted_exception_text() -> None:
    """A record whose traceback text was formatted earlier is masked too."""
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", None, None)
    record.exc_text = "Traceback ...\nValueError: token canary-4d2f"
    assert RedactingFilter(Redactor(["canary-4d2f"])).filter(record) is True
    assert record.exc_text == f"Traceback ...\nValueError: token {MASK}"
