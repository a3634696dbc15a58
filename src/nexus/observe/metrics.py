"""Prometheus metrics, derived from the journal through its rollup.

The server's `/metrics` reads the rollup's running totals (`Rollup.totals`: a few
small queries whatever the journal's size) and the session index's counts, so it
shows the whole fleet's figures (every worker's sessions, on PostgreSQL), not
only what one process saw, and a restart loses nothing. A `RollupFollower` thread
keeps the rollup a moment behind the journal (woken by the store's doorbell after
commits); a scrape folds at most one batch more itself, and reports what is still
to fold as `nexus_rollup_lag_events`.

Labels are bounded: agent, provider, model, tool, status, event kind (the rollup
caps the values that come from outside); never a session id.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from nexus.observe.alerts import Webhook
from nexus.observe.rollup import BATCH, BUCKETS_MS, Rollup
from nexus.storage.base import Store
from nexus.storage.wake import EVENTS
from nexus.types import SessionStatus

log = logging.getLogger("nexus.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_EDGES = [f"{edge / 1000:g}" for edge in BUCKETS_MS]


def _histogram(counts: list[int]) -> list[tuple[str, float]]:
    """Cumulative `(le, count)` pairs of one row's bucket counts."""
    out, seen = [], 0
    for edge, n in zip([*_EDGES, "+Inf"], counts, strict=True):
        seen += n
        out.append((edge, float(seen)))
    return out


class JournalCollector(Collector):
    """The metrics of one store's journal, collected at each scrape."""

    def __init__(self, store: Store, rollup: Rollup) -> None:
        self.store = store
        self.rollup = rollup

    def collect(self) -> Iterator[Metric]:
        self.rollup.catch_up(max_events=BATCH)
        totals = self.rollup.totals()
        yield from _llm(totals.llm)
        yield from _tools(totals.tools)
        events = CounterMetricFamily(
            "nexus_journal_events", "Journal events by agent and kind.", labels=["agent", "kind"]
        )
        for agent, kind, count, _steps in totals.kinds:
            events.add_metric([agent, kind], float(count))
        yield events
        sessions = GaugeMetricFamily(
            "nexus_sessions", "Sessions by current status.", labels=["status"]
        )
        for status in SessionStatus:
            sessions.add_metric([status.value], float(self.store.count_sessions([status.value])))
        yield sessions
        yield GaugeMetricFamily(
            "nexus_rollup_lag_events",
            "Journal events committed but not yet in these figures.",
            value=float(self.rollup.lag()),
        )


def _llm(rows: list[tuple[Any, ...]]) -> Iterator[Metric]:
    requests = CounterMetricFamily(
        "nexus_llm_requests",
        "LLM requests by outcome: ok, error (failed), lost (billed, answer lost in a crash).",
        labels=["agent", "provider", "model", "status"],
    )
    tokens = CounterMetricFamily(
        "nexus_llm_tokens",
        "LLM tokens, prompt (in) and completion (out).",
        labels=["agent", "provider", "model", "direction"],
    )
    cost = CounterMetricFamily(
        "nexus_llm_cost_usd", "LLM spend in USD.", labels=["agent", "provider", "model"]
    )
    estimated = CounterMetricFamily(
        "nexus_llm_cost_estimated_usd",
        "The part of nexus_llm_cost_usd that was estimated (counted tokens, lost answers).",
        labels=["agent", "provider", "model"],
    )
    latency: dict[tuple[str, str], list[int]] = {}
    spend: dict[tuple[str, str, str], list[int]] = {}
    for agent, provider, model, status, calls, t_in, t_out, nusd, est, _n, lat_us, *b in rows:
        requests.add_metric([agent, provider, model, status], float(calls))
        tokens.add_metric([agent, provider, model, "in"], float(t_in))
        tokens.add_metric([agent, provider, model, "out"], float(t_out))
        money = spend.setdefault((agent, provider, model), [0, 0])
        money[0] += int(nusd)
        money[1] += int(est)
        if status == "ok":
            hist = latency.setdefault((provider, model), [0] * (len(b) + 1))
            hist[0] += int(lat_us)
            for i, n in enumerate(b):
                hist[i + 1] += int(n)
    for who, (nusd, est) in spend.items():
        cost.add_metric(list(who), nusd / 1e9)
        estimated.add_metric(list(who), est / 1e9)
    hist_family = HistogramMetricFamily(
        "nexus_llm_latency_seconds",
        "Latency of answered LLM requests.",
        labels=["provider", "model"],
    )
    for pair, (lat_us, *counts) in latency.items():
        hist_family.add_metric(list(pair), _histogram(counts), lat_us / 1e6)
    yield from (requests, tokens, cost, estimated, hist_family)


