"""Alerts: journaled by the budget guard, listed by the API and `nexus alerts`, and
POSTed once each to a real local webhook receiver by the server; a failed post is
tried again, and two servers on one database post each alert once. Both stores."""

from __future__ import annotations

import json
import threading
import time

import pytest

from nexus import events as ev
from nexus.config import load_settings
from nexus.observe.alerts import Webhook
from nexus.observe.rollup import Rollup
from nexus.runtime.agents import Limits
from nexus.types import SessionStatus
from tests.cli.test_cli import nexus
from tests.observe.test_budgets import close, endless, runtime
from tests.peers.openai_server import PeerServer
from tests.peers.webhook_receiver import WebhookReceiver
from tests.server.test_api import open_api
from tests.waiting import until


async def paused_by_budget(peer: PeerServer) -> str:
    """A session that crossed 80% of its budget and was refused the next call."""
    peer.config.update({"script": endless()})
    rt = runtime(peer, Limits(max_cost_usd=0.6, max_tokens_per_call=40, max_steps=500))
    try:
        sid = rt.create_session("take notes forever", agent="spender")
        assert await rt.run(sid) is SessionStatus.PAUSED
        return sid
    finally:
        await close(rt)


async def test_alerts_are_listed_and_posted_once_to_the_webhook(
    peer: PeerServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server's follower posts the session's two alerts (80% crossed, the call
    refused) to the webhook, once each, with the journal's payloads; the API and
    `nexus alerts` list them newest first; the webhook's URL appears in no log."""
    with WebhookReceiver() as hook:
        monkeypatch.setenv("NEXUS_ALERT_WEBHOOK_URL", hook.url)
        sid = await paused_by_budget(peer)
        async for api in open_api(workers=False):
            await until(lambda: len(hook.bodies) >= 2, "the webhook got both alerts")
            items = (await api.get("/api/v1/alerts")).json()["items"]
            assert [(a["kind"], a["session_id"]) for a in items] == [
                (ev.BUDGET_EXCEEDED, sid),
                (ev.BUDGET_ALERT, sid),
            ]
            journaled = {
                e.kind: e.payload for e in api.rt.journal.events(sid) if e.kind in ev.ALERT_KINDS
            }
            assert {b["kind"]: b["payload"] for b in hook.bodies} == journaled
            assert all(b["source"] == "nexus" and b["agent"] == "spender" for b in hook.bodies)
            await until(
                lambda: all(a["delivered_at"] for a in api.app.state.nexus.rollup.alerts()),
                "deliveries recorded",
            )
        assert len(hook.bodies) == 2  # once each, even after the server stopped
    listed = nexus("alerts", "--json")
    assert listed.exit_code == 0, listed.output
    assert [a["kind"] for a in json.loads(listed.stdout)] == [ev.BUDGET_EXCEEDED, ev.BUDGET_ALERT]
    text = nexus("alerts").stdout
    assert "budget.exceeded" in text and "session: a call of up to $" in text
    assert "session at " in text


async def test_a_refused_post_is_tried_again_and_two_servers_post_each_alert_once(
    peer: PeerServer,
) -> None:
    """The receiver answers 500 once: that alert is posted again after its claim
    expires; two webhooks on one database (two servers) delivering at once post
    every alert exactly once in all."""
    await paused_by_budget(peer)
    store_rt = runtime(peer, Limits())
    try:
        rollup = Rollup(store_rt.store)
        rollup.catch_up()
        with WebhookReceiver() as hook:
            hook.fail_next = 1
            first = Webhook(hook.url, rollup.db, retry_s=0.0)
            assert first.deliver_pending() == 1  # one of two refused
            assert (hook.refused, len(hook.bodies)) == (1, 1)
            other = Rollup(store_rt.store)
            hooks = [Webhook(hook.url, r.db, retry_s=30.0) for r in (rollup, other)]
            counts = [0, 0]
            later = time.time() + 60  # the refused post's claim has expired by then

            def deliver(i: int) -> None:
                counts[i] = hooks[i].deliver_pending(now=later)

            threads = [threading.Thread(target=deliver, args=(i,)) for i in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert sum(counts) == 1
            assert sorted(b["kind"] for b in hook.bodies) == [ev.BUDGET_ALERT, ev.BUDGET_EXCEEDED]
            assert hooks[0].deliver_pending(now=later + 120) == 0  # nothing left
            other.close()
        rollup.close()
    finally:
        await close(store_rt)


def test_a_webhook_url_that_is_not_http_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """`NEXUS_ALERT_WEBHOOK_URL=ftp://…` is a ConfigError naming the setting, and
    the URL (it may hold a key) is not echoed."""
    from nexus.errors import ConfigError

    monkeypatch.setenv("NEXUS_ALERT_WEBHOOK_URL", "ftp://hooks.example/secret-key")
    with pytest.raises(ConfigError, match="NEXUS_ALERT_WEBHOOK_URL") as info:
        load_settings()
    assert "secret-key" not in str(info.value)
