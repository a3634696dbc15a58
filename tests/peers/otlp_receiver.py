"""An OTLP/HTTP trace receiver served over real HTTP, for tests of the span export.

It accepts `POST /v1/traces` with `application/x-protobuf` bodies (gzip or not),
decodes each as an `ExportTraceServiceRequest` and keeps every span it holds, with
its resource and scope, as the protobuf messages the collector would see. Anything
else is refused the way a collector refuses it (404, 415, 400).

Example:
    with OtlpReceiver() as receiver:
        ...  # NEXUS_OTLP_ENDPOINT=receiver.url
        spans = receiver.spans()
"""

from __future__ import annotations

import gzip
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

PROTOBUF = "application/x-protobuf"


@dataclass(frozen=True, slots=True)
class Received:
    """One span as received, with where it came from."""

    span: Any  # opentelemetry.proto.trace.v1.trace_pb2.Span
    resource: dict[str, Any]
    scope: str


def value(any_value: Any) -> Any:
    """A protobuf `AnyValue` as plain Python."""
    kind = any_value.WhichOneof("value")
    if kind == "array_value":
        return [value(v) for v in any_value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: value(kv.value) for kv in any_value.kvlist_value.values}
    return None if kind is None else getattr(any_value, kind)


def attributes(key_values: Any) -> dict[str, Any]:
    """Protobuf `KeyValue`s as a dict."""
    return {kv.key: value(kv.value) for kv in key_values}


class OtlpReceiver:
    """The receiver on a thread of its own (port chosen by the OS)."""

    def __init__(self) -> None:
        self.requests = 0
        self.bodies: list[bytes] = []  # every request body, as decoded from the wire
        self.refused: list[tuple[int, str]] = []
        self._received: list[Received] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path != "/v1/traces":
                    return self._answer(404, b"not found", "text/plain")
                if self.headers.get("Content-Type") != PROTOBUF:
                    return self._answer(415, b"protobuf only", "text/plain")
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                with receiver._lock:
                    receiver.bodies.append(body)
                request = ExportTraceServiceRequest()
                try:
                    request.ParseFromString(body)
                except Exception:
                    return self._answer(400, b"undecodable", "text/plain")
                receiver._take(request, dict(self.headers))
                self._answer(200, ExportTraceServiceResponse().SerializeToString(), PROTOBUF)

            def _answer(self, status: int, body: bytes, media: str) -> None:
                if status != 200:
                    with receiver._lock:
                        receiver.refused.append((status, self.path))
                self.send_response(status)
                self.send_header("Content-Type", media)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # quiet

        self.headers_seen: list[dict[str, str]] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="otlp-receiver")

    def _take(self, request: Any, headers: dict[str, str]) -> None:
        with self._lock:
            self.requests += 1
            self.headers_seen.append(headers)
            for resource_spans in request.resource_spans:
                resource = attributes(resource_spans.resource.attributes)
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        self._received.append(Received(span, resource, scope_spans.scope.name))

    def spans(self) -> list[Received]:
        """Every span received so far, in arrival order."""
        with self._lock:
            return list(self._received)

    def __enter__(self) -> OtlpReceiver:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)
