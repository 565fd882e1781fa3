"""The gateway's CPU per request against a bare FastAPI app doing one XADD, both driven by wrk in one run.

    .venv/bin/python bench/gateway.py [--threads 1] [--connections 32] [--seconds 5] [--rounds 3]

Needs wrk (`apt-get install wrk`; setup.sh installs it when run as root). The script starts its own
redis-server (service.redis_server.EmbeddedRedis) and two uvicorn processes with the same settings (one
process each, access log off, free ports, uvloop/httptools as installed):
- gateway: service.gateway.app with no API keys, no backlog limit and its JSON log at warning;
- bare: bench/bare_xadd.py, whose POST /v1/jobs parses the JSON body and does one XADD (the baseline,
  "bare FastAPI + XADD").
After a one-second warm-up of each phase, every round runs `wrk -t T -c C -d S --latency` in turn on
- gateway submit: POST /v1/jobs {"op": "generate", "prompt": ..., "size": 64} → 202 (validation, auth,
  metrics, the submit Lua script: XADD + HSET + counters);
- bare submit: the same request to the bare app → 202;
- gateway poll: GET /v1/jobs/{id} of one queued job → 200 (one HGETALL).
Columns, per phase over all rounds:
- requests, req/s: answered by wrk; req/s depends on the load generator and on whatever else runs here;
- p50/p99 ms: wrk's latency percentiles, the median over the rounds;
- non-2xx: what wrk counts as errors (answers with status ≥ 400, and socket errors or timeouts); any
  makes the run fail, after printing the servers' logs;
- CPU µs/req: the server process's user+system CPU (/proc/PID/stat) over the phase ÷ requests answered,
  all rounds together, then the lowest and highest round. It depends far less than req/s on how fast wrk
  drives the server, but other work on the machine still inflates it (caches, shared cores);
- ÷ bare: CPU µs/req ÷ the bare app's CPU µs/req, the figure to compare across runs: the rounds
  interleave, so both servers see the same weather.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # before bench/, whose service.py shadows

from service.redis_server import EmbeddedRedis, free_port

REPO = Path(__file__).resolve().parent.parent
SUBMIT_BODY = {"op": "generate", "prompt": "a red circle on a white background", "size": 64}

# wrk's Lua hooks: the request to send and, at the end, one JSON line with the counts and percentiles (µs).
WRK_SCRIPT = """
wrk.method = "{method}"
wrk.body = {body}
wrk.headers["Content-Type"] = "application/json"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK {{"requests": %d, "duration_us": %d, "errors": %d, "p50_us": %d, "p99_us": %d}}\\n',
    summary.requests, summary.duration, e.status + e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


@dataclass
class Phase:
    """One kind of request to one server."""

    name: str
    url: str
    pid: int
    script: Path


@dataclass
class Run:
    """One wrk run of a phase, with the server's CPU over it."""

    requests: int
    seconds: float
    errors: int
    p50_ms: float
    p99_ms: float
    cpu_seconds: float

    @property
    def cpu_us_per_request(self) -> float:
        return self.cpu_seconds / max(self.requests, 1) * 1e6


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of a process (Linux /proc), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wrk_script(directory: Path, name: str, method: str, body: dict | None) -> Path:
    path = directory / f"{name}.lua"
    lua_body = "nil" if body is None else "[[" + json.dumps(body) + "]]"
    path.write_text(WRK_SCRIPT.format(method=method, body=lua_body))
    return path


def run_wrk(phase: Phase, threads: int, connections: int, seconds: float) -> Run:
    options = f"-t{threads} -c{connections} -d{seconds:g}s --latency".split()
    command = ["wrk", *options, "-s", str(phase.script), phase.url]
    cpu_before = process_cpu_seconds(phase.pid)
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    cpu_seconds = process_cpu_seconds(phase.pid) - cpu_before
    line = next(line for line in output.splitlines() if line.startswith("WRK "))
    counts = json.loads(line[4:])
    return Run(
        requests=counts["requests"],
        seconds=counts["duration_us"] / 1e6,
        errors=counts["errors"],
        p50_ms=counts["p50_us"] / 1000,
        p99_ms=counts["p99_us"] / 1000,
        cpu_seconds=cpu_seconds,
    )


@contextlib.contextmanager
def uvicorn_server(app: str, env: dict[str, str], log: Path) -> Iterator[tuple[str, int]]:
    """(base URL, pid) of `uvicorn app --factory` on a free port, once it answers HTTP."""
    port = free_port()
    options = f"--factory --host 127.0.0.1 --port {port} --no-access-log --log-level warning".split()
    command = [sys.executable, "-m", "uvicorn", app, *options]
    with log.open("w") as log_file:
        process = subprocess.Popen(
            command, cwd=REPO, env={**os.environ, **env}, stdout=log_file, stderr=subprocess.STDOUT
        )
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_until_answering(base_url + "/", process, log)
        yield base_url, process.pid
    finally:
        process.terminate()
        process.wait(timeout=10)


