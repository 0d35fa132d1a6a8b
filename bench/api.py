"""How fast and how lean is the REST API of `disco serve` under 50 concurrent clients?

The script starts its own `disco serve` (temp data dir, free loopback ports, an instance name of
its own, admin "bench" with the API key `disco init` prints), creates 100 projects p000..p099
through the API, and then measures two phases, each for --seconds or --max-requests requests,
whichever ends first, after an unmeasured warm-up:

  reads   GET  /api/v1/projects                        (the 100 projects, as JSON)
  writes  POST /api/v1/projects/p001/env               {"values": {"K<n>": "v"}, "deploy": false}
          (a new key per request; nothing is live, so no deploy starts)

Both phases also run against a baseline measured in the same run, on this same noisy machine:
a minimal Starlette app served by uvicorn (the daemon's uvicorn settings) in a separate
process on another loopback port. Its GET answers the very body the daemon answered for the
100 projects (re-serialised on every request, as the daemon does); its POST parses the JSON
body and answers {"deployment": null}. It has no authentication, validation or database: it
is the floor of Starlette + uvicorn on this machine. Phases alternate baseline, disco.

The load generator is --clients asyncio tasks in this process, each with one keep-alive
HTTP/1.1 connection of its own, sending a prebuilt request and reading Content-Length bytes
back. Why not httpx: on this 2-core machine one httpx.AsyncClient per task needed ~0.7 of a
core for ~900 requests/s, so the client, not the server, set the pace against the baseline.
`--httpx` runs the same phases with httpx to show it. The report gives the CPU the
client and the server each used per phase (cores, from process CPU time), so the reader can
see which side was the bottleneck.

It prints p50/p99/max latency and requests/s per phase and target, the disco/baseline ratios
for p50, p99 and requests/s, the daemon's RSS (VmRSS) before the load and after each phase,
and the targets with PASS or MISS: reads p99 under 20 ms, RSS growth under 20 MB. The same
figures go to bench/results/api.json (write_results). The exit
status is 0 whatever was measured, 1 if something broke. The daemon, the baseline server, the
instance's Docker objects (its Caddy service) and the temp dir are removed at the end, also on
Ctrl-C. All traffic goes to 127.0.0.1.

Run by hand, from the repo root (never from the tests; about a minute with the defaults):

    .venv/bin/python bench/api.py [--clients 50] [--seconds 10] [--max-requests 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from disco_harness import (
    Daemon,
    RawConnection,
    cpu_seconds,
    describe_machine,
    percentile,
    run_measurement,
    running_baseline_server,
    running_daemon,
    write_results,
)

HOST = "127.0.0.1"
PROJECT_COUNT = 100
WRITE_PROJECT = "p001"
LISTEN_TIMEOUT_SECONDS = 30
WARMUP_SECONDS = 1.0
# On top of the phase's own length: a server that stops answering cannot hang the script.
PHASE_GRACE_SECONDS = 15
READ_P99_TARGET_SECONDS = 0.020
RSS_GROWTH_TARGET_BYTES = 20 * 1024 * 1024


# -- processes we start ------------------------------------------------------------------------


@contextmanager
def running_baseline(workdir: Path, projects_body: bytes) -> Iterator[tuple[subprocess.Popen, int]]:
    """This script again, as `--serve-baseline`, in a process (and session) of its own."""
    body_path = workdir / "baseline_projects.json"
    body_path.write_bytes(projects_body)
    with running_baseline_server(__file__, workdir, body_path, LISTEN_TIMEOUT_SECONDS) as running:
        yield running


def serve_baseline(port: int, body_path: Path) -> None:
    """The baseline server: Starlette + uvicorn with the daemon's uvicorn settings, nothing else."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    rows = json.loads(body_path.read_bytes())

    async def list_projects(request: Request) -> JSONResponse:
        return JSONResponse(rows)  # serialised per request, as the daemon's handler does

    async def set_env(request: Request) -> JSONResponse:
        await request.json()  # read and parse the body, as the daemon must before it can answer
        return JSONResponse({"deployment": None})

    app = Starlette(routes=[Route("/api/v1/projects", list_projects, methods=["GET"]),
                            Route("/api/v1/projects/{project}/env", set_env, methods=["POST"])])
    # As cli/serve.py configures the daemon's uvicorn (same HTTP and loop implementations: auto).
    uvicorn.run(app, host=HOST, port=port, log_level="warning", lifespan="off")


# -- measuring processes -----------------------------------------------------------------------