def _tools(rows: list[tuple[Any, ...]]) -> Iterator[Metric]:
    calls = CounterMetricFamily(
        "nexus_tool_calls",
        "Tool call results by status (ok, error).",
        labels=["agent", "tool", "status"],
    )
    retries = CounterMetricFamily(
        "nexus_tool_retries",
        "Tool calls that were a retry of an interrupted one.",
        labels=["tool"],
    )
    latency: dict[str, list[int]] = {}
    retried: dict[str, int] = {}
    for agent, tool, status, n, retry, lat_us, *b in rows:
        calls.add_metric([agent, tool, status], float(n))
        retried[tool] = retried.get(tool, 0) + int(retry)
        hist = latency.setdefault(tool, [0] * (len(b) + 1))
        hist[0] += int(lat_us)
        for i, count in enumerate(b):
            hist[i + 1] += int(count)
    for tool, n in retried.items():
        retries.add_metric([tool], float(n))
    hist_family = HistogramMetricFamily(
        "nexus_tool_latency_seconds", "Latency of tool calls.", labels=["tool"]
    )
    for tool, (lat_us, *counts) in latency.items():
        hist_family.add_metric([tool], _histogram(counts), lat_us / 1e6)
    yield from (calls, retries, hist_family)


def registry(store: Store, rollup: Rollup) -> CollectorRegistry:
    """A registry holding this journal's metrics (its own: not the process-global one)."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(JournalCollector(store, rollup))
    return reg


def exposition(reg: CollectorRegistry) -> bytes:
    """The scrape body in Prometheus' text format."""
    return generate_latest(reg)


class RollupFollower:
    """A thread that keeps a rollup caught up: it folds after each ring of the
    store's events doorbell (this process's commits; every process's on PostgreSQL),
    at least every `poll_s`, and at most once per `settle_s`; then it delivers the
    alerts due to the webhook, if one is set."""

    def __init__(
        self,
        rollup: Rollup,
        store: Store,
        *,
        poll_s: float = 1.0,
        settle_s: float = 0.2,
        webhook: Webhook | None = None,
    ) -> None:
        self.rollup = rollup
        self.webhook = webhook
        self.poll_s = poll_s
        self.settle_s = settle_s
        self._wakeup = store.wakeup()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start following (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="nexus-rollup", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        waiter = self._wakeup.waiter(EVENTS)
        try:
            while not self._stop.is_set():
                waiter.clear()
                try:
                    self.rollup.catch_up()
                    if self.webhook is not None:
                        self.webhook.deliver_pending()
                except Exception:  # the database went away: try again at the next ring
                    log.warning("the rollup could not catch up", exc_info=True)
                # Commits in a burst are folded together: one transaction of the
                # rollup per `settle_s` at most, beside the journal's writers.
                if self._stop.wait(self.settle_s):
                    return
                waiter.wait(self._wakeup.timeout(self.poll_s))
        finally:
            waiter.close()

    def stop(self) -> None:
        """Stop and wait for the thread."""
        self._stop.set()
        if self._thread is not None:
            self._wakeup.ring(EVENTS)
            self._thread.join(timeout=10)
            self._thread = None


def serving(runtime: Any) -> tuple[Rollup, CollectorRegistry, RollupFollower]:
    """What a server needs of this module for `runtime`: the rollup, the metrics
    registry of `/metrics`, and the follower (not started) that keeps the rollup
    caught up and delivers alerts to the webhook when one is set."""
    rollup = Rollup(runtime.store)
    webhook = None
    url = runtime.settings.alert_webhook_url
    if url is not None:
        runtime.redactor.register(url.get_secret_value())
        webhook = Webhook(url.get_secret_value(), rollup.db)
    follower = RollupFollower(rollup, runtime.store, webhook=webhook)
    return rollup, registry(runtime.store, rollup), follower
