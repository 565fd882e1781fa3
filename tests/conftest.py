"""Shared fixtures: one real redis-server per run. Sets TRITON_INTERPRET before anything imports torch."""

import os
import shutil
from collections.abc import Iterator

import pytest
import redis

from service.redis_server import EmbeddedRedis

# Triton decides interpreted-or-compiled when a kernel is defined, and torch defines some as it imports,
# so this must come before any test module imports torch: without an NVIDIA GPU, Triton kernels run in
# the CPU interpreter; with one, the same tests run the compiled kernels.
if shutil.which("nvidia-smi") is None:
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session")
def redis_server() -> Iterator[EmbeddedRedis]:
    """One real redis-server on a free port for the whole run; `redis_url` gives each test a clean db."""
    with EmbeddedRedis() as server:
        yield server


@pytest.fixture
def redis_url(redis_server: EmbeddedRedis) -> str:
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    return redis_server.url
