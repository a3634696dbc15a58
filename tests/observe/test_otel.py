"""OTLP export against a real OTLP/HTTP receiver (tests/peers/otlp_receiver.py): a
session run through the OpenAI-compatible peer arrives as one decoded span tree
(snapshot), step by step while it runs, equal to the journal's tree; a resumed session
exports nothing twice; a session killed while paused is exported by its sender;
secrets never leave, in content or elsewhere; the settings follow OTEL_* variables."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from nexus.config import load_settings
from nexus.errors import ConfigError
from nexus.observe.otel import OtlpConfig, TraceExport, nanos, otlp_config
from nexus.observe.spans import build_trace
from nexus.runtime.agents import Agent, AgentRegistry
from nexus.runtime.providers import ScriptedProvider
from nexus.runtime.redact import Redactor
from nexus.runtime.runtime import Runtime
from nexus.runtime.tools import ToolContext, Toolkit, tool
from nexus.types import SessionStatus
from tests.observe.tracing import KIT, Crash, agents, call
from tests.peers.openai_server import PeerServer
from tests.peers.otlp_receiver import OtlpReceiver, Received, attributes
from tests.snapshots import assert_snapshot
from tests.waiting import until, wait_for

KINDS = {0: "UNSPECIFIED", 1: "INTERNAL", 2: "SERVER", 3: "CLIENT"}
STATUS = {0: "UNSET", 1: "OK", 2: "ERROR"}


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as r:
        yield r


def exporting(receiver: OtlpReceiver, **settings: Any) -> dict[str, Any]:
    """Settings that export to the receiver at once."""
    return {"otlp_endpoint": receiver.url, "otlp_batch_delay_s": 0.02, **settings}


def received_tree(spans: list[Received], session_id: str) -> dict[str, Any]:
    """The received spans as one tree by their parent ids, every span once, normalised:
    ids and clock times out (the nesting and the order stay), the session id named."""
    ids = [s.span.span_id for s in spans]
    assert len(ids) == len(set(ids)), "a span was exported twice"
    by_parent: dict[bytes, list[Any]] = {}
    for s in spans:
        by_parent.setdefault(s.span.parent_span_id, []).append(s.span)
    (root,) = by_parent[b""]

    def node(span: Any) -> dict[str, Any]:
        assert span.trace_id == root.trace_id
        children = sorted(by_parent.get(span.span_id, []), key=lambda c: c.start_time_unix_nano)
        for c in children:
            assert span.start_time_unix_nano <= c.start_time_unix_nano
            assert c.end_time_unix_nano <= span.end_time_unix_nano
        attrs = attributes(span.attributes)
        return {
            "name": span.name,
            "kind": KINDS[span.kind],
            "status": STATUS[span.status.code],
            "status_message": span.status.message,
            "attributes": {k: "<session>" if v == session_id else v for k, v in attrs.items()},
            "events": [
                {
                    "name": e.name,
                    "attributes": {
                        k: v for k, v in attributes(e.attributes).items() if k != "noticed_at"
                    },
                }
                for e in span.events
            ],
            "children": [node(c) for c in children],
        }

    return node(root)


def assert_same_as_journal(rt: Runtime, sid: str, spans: list[Received]) -> None:
    """Every received span is the journal's span of the same id: name, parent, times
    to the nanosecond, attributes; and every closed span of the journal was received."""
    tree = build_trace(rt.journal.events(sid))
    got = {s.span.span_id.hex(): s.span for s in spans}
    assert set(got) == {s.span_id for s in tree.spans()}
    for span in tree.spans():
        otlp = got[span.span_id]
        assert otlp.trace_id.hex() == tree.trace_id
        assert (otlp.parent_span_id.hex() or None) == span.parent_id
        assert (otlp.name, otlp.start_time_unix_nano) == (span.name, nanos(span.start))
        assert otlp.end_time_unix_nano == nanos(span.end or 0)
        assert attributes(otlp.attributes) == span.otel_attributes()


async def test_a_session_arrives_at_the_receiver_as_one_span_tree_while_it_runs(
    peer: PeerServer, receiver: OtlpReceiver
) -> None:
    """Through the OpenAI-compatible peer: two tools (one fails), a tool that returns
    only once the first step's spans have reached the receiver (so they left while
    the session ran), then the answer. The decoded tree is the snapshot, and equal
    to the tree the journal gives."""
    first_step: list[str] = []

    @tool(effect="read")
    def after_export() -> str:
        """Wait until the receiver holds the first step's spans."""
        wait_for(
            lambda: {"step 1", "execute_tool explode"} <= {s.span.name for s in receiver.spans()},
            "step 1 exported while the session runs",
        )
        first_step.append("seen")
        return "exported"

    registry = AgentRegistry()
    kit = Toolkit("otel", [*KIT, after_export])
    registry.add(Agent(name="t", model="peer-model", toolkits=(kit,)))
    peer.config.script = [
        {"tool_calls": [call("echo", text="a"), call("explode", reason="disk on fire")]},
        {"tool_calls": [call("after_export")]},
        {"content": "all done"},
    ]
    provider = {
        "name": "peer",
        "base_url": peer.url,
        "model": "peer-model",
        "price_in_per_1m": 2.5,
        "price_out_per_1m": 10.0,
    }
    rt = Runtime(
        load_settings(providers=[provider], **exporting(receiver, otlp_service_name="agents")),
        agents=registry,
    )
    sid = rt.create_session("use the tools", agent="t")
    assert await rt.run(sid) is SessionStatus.COMPLETED
    assert first_step == ["seen"]
    await until(lambda: any(s.span.name == "invoke_agent t" for s in receiver.spans()), "root")
    spans = receiver.spans()
    assert {(s.resource["service.name"], s.scope) for s in spans} == {("agents", "nexus")}
    assert_snapshot("otlp_session", received_tree(spans, sid))
    assert_same_as_journal(rt, sid, spans)
    assert receiver.refused == []
    await rt.aclose()


