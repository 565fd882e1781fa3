"""The worker loop on a fake pipeline against a real Redis: results, batching, sharing, cancel, retries
and dead letters, takeover after kill -9, and the SIGTERM drain (those two in real processes)."""

from __future__ import annotations

import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from models.contract import REVISED_PROMPT_KEY
from service.jobs.layout import GROUP, dead_letter_key, job_key, result_key
from service.settings import Settings
from service.worker.metrics import WorkerMetrics
from service.worker.process import warm_up
from tests.service.worker.worker_fixtures import (
    FakePipeline,
    cancel,
    colour,
    job_state,
    mean_colour,
    png_image,
    spawn_worker,
    submit,
    wait_for_status,
    wait_until,
    worker_settings,
    worker_thread,
)


def generate(seed: int, n: int = 1, prompt: str = "a red circle", **extra: object) -> dict[str, object]:
    return {"prompt": prompt, "n": n, "seed": seed, "size": 64} | extra


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(redis_url)
    yield connection
    connection.close()


def result_colours(client: redis.Redis, job_id: str, count: int) -> list[tuple[int, int, int]]:
    return [mean_colour(png_image(client.get(result_key(job_id, i)))) for i in range(count)]


def test_a_job_runs_to_succeeded_with_images_progress_and_ttls(redis_url: str, client: redis.Redis) -> None:
    settings = worker_settings(redis_url, result_ttl_seconds=1000)
    job_id = submit(settings, "generate", generate(seed=300, n=2))
    with worker_thread(settings, FakePipeline()):
        state = wait_for_status(client, job_id)
    assert state["status"] == "succeeded" and state["image_count"] == "2" and state["attempts"] == "1"
    assert state["progress"] == {"stage": "decoder", "step": 2, "total": 2}
    assert state["worker"] == "w1" and "error" not in state
    assert result_colours(client, job_id, 2) == [colour(300, "a red circle"), colour(301, "a red circle")]
    for key in (job_key(job_id), result_key(job_id, 0), result_key(job_id, 1)):
        assert 990 < client.ttl(key) <= 1000
    assert client.xlen(settings.stream) == 0 and client.xpending(settings.stream, GROUP)["pending"] == 0


def test_compatible_jobs_share_one_call_and_keep_their_own_seeds(redis_url: str, client: redis.Redis) -> None:
    settings = worker_settings(redis_url, max_batch_size=8)
    ids = [submit(settings, "generate", generate(seed=seed, n=2, prompt=f"p{seed}")) for seed in (10, 20, 30)]
    odd = submit(settings, "generate", generate(seed=40, decoder_steps=1))
    pipeline = FakePipeline()
    with worker_thread(settings, pipeline):
        for job_id in [*ids, odd]:
            wait_for_status(client, job_id)
    assert [call["seeds"] for call in pipeline.calls] == [[10, 11, 20, 21, 30, 31], [40]]
    for job_id, seed in zip(ids, (10, 20, 30), strict=True):
        assert job_state(client, job_id)["status"] == "succeeded"
        assert result_colours(client, job_id, 2) == [colour(seed, f"p{seed}"), colour(seed + 1, f"p{seed}")]


def test_two_workers_share_one_queue_and_run_each_job_once(redis_url: str, client: redis.Redis) -> None:
    settings = worker_settings(redis_url, max_batch_size=2)
    ids = [submit(settings, "generate", generate(seed=seed)) for seed in range(12)]
    first, second = FakePipeline(step_delay=0.01), FakePipeline(step_delay=0.01)
    with worker_thread(settings, first, "w1"), worker_thread(settings, second, "w2"):
        states = [wait_for_status(client, job_id) for job_id in ids]
    assert {state["status"] for state in states} == {"succeeded"}
    assert {state["attempts"] for state in states} == {"1"}
    assert Counter(state["worker"] for state in states).keys() == {"w1", "w2"}
    seeds_run = [seed for pipeline in (first, second) for call in pipeline.calls for seed in call["seeds"]]
    assert sorted(seeds_run) == list(range(12))  # each job exactly once


