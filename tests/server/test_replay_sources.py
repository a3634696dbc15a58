"""Replay sources over the API: a session id, a file under NEXUS_HOME/recordings/, or
an uploaded recording; anything else is refused in words that never tell whether
a path exists."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from nexus.examples import demo_recording
from nexus.server.recordings import REFUSED
from tests.server.test_api import Api, assert_problem

DEMO = json.loads(demo_recording().read_text(encoding="utf-8"))


async def finished(api: Api, session_id: str) -> dict[str, Any]:
    """The session's row once it has ended (a bound against hangs, not a timing)."""
    deadline = time.monotonic() + 30
    while (row := (await api.get(f"/api/v1/sessions/{session_id}")).json())["status"] in (
        "queued",
        "running",
    ):
        assert time.monotonic() < deadline, f"{session_id} did not finish"
        await asyncio.sleep(0.02)
    result: dict[str, Any] = row
    return result


async def answers(api: Api, session_id: str) -> list[Any]:
    """The LLM answers a session got, in order."""
    events = (await api.get(f"/api/v1/sessions/{session_id}/events")).json()["items"]
    return [e["payload"]["message"] for e in events if e["kind"] == "llm.response"]


async def refused(api: Api, **body: Any) -> bytes:
    """POST a session with `body`; assert the one refusal and that nothing was written."""
    resp = await api.post("/api/v1/sessions", json={"goal": "x", **body})
    problem = assert_problem(resp, 422, "invalid-request")
    assert problem["detail"] == REFUSED
    assert (await api.get("/api/v1/sessions")).json()["items"] == []
    return resp.content


async def test_refused_paths_get_byte_identical_problems_whether_they_exist_or_not(
    api: Api, nexus_home: Path
) -> None:
    """/etc/passwd (exists), a missing path, an absolute path inside the recordings
    folder and `..` escapes to existing files all get the very same bytes: no
    file-existence oracle for a token holder."""
    inside = nexus_home / "recordings" / "demo.json"
    bodies = {
        source: await refused(api, replay=source)
        for source in (
            "/etc/passwd",
            "/no/such/file",
            str(inside),
            "../../../../../../etc/passwd",
            "../recordings/demo.json",
            "no-such-recording.json",
            "nul\x00byte",
        )
    }
    assert len(set(bodies.values())) == 1, bodies
    assert json.loads(bodies["/etc/passwd"]) == {
        "type": "urn:nexus:problem:invalid-request",
        "title": "Invalid request",
        "status": 422,
        "detail": REFUSED,
        "instance": "/api/v1/sessions",
    }


async def test_a_symlink_out_of_the_recordings_folder_is_refused(
    api: Api, nexus_home: Path, tmp_path: Path
) -> None:
    """A link under recordings/ to a real export outside it is refused like any path;
    a link that stays inside the folder is a recording."""
    outside = tmp_path / "elsewhere.json"
    outside.write_text(json.dumps(DEMO), encoding="utf-8")
    folder = nexus_home / "recordings"
    os.symlink(outside, folder / "escape.json")
    os.symlink(tmp_path, folder / "outdir")
    os.symlink(folder / "demo.json", folder / "alias.json")
    first = await refused(api, replay="escape.json")
    assert await refused(api, replay="outdir/elsewhere.json") == first
    resp = await api.post("/api/v1/sessions", json={"goal": "x", "replay": "alias.json"})
    assert resp.status_code == 201, resp.text


async def test_a_recording_under_the_folder_replays_to_completion(
    live_api: Api, nexus_home: Path
) -> None:
    """A file under recordings/ (also in a subfolder), named relative to the folder,
    replays the recorded answers to completion."""
    team = nexus_home / "recordings" / "team"
    team.mkdir()
    (team / "run.json").write_text(json.dumps(DEMO), encoding="utf-8")
    for name in ("demo.json", "team/run.json"):
        resp = await live_api.post("/api/v1/sessions", json={"goal": "demo", "replay": name})
        assert resp.status_code == 201, resp.text
        row = await finished(live_api, resp.json()["id"])
        assert row["status"] == "completed", row
        assert await answers(live_api, row["id"]) == [
            e["payload"]["message"] for e in DEMO["events"] if e["kind"] == "llm.response"
        ]


async def test_an_uploaded_recording_is_kept_by_its_hash_and_replays_to_completion(
    live_api: Api, nexus_home: Path
) -> None:
    """The export document inline in the body replays to completion; it is kept
    under recordings/uploads/ by the SHA-256 of its canonical JSON, which the journal
    names, so a resumed session can still read it."""
    resp = await live_api.post("/api/v1/sessions", json={"goal": "demo", "recording": DEMO})
    assert resp.status_code == 201, resp.text
    row = await finished(live_api, resp.json()["id"])
    assert row["status"] == "completed", row
    canonical = json.dumps(DEMO, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    kept = (
        nexus_home
        / "recordings"
        / "uploads"
        / f"{hashlib.sha256(canonical.encode()).hexdigest()}.json"
    )
    assert json.loads(kept.read_text(encoding="utf-8")) == DEMO
    created = live_api.rt.journal.events(row["id"])[0].payload
    assert created["replay"] == str(kept.resolve())
    assert sorted(p.name for p in kept.parent.iterdir()) == [kept.name]


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"recording": {"events": []}}, "holds no LLM responses"),
        ({"recording": {"session": {}}}, "is not an exported session (KeyError"),
        ({"recording": {"events": "nope"}}, "is not an exported session"),
        ({"recording": DEMO, "agent": "ghost"}, "unknown agent 'ghost'"),
        ({"recording": DEMO, "replay": "demo.json"}, "either replay or recording"),
    ],
    ids=["no-answers", "no-events", "events-not-a-list", "unknown-agent", "both-sources"],
)
async def test_a_refused_upload_writes_nothing(
    api: Api, nexus_home: Path, body: dict[str, Any], fragment: str
) -> None:
    """An upload that is not a replayable export, or a request refused for another
    reason, leaves no session and no file behind."""
    resp = await api.post("/api/v1/sessions", json={"goal": "x", **body})
    assert fragment in assert_problem(resp, 422, "invalid-request")["detail"]
    assert (await api.get("/api/v1/sessions")).json()["items"] == []
    uploads = nexus_home / "recordings" / "uploads"
    assert not uploads.exists() or list(uploads.iterdir()) == []


async def test_a_session_id_of_this_home_replays_its_journaled_answers(live_api: Api) -> None:
    """A session of this node, named by id, is replayed from its journal."""
    first = await live_api.post("/api/v1/sessions", json={"goal": "demo", "replay": "demo.json"})
    original = await finished(live_api, first.json()["id"])
    again = await live_api.post("/api/v1/sessions", json={"goal": "demo", "replay": original["id"]})
    assert again.status_code == 201, again.text
    replayed = await finished(live_api, again.json()["id"])
    assert replayed["status"] == "completed", replayed
    assert await answers(live_api, replayed["id"]) == await answers(live_api, original["id"])