def wait_until_answering(url: str, process: subprocess.Popen, log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except urllib.error.HTTPError:
            return  # any HTTP answer (404 included) means it serves
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not start:\n{log.read_text()[-4000:]}")
        time.sleep(0.1)


def submit_one(base_url: str) -> str:
    """The id of a job queued through the gateway (the poll phase reads it)."""
    request = urllib.request.Request(
        base_url + "/v1/jobs",
        data=json.dumps(SUBMIT_BODY).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)["id"]


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def wrk_version() -> str:
    result = subprocess.run(["wrk", "-v"], capture_output=True, text=True)
    return (result.stdout or result.stderr).split("[")[0].strip()


def package_version(name: str) -> str:
    try:
        return f"{name} {version(name)}"
    except PackageNotFoundError:
        return f"no {name}"


def redis_version(url: str) -> str:
    with contextlib.closing(redis.Redis.from_url(url)) as client:
        return str(client.info("server")["redis_version"])


def table(runs: dict[str, list[Run]], baseline: str) -> list[str]:
    header = ["phase", "requests", "req/s", "p50 ms", "p99 ms", "non-2xx", "CPU µs/req (rounds)", "÷ bare"]
    bare_cpu = cpu_per_request(runs[baseline])
    rows = [header, ["---"] * len(header)]
    for name, phase_runs in runs.items():
        requests = sum(run.requests for run in phase_runs)
        seconds = sum(run.seconds for run in phase_runs)
        cpu = cpu_per_request(phase_runs)
        spread = [run.cpu_us_per_request for run in phase_runs]
        rows.append(
            [
                name,
                f"{requests:,}",
                f"{requests / seconds:,.0f}",
                f"{statistics.median(run.p50_ms for run in phase_runs):.2f}",
                f"{statistics.median(run.p99_ms for run in phase_runs):.2f}",
                str(sum(run.errors for run in phase_runs)),
                f"{cpu:,.0f} ({min(spread):,.0f}–{max(spread):,.0f})",
                f"{cpu / bare_cpu:.2f}",
            ]
        )
    return ["| " + " | ".join(row) + " |" for row in rows]


def cpu_per_request(runs: list[Run]) -> float:
    return sum(run.cpu_seconds for run in runs) / max(sum(run.requests for run in runs), 1) * 1e6


def measure(
    phases: list[Phase], threads: int, connections: int, seconds: float, rounds: int
) -> dict[str, list[Run]]:
    """A one-second warm-up of each phase, then `rounds` rounds that run every phase in turn."""
    for phase in phases:
        run_wrk(phase, threads, connections, 1.0)
    runs: dict[str, list[Run]] = {phase.name: [] for phase in phases}
    for _ in range(rounds):
        for phase in phases:
            runs[phase.name].append(run_wrk(phase, threads, connections, seconds))
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (-t)")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (-c)")
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds per phase and round")
    parser.add_argument("--rounds", type=int, default=3, help="gateway, bare, poll: this many times")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        parser.exit(
            2, "bench/gateway.py needs the load generator wrk: apt-get install wrk (or ./setup.sh as root)\n"
        )

    with contextlib.ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-gateway-")))
        server = stack.enter_context(EmbeddedRedis())
        gateway_env = {
            "UNCLIP_REDIS_URL": server.url,
            "UNCLIP_BACKLOG_LIMIT": str(10**9),
            "UNCLIP_LOG_LEVEL": "warning",
            "UNCLIP_API_KEYS": "",
        }
        logs = {"gateway": scratch / "gateway.log", "bare": scratch / "bare.log"}
        gateway_url, gateway_pid = stack.enter_context(
            uvicorn_server("service.gateway.app:create_app", gateway_env, logs["gateway"])
        )
        bare_url, bare_pid = stack.enter_context(
            uvicorn_server("bench.bare_xadd:create_app", {"BENCH_REDIS_URL": server.url}, logs["bare"])
        )
        submit = wrk_script(scratch, "submit", "POST", SUBMIT_BODY)
        phases = [
            Phase("gateway: POST /v1/jobs", gateway_url + "/v1/jobs", gateway_pid, submit),
            Phase("bare FastAPI + XADD: POST /v1/jobs", bare_url + "/v1/jobs", bare_pid, submit),
            Phase(
                "gateway: GET /v1/jobs/{id}",
                f"{gateway_url}/v1/jobs/{submit_one(gateway_url)}",
                gateway_pid,
                wrk_script(scratch, "poll", "GET", None),
            ),
        ]
        runs = measure(phases, args.threads, args.connections, args.seconds, args.rounds)
        server_version = redis_version(server.url)
        if any(run.errors for phase_runs in runs.values() for run in phase_runs):
            for name, log in logs.items():
                print(f"--- {name} log ---\n{log.read_text()[-4000:]}", file=sys.stderr)

    packages = ("fastapi", "starlette", "uvicorn", "pydantic", "redis", "hiredis")
    versions = ", ".join(package_version(name) for name in packages)
    print("unclip-serve gateway against a bare FastAPI app doing one XADD (bench/gateway.py)")
    print(f"device: {cpu_model()}, {os.cpu_count()} cores; wrk, the servers and Redis share them")
    print(
        f"versions: Python {platform.python_version()}, {versions}, redis-server {server_version}, "
        f"{wrk_version()}"
    )
    print(
        f"load: wrk -t{args.threads} -c{args.connections}, {args.rounds} rounds of {args.seconds:g} s per "
        "phase, interleaved; one uvicorn process per server\n"
    )
    print("\n".join(table(runs, phases[1].name)))
    errors = sum(run.errors for phase_runs in runs.values() for run in phase_runs)
    if errors:
        print(f"\nFAILED: {errors} non-2xx answers or socket errors (server logs above)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
