"""The batching policy on its own: plain keys, no pipeline, no Redis, no torch."""

from __future__ import annotations

from service.worker.batching import Candidate, first_batch


def test_the_oldest_job_takes_the_later_compatible_ones_that_fit() -> None:
    candidates = [
        Candidate("a", key="k", images=2),
        Candidate("other-key", key="j", images=1),
        Candidate("b", key="k", images=1),
        Candidate("too-many", key="k", images=2),
        Candidate("c", key="k", images=1),
    ]
    assert first_batch(candidates, max_images=4) == (["a", "b", "c"], ["other-key", "too-many"])


def test_retries_run_alone_and_the_oldest_job_runs_even_over_the_budget() -> None:
    fresh = Candidate("fresh", key="k", images=1)
    assert first_batch([Candidate("retry", "k", 1, solo=True), fresh], 4) == (["retry"], ["fresh"])
    assert first_batch([fresh, Candidate("retry", "k", 1, solo=True)], 4) == (["fresh"], ["retry"])
    assert first_batch([Candidate("big", "k", 9), fresh], 4) == (["big"], ["fresh"])
    assert first_batch([], 4) == ([], [])


def test_jobs_taken_over_from_a_dead_worker_batch_again() -> None:
    """Only a retry after an exception is solo; takeovers are plain candidates and batch together."""
    taken_over = [Candidate(f"taken-{i}", key="k", images=1) for i in range(3)]
    assert first_batch(taken_over, 4) == (["taken-0", "taken-1", "taken-2"], [])
    raised = Candidate("raised", key="k", images=1, solo=True)
    assert first_batch([*taken_over, raised], 4) == (["taken-0", "taken-1", "taken-2"], ["raised"])