async def test_a_resumed_session_exports_nothing_twice(receiver: OtlpReceiver) -> None:
    """The crashed run exported its finished step; the resumed run exports the rest
    (the crashed LLM attempt with it) and not that step again: every span id of the
    trace arrives exactly once, under one trace id."""
    script: list[object] = [{"tool_calls": [call("echo", text="a")]}, Crash(), {"content": "ok"}]
    rt1 = Runtime(
        load_settings(**exporting(receiver)), agents=agents(), provider=ScriptedProvider(script)
    )
    sid = rt1.create_session("crash once", agent="t")
    with pytest.raises(Crash):
        await rt1.run(sid)
    assert rt1.traces is not None and rt1.traces.force_flush()
    before = sorted(s.span.name for s in receiver.spans())
    assert before == ["chat scripted-1", "execute_tool echo", "step 1"]
    script[1] = {"content": "ok"}
    rt2 = Runtime(
        load_settings(**exporting(receiver)), agents=agents(), provider=ScriptedProvider(script)
    )
    assert await rt2.run(sid) is SessionStatus.COMPLETED
    await until(lambda: any(s.span.name == "invoke_agent t" for s in receiver.spans()), "root")
    spans = receiver.spans()
    assert_same_as_journal(rt2, sid, spans)  # ids distinct, each span of the tree once
    assert sorted(s.span.name for s in spans) == [
        "chat scripted-1",
        "chat scripted-1",
        "chat scripted-1",
        "execute_tool echo",
        "invoke_agent t",
        "step 1",
        "step 3",
    ]
    (trace,) = {s.span.trace_id.hex() for s in spans}
    assert trace == build_trace(rt2.journal.events(sid)).trace_id
    await rt1.aclose()
    await rt2.aclose()


async def test_a_session_killed_while_paused_is_exported_by_the_killer(
    receiver: OtlpReceiver,
) -> None:
    """Paused (by its first tool) before its second tool ran, the session's first step
    stays open and unexported; the kill, journaled by its sender (no run), exports
    that step (the suspended attempt ended as interrupted) and the root, killed."""
    box: list[Runtime] = []

    @tool(effect="read")
    async def pause_me(ctx: ToolContext) -> str:
        """Ask for a pause of this session (applied at the next step)."""
        await box[0].control.post(ctx.session_id, "pause", by="user:ops", reason="look first")
        return "asked"

    registry = AgentRegistry()
    registry.add(Agent(name="t", model="scripted-1", toolkits=(Toolkit("p", [pause_me, *KIT]),)))
    prov = ScriptedProvider([{"tool_calls": [call("pause_me"), call("echo", text="b")]}])
    rt = Runtime(load_settings(**exporting(receiver)), agents=registry, provider=prov)
    box.append(rt)
    sid = rt.create_session("pause me", agent="t")
    assert await rt.run(sid) is SessionStatus.PAUSED
    assert rt.traces is not None and rt.traces.force_flush()
    assert receiver.spans() == []
    await rt.control.post(sid, "kill", by="user:ops", reason="not needed")
    assert rt.session(sid).status == "killed"
    await until(lambda: any(s.span.name == "invoke_agent t" for s in receiver.spans()), "root")
    spans = receiver.spans()
    assert_same_as_journal(rt, sid, spans)
    assert_snapshot("otlp_killed_while_paused", received_tree(spans, sid))
    await rt.aclose()