def test_cancel_of_a_queued_job(redis_url: str, client: redis.Redis) -> None:
    settings = worker_settings(redis_url)
    job_id = submit(settings, "generate", generate(seed=1))
    cancel(settings, job_id)
    later = submit(settings, "generate", generate(seed=2))
    pipeline = FakePipeline()
    with worker_thread(settings, pipeline):
        wait_for_status(client, later)
    assert job_state(client, job_id)["status"] == "cancelled"
    assert [call["seeds"] for call in pipeline.calls] == [[2]]


def test_cancel_of_a_running_job_stops_it_at_its_next_step(redis_url: str, client: redis.Redis) -> None:
    settings = worker_settings(redis_url)
    job_id = submit(settings, "generate", generate(seed=1, prior_steps=100, decoder_steps=100))
    pipeline = FakePipeline(step_delay=0.02)
    with worker_thread(settings, pipeline):
        wait_until(lambda: job_state(client, job_id).get("progress"), what="progress")
        cancel(settings, job_id)
        state = wait_for_status(client, job_id, timeout=5)
    assert state["status"] == "cancelled" and state["image_count"] == "0"
    assert pipeline.calls[0]["steps"] < 50
    assert client.xlen(settings.stream) == 0


def test_a_cancelled_job_is_dropped_from_its_batch(redis_url: str, client: redis.Redis) -> None:
    settings = worker_settings(redis_url)
    slow = {"prior_steps": 30, "decoder_steps": 1}
    keep, drop = (submit(settings, "generate", generate(seed=s, **slow)) for s in (1, 2))
    with worker_thread(settings, FakePipeline(step_delay=0.02)):
        wait_until(lambda: job_state(client, drop).get("progress"), what="progress")
        cancel(settings, drop)
        states = [wait_for_status(client, job_id) for job_id in (keep, drop)]
    assert [s["status"] for s in states] == ["succeeded", "cancelled"]
    assert [s["image_count"] for s in states] == ["1", "0"]
    assert client.get(result_key(drop, 0)) is None


def test_a_job_failing_max_attempts_times_is_failed_and_dead_lettered(
    redis_url: str, client: redis.Redis
) -> None:
    settings = worker_settings(redis_url, max_attempts=3)
    job_id = submit(settings, "generate", generate(seed=1, prompt="please fail"))
    pipeline = FakePipeline()
    with worker_thread(settings, pipeline):
        state = wait_for_status(client, job_id)
    assert state["status"] == "failed" and state["attempts"] == "3"
    assert state["error"] == "failed 3 times; last error: RuntimeError: fake pipeline failure"
    assert len(pipeline.calls) == 3
    [(_, letter)] = client.xrange(dead_letter_key(settings.stream))
    assert letter[b"job"] == job_id.encode() and letter[b"attempts"] == b"3"
    assert letter[b"error"].decode() == state["error"]
    assert client.xlen(settings.stream) == 0 and client.xpending(settings.stream, GROUP)["pending"] == 0


def test_a_failure_is_retried_alone_and_can_then_succeed(redis_url: str, client: redis.Redis) -> None:
    settings = worker_settings(redis_url, max_attempts=3)
    flaky = submit(settings, "generate", generate(seed=1, prompt="fail once"))
    mate = submit(settings, "generate", generate(seed=2))
    pipeline = FakePipeline(fail_times=1)
    with worker_thread(settings, pipeline):
        states = [wait_for_status(client, job_id) for job_id in (flaky, mate)]
    assert [s["status"] for s in states] == ["succeeded", "succeeded"]
    assert [s["attempts"] for s in states] == ["2", "2"]
    # The failed batch held both; the retries ran one job per call.
    assert [call["seeds"] for call in pipeline.calls] == [[1, 2], [1], [2]]
    assert client.xlen(dead_letter_key(settings.stream)) == 0


def test_bad_input_fails_at_once_without_retries(redis_url: str, client: redis.Redis) -> None:
    settings = worker_settings(redis_url)
    job_id = submit(settings, "variation", {"image": "bm90IGFuIGltYWdl", "n": 1, "seed": 1, "size": 64})
    pipeline = FakePipeline()
    with worker_thread(settings, pipeline):
        state = wait_for_status(client, job_id)
    assert state["status"] == "failed" and state["error"].startswith("image: not a decodable")
    assert pipeline.calls == [] and client.xlen(dead_letter_key(settings.stream)) == 1


