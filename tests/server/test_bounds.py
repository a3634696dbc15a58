"""Input from outside is bounded before it reaches SQL or a JSON path: huge
integers and odd label keys get a 422 problem, never a 500."""

from __future__ import annotations

import pytest

from tests.server.test_api import Api, assert_problem

HUGE = str(2**70)


@pytest.mark.parametrize(
    "url",
    [
        f"/api/v1/sessions?offset={HUGE}",
        f"/api/v1/sessions/SID/events?after_seq={HUGE}",
        f"/api/v1/events/stream?after={HUGE}",
        f"/api/v1/sessions/SID/stream?after={HUGE}",
        "/api/v1/sessions?agent=" + "a" * 65,
    ],
)
async def test_integers_past_the_bound_are_refused_with_422(api: Api, url: str) -> None:
    sid = api.rt.create_session("bounded")
    body = assert_problem(await api.get(url.replace("SID", sid)), 422, "validation")
    assert body["errors"][0]["message"].startswith(
        ("Input should be less than or equal", "String should have at most")
    )


@pytest.mark.parametrize("stream", ["/api/v1/events/stream", "/api/v1/sessions/SID/stream"])
async def test_a_huge_last_event_id_is_a_400(api: Api, stream: str) -> None:
    sid = api.rt.create_session("bounded")
    resp = await api.get(
        stream.replace("SID", sid), headers={"Last-Event-ID": "99999999999999999999999"}
    )
    assert assert_problem(resp, 400, "invalid-last-event-id")["detail"] == (
        f"Last-Event-ID must be an integer from 0 to {2**53}"
    )


@pytest.mark.parametrize(
    "label",
    ["bad\x00key=v", 'quo"te=v', "=v", "k", "sp ace=v", "k=" + "v" * 300],
)
async def test_odd_label_filters_are_refused_with_422(api: Api, label: str) -> None:
    resp = await api.client.get("/api/v1/sessions", params={"label": label}, headers=api.auth)
    assert resp.status_code == 422, resp.text
    assert resp.headers["content-type"] == "application/problem+json"


async def test_label_filters_match_by_bound_values(api: Api) -> None:
    a = api.rt.create_session("a", labels={"team.name/x": "ops:1"})
    api.rt.create_session("b", labels={"team.name/x": "dev"})
    resp = await api.client.get(
        "/api/v1/sessions", params={"label": "team.name/x=ops:1"}, headers=api.auth
    )
    assert [r["id"] for r in resp.json()["items"]] == [a]


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        ({"k": "v" * 500_000}, "the value is 500000 characters, over 256"),
        ({"bad key": "v"}, "label key 'bad key' is invalid"),
        ({f"k{i}": "v" for i in range(33)}, "at most 32"),
    ],
)
async def test_oversized_or_odd_labels_on_a_new_session_are_refused(
    api: Api,
    labels: dict[str, str],
    message: str,
) -> None:
    resp = await api.post("/api/v1/sessions", json={"goal": "g", "labels": labels})
    assert resp.status_code == 422, resp.text
    assert message in resp.text
    assert api.rt.store.count_sessions() == 0
