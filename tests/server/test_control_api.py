"""Kill, pause and resume over the API, in-process (httpx.ASGITransport) against
real sessions: the demo recording replayed slowly (`replay_pace_s`) so that it is
still running when the command arrives."""

from __future__ import annotations

from typing import Any

import pytest

from nexus.runtime.control import MAX_NOTE, MAX_REASON
from nexus.runtime.loop import SUSPENDED
from tests.server.test_api import DEMO, Api, assert_problem
from tests.waiting import until

SLOW = 30.0  # seconds per replayed answer: a step is surely in flight when we act


async def start(api: Api, pace_s: float = 0.0, goal: str = "Demo report") -> str:
    resp = await api.post(
        "/api/v1/sessions", json={"goal": goal, "replay": DEMO, "replay_pace_s": pace_s}
    )
    assert resp.status_code == 201, resp.text
    session_id: str = resp.json()["id"]
    return session_id


def kinds(api: Api, session_id: str) -> list[str]:
    return [e.kind for e in api.rt.journal.events(session_id)]


async def in_llm_step(api: Api, session_id: str, n: int = 1) -> None:
    """Wait until the session's n-th LLM request is journaled (the step is in flight)."""
    await until(lambda: kinds(api, session_id).count("llm.request") >= n, f"LLM request {n}")


def command(api: Api, session_id: str, kind: str, reason: str, **data: Any) -> dict[str, Any]:
    """The one command of `kind` stored for the session, as the API shows it."""
    [row] = [c for c in api.rt.store.commands(session_id) if c.kind == kind]
    expected = {
        "id": row.id,
        "session_id": session_id,
        "kind": kind,
        "by": "api:token",
        "reason": reason,
        "data": data,
        "ts": row.ts,
    }
    assert row.to_dict() == expected
    return expected


def open_steps(api: Api, session_id: str) -> list[tuple[str, int, int]]:
    """Steps journaled as started with no outcome yet: `(kind, step, attempt)` of
    LLM requests without a response and tool calls without a result."""
    pending: dict[tuple[str, int], int] = {}
    for e in api.rt.journal.events(session_id):
        p = e.payload
        if e.kind in ("llm.request", "tool.call"):
            pending[(e.kind, p["step"])] = p["attempt"]
        elif e.kind in ("llm.response", "llm.failed"):
            pending.pop(("llm.request", p["step"]), None)
        elif e.kind == "tool.result":
            pending.pop(("tool.call", p["step"]), None)
    return sorted((kind, step, attempt) for (kind, step), attempt in pending.items())


# -- kill ------------------------------------------------------------------------------


async def test_kill_of_a_running_session_answers_killed_and_journals_who_and_why(
    live_api: Api,
) -> None:
    """The LLM step in flight is cut; the answer holds the command and the killed
    session; the journal ends with session.killed naming the token, the reason and
    what was interrupted."""
    sid = await start(live_api, SLOW)
    await in_llm_step(live_api, sid)
    resp = await live_api.post(f"/api/v1/sessions/{sid}/kill", json={"reason": "runaway loop"})
    assert resp.status_code == 200, resp.text
    row = live_api.rt.session(sid)
    cmd = command(live_api, sid, "kill", "runaway loop")
    assert resp.json() == {"command": cmd, "session": row.to_dict()}
    assert (row.status, row.reason) == ("killed", "runaway loop")
    last = live_api.rt.journal.events(sid)[-1]
    payload = dict(last.payload)
    noticed = payload.pop("noticed_at")  # when the runner's process stopped every effect
    assert (last.kind, payload) == (
        "session.killed",
        {
            "reason": "runaway loop",
            "by": "api:token",
            "steps": row.steps,
            "command": cmd["id"],
            "interrupted": "the LLM request in flight was aborted",
        },
    )
    assert cmd["ts"] <= noticed <= last.ts


async def test_kill_of_a_queued_session_is_killed_at_once(api: Api) -> None:
    """No worker holds it: the kill is journaled by the request itself, even with
    `wait_s=0`."""
    sid = await start(api)
    resp = await api.post(f"/api/v1/sessions/{sid}/kill?wait_s=0")
    assert resp.status_code == 200, resp.text
    cmd = command(api, sid, "kill", "killed")
    assert resp.json() == {"command": cmd, "session": api.rt.session(sid).to_dict()}
    assert resp.json()["session"]["status"] == "killed"
    events = api.rt.journal.events(sid)
    assert [(e.kind, e.payload) for e in events[1:]] == [
        (
            "session.killed",
            {
                "reason": "killed",
                "by": "api:token",
                "steps": 0,
                "command": cmd["id"],
                "interrupted": "the session was not running: no step was cut short",
            },
        )
    ]


async def test_kill_twice_answers_200_both_times_with_one_command(api: Api) -> None:
    sid = await start(api)
    first = await api.post(f"/api/v1/sessions/{sid}/kill", json={"reason": "once"})
    second = await api.post(f"/api/v1/sessions/{sid}/kill", json={"reason": "twice"})
    assert (first.status_code, second.status_code) == (200, 200)
    assert first.json() == second.json()
    assert [c.kind for c in api.rt.store.commands(sid)] == ["kill"]
    assert kinds(api, sid) == ["session.created", "session.killed"]


