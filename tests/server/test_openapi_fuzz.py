"""The OpenAPI document tells the truth: schemathesis generates requests from it
(its examples, the coverage of every constraint's edges, random fuzzing, and
stateful sequences) against a live server, and every answer must be no server
error, of a documented status and content type, and match its schema."""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from schemathesis.config import SchemathesisConfig
from schemathesis.engine import Status, events, from_schema

from tests.peers.openai_server import ThreadedPeerServer
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
            "request-timeout": 30,
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
                failure = check.failure_info.failure if check.failure_info else None
                what = f"{failure.title}: {failure.message}" if failure else "failed"
                found.append(f"{check.name}: {case.method} {case.formatted_path}: {what}")
    return found


# Hypothesis warns when it describes a large generated value (a 75 kB query string);
# the value is fine, the warning is about the cost of printing it.
@pytest.mark.filterwarnings("ignore:Generating overly large repr")
# schemathesis' coverage phase draws from the `random` module inside a Hypothesis
# strategy on some inputs; Hypothesis deprecates that, and the suite's
# warnings-as-errors turned it into a failure of whichever case hit it.
@pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning")
def test_schemathesis_finds_no_server_error_schema_violation_or_undocumented_status(
    threaded_peer: ThreadedPeerServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """All phases over every route but the two SSE streams (they stream until their
    session ends): zero failures, zero errors. The server is ready, as a deployed
    `nexus start` is: workers run and an LLM provider (the peer) answers."""
    monkeypatch.setenv(
        "NEXUS_PROVIDERS", f'[{{"name": "peer", "base_url": "{threaded_peer.url}", "model": "m"}}]'
    )
    threaded_peer.config.script = [{"content": "done"}]
    with LiveServer() as live:
        schema = schemathesis.openapi.from_url(
            f"{live.url}/api/v1/openapi.json", config=config(live.token), headers=live.headers
        ).exclude(path_regex=r"/stream$")
        found: list[str] = []
        errors: list[str] = []
        phases: dict[str, Any] = {}
        for event in from_schema(schema).execute():
            if isinstance(event, events.ScenarioFinished):
                found.extend(failures(event))
            elif isinstance(event, events.NonFatalError):
                inner = getattr(event.value, "exceptions", ())  # a Hypothesis group
                errors.append(f"{event.label}: {event.info}: {event.value!r} {inner!r}")
            elif isinstance(event, events.FatalError):
                errors.append(f"fatal: {event.exception!r}")
            elif isinstance(event, events.PhaseFinished):
                phases[event.phase.name.value] = event.status.value
        assert (sorted(set(found)), errors) == ([], [])
        ran = {name: phases.get(name) for name in ("examples", "coverage", "fuzzing", "stateful")}
        assert ran == dict.fromkeys(ran, "success")
