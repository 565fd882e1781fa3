"""The lease thread: while the worker holds stream entries it keeps them from being taken over
(`WorkerQueue.renew`); a worker that dies stops renewing and its jobs go to another after `lease_seconds`.
Each tick also runs `also` (the worker's model card renewal: it expires with the lease)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable

import redis

from service.worker.queue import WorkerQueue

log = logging.getLogger("service.worker")


class LeaseKeeper:
    """A thread that renews the lease of every entry the worker holds, three times per lease."""

    def __init__(self, queue: WorkerQueue, lease_seconds: float, also: Callable[[], None] | None = None):
        self.queue = queue
        self.also = also
        self.interval = max(0.05, lease_seconds / 3)
        self._held: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lease-keeper", daemon=True)

    def held(self) -> set[str]:
        with self._lock:
            return set(self._held)

    def add(self, entries: Iterable[str]) -> None:
        with self._lock:
            self._held.update(entries)

    def discard(self, entries: Iterable[str]) -> None:
        with self._lock:
            self._held.difference_update(entries)

    def renew(self) -> None:
        entries = sorted(self.held())
        kept = set(self.queue.renew(entries))
        lost = [entry for entry in entries if entry not in kept]
        if lost:
            # Another worker took these over (we were too slow to renew); it runs them now.
            log.warning("lease lost", extra={"entries": lost})
            self.discard(lost)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.renew()
                if self.also is not None:
                    self.also()
            except redis.RedisError:
                log.exception("lease renewal failed")
