"""A job's statuses and the one table of the moves between them; the Lua scripts and the API's schema
are tested against it (tests/service/jobs/test_states.py).

    queued ─▶ running ─▶ succeeded | failed | cancelled
       │         └─▶ running (a retry, or a takeover after a lost lease: attempts + 1)
       └─▶ cancelled (DELETE while queued) | failed (params that cannot run, found before START)
"""

from __future__ import annotations

from typing import Literal, get_args

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
Terminal = Literal["succeeded", "failed", "cancelled"]
STATUSES: tuple[JobStatus, ...] = get_args(JobStatus)
TERMINAL: frozenset[str] = frozenset(get_args(Terminal))

TRANSITIONS: dict[str, frozenset[str]] = {
    "queued": frozenset({"running", "cancelled", "failed"}),
    "running": frozenset({"running", "succeeded", "failed", "cancelled"}),
    "succeeded": frozenset(),
    "failed": frozenset(),
    "cancelled": frozenset(),
}


def can_move(status: str, to: str) -> bool:
    return to in TRANSITIONS.get(status, frozenset())
