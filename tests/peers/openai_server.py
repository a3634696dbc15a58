"""OpenAI-compatible chat-completions peer served over real HTTP.

Tests and benchmarks use it in place of an LLM service. Its answers are
deterministic functions of the conversation, and faults (latency, HTTP 500s,
malformed answers) can be injected through :class:`PeerConfig`.

Example:
    server = PeerServer(PeerConfig(script=[{"content": "hi"}]))
    await server.start()
    ...  # point an OpenAI client at server.url
    await server.stop()

Standalone, for benchmarks that need the peer in another process::

    python -m tests.peers.openai_server --port 8911 --latency-ms 20
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import copy
import dataclasses
import json
import random
import signal
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any

from aiohttp import web

Json = dict[str, Any]

MALFORMED_MODES = ("not_json", "no_choices", "bad_tool_args", "unknown_tool", "bad_schema_args")
"""Accepted values of :attr:`PeerConfig.malformed`."""

_RAW_BODIES = {
    "not_json": '{"choices": [',
    "no_choices": '{"id": "x", "object": "chat.completion"}',
}
_BROKEN_JSON_ARGS = '{"path": '
_PLACEHOLDERS: Mapping[str, Any] = {
    "string": "x",
    "integer": 1,
    "number": 1,
    "boolean": True,
    "array": [],
    "object": {},
}


@dataclasses.dataclass
class PeerConfig:
    """Behaviour of a peer. It is read on every request, so it may be changed live.

    Attributes:
        latency_ms: Delay before answering each chat request, in milliseconds.
        failure_rate: Fraction of chat requests answered with HTTP 500, drawn
            from ``random.Random(seed)``.
        fail_next: The next N chat requests are answered with HTTP 500.
        malformed: None, or one of :data:`MALFORMED_MODES` to corrupt answers.
            The tool modes only alter answers that contain tool calls.
        script: Answers indexed by the number of assistant messages in the
            request: ``{"content": ...}`` and/or ``{"tool_calls": [{"name": ...,
            "arguments": {...}}]}``. Past its end the peer answers "done".
        seed: Seed for the failure_rate draws; changing it restarts the sequence.
        model: Model id listed by ``GET /v1/models``.
        fail_status: The HTTP status of injected failures (500, or 429, 503, ...).
        retry_after: A ``Retry-After`` header sent with injected failures.
        pad_bytes: Characters appended to every answer's content (huge answers).
    """

    latency_ms: float = 0
    failure_rate: float = 0.0
    fail_next: int = 0
    malformed: str | None = None
    script: list[Json] | None = None
    seed: int = 0
    model: str = "peer-model"
    fail_status: int = 500
    retry_after: str | None = None
    pad_bytes: int = 0

    def update(self, changes: Mapping[str, Any]) -> None:
        """Sets the given fields after checking their names and the malformed mode.

        Args:
            changes: Field names mapped to their new values.

        Raises:
            ValueError: A name is not a field, or the malformed mode is unknown.
        """
        unknown = set(changes) - {field.name for field in dataclasses.fields(self)}
        if unknown:
            raise ValueError(f"unknown config fields: {sorted(unknown)}")
        malformed = changes.get("malformed", self.malformed)
        if malformed is not None and malformed not in MALFORMED_MODES:
            raise ValueError(f"malformed must be one of {MALFORMED_MODES} or null")
        for name, value in changes.items():
            setattr(self, name, value)


@dataclasses.dataclass
class _Answer:
    """An assistant message; tool calls are in OpenAI wire format."""

    content: str | None
    tool_calls: list[Json]


def _text(content: Any) -> str:
    """Returns the text of a message content: a string or a list of text parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


def _function(tool: Json) -> Json:
    """Returns the ``function`` object of a tool definition (empty if absent)."""
    function = tool.get("function")
    return function if isinstance(function, dict) else {}


def _schema_type(schema: Any) -> str | None:
    """Returns a JSON schema's type, the first non-null one if it is a list."""
    kind = schema.get("type") if isinstance(schema, dict) else None
    if isinstance(kind, list):
        kind = next((item for item in kind if item != "null"), None)
    return kind if isinstance(kind, str) else None


