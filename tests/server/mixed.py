"""Sessions of mixed status, cost, labels and goal length, journaled as the
runtime journals them (no workers): what the list's sort, search, filters and
totals are tested on, through the API and in a browser."""

from __future__ import annotations

from nexus.runtime.runtime import Runtime

TEAMS = ("ops", "ml", "web")
LONG_GOAL = (
    "Go through every open incident of the last quarter, group them by root cause, "
    "and for each group write a paragraph on what failed, what we changed, what is "
    "still open and who owns it; then draft the postmortem index page that links them "
) * 3
EXPENSIVE = 14  # row 15 of the list, as in issue 8: $0.0223, about 40 times the others


def status_of(i: int) -> str:
    """The status session `i` ends in: failed, running, queued or completed."""
    if i % 5 == 0:
        return "failed"
    if i % 7 == 0:
        return "running"
    if i % 11 == 0:
        return "queued"
    return "completed"


def seed_mixed(rt: Runtime, n: int = 50) -> list[str]:
    """`n` sessions, oldest first; session `i` has `i % 4 + 1` LLM steps (unless queued),
    labels `team=` one of TEAMS, a goal naming its number, one very long goal."""
    ids = []
    for i in range(n):
        goal = LONG_GOAL if i == 3 else f"Report {i}: summarise the {TEAMS[i % 3]} backlog"
        sid = rt.create_session(goal, labels={"team": TEAMS[i % 3], "n": str(i)})
        ids.append(sid)
        status = status_of(i)
        if status == "queued":
            continue
        rt.journal.append(sid, "session.started", {})
        for _ in range(i % 4 + 1):
            cost = 0.0223 / (i % 4 + 1) if i == EXPENSIVE else 0.000558 + i * 1e-6
            rt.journal.append(
                sid,
                "llm.response",
                {"message": {"role": "assistant", "content": "ok"}, "model": "m"},
                tokens_in=100 + i,
                tokens_out=10,
                cost_usd=cost,
            )
        if status == "failed":
            rt.journal.append(sid, "session.failed", {"reason": "tool crashed"}, reason="boom")
        elif status == "completed":
            rt.journal.append(sid, "session.completed", {"answer": "ok"}, reason="completed")
    return ids
