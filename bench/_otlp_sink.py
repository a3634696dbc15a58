"""An OTLP/HTTP trace receiver in its own process for bench.tracing: it answers
`POST /v1/traces` at once and counts the spans it received (decoding the protobuf
there, so the benchmarked process pays only for sending)."""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from types import TracebackType

from bench._common import start_url_process, terminate

_SERVER = r"""
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

count = [0]

class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        try:
            from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
                ExportTraceServiceRequest,
            )
            req = ExportTraceServiceRequest()
            req.ParseFromString(body)
            count[0] += sum(len(s.spans) for r in req.resource_spans for s in r.scope_spans)
        except Exception:
            pass
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self):
        data = str(count[0]).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass

server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(f"http://127.0.0.1:{server.server_address[1]}", flush=True)
server.serve_forever()
"""


class OtlpSink:
    """`with OtlpSink() as sink:` then export to `sink.endpoint`."""

    def __init__(self) -> None:
        self.endpoint = ""
        self._proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> OtlpSink:
        self._proc, self.endpoint = start_url_process(
            [sys.executable, "-c", _SERVER], timeout_s=20, stderr=subprocess.PIPE
        )
        return self

    def spans(self) -> int:
        """How many spans arrived so far."""
        with urllib.request.urlopen(self.endpoint + "/count", timeout=5) as resp:
            return int(resp.read())

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._proc is not None:
            terminate(self._proc, grace_s=2)
            for stream in (self._proc.stdout, self._proc.stderr):
                if stream is not None:
                    stream.close()
            self._proc = None