def _tool_call(turn: int, index: int, name: str, arguments: Any) -> Json:
    """Builds a tool call with the deterministic id ``call_{turn}_{index}``."""
    encoded = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return {
        "id": f"call_{turn}_{index}",
        "type": "function",
        "function": {"name": name, "arguments": encoded},
    }


def _scripted_answer(script: Sequence[Json], turn: int) -> _Answer:
    """Returns script step ``turn``, or "done" past the end of the script."""
    step = script[turn] if turn < len(script) else {"content": "done"}
    calls = [
        _tool_call(turn, index, call["name"], call.get("arguments", {}))
        for index, call in enumerate(step.get("tool_calls") or [])
    ]
    return _Answer(step.get("content"), calls)


def _placeholder_args(schema: Json) -> Json:
    """Returns a placeholder value for every required property of a schema."""
    properties = schema.get("properties") or {}
    args: Json = {}
    for name in schema.get("required") or []:
        prop = properties.get(name) or {}
        enum = prop.get("enum")
        args[name] = (
            enum[0] if enum else copy.copy(_PLACEHOLDERS.get(_schema_type(prop) or "", "x"))
        )
    return args


def _last_content(messages: Sequence[Json], role: str) -> str | None:
    """Returns the text of the last message with ``role``, if there is one."""
    for message in reversed(messages):
        if message.get("role") == role:
            return _text(message.get("content"))
    return None


def _default_answer(messages: Sequence[Json], tools: Sequence[Json], turn: int) -> _Answer:
    """One-tool agent: call the first tool once, then answer from its result."""
    if tools and not any(message.get("role") == "tool" for message in messages):
        function = _function(tools[0])
        args = _placeholder_args(function.get("parameters") or {})
        return _Answer(None, [_tool_call(turn, 0, str(function.get("name", "")), args)])
    source = _last_content(messages, "tool")
    if source is None:
        source = _last_content(messages, "user") or ""
    return _Answer("final: " + source, [])


def _wrong_args(schema: Json) -> str:
    """Returns JSON arguments whose types contradict ``schema``."""
    wrong = {
        name: 42 if _schema_type(prop) == "string" else "x"
        for name, prop in (schema.get("properties") or {}).items()
        if _schema_type(prop) is not None
    }
    return json.dumps(wrong or [42])


def _corrupt(answer: _Answer, mode: str, tools: Sequence[Json]) -> None:
    """Applies a tool-related malformed mode to the answer's tool calls."""
    functions = {str(_function(tool).get("name")): _function(tool) for tool in tools}
    unknown_name = "peer_unknown_tool"
    while unknown_name in functions:
        unknown_name += "_x"
    for call in answer.tool_calls:
        function = call["function"]
        if mode == "bad_tool_args":
            function["arguments"] = _BROKEN_JSON_ARGS
        elif mode == "unknown_tool":
            function["name"] = unknown_name
        elif mode == "bad_schema_args":
            schema = functions.get(function["name"], {}).get("parameters") or {}
            function["arguments"] = _wrong_args(schema)


def _usage(messages: Sequence[Json], answer: _Answer) -> Json:
    """Counts tokens deterministically as characters // 4 + 1."""
    prompt = sum(len(_text(message.get("content"))) for message in messages) // 4 + 1
    answer_chars = len(answer.content or "") + sum(
        len(call["function"]["name"]) + len(call["function"]["arguments"])
        for call in answer.tool_calls
    )
    completion = answer_chars // 4 + 1
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _invalid_reason(body: Any) -> str | None:
    """Returns why a chat request body is unusable, or None if it is fine."""
    if not isinstance(body, dict):
        return "body must be a JSON object"
    for key, required in (("messages", True), ("tools", False)):
        value = body.get(key)
        if (value is not None or required) and not (
            isinstance(value, list) and all(isinstance(item, dict) for item in value)
        ):
            return f"{key} must be a list of objects"
    return None


