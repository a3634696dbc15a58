"""Readiness tells the truth about what a session needs: the database, the
workers, and an LLM provider (issue 12, item 2)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from nexus.config import load_settings
from nexus.runtime.runtime import Runtime
from nexus.server.app import create_app
from tests.peers.openai_server import ThreadedPeerServer
from tests.waiting import until


@pytest.fixture
async def client() -> AsyncIterator[tuple[httpx.AsyncClient, Runtime]]:
    rt = Runtime(load_settings())
    app = create_app(rt, workers=True)
    async with app.router.lifespan_context(app):
        token = app.state.nexus.auth.tokens.read()
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://127.0.0.1",
            headers={"Authorization": f"Bearer {token}"},
        ) as c:
            yield c, rt
    await rt.aclose()


async def test_readyz_says_no_provider_is_configured_and_the_session_fails_visibly(
    client: tuple[httpx.AsyncClient, Runtime],
) -> None:
    """No provider and no Ollama: `/readyz` is 503 naming the provider check (it
    said ready), and a session started without a replay ends `failed` with the
    reason instead of `queued` forever."""
    c, rt = client
    resp = await c.get("/api/v1/readyz")
    assert resp.status_code == 503
    checks = resp.json()["checks"]
    assert (checks["database"], checks["workers"]) == ("ok", "ok")
    assert checks["provider"].startswith("not configured: no LLM provider")
    assert "NEXUS_PROVIDERS" in checks["provider"]
    sid = (await c.post("/api/v1/sessions", json={"goal": "hello"})).json()["id"]
    await until(lambda: rt.session(sid).status == "failed", "session failed")
    row = (await c.get(f"/api/v1/sessions/{sid}")).json()
    assert row["reason"].startswith("NoProviderConfigured: no LLM provider")


async def test_readyz_is_ready_with_a_provider(
    threaded_peer: ThreadedPeerServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a provider configured, workers running and the database up: ready."""
    monkeypatch.setenv(
        "NEXUS_PROVIDERS", f'[{{"name": "peer", "base_url": "{threaded_peer.url}", "model": "m"}}]'
    )
    rt = Runtime(load_settings())
    app = create_app(rt, workers=True)
    async with app.router.lifespan_context(app):
        token = app.state.nexus.auth.tokens.read()
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1"
        ) as c:
            resp = await c.get("/api/v1/readyz", headers={"Authorization": f"Bearer {token}"})
    await rt.aclose()
    assert (resp.status_code, resp.json()) == (
        200,
        {"status": "ready", "checks": {"database": "ok", "workers": "ok", "provider": "ok"}},
    )


@pytest.mark.sqlite_only
async def test_a_database_damaged_under_a_running_server_is_reported_not_served(
    client: tuple[httpx.AsyncClient, Runtime],
) -> None:
    """20 pages of `nexus.db` zeroed while the server runs: `/readyz` is 503 naming
    the damage (it said ready), and the audit answers a 503 problem in one line
    saying which file and what to do (it was a 500 with a traceback)."""
    from tests.storage.damage import zero_pages

    c, rt = client
    for i in range(300):
        rt.create_session(f"goal {i} " + "x" * 500)  # journaled, never submitted
    zero_pages(rt.settings.db_path)
    ready = await c.get("/api/v1/readyz")
    assert ready.status_code == 503
    assert ready.json()["checks"]["database"].startswith("damaged: ")
    audit = await c.get("/api/v1/audit/verify")
    assert (audit.status_code, audit.headers["content-type"]) == (503, "application/problem+json")
    body = audit.json()
    assert body["type"] == "urn:nexus:problem:storage-corrupt"
    assert body["detail"].startswith(f"database {rt.settings.db_path} is damaged (")
    assert body["detail"].endswith("restore from backup or run `sqlite3 nexus.db .recover`")
    assert "\n" not in body["detail"]
