"""The worker's own HTTP port: `/metrics` (its Prometheus registry) and `/healthz` (its loop is alive).

A worker has no gateway in front of it, so Kubernetes probes this port. `/metrics` alone would answer
while the loop hangs; `/healthz` answers 503 once the loop has not beaten for `stall_seconds` (it beats on
every poll and on every diffusion step, so a long batch is not a stall).
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

STALL_SECONDS = 120.0  # far above one poll or one diffusion step, far below a probe's patience


class Heartbeat:
    def __init__(self, stall_seconds: float = STALL_SECONDS):
        self.stall_seconds = stall_seconds
        self.last = time.monotonic()

    def beat(self) -> None:
        self.last = time.monotonic()

    def silent_for(self) -> float:
        return time.monotonic() - self.last


def serve_worker_http(port: int, registry: CollectorRegistry, heartbeat: Heartbeat) -> ThreadingHTTPServer:
    """Serves both paths on 0.0.0.0:`port` from a daemon thread; `shutdown()` the result to stop."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/metrics":
                self._answer(200, CONTENT_TYPE_LATEST, generate_latest(registry))
            elif self.path == "/healthz":
                silent = heartbeat.silent_for()
                alive = silent < heartbeat.stall_seconds
                body = {"status": "ok" if alive else "stalled", "seconds_since_progress": round(silent, 1)}
                self._answer(200 if alive else 503, "application/json", json.dumps(body).encode())
            else:
                self._answer(404, "application/json", b'{"detail": "try /metrics or /healthz"}')

        def _answer(self, status: int, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # probes every 10 s: no access log
            pass

    server = ThreadingHTTPServer(("0.0.0.0", port), Handler)
    threading.Thread(target=server.serve_forever, name="worker-http", daemon=True).start()
    return server