def _split(text: str, parts: int) -> list[str]:
    """Splits text into at most ``parts`` consecutive pieces (none if empty)."""
    size = max(1, -(-len(text) // parts))
    return [text[start : start + size] for start in range(0, len(text), size)]


def _chunks(completion: Json, include_usage: bool) -> Iterator[Json]:
    """Yields the chat.completion.chunk objects that stream ``completion``."""
    head = {key: completion[key] for key in ("id", "created", "model")}
    choice = completion["choices"][0]
    message = choice["message"]

    def chunk(delta: Json, finish_reason: str | None = None) -> Json:
        choices = [{"index": 0, "delta": delta, "finish_reason": finish_reason}]
        return {**head, "object": "chat.completion.chunk", "choices": choices}

    yield chunk({"role": "assistant"})
    for piece in _split(message["content"] or "", 3):
        yield chunk({"content": piece})
    for index, call in enumerate(message.get("tool_calls", [])):
        name = call["function"]["name"]
        start = {
            "index": index,
            "id": call["id"],
            "type": "function",
            "function": {"name": name, "arguments": ""},
        }
        yield chunk({"tool_calls": [start]})
        for piece in _split(call["function"]["arguments"], 2):
            yield chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
    yield chunk({}, choice["finish_reason"])
    if include_usage:
        yield {
            **head,
            "object": "chat.completion.chunk",
            "choices": [],
            "usage": completion["usage"],
        }


def _sse(events: Sequence[str]) -> bytes:
    """Encodes data events, then the ``[DONE]`` sentinel, as Server-Sent Events."""
    return "".join(f"data: {event}\n\n" for event in [*events, "[DONE]"]).encode()


def _error(status: int, message: str, kind: str) -> web.Response:
    """Builds an OpenAI-style error response."""
    return web.json_response(
        {"error": {"message": message, "type": kind, "param": None, "code": None}}, status=status
    )


class PeerServer:
    """An OpenAI-compatible peer served by aiohttp on the running event loop.

    Attributes:
        config: The live configuration, read on every request.
        requests: Every accepted chat request body, in arrival order.
    """

    def __init__(self, config: PeerConfig | None = None) -> None:
        """Creates a stopped server.

        Args:
            config: Starting configuration (kept for :meth:`reset`); defaults apply if None.
        """
        self.config = config if config is not None else PeerConfig()
        self.requests: list[Json] = []
        self.request_times: list[float] = []  # time.monotonic() of each chat request
        self.in_flight = 0
        self.max_in_flight = 0
        self._initial = copy.deepcopy(self.config)
        self._rng = random.Random(self.config.seed)
        self._rng_seed: int | None = self.config.seed
        self._served = 0
        self._runner: web.AppRunner | None = None
        self._root_url: str | None = None

    @property
    def root_url(self) -> str:
        """The server root, e.g. ``http://127.0.0.1:PORT`` (control endpoints live here)."""
        if self._root_url is None:
            raise RuntimeError("peer server is not started")
        return self._root_url

    @property
    def url(self) -> str:
        """The OpenAI base URL, e.g. ``http://127.0.0.1:PORT/v1``."""
        return self.root_url + "/v1"

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Starts listening; port 0 picks a free port.

        Args:
            host: Interface to bind.
            port: TCP port to bind, or 0 for any free one.
        """
        if self._runner is not None:
            raise RuntimeError("peer server is already started")
        runner = web.AppRunner(self._make_app(), access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port, backlog=1024).start()
        except BaseException:
            await runner.cleanup()
            raise
        bound_port = runner.addresses[0][1]
        self._runner = runner
        self._root_url = f"http://{f'[{host}]' if ':' in host else host}:{bound_port}"

    async def stop(self) -> None:
        """Stops listening and closes all connections; a no-op if not started."""
        runner, self._runner, self._root_url = self._runner, None, None
        if runner is not None:
            await runner.cleanup()

    def reset(self) -> None:
        """Forgets recorded requests and restores the starting configuration in place."""
        self.requests.clear()
        for field in dataclasses.fields(PeerConfig):
            setattr(self.config, field.name, copy.deepcopy(getattr(self._initial, field.name)))
        self._rng_seed = None

    def _make_app(self) -> web.Application:
        """Builds the aiohttp application with the API and control routes."""
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/_peer/config", self._get_config)
        app.router.add_post("/_peer/config", self._set_config)
        app.router.add_get("/_peer/requests", self._requests)
        app.router.add_post("/_peer/reset", self._reset)
        return app

    def _should_fail(self) -> bool:
        """Decides whether to inject an HTTP 500 (fail_next first, then failure_rate)."""
        config = self.config
        if config.fail_next > 0:
            config.fail_next -= 1
            return True
        if config.failure_rate <= 0:
            return False
        if self._rng_seed != config.seed:
            self._rng, self._rng_seed = random.Random(config.seed), config.seed
        return self._rng.random() < config.failure_rate

    def _complete(self, body: Json) -> Json:
        """Computes the chat.completion object answering a request body."""
        messages: list[Json] = body["messages"]
        tools: list[Json] = body.get("tools") or []
        turn = sum(1 for message in messages if message.get("role") == "assistant")
        script = self.config.script
        answer = (
            _scripted_answer(script, turn)
            if script is not None
            else _default_answer(messages, tools, turn)
        )
        if self.config.malformed is not None:
            _corrupt(answer, self.config.malformed, tools)
        if self.config.pad_bytes and answer.content is not None:
            answer.content += "x" * self.config.pad_bytes
        message: Json = {"role": "assistant", "content": answer.content}
        if answer.tool_calls:
            message["tool_calls"] = answer.tool_calls
        self._served += 1
        return {
            "id": f"chatcmpl-peer-{self._served}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model") or self.config.model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "finish_reason": "tool_calls" if answer.tool_calls else "stop",
                }
            ],
            "usage": _usage(messages, answer),
        }

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        """Handles ``POST /v1/chat/completions``."""
        try:
            body = json.loads(await request.read())
        except ValueError:
            return _error(400, "request body is not JSON", "invalid_request_error")
        reason = _invalid_reason(body)
        if reason is not None:
            return _error(400, reason, "invalid_request_error")
        self.requests.append(body)
        self.request_times.append(time.monotonic())
        failed = self._should_fail()
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.config.latency_ms > 0:
                await asyncio.sleep(self.config.latency_ms / 1000)
        finally:
            self.in_flight -= 1
        if failed:
            response = _error(self.config.fail_status, "peer: injected failure", "server_error")
            if self.config.retry_after is not None:
                response.headers["Retry-After"] = self.config.retry_after
            return response
        stream = bool(body.get("stream"))
        raw = _RAW_BODIES.get(self.config.malformed or "")
        if raw is not None:
            if stream:
                return web.Response(body=_sse([raw]), content_type="text/event-stream")
            return web.Response(text=raw, content_type="application/json")
        completion = self._complete(body)
        if not stream:
            return web.json_response(completion)
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        for chunk in _chunks(completion, include_usage):
            await response.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def _models(self, request: web.Request) -> web.Response:
        """Handles ``GET /v1/models``."""
        model = {"id": self.config.model, "object": "model", "created": 0, "owned_by": "nexus-peer"}
        return web.json_response({"object": "list", "data": [model]})

    async def _get_config(self, request: web.Request) -> web.Response:
        """Handles ``GET /_peer/config``."""
        return web.json_response(dataclasses.asdict(self.config))

    async def _set_config(self, request: web.Request) -> web.Response:
        """Handles ``POST /_peer/config``: updates the given fields, returns the config."""
        try:
            changes = json.loads(await request.read())
            if not isinstance(changes, dict):
                raise ValueError("body must be a JSON object")
            self.config.update(changes)
        except ValueError as exc:
            return _error(400, str(exc), "invalid_request_error")
        if "seed" in changes:
            self._rng_seed = None
        return web.json_response(dataclasses.asdict(self.config))

    async def _requests(self, request: web.Request) -> web.Response:
        """Handles ``GET /_peer/requests``."""
        return web.json_response(self.requests)

    async def _reset(self, request: web.Request) -> web.Response:
        """Handles ``POST /_peer/reset``."""
        self.reset()
        return web.json_response({"status": "ok"})


class ThreadedPeerServer:
    """A :class:`PeerServer` running on its own event loop in a background thread.

    For synchronous tests, or tests whose code under test runs elsewhere.
    Usable as a context manager that starts and stops the server.

    Attributes:
        server: The wrapped server; only touch it from this thread through the
            properties below.
    """

    def __init__(
        self, config: PeerConfig | None = None, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        """Creates a stopped server.

        Args:
            config: Starting configuration; defaults apply if None.
            host: Interface to bind.
            port: TCP port to bind, or 0 for any free one.
        """
        self.server = PeerServer(config)
        self._address = (host, port)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None

    @property
    def url(self) -> str:
        """The OpenAI base URL, e.g. ``http://127.0.0.1:PORT/v1``."""
        return self.server.url

    @property
    def root_url(self) -> str:
        """The server root, where the ``/_peer/...`` control endpoints live."""
        return self.server.root_url

    @property
    def config(self) -> PeerConfig:
        """The live configuration."""
        return self.server.config

    @property
    def requests(self) -> list[Json]:
        """A snapshot of the chat request bodies received so far."""
        return list(self.server.requests)

    def reset(self) -> None:
        """Forgets recorded requests and restores the starting configuration."""
        self.server.reset()

    def start(self, timeout: float = 10.0) -> None:
        """Starts the server thread and waits until the server is listening.

        Args:
            timeout: Seconds to wait for the server to listen.
        """
        if self._thread is not None:
            raise RuntimeError("peer server is already started")
        started: concurrent.futures.Future[None] = concurrent.futures.Future()
        thread = threading.Thread(
            target=asyncio.run, args=(self._serve(started),), name="peer-server", daemon=True
        )
        thread.start()
        try:
            started.result(timeout)
        except BaseException:
            thread.join(timeout)
            raise
        self._thread = thread

    def stop(self, timeout: float = 10.0) -> None:
        """Stops the server, closes its loop and joins the thread; a no-op if not started.

        Args:
            timeout: Seconds to wait for the thread to finish.
        """
        thread, loop, stopping = self._thread, self._loop, self._stopping
        self._thread = self._loop = self._stopping = None
        if thread is None or loop is None or stopping is None:
            return
        loop.call_soon_threadsafe(stopping.set)
        thread.join(timeout)

    async def _serve(self, started: concurrent.futures.Future[None]) -> None:
        """Runs in the thread: serves until :meth:`stop` is called."""
        try:
            await self.server.start(*self._address)
        except Exception as exc:
            started.set_exception(exc)
            return
        self._loop, self._stopping = asyncio.get_running_loop(), asyncio.Event()
        started.set_result(None)
        try:
            await self._stopping.wait()
        finally:
            await self.server.stop()

    def __enter__(self) -> ThreadedPeerServer:
        """Starts the server."""
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stops the server."""
        self.stop()


async def _serve_forever(config: PeerConfig, host: str, port: int) -> None:
    """Serves until SIGINT or SIGTERM, after printing the base URL."""
    server = PeerServer(config)
    await server.start(host, port)
    print(server.url, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        await server.stop()


def main(argv: Sequence[str] | None = None) -> None:
    """Runs the peer in the foreground (``python -m tests.peers.openai_server``).

    Args:
        argv: Command-line arguments; ``sys.argv[1:]`` if None.
    """
    parser = argparse.ArgumentParser(description="OpenAI-compatible test peer.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8911)
    parser.add_argument("--latency-ms", type=float, default=0)
    parser.add_argument("--failure-rate", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default="peer-model")
    args = parser.parse_args(argv)
    config = PeerConfig(
        latency_ms=args.latency_ms, failure_rate=args.failure_rate, seed=args.seed, model=args.model
    )
    asyncio.run(_serve_forever(config, args.host, args.port))


if __name__ == "__main__":
    main()
