"""The OpenAPI document tells the truth: schemathesis generates requests from it
(its examples, the coverage of every constraint's edges, random fuzzing, and
stateful sequences) against a live server, and every answer must be no server
error, of a documented status and content type, and match its schema."""

from __future__ import annotations

from typing import Any

import schemathesis
from schemathesis.config import SchemathesisConfig
from schemathesis.engine import Status, events, from_schema

from tests.server.test_live import LiveServer

CHECKS = (
    "not_a_server_error",
    "response_schema_conformance",
    "status_code_conformance",
    "content_type_conformance",
)


def config(token: str) -> SchemathesisConfig:
    """Every offline phase, the four checks only, a bounded number of examples, a
    fixed seed (a failure found once is found again), no example database."""
    return SchemathesisConfig.from_dict(
        {
            "seed": 20261202,
            "headers": {"Authorization": f"Bearer {token}"},
            "request-timeout": 10,
            "generation": {"max-examples": 50, "database": "none"},
            "checks": {"enabled": False, **{name: {"enabled": True} for name in CHECKS}},
            "phases": {
                "examples": {"enabled": True},
                "coverage": {"enabled": True},
                "fuzzing": {"enabled": True},
                "stateful": {"enabled": True, "max-steps": 20},
            },
        }
    )


def failures(event: events.ScenarioFinished) -> list[str]:
    """What a finished scenario found: each failed check with its request."""
    found = []
    for case_id, checks in event.recorder.checks.items():
        case = event.recorder.cases[case_id].value
        for check in checks:
            if check.status == Status.FAILURE:
                found.append(f"{check.name}: {case.method} {case.formatted_path}: {check.failure_info}")
    return found


def test_schemathesis_finds_no_server_error_schema_violation_or_undocumented_status() -> None:
    """All phases over every route but the two SSE streams (they stream until their
    session ends, and no session runs here): zero failures, zero errors."""
    with LiveServer(workers=False) as live:
        schema = schemathesis.openapi.from_url(
            f"{live.url}/api/v1/openapi.json", config=config(live.token), headers=live.headers
        ).exclude(path_regex=r"/stream$")
        found: list[str] = []
        errors: list[str] = []
        phases: dict[str, Any] = {}
        for event in from_schema(schema).execute():
            if isinstance(event, events.ScenarioFinished):
                found.extend(failures(event))
            elif isinstance(event, events.NonFatalError | events.FatalError):
                errors.append(repr(event.info if hasattr(event, "info") else event))
            elif isinstance(event, events.PhaseFinished):
                phases[event.phase.name.value] = event.status.value
        assert (found, errors) == ([], [])
        assert phases == {
            "examples": "success",
            "coverage": "success",
            "fuzzing": "success",
            "stateful": "success",
        }