async def test_commands_to_a_completed_session_are_409_and_post_nothing(live_api: Api) -> None:
    sid = await start(live_api)
    await until(lambda: live_api.rt.session(sid).status == "completed", "completed")
    before = kinds(live_api, sid)
    for kind in ("kill", "pause", "resume"):
        body = assert_problem(
            await live_api.post(f"/api/v1/sessions/{sid}/{kind}"), 409, "session-ended"
        )
        assert body["detail"] == f"session {sid} has already ended completed"
    assert live_api.rt.store.commands(sid) == []
    assert kinds(live_api, sid) == before


async def test_commands_to_an_unknown_session_are_404(api: Api) -> None:
    for kind in ("kill", "pause", "resume"):
        body = assert_problem(
            await api.post(f"/api/v1/sessions/s_nope/{kind}"), 404, "session-not-found"
        )
        assert body["detail"] == "no session 's_nope'"


@pytest.mark.parametrize(
    ("path", "body", "slug"),
    [
        ("kill", {"reason": "x" * (MAX_REASON + 1)}, "validation"),
        ("kill?wait_s=61", {}, "validation"),
        ("kill?wait_s=-1", {}, "validation"),
        ("pause", {"why": "unknown field"}, "validation"),
        ("pause?wait=maybe", {}, "validation"),
        ("resume", {"note": "x" * (MAX_NOTE + 1)}, "validation"),
        ("resume", {}, "invalid-request"),  # it is queued, not paused
    ],
)
async def test_invalid_control_requests_are_422_and_post_nothing(
    api: Api, path: str, body: dict[str, Any], slug: str
) -> None:
    sid = await start(api)
    assert_problem(await api.post(f"/api/v1/sessions/{sid}/{path}", json=body), 422, slug)
    assert api.rt.store.commands(sid) == []
    assert api.rt.session(sid).status == "queued"


# -- pause and resume ------------------------------------------------------------------


async def test_pause_with_wait_stops_between_steps_and_resume_with_a_note_completes(
    live_api: Api,
) -> None:
    """`wait=true` answers once the session is paused: no step is in flight. The
    resume's note is journaled for the agent and the session runs to its end."""
    sid = await start(live_api, 1.0)
    await in_llm_step(live_api, sid)  # the pause arrives during the first LLM call
    resp = await live_api.post(
        f"/api/v1/sessions/{sid}/pause?wait=true&wait_s=30", json={"reason": "let me look"}
    )
    assert resp.status_code == 200, resp.text
    row = live_api.rt.session(sid)
    pause = command(live_api, sid, "pause", "let me look")
    assert resp.json() == {"command": pause, "session": row.to_dict()}
    assert (row.status, row.reason) == ("paused", "let me look")
    # It stopped at the next step boundary: the tool call after the LLM answer is
    # journaled as intended but was not run (the guard refused it before the tool).
    assert kinds(live_api, sid)[-3:] == ["llm.response", "tool.call", "session.paused"]
    assert open_steps(live_api, sid) == [("tool.call", 2, 1)]

    note = "The report goes in report.md."
    resp = await live_api.post(
        f"/api/v1/sessions/{sid}/resume", json={"reason": "looked", "note": note}
    )
    assert resp.status_code == 200, resp.text
    resume = command(live_api, sid, "resume", "looked", note=note)
    assert resp.json()["command"] == resume
    await until(lambda: live_api.rt.session(sid).status == "completed", "completed")
    events = live_api.rt.journal.events(sid)
    controls = [e.payload for e in events if e.kind == "session.control"]
    assert controls == [
        {
            "command": resume["id"],
            "kind": "resume",
            "by": "api:token",
            "reason": "looked",
            "note": note,
        }
    ]
    retried = [e.payload for e in events if e.kind == "tool.call" and e.payload["step"] == 2]
    assert [(p["attempt"], p.get("retry_reason")) for p in retried] == [
        (1, None),
        (2, SUSPENDED.format(n=1)),
    ]
    assert open_steps(live_api, sid) == []


async def test_pause_with_wait_of_a_session_that_completes_instead_is_409(live_api: Api) -> None:
    """Posted during the last LLM step, the pause never finds a step boundary: the
    session completes and the waiting request says so."""
    sid = await start(live_api, 1.0)
    await in_llm_step(live_api, sid, 5)  # the demo's fifth answer is its last
    body = assert_problem(
        await live_api.post(f"/api/v1/sessions/{sid}/pause?wait=true&wait_s=30"),
        409,
        "session-ended",
    )
    assert body["detail"] == f"session {sid} ended completed before the pause applied"
    assert live_api.rt.session(sid).status == "completed"


async def test_pause_without_wait_answers_at_once_and_the_session_pauses(live_api: Api) -> None:
    sid = await start(live_api, SLOW)
    await in_llm_step(live_api, sid)
    resp = await live_api.post(f"/api/v1/sessions/{sid}/pause")
    assert resp.status_code == 200, resp.text
    assert resp.json()["session"]["status"] == "running"  # the step in flight goes on
    # The paced answer would take SLOW seconds; a kill ends the test's session.
    killed = await live_api.post(f"/api/v1/sessions/{sid}/kill")
    assert killed.json()["session"]["status"] == "killed"