def rss_bytes(pid: int) -> int:
    """VmRSS of a process, from /proc/<pid>/status (reported there in kB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def mb(count: int) -> str:
    return f"{count / (1024 * 1024):.1f} MB"


# -- the load generator ------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    name: str  # "disco" or "baseline"
    port: int
    pid: int  # the server process, for its CPU time
    api_key: str


# A request for the n-th request of a phase (n counts on across warm-up and measurement).
RequestMaker = Callable[[int], tuple[str, str, bytes]]  # method, path, body ("" body: none)


def read_request(n: int) -> tuple[str, str, bytes]:
    return "GET", "/api/v1/projects", b""


def write_request(n: int) -> tuple[str, str, bytes]:
    body = json.dumps({"values": {f"K{n}": "v"}, "deploy": False}).encode()
    return "POST", f"/api/v1/projects/{WRITE_PROJECT}/env", body


def raw_request(target: Target, method: str, path: str, body: bytes) -> bytes:
    head = [f"{method} {path} HTTP/1.1", f"Host: {HOST}:{target.port}", f"Authorization: Bearer {target.api_key}",
            "Accept: application/json"]
    if body:
        head += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


class HttpxConnection:
    """The same through httpx, one AsyncClient (and so one connection) per task."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.client = self._new_client()

    def _new_client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=f"http://{HOST}:{self.target.port}", timeout=30,
                                 limits=httpx.Limits(max_connections=1),
                                 headers={"Authorization": f"Bearer {self.target.api_key}"})

    async def request(self, method: str, path: str, body: bytes) -> tuple[int, bytes]:
        if self.client.is_closed:  # closed after an error: a closed AsyncClient cannot be reused
            self.client = self._new_client()
        headers = {"Content-Type": "application/json"} if body else None
        response = await self.client.request(method, path, content=body or None, headers=headers)
        return response.status_code, response.content

    async def close(self) -> None:
        await self.client.aclose()


@dataclass
class Phase:
    """What one phase against one target measured."""

    target: str
    latencies: list[float] = field(default_factory=list)  # seconds, successful requests only
    errors: int = 0
    first_error: str = ""
    wall_seconds: float = 0.0
    client_cores: float = 0.0  # CPU time of this process / wall time
    server_cores: float = 0.0

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.wall_seconds if self.wall_seconds else 0.0

    def note_error(self, message: str) -> None:
        self.errors += 1
        if not self.first_error:
            self.first_error = message[:300]


async def client_loop(target: Target, make: RequestMaker, numbers: Iterator[int], deadline: float,
                      phase: Phase | None, use_httpx: bool) -> None:
    """One client: requests back to back on its own connection until the deadline or the
    shared request budget (`numbers`) runs out. `phase` None: warm-up, nothing recorded."""
    connection: RawConnection | HttpxConnection = HttpxConnection(target) if use_httpx else RawConnection(target.port)
    prebuilt: dict[str, bytes] = {}  # reads repeat one request: build it once
    try:
        for n in numbers:
            if time.monotonic() >= deadline:
                return
            method, path, body = make(n)
            started = time.perf_counter()
            try:
                if isinstance(connection, HttpxConnection):
                    status, answer = await connection.request(method, path, body)
                else:
                    key = f"{method} {path}"
                    data = prebuilt.get(key) if not body else None
                    if data is None:
                        data = raw_request(target, method, path, body)
                        if not body:
                            prebuilt[key] = data
                    status, answer = await connection.request(data)
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, httpx.HTTPError) as err:
                if phase is not None:
                    phase.note_error(f"{type(err).__name__}: {err}")
                await connection.close()  # a fresh connection for the next request
                continue
            elapsed = time.perf_counter() - started
            if phase is None:
                continue
            if status == 200:
                phase.latencies.append(elapsed)
            else:
                phase.note_error(f"HTTP {status}: {answer[:200]!r}")
    finally:
        await connection.close()


async def drive(target: Target, make: RequestMaker, clients: int, seconds: float, max_requests: int,
                numbers: Iterator[int], phase: Phase | None, use_httpx: bool) -> float:
    """Run `clients` loops at once for `seconds` or `max_requests` requests; return the wall time."""
    budget = itertools.islice(numbers, max_requests)  # shared: the loops together stop at the cap
    started = time.monotonic()
    async with asyncio.timeout(seconds + PHASE_GRACE_SECONDS):
        await asyncio.gather(*(client_loop(target, make, budget, started + seconds, phase, use_httpx)
                               for _ in range(clients)))
    return time.monotonic() - started


