"""Gateway overhead with no worker: job submissions/s and status polls/s of one uvicorn process, with p50/p99
latency, next to raw XADD on the same Redis.

    .venv/bin/python bench/gateway.py [--clients 32] [--seconds 5]

The script starts its own redis-server (service.redis_server.EmbeddedRedis) and the gateway in a uvicorn
subprocess on a free port (backlog limit out of reach, uvicorn's access log off, our JSON log at
--log-level), then drives it with N concurrent httpx clients for --seconds per phase after a one-second
warm-up:
- submit: `POST /v1/jobs` {"op": "generate", "prompt": ..., "size": 64} → 202 (validation, the submit Lua
  script: XADD + HSET + counters);
- poll: `GET /v1/jobs/{id}` over the submitted ids → 200 (one HGETALL).
Baseline: `redis-benchmark -c N XADD` on the same Redis (the `-t xadd` equivalent; redis-benchmark 7.0
has no built-in xadd test), else redis-py pipelined XADD (then named so). ratio = rate ÷ baseline rate.
"gateway CPU µs/req" is the uvicorn process's user+system CPU over the phase ÷ requests answered: it does
not depend on the load generator, which shares this machine's cores and caps the req/s column.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import httpx
import redis

from service.redis_server import EmbeddedRedis, free_port

REPO = Path(__file__).resolve().parent.parent

SUBMIT_BODY = {"op": "generate", "prompt": "a red circle on a white background", "size": 64}


@dataclass
class Phase:
    name: str
    requests: int
    seconds: float
    p50_ms: float | None = None
    p99_ms: float | None = None
    errors: int = 0
    cpu_seconds: float | None = None  # the gateway process's CPU over the phase

    @property
    def rate(self) -> float:
        return self.requests / self.seconds


def p50_p99(latencies_ms: list[float]) -> tuple[float | None, float | None]:
    if len(latencies_ms) < 2:
        return None, None
    cuts = statistics.quantiles(latencies_ms, n=100, method="inclusive")
    return cuts[49], cuts[98]


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of a process (Linux /proc), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_gateway(redis_url: str, port: int, log_level: str, log_file: io.TextIOBase) -> subprocess.Popen:
    env = {
        **os.environ,
        "UNCLIP_REDIS_URL": redis_url,
        "UNCLIP_BACKLOG_LIMIT": str(10**9),
        "UNCLIP_LOG_LEVEL": log_level,
        "UNCLIP_API_KEYS": "",
    }
    command = [sys.executable, "-m", "uvicorn", "service.gateway.app:create_app", "--factory",
               "--host", "127.0.0.1", "--port", str(port), "--no-access-log", "--log-level", "warning"]
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log_file, stderr=log_file)
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError("the gateway did not start; see its log above")
        time.sleep(0.1)


async def drive(
    name: str,
    clients: int,
    seconds: float,
    request: Callable[[httpx.AsyncClient, int], Awaitable[httpx.Response]],
    expected_status: int,
    base_url: str,
    gateway_pid: int,
    warmup: float = 1.0,
) -> Phase:
    """`clients` concurrent loops calling `request(client, i)` for warmup + seconds; only the last
    `seconds` are counted."""
    latencies: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=30) as client:
        measure_from = time.perf_counter() + warmup
        stop_at = measure_from + seconds

        async def one_client(number: int) -> None:
            nonlocal errors
            i = number
            while (sent := time.perf_counter()) < stop_at:
                response = await request(client, i)
                i += clients
                if sent >= measure_from:
                    latencies.append((time.perf_counter() - sent) * 1000)
                    errors += response.status_code != expected_status

        async def cpu_at_measure_start() -> float:
            await asyncio.sleep(warmup)
            return process_cpu_seconds(gateway_pid)

        cpu_start, *_ = await asyncio.gather(cpu_at_measure_start(), *(one_client(n) for n in range(clients)))
        elapsed = time.perf_counter() - measure_from
        cpu_seconds = process_cpu_seconds(gateway_pid) - cpu_start
    return Phase(name, len(latencies), elapsed, *p50_p99(latencies), errors, cpu_seconds)


async def gateway_phases(base_url: str, clients: int, seconds: float, pid: int) -> tuple[list[Phase], int]:
    job_ids: list[str] = []

    async def submit(client: httpx.AsyncClient, i: int) -> httpx.Response:
        response = await client.post("/v1/jobs", json=SUBMIT_BODY)
        if response.status_code == 202:
            job_ids.append(response.json()["id"])
        return response

    async def poll(client: httpx.AsyncClient, i: int) -> httpx.Response:
        return await client.get(f"/v1/jobs/{job_ids[i % len(job_ids)]}")

    submitted = await drive("POST /v1/jobs (generate, 64 px)", clients, seconds, submit, 202, base_url, pid)
    polled = await drive("GET /v1/jobs/{id}", clients, seconds, poll, 200, base_url, pid)
    return [submitted, polled], len(job_ids)


def redis_benchmark_xadd(port: int, clients: int, requests: int) -> Phase | None:
    binary = shutil.which("redis-benchmark")
    if binary is None:
        return None
    output = subprocess.run(
        [binary, "-p", str(port), "-c", str(clients), "-n", str(requests), "--csv",
         "XADD", "bench:xadd", "*", "job", "x"],
        check=True, capture_output=True, text=True,
    ).stdout
    row = next(csv.DictReader(io.StringIO(output)))
    seconds = requests / float(row["rps"])
    name = f"redis-benchmark -c {clients} XADD (baseline)"
    return Phase(name, requests, seconds, float(row["p50_latency_ms"]), float(row["p99_latency_ms"]))


def redis_py_xadd(url: str, requests: int, batch: int = 100) -> Phase:
    client = redis.Redis.from_url(url)
    started = time.perf_counter()
    for _ in range(requests // batch):
        pipe = client.pipeline(transaction=False)
        for _ in range(batch):
            pipe.xadd("bench:xadd", {"job": "x"})
        pipe.execute()
    elapsed = time.perf_counter() - started
    client.close()
    return Phase(f"redis-py XADD pipelined x{batch} (baseline; no redis-benchmark)", requests, elapsed)


def redis_version(url: str) -> str:
    client = redis.Redis.from_url(url)
    try:
        return str(client.info("server")["redis_version"])
    finally:
        client.close()


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def fmt(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def print_table(phases: list[Phase], baseline: Phase, header: list[str]) -> None:
    rows = [["what", "requests", "req/s", "p50 ms", "p99 ms", "gateway CPU µs/req", "errors", "ratio"]]
    for phase in [baseline, *phases]:
        cpu = phase.cpu_seconds / phase.requests * 1e6 if phase.cpu_seconds and phase.requests else None
        rows.append([
            phase.name, str(phase.requests), fmt(phase.rate, ",.0f"), fmt(phase.p50_ms, ".2f"),
            fmt(phase.p99_ms, ".2f"), fmt(cpu, ",.0f"), str(phase.errors),
            fmt(phase.rate / baseline.rate, ".4f"),
        ])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for line in header:
        print(line)
    for number, row in enumerate(rows):
        print("| " + " | ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) + " |")
        if number == 0:
            print("|" + "|".join("-" * (width + 2) for width in widths) + "|")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients (redis-benchmark -c)")
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per phase")
    parser.add_argument("--baseline-requests", type=int, default=100_000)
    parser.add_argument("--log-level", default="warning", help="gateway log level (info: every request)")
    args = parser.parse_args(argv)

    with EmbeddedRedis() as server, tempfile.TemporaryFile("w+") as gateway_log:
        port = free_port()
        gateway = start_gateway(server.url, port, args.log_level, gateway_log)
        try:
            phases, jobs = asyncio.run(
                gateway_phases(f"http://127.0.0.1:{port}", args.clients, args.seconds, gateway.pid)
            )
        finally:
            gateway.terminate()
            gateway.wait(timeout=10)
        if any(phase.errors for phase in phases):
            gateway_log.seek(0)
            print(gateway_log.read()[-4000:], file=sys.stderr)
        baseline = redis_benchmark_xadd(server.port, args.clients, args.baseline_requests) or redis_py_xadd(
            server.url, args.baseline_requests
        )
        server_version = redis_version(server.url)

    packages = ("fastapi", "uvicorn", "starlette", "pydantic", "redis", "httpx")
    versions = ", ".join(f"{name} {version(name)}" for name in packages)
    header = [
        "unclip-serve gateway overhead, no worker (bench/gateway.py)",
        f"machine: {cpu_model()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}; "
        "load generator, gateway and Redis share these cores",
        f"versions: Python {platform.python_version()}, {versions}, redis-server {server_version}",
        f"setup: 1 uvicorn process, {args.clients} concurrent clients, {args.seconds:g} s per phase after "
        f"1 s warm-up, JSON log at {args.log_level}, {jobs} jobs queued in all",
        f"baseline: {baseline.name}; ratio = req/s ÷ baseline req/s",
    ]
    print_table(phases, baseline, header)
    return 0


if __name__ == "__main__":
    sys.exit(main())