def test_truncated_prompts_are_warnings_on_the_job(redis_url: str, client: redis.Redis) -> None:
    settings = worker_settings(redis_url)
    job_id = submit(settings, "generate", generate(seed=1, prompt="x" * 100))
    with worker_thread(settings, FakePipeline(context_chars=77)):
        state = wait_for_status(client, job_id)
    assert state["status"] == "succeeded"
    assert state["warnings"] == ["prompt is longer than the text encoder's context; it was truncated"]


class RewritingPipeline(FakePipeline):
    """Draws item s of a prompt as "PROMPT (drawn s)" when s is odd, and even items as given (no key)."""

    def generate(self, prompts, seeds, sampling, progress=None):
        images = super().generate(prompts, seeds, sampling, progress)
        for image, prompt, seed in zip(images, prompts, seeds, strict=True):
            if seed % 2:
                image.info[REVISED_PROMPT_KEY] = f"{prompt} (drawn {seed})"
        return images


def test_a_job_keeps_the_first_revised_prompt_its_images_carry(redis_url: str, client: redis.Redis) -> None:
    settings = worker_settings(redis_url)
    rewritten = submit(settings, "generate", generate(seed=10, n=3, prompt="a cat"))  # items 10, 11, 12
    as_given = submit(settings, "generate", generate(seed=20, n=1, prompt="a dog"))
    pipeline = RewritingPipeline()
    with worker_thread(settings, pipeline):
        states = [wait_for_status(client, job_id) for job_id in (rewritten, as_given)]
    assert [call["seeds"] for call in pipeline.calls] == [[10, 11, 12, 20]]  # one call for both
    assert [state["status"] for state in states] == ["succeeded", "succeeded"]
    assert states[0]["revised_prompt"] == "a cat (drawn 11)"
    assert "revised_prompt" not in states[1]


def test_worker_metrics_count_jobs_batches_and_stages(redis_url: str, client: redis.Redis) -> None:
    from service.worker.executor import Executor
    from service.worker.loop import Worker
    from service.worker.queue import WorkerQueue

    settings = worker_settings(redis_url)
    ids = [submit(settings, "generate", generate(seed=s, n=2)) for s in (1, 2)]
    metrics = WorkerMetrics()
    worker = Worker(WorkerQueue(client, settings, "w1"), Executor(FakePipeline(), 8), settings, metrics, 0.05)
    worker.queue.ensure_group()
    assert worker.step() == 2
    assert [job_state(client, job_id)["status"] for job_id in ids] == ["succeeded", "succeeded"]
    sample = metrics.registry.get_sample_value
    assert sample("unclip_worker_jobs_total", {"op": "generate", "outcome": "succeeded"}) == 2
    assert sample("unclip_worker_batch_images_sum") == 4 and sample("unclip_worker_batch_jobs_count") == 1
    for stage in ("prepare", "prior", "decoder", "encode", "finish"):
        assert sample("unclip_worker_stage_seconds_count", {"stage": stage}) >= 1, stage


def test_a_long_job_keeps_its_lease_while_another_worker_polls(redis_url: str, client: redis.Redis) -> None:
    settings = worker_settings(redis_url, lease_seconds=0.3)
    job_id = submit(settings, "generate", generate(seed=1, prior_steps=30, decoder_steps=30))
    first, second = FakePipeline(step_delay=0.02), FakePipeline(step_delay=0.02)  # ~1.2 s, 4 leases
    with worker_thread(settings, first, "w1"), worker_thread(settings, second, "w2"):
        state = wait_for_status(client, job_id)
    assert state["status"] == "succeeded" and state["attempts"] == "1"
    assert len(first.calls) + len(second.calls) == 1


def test_a_job_whose_worker_died_on_its_last_attempt_is_failed(redis_url: str, client: redis.Redis) -> None:
    from service.worker.queue import WorkerQueue

    settings = worker_settings(redis_url, lease_seconds=0.2, max_attempts=1)
    job_id = submit(settings, "generate", generate(seed=1))
    dead = WorkerQueue(client, settings, "dead")
    dead.ensure_group()
    [claim] = dead.claim(count=1, block_seconds=0.05)
    assert dead.start(job_id) == ("run", "1")  # ...and then it never renews, progresses or finishes
    pipeline = FakePipeline()
    with worker_thread(settings, pipeline):
        state = wait_for_status(client, job_id)
    assert state["status"] == "failed" and state["attempts"] == "1" and pipeline.calls == []
    assert "stopped renewing the lease" in state["error"]
    assert client.xlen(dead_letter_key(settings.stream)) == 1
    assert client.xpending(settings.stream, GROUP)["pending"] == 0 and claim.job_id == job_id


