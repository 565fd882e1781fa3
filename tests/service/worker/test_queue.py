"""The worker's Redis operations against a real redis-server: claims, leases, takeover, job transitions."""

from __future__ import annotations

import time

import redis

from service.jobs.layout import GROUP, counts_key, dead_letter_key, job_key, result_key
from service.settings import Settings
from service.worker.queue import WorkerQueue
from tests.service.worker.worker_fixtures import cancel, job_state, submit, worker_settings

GENERATE = {"prompt": "a red circle", "n": 1, "seed": 1, "size": 64}


def queues(settings: Settings, *names: str) -> list[WorkerQueue]:
    client = redis.Redis.from_url(settings.redis_url)
    found = [WorkerQueue(client, settings, name) for name in names]
    found[0].ensure_group()
    return found


def test_jobs_queued_before_the_group_exists_are_claimed_once(redis_url: str) -> None:
    settings = worker_settings(redis_url)
    first = submit(settings, "generate", GENERATE)
    a, b = queues(settings, "a", "b")
    a.ensure_group()  # idempotent
    second = submit(settings, "generate", GENERATE)

    claims = a.claim(count=5, block_seconds=0.05)
    assert [claim.job_id for claim in claims] == [first, second]
    assert b.claim(count=5, block_seconds=0.05) == []  # held by a, within its lease


def test_a_renewed_lease_is_not_taken_over_and_an_expired_one_is(redis_url: str) -> None:
    settings = worker_settings(redis_url, lease_seconds=0.3)
    job_id = submit(settings, "generate", GENERATE)
    a, b = queues(settings, "a", "b")
    [claim] = a.claim(count=1, block_seconds=0.05)

    for _ in range(4):  # 0.4 s in all, renewed every 0.1 s
        time.sleep(0.1)
        assert a.renew([claim.entry]) == [claim.entry]
        assert b.take_over(count=5) == []

    time.sleep(0.35)
    [taken] = b.take_over(count=5)
    assert (taken.entry, taken.job_id) == (claim.entry, job_id)
    # The old holder's renewal no longer holds it, and does not steal it back.
    assert a.renew([claim.entry]) == []
    pending = a.redis.xpending_range(settings.stream, GROUP, "-", "+", 10)
    assert [p["consumer"] for p in pending] == [b"b"]


def test_released_entries_are_taken_over_at_once(redis_url: str) -> None:
    settings = worker_settings(redis_url, lease_seconds=30)
    submit(settings, "generate", GENERATE)
    a, b = queues(settings, "a", "b")
    [claim] = a.claim(count=1, block_seconds=0.05)
    assert b.take_over(count=5) == []
    a.release([claim.entry])
    assert [c.entry for c in b.take_over(count=5)] == [claim.entry]
    assert b.take_over(count=5, exclude={claim.entry}) == []


def test_start_progress_finish_write_the_job_once_with_ttls(redis_url: str) -> None:
    settings = worker_settings(redis_url, result_ttl_seconds=600)
    job_id = submit(settings, "generate", GENERATE)
    [queue] = queues(settings, "a")
    [claim] = queue.claim(count=1, block_seconds=0.05)
    loaded = queue.load(claim)
    assert loaded is not None and (loaded.op, loaded.params["seed"], loaded.attempts) == ("generate", 1, 0)

    assert queue.start(job_id) == ("run", "1")
    assert queue.progress([job_id], "decoder", 2, 5) == [False]
    state = job_state(queue.redis, job_id)
    assert state["status"] == "running" and state["progress"] == {"stage": "decoder", "step": 2, "total": 5}

    assert queue.finish(job_id, claim.entry, "succeeded", [b"png-0", b"png-1"], warnings=["w"]) is True
    assert queue.finish(job_id, claim.entry, "failed", [], error="late") is False  # exactly once
    state = job_state(queue.redis, job_id)
    assert (state["status"], state["image_count"], state["warnings"]) == ("succeeded", "2", ["w"])
    assert "error" not in state
    assert queue.redis.get(result_key(job_id, 1)) == b"png-1"
    for key in (job_key(job_id), result_key(job_id, 0)):
        assert 590 < queue.redis.ttl(key) <= 600
    assert queue.redis.xlen(settings.stream) == 0  # acknowledged and deleted
    assert queue.redis.xpending(settings.stream, GROUP)["pending"] == 0
    assert queue.redis.hget(counts_key(settings.stream), "succeeded") == b"1"


def test_a_job_cancelled_after_its_claim_is_skipped(redis_url: str) -> None:
    settings = worker_settings(redis_url)
    job_id = submit(settings, "generate", GENERATE)
    [queue] = queues(settings, "a")
    [claim] = queue.claim(count=1, block_seconds=0.05)
    assert claim.job_id == job_id
    cancel(settings, job_id)
    assert queue.start(job_id) == ("skip", "cancelled")


def test_progress_reports_a_cancel_asked_while_running(redis_url: str) -> None:
    settings = worker_settings(redis_url)
    ids = [submit(settings, "generate", GENERATE) for _ in range(2)]
    [queue] = queues(settings, "a")
    queue.claim(count=2, block_seconds=0.05)
    for job_id in ids:
        queue.start(job_id)
    cancel(settings, ids[1])
    assert queue.progress(ids, "prior", 1, 2) == [False, True]


def test_failed_jobs_go_to_the_dead_letter_stream(redis_url: str) -> None:
    settings = worker_settings(redis_url)
    job_id = submit(settings, "generate", GENERATE)
    [queue] = queues(settings, "a")
    [claim] = queue.claim(count=1, block_seconds=0.05)
    queue.start(job_id)
    queue.note_error(job_id, "RuntimeError: first try")
    assert queue.last_error(job_id) == "RuntimeError: first try"
    assert queue.finish(job_id, claim.entry, "failed", error="RuntimeError: boom") is True
    [(_, fields)] = queue.redis.xrange(dead_letter_key(settings.stream))
    assert fields[b"job"] == job_id.encode() and fields[b"error"] == b"RuntimeError: boom"
    assert fields[b"attempts"] == b"1"
