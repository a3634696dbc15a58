"""The alert webhook: each alert of the journal (`nexus.events.ALERT_KINDS`: budget
alerts and refusals, loop detections) POSTed once as JSON to `NEXUS_ALERT_WEBHOOK_URL`.

Alerts reach the rollup's `obs_alerts` table as it folds the journal; the server's
rollup follower then delivers the ones not yet delivered. A delivery is claimed
first (a compare-and-set on the row), so servers sharing a database do not post an
alert twice; a failed post (no answer, or not 2xx) is tried again once its claim
expires (`retry_s`), up to `max_attempts`. Only alerts younger than `max_age_s`
are posted: configuring a webhook does not replay a year of history into it.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request
from typing import Any

from nexus.observe.sql import Database

log = logging.getLogger("nexus.alerts")


class Webhook:
    """Delivers pending alerts from a rollup's database to one URL.

    Args:
        url: where alerts are POSTed (may hold a secret: never logged).
        db: the rollup's database (`Rollup.db`).
        timeout_s: one POST's deadline.
        retry_s: how long a claimed delivery waits before another try.
        max_attempts: tries per alert.
        max_age_s: older alerts are not posted.
    """

    def __init__(
        self,
        url: str,
        db: Database,
        *,
        timeout_s: float = 5.0,
        retry_s: float = 30.0,
        max_attempts: int = 10,
        max_age_s: float = 86_400.0,
    ) -> None:
        self.url = url
        self.db = db
        self.timeout_s = timeout_s
        self.retry_s = retry_s
        self.max_attempts = max_attempts
        self.max_age_s = max_age_s

    def deliver_pending(self, *, now: float | None = None) -> int:
        """Post every deliverable alert; returns how many were delivered."""
        now = time.time() if now is None else now
        due = self.db.rows(
            "SELECT event_id, ts, session_id, agent, kind, payload, attempts FROM obs_alerts "
            "WHERE delivered_at IS NULL AND attempts < ? AND ts >= ? "
            "AND (claimed_at IS NULL OR claimed_at <= ?) ORDER BY event_id LIMIT 100",
            (self.max_attempts, now - self.max_age_s, now - self.retry_s),
        )
        delivered = 0
        for event_id, ts, session_id, agent, kind, payload, attempts in due:
            # Compare-and-set on the attempt count read above: of two servers that
            # read the same row, one claims it.
            claimed = self.db.execute(
                "UPDATE obs_alerts SET claimed_at = ?, attempts = attempts + 1 "
                "WHERE event_id = ? AND delivered_at IS NULL AND attempts = ?",
                (now, event_id, attempts),
            )
            if claimed != 1:
                continue  # another server took it
            body = {
                "source": "nexus",
                "id": int(event_id),
                "ts": float(ts),
                "kind": kind,
                "session_id": session_id,
                "agent": agent,
                "payload": json.loads(payload),
            }
            if self._post(body):
                self.db.execute(
                    "UPDATE obs_alerts SET delivered_at = ? WHERE event_id = ?",
                    (time.time(), event_id),
                )
                delivered += 1
        return delivered

    def _post(self, body: dict[str, Any]) -> bool:
        data = json.dumps(body, ensure_ascii=False).encode()
        request = urllib.request.Request(  # noqa: S310 (the URL is an http(s) setting)
            self.url, data=data, headers={"Content-Type": "application/json"}, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as resp:  # noqa: S310
                status: int = resp.status
                return 200 <= status < 300
        except (urllib.error.URLError, OSError) as exc:
            # The URL may carry a token (a chat webhook): never in the log.
            log.warning("alert %s not delivered to the webhook: %s", body["id"], _why(exc))
            return False


def _why(exc: Exception) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code}"
    return type(exc).__name__
