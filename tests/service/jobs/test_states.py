"""The Lua transitions against the one table of allowed moves (service.jobs.states), on a real Redis:
every script is run on a job in every status, and the moves they make are exactly the table's."""

from __future__ import annotations

from typing import get_args

import pytest
import redis

from service.gateway.schemas import JobOut
from service.jobs import lua
from service.jobs.layout import GROUP, counts_key, dead_letter_key, job_key, result_key
from service.jobs.states import STATUSES, TERMINAL, TRANSITIONS, Terminal, can_move

STREAM = "test-jobs"
TTL = 60


def job_in(client: redis.Redis, status: str, cancel_requested: bool = False) -> str:
    job_id = f"job-{status}-{int(cancel_requested)}"
    fields = {"id": job_id, "op": "generate", "params": "{}", "owner": "o", "status": status,
              "created_at": "1.0", "attempts": 1 if status == "running" else 0, "image_count": 0,
              "expected_images": 1, "warnings": "[]", "version": 0}
    if cancel_requested:
        fields["cancel_requested"] = "1"
    client.delete(job_key(job_id))
    client.hset(job_key(job_id), mapping=fields)
    return job_id


def status_of(client: redis.Redis, job_id: str) -> str:
    return client.hget(job_key(job_id), "status").decode()


def run_script(client: redis.Redis, name: str, job_id: str, to: str = "") -> None:
    """Runs one transition script on the job, with the arguments its caller would pass."""
    key, counts = job_key(job_id), counts_key(STREAM)
    if name == "cancel":
        client.register_script(lua.CANCEL_LUA)(keys=[key, counts, STREAM], args=["o", TTL])
    elif name == "start":
        client.register_script(lua.START_LUA)(keys=[key, counts], args=["w1", 3, TTL])
    elif name == "progress":
        progress = '{"stage": "prior", "step": 1, "total": 2}'
        client.register_script(lua.PROGRESS_LUA)(keys=[key], args=[progress])
    elif name == "note_error":
        client.register_script(lua.NOTE_ERROR_LUA)(keys=[key], args=["boom"])
    elif name == "finish":
        keys = [key, counts, STREAM, dead_letter_key(STREAM), result_key(job_id, 0)]
        client.register_script(lua.FINISH_LUA)(keys=keys, args=[GROUP, "", to, "", TTL, "[]", "", "", b"png"])
    else:
        raise ValueError(name)


CALLS = [("cancel", ""), ("start", ""), ("progress", ""), ("note_error", ""),
         *(("finish", to) for to in sorted(TERMINAL))]


@pytest.fixture
def client(redis_url: str):
    client = redis.Redis.from_url(redis_url)
    client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    yield client
    client.close()


def test_the_lua_scripts_make_exactly_the_moves_of_the_table(client: redis.Redis) -> None:
    made: set[tuple[str, str]] = set()
    for status in STATUSES:
        for cancel_requested in (False, True):
            for name, to in CALLS:
                job_id = job_in(client, status, cancel_requested)
                attempts_before = int(client.hget(job_key(job_id), "attempts"))
                run_script(client, name, job_id, to)
                after = status_of(client, job_id)
                retried = int(client.hget(job_key(job_id), "attempts")) > attempts_before
                if after != status or retried:
                    made.add((status, after))
                    assert can_move(status, after), f"{name}({to}) moved a {status} job to {after}"
    table = {(status, to) for status, moves in TRANSITIONS.items() for to in moves}
    assert made == table


def test_the_statuses_are_defined_once() -> None:
    assert set(TRANSITIONS) == set(STATUSES)
    assert TERMINAL == {status for status, moves in TRANSITIONS.items() if not moves}
    assert set(get_args(Terminal)) == TERMINAL
    assert get_args(JobOut.model_fields["status"].annotation) == STATUSES
