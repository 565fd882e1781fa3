"""Images per second through the real service: `unclip serve` (embedded Redis, gateway, one worker on the
shipped checkpoint) under N concurrent clients, with cross-request batching against one job at a time.

    .venv/bin/python bench/service.py [--clients 8] [--jobs 24] [--size 64] [--batch-sizes 8,1]

For each UNCLIP_MAX_BATCH_SIZE in --batch-sizes, a fresh `unclip serve` starts (the worker's warm-up,
compiling included, is timed apart: the run waits for /readyz and one finished warm-up job); then
--clients concurrent clients each submit `POST /v1/jobs` {"op": "generate", "n": 1, "size": --size} and
poll `GET /v1/jobs/{id}` until it succeeds, --jobs jobs in all. images/s = jobs ÷ the time from the first
submission to the last success; latency = submission to success per job (p50, p90). Baseline: the first
entry of --batch-sizes that is 1 (one job at a time); ratio = images/s ÷ the baseline's. The worker runs
the settings it would run anyway (UNCLIP_DTYPE / UNCLIP_COMPILE as set, defaults "auto").
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.redis_server import free_port

REPO = Path(__file__).resolve().parent.parent
PROMPT = "a red circle on a white background"


@dataclass
class Result:
    max_batch: int
    jobs: int
    seconds: float
    startup_seconds: float
    latencies: list[float]

    @property
    def images_per_second(self) -> float:
        return self.jobs / self.seconds


def start_serve(max_batch: int, log_path: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "UNCLIP_MAX_BATCH_SIZE": str(max_batch), "UNCLIP_API_KEYS": "",
           "UNCLIP_WORKER_METRICS_PORT": str(free_port()), "UNCLIP_LOG_LEVEL": "info"}  # fmt: skip
    command = [sys.executable, "-m", "service.cli", "serve", "--port", str(port)]
    log = log_path.open("w")
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=log, start_new_session=True)
    return process, f"http://127.0.0.1:{port}"


async def wait_done(client: httpx.AsyncClient, job_id: str, poll: float = 0.05) -> None:
    while True:
        job = (await client.get(f"/v1/jobs/{job_id}")).json()
        if job["status"] == "succeeded":
            return
        if job["status"] in ("failed", "cancelled"):
            raise RuntimeError(f"job {job_id} {job['status']}: {job.get('error')}")
        await asyncio.sleep(poll)


async def submit(client: httpx.AsyncClient, size: int, seed: int) -> str:
    body = {"op": "generate", "prompt": PROMPT, "n": 1, "size": size, "seed": seed}
    response = await client.post("/v1/jobs", json=body)
    response.raise_for_status()
    return response.json()["id"]


async def ready(base_url: str, process: subprocess.Popen, size: int, timeout: float) -> None:
    """The gateway answers and the worker has finished a job (its warm-up is behind it)."""
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        while True:
            if process.poll() is not None:
                raise RuntimeError("unclip serve exited; see its log")
            try:
                if (await client.get("/readyz")).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("unclip serve did not become ready")
            await asyncio.sleep(0.2)
        await wait_done(client, await submit(client, size, 10**6))


async def load(base_url: str, clients: int, jobs: int, size: int) -> tuple[float, list[float]]:
    latencies: list[float] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for seed in range(jobs):
        queue.put_nowait(seed)
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base_url, timeout=600, limits=limits) as client:

        async def one_client() -> None:
            while not queue.empty():
                seed = queue.get_nowait()
                sent = time.perf_counter()
                await wait_done(client, await submit(client, size, seed))
                latencies.append(time.perf_counter() - sent)

        started = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(clients)))
        return time.perf_counter() - started, latencies


def run_one(max_batch: int, args: argparse.Namespace, logs: Path) -> Result:
    log_path = logs / f"serve-batch{max_batch}.log"
    process, base_url = start_serve(max_batch, log_path)
    try:
        started = time.perf_counter()
        asyncio.run(ready(base_url, process, args.size, args.startup_timeout))
        startup = time.perf_counter() - started
        print(f"[batch {max_batch}] ready after {startup:.1f} s; {args.jobs} jobs, {args.clients} clients",
              file=sys.stderr, flush=True)  # fmt: skip
        seconds, latencies = asyncio.run(load(base_url, args.clients, args.jobs, args.size))
        return Result(max_batch, args.jobs, seconds, startup, latencies)
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--jobs", type=int, default=24)
    parser.add_argument("--size", type=int, default=64, choices=(64, 256, 1024))
    parser.add_argument("--batch-sizes", default="8,1", help="UNCLIP_MAX_BATCH_SIZE values, one serve each")
    parser.add_argument("--startup-timeout", type=float, default=1800)
    args = parser.parse_args(argv)
    batches = [int(part) for part in args.batch_sizes.split(",")]
    load_before = os.getloadavg()[0]
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-service-") as logs:
        for max_batch in batches:
            results.append(run_one(max_batch, args, Path(logs)))
    baseline = next((r for r in results if r.max_batch == 1), results[-1])
    print("unclip-serve throughput through `unclip serve` (bench/service.py)")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; 1-min load "
          f"{load_before:.1f} at start, {os.getloadavg()[0]:.1f} at end")  # fmt: skip
    dtype, compile_mode = os.environ.get("UNCLIP_DTYPE", "auto"), os.environ.get("UNCLIP_COMPILE", "auto")
    print(f"versions: Python {platform.python_version()}, torch {version('torch')}; worker settings: "
          f"UNCLIP_DTYPE={dtype} UNCLIP_COMPILE={compile_mode}")  # fmt: skip
    print(f"load: {args.jobs} generate jobs (n 1, {args.size} px, default steps), {args.clients} clients")
    print()
    table = [
        ["UNCLIP_MAX_BATCH_SIZE", "images/s", "ratio vs batch 1", "p50 s", "p90 s", "startup s (warm-up)"]
    ]
    for r in results:
        p90 = statistics.quantiles(r.latencies, n=10)[-1] if len(r.latencies) > 1 else r.latencies[0]
        ratio = r.images_per_second / baseline.images_per_second
        p50 = statistics.median(r.latencies)
        table.append([str(r.max_batch), f"{r.images_per_second:.2f}", f"{ratio:.2f}", f"{p50:.2f}",
                      f"{p90:.2f}", f"{r.startup_seconds:.1f}"])  # fmt: skip
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for number, row in enumerate(table):
        print("| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) + " |")
        if number == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return 0


if __name__ == "__main__":
    sys.exit(main())