def measure(target: Target, make: RequestMaker, args: argparse.Namespace) -> Phase:
    """A warm-up (connections opened, caches warm), then the measured phase with CPU accounting."""
    numbers = itertools.count()  # one sequence: warm-up and measurement never reuse a write key
    asyncio.run(drive(target, make, args.clients, WARMUP_SECONDS, args.max_requests, numbers, None, args.httpx))
    phase = Phase(target.name)
    client_before, server_before = time.process_time(), cpu_seconds(target.pid)
    phase.wall_seconds = asyncio.run(
        drive(target, make, args.clients, args.seconds, args.max_requests, numbers, phase, args.httpx))
    phase.client_cores = (time.process_time() - client_before) / phase.wall_seconds
    phase.server_cores = (cpu_seconds(target.pid) - server_before) / phase.wall_seconds
    return phase


# -- setting up --------------------------------------------------------------------------------


def create_projects(daemon: Daemon) -> bytes:
    """p000..p099 through the API; returns the body of GET /projects (the baseline serves it)."""
    headers = {"Authorization": f"Bearer {daemon.api_key}"}
    with httpx.Client(base_url=f"http://{HOST}:{daemon.api_port}", headers=headers, timeout=30) as client:
        for index in range(PROJECT_COUNT):
            response = client.post("/api/v1/projects", json={"name": f"p{index:03d}"})
            if response.status_code != 201:
                raise RuntimeError(f"creating p{index:03d}: HTTP {response.status_code} {response.text[:300]}")
        listing = client.get("/api/v1/projects")
    if listing.status_code != 200 or len(listing.json()) != PROJECT_COUNT:
        raise RuntimeError(f"GET /projects: HTTP {listing.status_code} {listing.text[:300]}")
    return listing.content


# -- the report --------------------------------------------------------------------------------


def ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f}"


def ratio(disco: float | None, baseline: float | None) -> str:
    return "-" if not disco or not baseline else f"{disco / baseline:.2f}x"


def phase_row(label: str, phase: Phase) -> str:
    lat = phase.latencies
    return (f"{label:<8}{phase.target:<10}{len(lat):>9}{phase.errors:>7}{phase.rate:>9.0f}"
            f"{ms(percentile(lat, 0.5)):>9}{ms(percentile(lat, 0.99)):>9}{ms(max(lat, default=None)):>9}"
            f"{phase.client_cores:>9.2f}{phase.server_cores:>9.2f}")


def print_report(results: dict[str, dict[str, Phase]], rss: list[tuple[str, int]], args: argparse.Namespace) -> None:
    print()
    print(f"{'phase':<8}{'target':<10}{'ok':>9}{'errors':>7}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}"
          f"{'client':>9}{'server':>9}")
    for label, by_target in results.items():
        for phase in by_target.values():
            print(phase_row(label, phase))
    print("(client, server: CPU cores used during the phase; the daemon's includes all its threads)")
    for label, by_target in results.items():
        for phase in by_target.values():
            if phase.first_error:
                print(f"first error, {label} {phase.target}: {phase.first_error}")

    print("\ndisco/baseline   p50      p99      req/s")
    for label, by_target in results.items():
        disco, base = by_target["disco"], by_target["baseline"]
        print(f"{label:<17}{ratio(percentile(disco.latencies, 0.5), percentile(base.latencies, 0.5)):<9}"
              f"{ratio(percentile(disco.latencies, 0.99), percentile(base.latencies, 0.99)):<9}"
              f"{ratio(disco.rate, base.rate)}")

    print("\ndaemon RSS (VmRSS):", ", ".join(f"{name} {mb(value)}" for name, value in rss))
    growth = rss[-1][1] - rss[0][1]
    print(f"  growth over the load: {mb(growth)}")

    # The bottleneck: a client near a full core (one asyncio thread) could not have gone faster.
    busiest_client = max(p.client_cores for by_target in results.values() for p in by_target.values())
    print(f"\nload generator: at most {busiest_client:.2f} of a core in any phase (one asyncio thread; "
          f"{os.cpu_count()} CPUs here) -> "
          + ("NOT the bottleneck" if busiest_client < 0.7 else "MAY BE the bottleneck: compare the server column"))

    read_p99 = percentile(results["reads"]["disco"].latencies, 0.99)
    print("\ntargets")
    verdict = "PASS" if read_p99 is not None and read_p99 < READ_P99_TARGET_SECONDS else "MISS"
    print(f"  {verdict}  reads p99 under {READ_P99_TARGET_SECONDS * 1000:.0f} ms: {ms(read_p99)} ms "
          f"(baseline {ms(percentile(results['reads']['baseline'].latencies, 0.99))} ms, "
          f"{args.clients} clients back to back)")
    verdict = "PASS" if growth < RSS_GROWTH_TARGET_BYTES else "MISS"
    print(f"  {verdict}  daemon RSS growth under {mb(RSS_GROWTH_TARGET_BYTES)}: {mb(growth)}")
    write_results("api", figures(results, rss, args))