# ---- real processes --------------------------------------------------------------------------------


def test_kill_9_mid_job_is_taken_over_and_finished_once(
    redis_url: str, client: redis.Redis, tmp_path: Path
) -> None:
    settings = worker_settings(redis_url, lease_seconds=1.0, max_batch_size=1)
    job_id = submit(settings, "generate", generate(seed=7, prior_steps=20, decoder_steps=20))
    workers = {name: spawn_worker(settings, name, 0.05, tmp_path / f"{name}.log") for name in ("a", "b")}
    try:
        running = wait_until(lambda: job_state(client, job_id).get("progress") and job_state(client, job_id),
                             timeout=20, what="the job to run")
        victim = running["worker"]
        workers[victim].send_signal(signal.SIGKILL)
        workers[victim].wait(timeout=5)
        state = wait_for_status(client, job_id, timeout=20)
        survivor = "b" if victim == "a" else "a"
        assert state["status"] == "succeeded" and state["worker"] == survivor
        assert state["attempts"] == "2"
        assert mean_colour(png_image(client.get(result_key(job_id, 0)))) == colour(7, "a red circle")
        time.sleep(1.5)  # a lease later, nothing runs it again
        assert job_state(client, job_id)["attempts"] == "2"
        assert client.xlen(settings.stream) == 0 and client.xpending(settings.stream, GROUP)["pending"] == 0
        assert client.hget(f"{settings.stream}:counts", "succeeded") == b"1"
    finally:
        for process in workers.values():
            stop_process(process)


def test_a_batch_taken_over_after_kill_9_runs_as_one_batch_again(
    redis_url: str, client: redis.Redis, tmp_path: Path
) -> None:
    settings = worker_settings(redis_url, lease_seconds=1.0, max_batch_size=4)
    job_ids = [submit(settings, "generate", generate(seed=10 + i, prior_steps=20, decoder_steps=20))
               for i in range(4)]
    victim = spawn_worker(settings, "victim", 0.05, tmp_path / "victim.log")
    try:
        wait_until(lambda: all(job_state(client, j).get("progress") for j in job_ids), timeout=20,
                   what="the batch to run")
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=5)
    finally:
        stop_process(victim)
    pipeline = FakePipeline()
    with worker_thread(settings, pipeline, consumer="survivor"):
        states = [wait_for_status(client, j, timeout=20) for j in job_ids]
    assert [s["status"] for s in states] == ["succeeded"] * 4
    assert [s["attempts"] for s in states] == ["2"] * 4 and {s["worker"] for s in states} == {"survivor"}
    assert [sorted(call["seeds"]) for call in pipeline.calls] == [[10, 11, 12, 13]]  # one call, all four


def test_sigterm_finishes_the_current_batch_then_exits(
    redis_url: str, client: redis.Redis, tmp_path: Path
) -> None:
    settings = worker_settings(redis_url, lease_seconds=1.0, max_batch_size=1)
    current = submit(settings, "generate", generate(seed=1, prior_steps=10, decoder_steps=10))
    waiting = submit(settings, "generate", generate(seed=2))
    process = spawn_worker(settings, "a", 0.05, tmp_path / "a.log")
    try:
        wait_until(lambda: job_state(client, current).get("progress"), timeout=20, what="the job to run")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        stop_process(process)
    assert job_state(client, current)["status"] == "succeeded"
    untouched = job_state(client, waiting)
    assert (untouched["status"], untouched["attempts"]) == ("queued", "0")
    assert '"message": "worker stopped"' in (tmp_path / "a.log").read_text()


def stop_process(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.kill()
        process.wait(timeout=5)


def test_warm_up_runs_one_image_through_every_stage_at_one_step() -> None:
    """With compiling off (compiled warm-ups: tests/models/test_runtime.py)."""
    pipeline = FakePipeline(step_delay=0)
    pipeline.device, pipeline.dtype = "cpu", "float32"  # what the warm-up's log line reports
    warm_up(pipeline, Settings(compile="off"))
    assert pipeline.calls == [{"op": "generate", "seeds": [0], "steps": 2}]  # one prior + one decoder step
