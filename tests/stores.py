"""SQL straight on the databases of the test's runtime, for tests that edit or read rows
behind NEXUS's back: the journal's (SQLite `nexus.db` in NEXUS_HOME, or the PostgreSQL
database of `--store=postgres`) and DBOS's system database. One function per database,
so a test says what it does once and runs on both stores."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nexus.config import Settings, load_settings


def _sqlite(path: Path, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(path)
    try:
        with db:
            return db.execute(sql, params).fetchall()
    finally:
        db.close()


def _postgres(url: str, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(url) as db:
        cursor = db.execute(sql.replace("?", "%s"), params)
        return cursor.fetchall() if cursor.description else []


def journal_sql(sql: str, *params: Any, settings: Settings | None = None) -> list[tuple[Any, ...]]:
    """Run one statement (`?` placeholders) on the journal's database and commit; the
    rows it returns, if any."""
    settings = settings or load_settings()
    if settings.database_url is None:
        return _sqlite(settings.db_path, sql, params)
    return _postgres(settings.database_url.get_secret_value(), sql, params)


def dbos_workflows(settings: Settings | None = None) -> list[tuple[str, str]]:
    """`(workflow id, executor id)` of every workflow in DBOS's system database (its
    tables are in schema `dbos` on PostgreSQL)."""
    settings = settings or load_settings()
    sql = "SELECT workflow_uuid, executor_id FROM {}workflow_status ORDER BY workflow_uuid"
    url = settings.system_database_url
    if url is None:
        return _sqlite(settings.dbos_path, sql.format(""), ())
    return _postgres(url, sql.format("dbos."), ())