def figures(results: dict[str, dict[str, Phase]], rss: list[tuple[str, int]], args: argparse.Namespace) -> dict:
    """What print_report printed, as numbers: per phase and target, and the disco/baseline ratios."""
    def rounded(value: float | None, scale: float = 1.0) -> float | None:
        return None if value is None else round(value * scale, 3)

    out: dict[str, object] = {"clients": args.clients, "seconds": args.seconds, "httpx": args.httpx,
                              "rss_bytes": dict(rss), "rss_growth_bytes": rss[-1][1] - rss[0][1]}
    for label, by_target in results.items():
        for phase in by_target.values():
            lat = phase.latencies
            out[f"{label}_{phase.target}"] = {
                "ok": len(lat), "errors": phase.errors, "requests_per_second": round(phase.rate, 1),
                "p50_ms": rounded(percentile(lat, 0.5), 1000), "p99_ms": rounded(percentile(lat, 0.99), 1000),
                "max_ms": rounded(max(lat, default=None), 1000), "client_cores": round(phase.client_cores, 3),
                "server_cores": round(phase.server_cores, 3)}
        disco, base = by_target["disco"], by_target["baseline"]
        p99_disco, p99_base = percentile(disco.latencies, 0.99), percentile(base.latencies, 0.99)
        p50_disco, p50_base = percentile(disco.latencies, 0.5), percentile(base.latencies, 0.5)
        out[f"{label}_ratio"] = {
            "p50": rounded(p50_disco / p50_base) if p50_disco and p50_base else None,
            "p99": rounded(p99_disco / p99_base) if p99_disco and p99_base else None,
            "requests_per_second": rounded(disco.rate / base.rate) if disco.rate and base.rate else None}
    return out


# -- main --------------------------------------------------------------------------------------


def run_bench(args: argparse.Namespace, workdir: Path) -> None:
    client = "httpx.AsyncClient per task" if args.httpx else "raw asyncio HTTP/1.1, one connection per task"
    print(f"Disco API under load: {args.clients} keep-alive clients ({client}), "
          f"{args.seconds:g} s or {args.max_requests} requests per phase after a {WARMUP_SECONDS:g} s warm-up")
    print(f"machine: {describe_machine()}")
    with running_daemon(workdir) as daemon:
        assert daemon.process is not None
        started = time.monotonic()
        projects_body = create_projects(daemon)
        print(f"daemon up (instance {daemon.instance}); created {PROJECT_COUNT} projects in "
              f"{time.monotonic() - started:.1f} s; GET /projects answers {len(projects_body)} bytes")
        with running_baseline(workdir, projects_body) as (baseline_process, baseline_port):
            disco = Target("disco", daemon.api_port, daemon.process.pid, daemon.api_key)
            # A key of the same length: the same request bytes (the baseline ignores it).
            baseline = Target("baseline", baseline_port, baseline_process.pid, "disco_" + "x" * 43)
            time.sleep(1)  # let the daemon's start-up work (Caddy, first requests) settle
            rss = [("before", rss_bytes(disco.pid))]
            results: dict[str, dict[str, Phase]] = {}
            for label, make in (("reads", read_request), ("writes", write_request)):
                results[label] = {}
                # Baseline first, then disco, close together: machine noise hits both alike.
                for target in (baseline, disco):
                    print(f"measuring {label} against {target.name} ...", flush=True)
                    results[label][target.name] = measure(target, make, args)
                rss.append((f"after {label}", rss_bytes(disco.pid)))
        print_report(results, rss, args)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=50, help="concurrent keep-alive connections")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each measured phase")
    parser.add_argument("--max-requests", type=int, default=20000, help="cap on requests per phase")
    parser.add_argument("--httpx", action="store_true", help="use httpx.AsyncClient instead of raw sockets")
    parser.add_argument("--serve-baseline", nargs=2, metavar=("PORT", "BODY_FILE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not (1 <= args.clients <= 500 and 0 < args.seconds <= 300 and 1 <= args.max_requests <= 1_000_000):
        parser.error("keep --clients 1..500, --seconds up to 300, --max-requests up to 1,000,000")
    return args


def main() -> int:
    args = parse_args()
    if args.serve_baseline:
        serve_baseline(int(args.serve_baseline[0]), Path(args.serve_baseline[1]))
        return 0
    return run_measurement(run_bench, args, "disco-bench-api-")


if __name__ == "__main__":
    sys.exit(main())