async def test_secrets_never_leave_in_spans(peer: PeerServer, receiver: OtlpReceiver) -> None:
    """With content on: a registered secret in the prompt and in a tool result is
    masked in every byte the receiver gets (the content is there, redacted); and an
    exporter redacts what a journal written before the secret was registered holds."""
    canary = "canary-5e1f0b7a9c"

    @tool(effect="read")
    def vault() -> str:
        """Hand out a secret."""
        return f"the password is {canary}"

    registry = AgentRegistry()
    registry.add(Agent(name="t", model="peer-model", toolkits=(Toolkit("v", [vault]),)))
    peer.config.script = [{"tool_calls": [call("vault")]}, {"content": "got it"}]
    provider = {"name": "peer", "base_url": peer.url, "model": "peer-model"}
    rt = Runtime(
        load_settings(providers=[provider], **exporting(receiver, trace_content=True)),
        agents=registry,
    )
    rt.redactor.register(canary)
    sid = rt.create_session(f"log in with {canary}", agent="t")
    assert await rt.run(sid) is SessionStatus.COMPLETED
    await until(lambda: any(s.span.name == "invoke_agent t" for s in receiver.spans()), "root")
    content = {
        (s.span.name, k): v
        for s in receiver.spans()
        for k, v in attributes(s.span.attributes).items()
        if k in ("gen_ai.input.messages", "gen_ai.tool.call.result") and "[REDACTED]" in v
    }
    assert sorted(content) == [
        ("chat peer-model", "gen_ai.input.messages"),
        ("execute_tool vault", "gen_ai.tool.call.result"),
    ]
    await rt.aclose()

    # A journal that holds the secret as it came (nobody had registered it yet).
    script = [{"tool_calls": [call("explode", reason=f"bad {canary}")]}, {"content": canary}]
    plain = Runtime(load_settings(), agents=agents(), provider=ScriptedProvider(script))
    old = plain.create_session(f"remember {canary}", agent="t")
    await plain.run(old)
    assert canary in str([e.payload for e in plain.journal.events(old)])
    tree = build_trace(plain.journal.events(old), content=True)  # the builder knows nothing
    exporter = TraceExport(
        OtlpConfig(endpoint=receiver.url + "/v1/traces", batch_delay_s=0.02), Redactor([canary])
    )
    exporter.export(tree.trace_id, [tree.root])
    exporter.shutdown()
    old_spans = [s for s in receiver.spans() if s.span.trace_id.hex() == tree.trace_id]
    assert len(old_spans) == len(list(tree.spans()))
    assert receiver.bodies and all(canary.encode() not in body for body in receiver.bodies)
    await plain.aclose()


def test_the_settings_follow_the_otel_variables(receiver: OtlpReceiver) -> None:
    """NEXUS_OTLP_* win; unset, the OpenTelemetry variables are read (the traces
    endpoint as given, the base endpoint with /v1/traces added); header values are
    secrets; no endpoint at all means no exporter."""
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/",
        "OTEL_EXPORTER_OTLP_HEADERS": "Authorization=Bearer%20abc123,x-team=ops",
        "OTEL_SERVICE_NAME": "fleet",
    }
    got = otlp_config(load_settings(), env)
    assert got == OtlpConfig(
        endpoint="http://collector:4318/v1/traces",
        headers={"authorization": "Bearer abc123", "x-team": "ops"},
        service_name="fleet",
    )
    traces_url = {**env, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://other:4318/v1/traces"}
    assert otlp_config(load_settings(), traces_url).endpoint == "http://other:4318/v1/traces"
    ours = load_settings(otlp_endpoint="http://mine:4318", otlp_headers="k=v", trace_content=True)
    assert otlp_config(ours, env) == OtlpConfig(
        endpoint="http://mine:4318/v1/traces", headers={"k": "v"}, service_name="fleet",
        content=True,
    )  # fmt: skip
    assert otlp_config(load_settings(), {}) is None
    assert Runtime(load_settings()).traces is None
    with pytest.raises(ConfigError, match="NEXUS_OTLP_HEADERS: Value error, entry 2 is not"):
        load_settings(otlp_headers="a=b,secret-without-equals")
    with pytest.raises(ConfigError, match="NEXUS_OTLP_ENDPOINT: Value error, must start"):
        load_settings(otlp_endpoint="collector:4318")
    rt = Runtime(load_settings(**exporting(receiver, otlp_headers="authorization=Bearer tok-77")))
    assert rt.redactor.text("sent Bearer tok-77") == "sent [REDACTED]"
