"""The sessions list's sort, search, label and time filters and its totals,
through the API in-process; bad input is a 422 problem, never a 500 or a guess."""

from __future__ import annotations

from typing import Any

import pytest

from nexus.storage.base import SessionRow
from tests.server.mixed import EXPENSIVE, seed_mixed, status_of
from tests.server.test_api import Api, assert_problem


async def listed(api: Api, **params: Any) -> list[str]:
    resp = await api.client.get(
        "/api/v1/sessions", params={"limit": 500, **params}, headers=api.auth
    )
    assert resp.status_code == 200, resp.text
    return [r["id"] for r in resp.json()["items"]]


def rows(api: Api, ids: list[str]) -> list[SessionRow]:
    return [api.rt.session(i) for i in ids]


async def test_the_list_sorts_by_each_key_both_ways(api: Api) -> None:
    ids = seed_mixed(api.rt, 30)
    everything = rows(api, ids)
    keys = {
        "created": lambda r: r.created_at,
        "cost": lambda r: r.cost_usd,
        "steps": lambda r: r.steps,
        "tokens": lambda r: r.tokens_in + r.tokens_out,
        "duration": lambda r: r.updated_at - r.created_at,
    }
    for name, key in keys.items():
        by_id = sorted(everything, key=lambda r: r.id)
        expected = [r.id for r in sorted(by_id, key=key, reverse=True)]
        assert await listed(api, sort=f"-{name}") == expected, name
        assert await listed(api, sort=name) == expected[::-1], name
    assert (await listed(api, sort="-cost"))[0] == ids[EXPENSIVE]
    assert await listed(api) == await listed(api, sort="-created") == ids[::-1]
    # Paging walks the same order.
    first = await listed(api, sort="-cost", limit=10)
    second = await listed(api, sort="-cost", limit=10, offset=10)
    assert first + second == (await listed(api, sort="-cost"))[:20]


async def test_the_list_searches_goals_and_filters_by_label_and_time(api: Api) -> None:
    ids = seed_mixed(api.rt, 30)
    created = [s.created_at for s in rows(api, ids)]
    assert await listed(api, q="REPORT 1") == [
        ids[i] for i in (19, 18, 17, 16, 15, 14, 13, 12, 11, 10, 1)
    ]
    assert await listed(api, q="postmortem index") == [ids[3]]
    assert await listed(api, q="100%") == []
    assert await listed(api, label="team=ml") == [ids[i] for i in range(28, -1, -3)]
    assert await listed(api, label="n=7", q="ops") == []
    after, before = created[10], created[20]
    assert await listed(api, created_after=after, created_before=before) == ids[10:20][::-1]
    assert await listed(api, created_after=after, label="team=ops", sort="created") == [
        ids[i] for i in (12, 15, 18, 21, 24, 27)
    ]
    assert await listed(api, status="failed", q="web") == [ids[i] for i in (20, 5)]


async def test_totals_match_the_list_under_the_same_filters(api: Api) -> None:
    ids = seed_mixed(api.rt, 50)
    for params in ({}, {"label": "team=ops"}, {"q": "report 2", "status": ["failed", "completed"]}):
        resp = await api.client.get("/api/v1/sessions/totals", params=params, headers=api.auth)
        assert resp.status_code == 200, resp.text
        selected = rows(api, await listed(api, **params))
        finished = [r for r in selected if r.status in ("completed", "failed", "killed")]
        failed = [r for r in selected if r.status == "failed"]
        assert resp.json() == {
            "count": len(selected),
            "finished": len(finished),
            "failed": len(failed),
            "failure_rate": len(failed) / len(finished),
            "tokens_in": sum(r.tokens_in for r in selected),
            "tokens_out": sum(r.tokens_out for r in selected),
            "cost_usd": pytest.approx(sum(r.cost_usd for r in selected)),
        }, params
    everything = (await api.get("/api/v1/sessions/totals")).json()
    statuses = [status_of(i) for i in range(len(ids))]
    assert (everything["count"], everything["failed"]) == (50, statuses.count("failed"))
    none = (await api.get("/api/v1/sessions/totals?q=nothing+like+this")).json()
    assert none == {
        "count": 0,
        "finished": 0,
        "failed": 0,
        "failure_rate": None,
        "tokens_in": 0,
        "tokens_out": 0,
        "cost_usd": 0.0,
    }


@pytest.mark.parametrize("route", ["/api/v1/sessions", "/api/v1/sessions/totals"])
@pytest.mark.parametrize(
    ("params", "slug", "message"),
    [
        ({"q": "x" * 201}, "validation", "String should have at most 200 characters"),
        ({"created_after": "-1"}, "validation", "Input should be greater than or equal to 0"),
        ({"created_before": "nan"}, "validation", "Input should be less than or equal to 9007"),
        ({"created_after": "yesterday"}, "validation", "Input should be a valid number"),
        ({"label": "team"}, "invalid-request", "KEY=VALUE"),
        (
            {"created_after": "20", "created_before": "10"},
            "invalid-request",
            "created_after must not be later than created_before",
        ),
    ],
)
async def test_bad_filters_are_refused_with_422_naming_the_rule(
    api: Api,
    route: str,
    params: dict[str, str],
    slug: str,
    message: str,
) -> None:
    body = assert_problem(await api.client.get(route, params=params, headers=api.auth), 422, slug)
    assert message in str(body), body


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"sort": "goal"}, "Input should be '-created', 'created', '-cost', 'cost'"),
        ({"sort": "cost; DROP TABLE sessions"}, "Input should be '-created'"),
        ({"sort": "+cost"}, "Input should be '-created'"),
        ({"limit": "501"}, "Input should be less than or equal to 500"),
        ({"limit": str(10**12)}, "Input should be less than or equal to 500"),
    ],
)
async def test_unknown_sort_keys_and_huge_limits_are_refused_with_422(
    api: Api,
    params: dict[str, str],
    message: str,
) -> None:
    body = assert_problem(
        await api.client.get("/api/v1/sessions", params=params, headers=api.auth), 422, "validation"
    )
    assert message in str(body), body
    assert api.rt.store.count_sessions() == 0  # (and nothing was dropped)
