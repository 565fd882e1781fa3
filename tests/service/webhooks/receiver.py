"""A webhook receiver on 127.0.0.1 for the tests: records every request, checks its signature, and
answers by path:
- `/ok` → 204;  `/fail-twice` → 500, 500, then 204;  `/always-500` → 500;  `/gone` → 410;
- `/hang` → blocks until the test releases `hang_release` (a receiver that never answers in time);
- `/slow` → sleeps `slow_seconds`, then 204 (overlap detection in the two-dispatcher test).
A request whose signature does not verify gets 401 (so an unsigned delivery could never succeed)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from service.webhooks.signature import WebhookVerificationError, verify


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    verified: bool
    started: float
    finished: float = 0.0


class Receiver:
    def __init__(self, key: bytes, slow_seconds: float = 0.2):
        self.key = key
        self.slow_seconds = slow_seconds
        self.requests: list[Received] = []
        self.hits: Counter[str] = Counter()
        self.hang_release = threading.Event()
        self.hang_started = threading.Event()
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def received(self, path: str) -> list[Received]:
        with self.lock:
            return [request for request in self.requests if request.path == path]

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.hang_release.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                headers = {name.lower(): value for name, value in self.headers.items()}
                try:
                    verify(receiver.key, headers, body)
                    verified = True
                except WebhookVerificationError:
                    verified = False
                request = Received(self.path, headers, body, verified, started=time.monotonic())
                with receiver.lock:
                    receiver.requests.append(request)
                    receiver.hits[self.path] += 1
                    hits = receiver.hits[self.path]
                status = 204
                if not verified:
                    status = 401
                elif (self.path == "/fail-twice" and hits <= 2) or self.path == "/always-500":
                    status = 500
                elif self.path == "/gone":
                    status = 410
                elif self.path == "/hang":
                    receiver.hang_started.set()
                    receiver.hang_release.wait(timeout=30)
                elif self.path == "/slow":
                    time.sleep(receiver.slow_seconds)
                request.finished = time.monotonic()
                try:
                    self.send_response(status)
                    self.send_header("content-length", "0")
                    self.end_headers()
                except OSError:
                    pass  # the dispatcher gave up on a hung request

        return Handler
