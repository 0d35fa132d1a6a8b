"""How fast and how heavy are the dashboard's pages with 100 projects and 1,000 deployments?

The script starts its own `disco serve` (temp data dir, free loopback ports, an instance name of
its own, admin "bench" with the API key `disco init` prints) and fills it:

  projects     p000..p099, written straight into the daemon's store (runtime/store.py) while it
               runs, each with 10 finished deployments: mostly replaced, one live, about one in
               four failed with a reason, a few rollbacks; every tenth project's newest deploy
               failed (its previous one is live). Also 5 env vars each, a custom domain on every
               fifth, two deployers with grants, and an audit record per project and deployment.
  repos        a real bare git repo per project (git fast-import, one commit per deployment),
               so the pages show commit subjects and pay for reading them, as on a real server.
               The deployment log files are absent (the pages do not read them: a deployment's
               output comes over SSE).
  p050         really pushed: its deployments #1..#9 are records of commits of the tests'
               busybox httpd app, and #10 is a real `git push` of it, built and live, so its
               page has a running service and CPU and memory figures from Docker.

It signs in through the dashboard's own /sign-in form (GET for the double-submit cookie and
field, POST with the API key) and measures each page as that admin:

  /  /projects/p050  /projects/p050/deployments/5
  and, when this build has them (a 404 means it has not): /projects/p050/settings,
  /projects/p050/logs, /team, /team/audit, /server

  latency  --requests requests (default 500) after --warmup unmeasured ones, from 1 client and
           from --clients (default 10) at once, each client one keep-alive HTTP/1.1 connection
           sending a prebuilt request (the load generator of bench/api.py): p50, p99, max.
  weight   the page's HTML plus every same-origin stylesheet and script it references
           (<link href>, <script src>) and, recursively, their ES module imports and CSS
           @import/url(): bytes as served, against the target of 100 KB (100,000 bytes).

Every page is also measured against a baseline in the same run, on this same noisy machine
(the ratios are what compare across runs): a minimal Starlette + Jinja2 app served by uvicorn
with the daemon's settings (cli/serve.py) in a separate process, answering the same path with a
trivial template whose text is the very HTML the daemon answered for that page (so the bodies
are the same size, with the same headers), without authentication, store or Docker. Phases
alternate baseline, disco, close together, so noise hits both alike.

It prints a row per page and number of clients: disco's p50/p99/max, the baseline's p50/p99,
the disco/baseline ratios, the daemon's CPU time per request (steadier than latency on a busy
machine), and PASS or MISS against the target p99 < 50 ms; then the weights with PASS or MISS,
and a count of the pages that meet each target. With several clients at once a request also
waits for the pages of the others (one event loop renders one page at a time), so that row
shows how the latency grows under load; the target is read from the single client's row. The same figures go to bench/results/dashboard.json. The exit status
is 0 whatever was measured, 1 if something broke. The daemon, its Docker objects (p050's service
and image, its Caddy), the baseline server and the temp dir are removed at the end, also on
Ctrl-C. All traffic goes to 127.0.0.1.

Run by hand, from the repo root (never from the tests; a minute or two with the defaults):

    .venv/bin/python bench/dashboard.py [--requests 500] [--warmup 50] [--clients 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import httpx

from disco_harness import (
    Daemon,
    RawConnection,
    commit_version,
    cpu_seconds,
    describe_machine,
    percentile,
    push,
    run,
    run_measurement,
    running_baseline_server,
    running_daemon,
    write_results,
)
from api.auth import SESSION_COOKIE  # disco_harness put the repo root on sys.path
from runtime.store import DeploymentStatus, Store

HOST = "127.0.0.1"
PROJECT_COUNT = 100
DEPLOYMENTS_PER_PROJECT = 10
PUSHED = "p050"  # the project that is really deployed
REQUIRED_PAGES = ("/", f"/projects/{PUSHED}", f"/projects/{PUSHED}/deployments/5")
# Pages other branches add: measured when this build answers them, skipped on a 404.
OPTIONAL_PAGES = (f"/projects/{PUSHED}/settings", f"/projects/{PUSHED}/logs", "/team", "/team/audit", "/server")
P99_TARGET_SECONDS = 0.050
WEIGHT_TARGET_BYTES = 100_000
LISTEN_TIMEOUT_SECONDS = 30
# On top of what a phase should take: a server that stops answering cannot hang the script.
PHASE_TIMEOUT_SECONDS = 300
SEED = 20250109

FAILURE_REASONS = (
    "the build failed: RUN npm ci exited with 1 (npm ERR! code ERESOLVE)",
    "web did not become healthy within 60 s: GET / on port 8000 answered 502",
    "the build failed: COPY requirements.txt: file not found in the build context",
    "worker exited with 137 while starting (out of memory: the limit is 1G)",
    "disco.toml: services.web.port must be a number from 1 to 65535, not \"80a\"",
)
SUBJECT_VERBS = ("Fix", "Add", "Remove", "Speed up", "Refactor", "Document", "Test", "Rename", "Log", "Cache")
SUBJECT_THINGS = ("the login form's error message", "pagination of the orders list", "a retry on webhook delivery",
                  "the nightly export", "the health check endpoint", "CSV upload of contacts",
                  "the settings page layout", "rate limits on the public API", "the invoice PDF footer",
                  "stale sessions after a password change")


# -- filling the daemon ------------------------------------------------------------------------


def subject(rng: random.Random, project: int, number: int) -> str:
    return f"{rng.choice(SUBJECT_VERBS)} {rng.choice(SUBJECT_THINGS)} (#{project * 100 + number})"


def make_repo(repo: Path, subjects: list[str]) -> list[str]:
    """A bare repo with one commit per subject on main (git fast-import: one process, no
    working tree); returns the commits' shas, oldest first."""
    run(["git", "init", "-q", "--bare", "-b", "main", str(repo)])
    stream = []  # ASCII only, so `data <count>` counts characters and bytes alike
    for mark, text in enumerate(subjects, start=1):
        message = f"{text}\n\nA body line that the dashboard does not show.\n"
        readme = f"version {mark}\n"
        stream += ["commit refs/heads/main", f"mark :{mark}",
                   f"committer Bench <bench@example.com> {1_700_000_000 + mark * 3600} +0000",
                   f"data {len(message)}", message, "M 644 inline README", f"data {len(readme)}", readme]
    marks = repo / "bench-marks"
    run(["git", "fast-import", "--quiet", f"--export-marks={marks}"], cwd=repo, input="\n".join(stream) + "\n")
    shas = dict(line.split() for line in marks.read_text().splitlines())
    marks.unlink()
    return [shas[f":{mark}"] for mark in range(1, len(subjects) + 1)]


@dataclass(frozen=True)
class Planned:
    """One deployment record to write: what it ran and how it ended."""

    number: int
    sha: str
    status: DeploymentStatus
    reason: str = ""
    source: str = "push"
    rollback_of: int | None = None


def plan(index: int, shas: list[str], rng: random.Random) -> list[Planned]:
    """Finished deployments of one project, one per sha, oldest first: one live (the newest,
    or on every tenth project the one before a failed newest), about a quarter failed."""
    count = len(shas)
    live = count - 1 if index % 10 == 3 else count
    planned = []
    for number in range(1, count + 1):
        if number == live:
            planned.append(Planned(number, shas[number - 1], DeploymentStatus.LIVE))
        elif number == count or (index + number) % 4 == 0:
            planned.append(Planned(number, shas[number - 1], DeploymentStatus.FAILED, rng.choice(FAILURE_REASONS)))
        elif number > 3 and (index + number) % 7 == 0:  # a rollback to an older version, since replaced
            planned.append(Planned(number, shas[number - 3], DeploymentStatus.REPLACED, source="rollback",
                                   rollback_of=number - 2))
        else:
            planned.append(Planned(number, shas[number - 1], DeploymentStatus.REPLACED))
    return planned


def write_deployments(store: Store, project: str, planned: list[Planned], log_dir: Path, started: datetime,
                      rng: random.Random) -> None:
    """The records as the deployer leaves them, timed a few hours apart before `started`."""
    for p in planned:
        d = store.create_deployment(project, p.sha, "main", "bench", p.source, log_dir, rollback_of=p.rollback_of)
        created = started - timedelta(hours=6 * (len(planned) - p.number) + rng.random())
        build, start, health = rng.uniform(8, 90), rng.uniform(1, 5), rng.uniform(0.5, 8)
        took = build + start + health + 1
        store.update_deployment(
            project, d.number, status=p.status.value, reason=p.reason,
            web_port=0 if p.status == DeploymentStatus.FAILED else 8000,
            timings=json.dumps({"build": round(build, 2), "start": round(start, 2), "health": round(health, 2)}),
            created_at=created.isoformat(timespec="seconds"),
            finished_at=(created + timedelta(seconds=took)).isoformat(timespec="seconds"))
        store.audit("bench", "rollback" if p.source == "rollback" else "deploy", project, f"#{d.number}")


def fill(daemon: Daemon, app_shas: list[str]) -> None:
    """Every project, its repo and deployment records, straight into the running daemon's
    store (its caches follow the store's change counters); PUSHED gets records of the app's
    first commits only: its last one is pushed. A write at a time: the store reads a record
    back after writing it, on another connection, which could not see an open transaction."""
    rng = random.Random(SEED)
    started = datetime.now(UTC)
    store = Store(daemon.data_dir / "disco.sqlite3")
    repos, log_dir = daemon.data_dir / "repos", daemon.data_dir / "deployments"
    try:
        for name, role in (("dana", "deployer"), ("eli", "deployer")):
            store.add_user(name, role)
            store.audit("bench", "users:add", name, f"role={role}")
        for index in range(PROJECT_COUNT):
            name = f"p{index:03d}"
            store.add_project(name, "bench")
            store.audit("bench", "projects:create", name)
            if name == PUSHED:
                shas = app_shas[:DEPLOYMENTS_PER_PROJECT - 1]
                planned = [Planned(n, sha, DeploymentStatus.FAILED if n % 4 == 0 else DeploymentStatus.REPLACED,
                                   rng.choice(FAILURE_REASONS) if n % 4 == 0 else "")
                           for n, sha in enumerate(shas, start=1)]
            else:
                subjects = [subject(rng, index, n) for n in range(1, DEPLOYMENTS_PER_PROJECT + 1)]
                planned = plan(index, make_repo(repos / f"{name}.git", subjects), rng)
            write_deployments(store, name, planned, log_dir, started, rng)
            store.set_env(name, {f"VAR_{k}": f"value-{k}" for k in ("DATABASE_URL", "SECRET_KEY", "LOG_LEVEL",
                                                                     "SENTRY_DSN", "WORKERS")})
            store.audit("bench", "env:set", name, "DATABASE_URL, LOG_LEVEL, SECRET_KEY, SENTRY_DSN, WORKERS")
            if index % 5 == 0:
                store.add_domain(name, f"{name}.example.com")
                store.audit("bench", "domains:add", name, f"{name}.example.com")
            if index % 20 == 0:
                for user in ("dana", "eli"):
                    store.grant(user, name)
                    store.audit("bench", "users:grant", user, f"project={name}")
    finally:
        store.close()


def app_history(workdir: Path) -> tuple[Path, list[str]]:
    """The tests' busybox httpd app with one commit per deployment of PUSHED; its shas."""
    repo = workdir / "app"
    shas = []
    for version in range(1, DEPLOYMENTS_PER_PROJECT + 1):
        commit_version(repo, version)
        shas.append(run(["git", "rev-parse", "HEAD"], cwd=repo).stdout.strip())
    return repo, shas


def sign_in(daemon: Daemon) -> str:
    """Through the dashboard's own form: GET it (double-submit cookie and field), POST the key."""
    with httpx.Client(base_url=f"http://{HOST}:{daemon.api_port}", timeout=30) as client:
        form = client.get("/sign-in")
        found = re.search(r'name="csrf" value="([^"]+)"', form.text)
        if form.status_code != 200 or found is None:
            raise RuntimeError(f"GET /sign-in: HTTP {form.status_code} {form.text[:300]}")
        answer = client.post("/sign-in?next=/", data={"csrf": found.group(1), "key": daemon.api_key})
        token = client.cookies.get(SESSION_COOKIE)
        if answer.status_code != 303 or not token:
            raise RuntimeError(f"POST /sign-in: HTTP {answer.status_code} {answer.text[:300]}")
        return token


# -- a page's weight -------------------------------------------------------------------------


class References(HTMLParser):
    """The stylesheets and scripts a page loads: <link href> and <script src>."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "link" and values.get("href") and values.get("rel") in ("stylesheet", "modulepreload", "preload"):
            self.found.append(values["href"] or "")
        elif tag == "script" and values.get("src"):
            self.found.append(values["src"] or "")


# Static `import ... from "x"`, `export ... from "x"`, bare `import "x"` and `import("x")`.
JS_IMPORT = re.compile(r"""(?:\bimport|\bexport)\b[^"';]*?\bfrom\s*["']([^"']+)["']|\bimport\s*\(?\s*["']([^"']+)["']""")
CSS_URL = re.compile(r"""@import\s+["']([^"']+)["']|url\(\s*["']?([^"')]+)["']?\s*\)""")


def referenced(url: str, body: bytes) -> list[str]:
    """What a script or stylesheet pulls in itself."""
    text = body.decode(errors="replace")
    pattern = JS_IMPORT if url.endswith((".js", ".mjs")) else CSS_URL if url.endswith(".css") else None
    if pattern is None:
        return []
    return [a or b for a, b in pattern.findall(text) if not (a or b).startswith("data:")]


@dataclass
class Weight:
    html_bytes: int
    files: dict[str, int] = field(default_factory=dict)  # same-origin path -> bytes
    elsewhere: list[str] = field(default_factory=list)  # references to other origins (there should be none)

    @property
    def total(self) -> int:
        return self.html_bytes + sum(self.files.values())


def page_weight(client: httpx.Client, path: str, html: bytes) -> Weight:
    """The HTML plus every same-origin file it loads, each counted once, as served."""
    origin = str(client.base_url).rstrip("/")
    parser = References()
    parser.feed(html.decode(errors="replace"))
    weight = Weight(len(html))
    pending = [urljoin(origin + path, ref) for ref in parser.found]
    while pending:
        url = pending.pop()
        parts = urlsplit(url)
        if f"{parts.scheme}://{parts.netloc}" != origin:
            weight.elsewhere.append(url)
            continue
        if parts.path in weight.files:
            continue
        answer = client.get(parts.path)
        if answer.status_code != 200:
            raise RuntimeError(f"{path} loads {parts.path}, which answers HTTP {answer.status_code}")
        weight.files[parts.path] = len(answer.content)
        pending += [urljoin(url, ref) for ref in referenced(parts.path, answer.content)]
    return weight


# -- the baseline ----------------------------------------------------------------------------


@contextmanager
def running_baseline(workdir: Path, bodies: dict[str, str]) -> Iterator[tuple[subprocess.Popen, int]]:
    """This script again, as `--serve-baseline`, in a process (and session) of its own."""
    bodies_path = workdir / "baseline_pages.json"
    bodies_path.write_text(json.dumps(bodies))
    with running_baseline_server(__file__, workdir, bodies_path, LISTEN_TIMEOUT_SECONDS) as running:
        yield running


def serve_baseline(port: int, bodies_path: Path) -> None:
    """Starlette + Jinja2 + uvicorn with the daemon's uvicorn settings, nothing else: each path
    renders a template that is the daemon's page as literal text, with the dashboard's headers."""
    import jinja2
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, PlainTextResponse, Response
    from starlette.routing import Route

    from api.web.pages import SECURITY_HEADERS

    bodies = json.loads(bodies_path.read_text())
    templates = jinja2.Environment(
        loader=jinja2.DictLoader({path: "{% raw %}" + html + "{% endraw %}" for path, html in bodies.items()}),
        autoescape=True, undefined=jinja2.StrictUndefined)

    async def render(request: Request) -> Response:
        if request.url.path not in bodies:
            return PlainTextResponse("Not Found", status_code=404)
        body = templates.get_template(request.url.path).render(path=request.url.path)
        return HTMLResponse(body, headers=SECURITY_HEADERS)

    app = Starlette(routes=[Route("/{path:path}", render, methods=["GET"])])
    # As cli/serve.py configures the daemon's uvicorn (same HTTP and loop implementations: auto).
    uvicorn.run(app, host=HOST, port=port, log_level="warning", lifespan="off", timeout_graceful_shutdown=10)


# -- latency ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    name: str  # "disco" or "baseline"
    port: int
    pid: int  # the server process, for its CPU time


@dataclass
class Phase:
    """What one page, target and number of clients measured."""

    latencies: list[float] = field(default_factory=list)  # seconds, successful requests only
    errors: int = 0
    first_error: str = ""
    wall_seconds: float = 0.0
    server_cpu_seconds: float = 0.0  # of the server process, all its threads, during the phase

    @property
    def server_cores(self) -> float:
        return self.server_cpu_seconds / self.wall_seconds if self.wall_seconds else 0.0

    @property
    def cpu_per_request(self) -> float | None:
        """The server's CPU time per answered request: what a page costs, less noisy than its
        latency on a busy machine (background work of the daemon included)."""
        return self.server_cpu_seconds / len(self.latencies) if self.latencies else None

    def p(self, share: float) -> float | None:
        return percentile(self.latencies, share)

    def note_error(self, message: str) -> None:
        self.errors += 1
        if not self.first_error:
            self.first_error = message[:300]


def request_bytes(port: int, path: str, token: str) -> bytes:
    """A browser's GET of a page, as one prebuilt request: the same bytes for disco and baseline."""
    return (f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nAccept: text/html\r\n"
            f"Cookie: {SESSION_COOKIE}={token}\r\n\r\n").encode()


async def client_loop(port: int, data: bytes, budget: Iterator[int], phase: Phase | None) -> None:
    """One client: requests back to back on its own connection while the shared budget lasts.
    `phase` None: a warm-up, nothing recorded."""
    connection = RawConnection(port)
    try:
        for _ in budget:
            started = time.perf_counter()
            try:
                status, answer = await connection.request(data)
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, RuntimeError) as err:
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


async def drive(port: int, data: bytes, clients: int, requests: int, phase: Phase | None) -> float:
    """`clients` loops at once until `requests` requests were answered in all; the wall time."""
    budget = iter(range(requests))  # shared: the loops together stop at the count
    started = time.monotonic()
    async with asyncio.timeout(PHASE_TIMEOUT_SECONDS):
        await asyncio.gather(*(client_loop(port, data, budget, phase) for _ in range(clients)))
    return time.monotonic() - started


def measure(target: Target, path: str, token: str, clients: int, args: argparse.Namespace) -> Phase:
    data = request_bytes(target.port, path, token)
    asyncio.run(drive(target.port, data, clients, args.warmup, None))
    phase = Phase()
    before = cpu_seconds(target.pid)
    phase.wall_seconds = asyncio.run(drive(target.port, data, clients, args.requests, phase))
    phase.server_cpu_seconds = cpu_seconds(target.pid) - before
    return phase


# -- the report ------------------------------------------------------------------------------


def ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f}"


def ratio(disco: float | None, baseline: float | None) -> float | None:
    return disco / baseline if disco and baseline else None


def times(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}x"


def kb(count: int) -> str:
    return f"{count / 1000:.1f}"


def pass_or_miss(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def meets_p99(phase: Phase) -> bool:
    p99 = phase.p(0.99)
    return p99 is not None and p99 < P99_TARGET_SECONDS and not phase.errors


Results = dict[str, dict[int, dict[str, Phase]]]  # page -> clients -> target name -> phase


def print_report(results: Results, weights: dict[str, Weight], absent: list[str], args: argparse.Namespace) -> None:
    width = max(len(page) for page in results) + 2
    print(f"\nlatency, ms ({args.requests} requests per row after {args.warmup} unmeasured; "
          f"baseline: Starlette + Jinja2 answering the same HTML)")
    print(f"{'page':<{width}}{'clients':>7}{'p50':>8}{'p99':>8}{'max':>8}{'base p50':>10}{'base p99':>10}"
          f"{'p50 x':>8}{'p99 x':>8}{'cpu/req':>9}{'cores':>7}{'errors':>8}  p99 < {P99_TARGET_SECONDS * 1000:.0f} ms")
    for page, by_clients in results.items():
        for clients, by_target in by_clients.items():
            disco, base = by_target["disco"], by_target["baseline"]
            print(f"{page:<{width}}{clients:>7}{ms(disco.p(0.5)):>8}{ms(disco.p(0.99)):>8}"
                  f"{ms(max(disco.latencies, default=None)):>8}{ms(base.p(0.5)):>10}{ms(base.p(0.99)):>10}"
                  f"{times(ratio(disco.p(0.5), base.p(0.5))):>8}{times(ratio(disco.p(0.99), base.p(0.99))):>8}"
                  f"{ms(disco.cpu_per_request):>9}{disco.server_cores:>7.2f}{disco.errors + base.errors:>8}  "
                  f"{pass_or_miss(meets_p99(disco))}")
    print("(x: disco / baseline; cpu/req: the daemon's CPU ms per request and cores: the share of a core it\n"
          " got meanwhile, all its threads; with several clients a request also waits for the others' pages:\n"
          " one event loop renders one page at a time)")
    for page, by_clients in results.items():
        for clients, by_target in by_clients.items():
            for name, phase in by_target.items():
                if phase.first_error:
                    print(f"first error, {page} {clients} client(s) {name}: {phase.first_error}")

    print("\nweight, KB (1 KB = 1,000 bytes; as served, uncompressed)")
    print(f"{'page':<{width}}{'html':>8}{'css+js':>8}{'total':>8}  files  < {WEIGHT_TARGET_BYTES // 1000} KB")
    for page, weight in weights.items():
        print(f"{page:<{width}}{kb(weight.html_bytes):>8}{kb(weight.total - weight.html_bytes):>8}{kb(weight.total):>8}"
              f"  {len(weight.files):>5}  {pass_or_miss(weight.total < WEIGHT_TARGET_BYTES and not weight.elsewhere)}"
              + (f"  (loads from elsewhere: {', '.join(weight.elsewhere)})" if weight.elsewhere else ""))
    every_file = sorted({(path, size) for w in weights.values() for path, size in w.files.items()})
    print("  files: " + ", ".join(f"{path} {kb(size)}" for path, size in every_file))
    if absent:
        print(f"\nnot on this build (HTTP 404), not measured: {', '.join(absent)}")
    print("\ntargets")
    for clients in (1, args.clients):
        missed = [page for page, by_clients in results.items() if not meets_p99(by_clients[clients]["disco"])]
        print(f"  {pass_or_miss(not missed)}  p99 under {P99_TARGET_SECONDS * 1000:.0f} ms from {clients} client(s): "
              f"{len(results) - len(missed)} of {len(results)} pages" + (f" (missed: {', '.join(missed)})" if missed else "")
              + ("" if clients == 1 else " (a load test, beyond the target)"))
    heavy = [page for page, weight in weights.items() if weight.total >= WEIGHT_TARGET_BYTES or weight.elsewhere]
    print(f"  {pass_or_miss(not heavy)}  weight under {WEIGHT_TARGET_BYTES // 1000} KB, nothing from elsewhere: "
          f"{len(weights) - len(heavy)} of {len(weights)} pages" + (f" (missed: {', '.join(heavy)})" if heavy else ""))
    write_results("dashboard", figures(results, weights, absent, args))


def figures(results: Results, weights: dict[str, Weight], absent: list[str], args: argparse.Namespace) -> dict:
    """What print_report printed, as numbers."""
    def rounded(value: float | None, scale: float = 1.0) -> float | None:
        return None if value is None else round(value * scale, 3)

    pages: dict[str, object] = {}
    for page, by_clients in results.items():
        entry: dict[str, object] = {"weight_bytes": weights[page].total, "html_bytes": weights[page].html_bytes,
                                    "files": weights[page].files}
        for clients, by_target in by_clients.items():
            for name, phase in by_target.items():
                entry[f"{name}_{clients}_clients"] = {
                    "ok": len(phase.latencies), "errors": phase.errors,
                    "p50_ms": rounded(phase.p(0.5), 1000), "p99_ms": rounded(phase.p(0.99), 1000),
                    "max_ms": rounded(max(phase.latencies, default=None), 1000),
                    "server_cores": round(phase.server_cores, 3),
                    "server_cpu_ms_per_request": rounded(phase.cpu_per_request, 1000)}
            disco, base = by_target["disco"], by_target["baseline"]
            entry[f"ratio_{clients}_clients"] = {"p50": rounded(ratio(disco.p(0.5), base.p(0.5))),
                                                 "p99": rounded(ratio(disco.p(0.99), base.p(0.99)))}
        pages[page] = entry
    return {"requests": args.requests, "warmup": args.warmup, "clients": args.clients,
            "projects": PROJECT_COUNT, "deployments": PROJECT_COUNT * DEPLOYMENTS_PER_PROJECT,
            "p99_target_ms": P99_TARGET_SECONDS * 1000, "weight_target_bytes": WEIGHT_TARGET_BYTES,
            "not_on_this_build": absent, "pages": pages}


# -- main ------------------------------------------------------------------------------------


def pages_of_this_build(client: httpx.Client) -> tuple[dict[str, bytes], list[str]]:
    """Each page's HTML as the daemon answers it now; the optional pages it answers 404 for."""
    found, absent = {}, []
    for path in (*REQUIRED_PAGES, *OPTIONAL_PAGES):
        answer = client.get(path)
        if answer.status_code == 404 and path in OPTIONAL_PAGES:
            absent.append(path)
        elif answer.status_code != 200:
            raise RuntimeError(f"GET {path}: HTTP {answer.status_code} {answer.text[:500]}")
        else:
            found[path] = answer.content
    return found, absent


def run_bench(args: argparse.Namespace, workdir: Path) -> None:
    print(f"Disco's dashboard with {PROJECT_COUNT} projects and {PROJECT_COUNT * DEPLOYMENTS_PER_PROJECT} "
          f"deployments: {args.requests} requests per page after {args.warmup} unmeasured, "
          f"from 1 and {args.clients} keep-alive clients")
    print(f"machine: {describe_machine()}")
    with running_daemon(workdir) as daemon:
        assert daemon.process is not None
        started = time.monotonic()
        app, app_shas = app_history(workdir)
        fill(daemon, app_shas)
        filled = time.monotonic()
        pushed = push(daemon, app)
        if pushed.returncode != 0:
            raise RuntimeError(f"git push of {PUSHED} exited {pushed.returncode}:\n{pushed.tail(20)}")
        print(f"daemon up (instance {daemon.instance}); store and repos filled in {filled - started:.1f} s; "
              f"{PUSHED} pushed and live in {pushed.seconds:.1f} s")
        token = sign_in(daemon)
        with httpx.Client(base_url=f"http://{HOST}:{daemon.api_port}", timeout=60,
                          cookies={SESSION_COOKIE: token}) as client:
            htmls, absent = pages_of_this_build(client)
            weights = {path: page_weight(client, path, html) for path, html in htmls.items()}
        with running_baseline(workdir, {path: html.decode() for path, html in htmls.items()}) as (base_process, base_port):
            disco = Target("disco", daemon.api_port, daemon.process.pid)
            baseline = Target("baseline", base_port, base_process.pid)
            results: Results = {}
            for path in htmls:
                results[path] = {}
                for clients in (1, args.clients):
                    print(f"measuring {path} with {clients} client(s) ...", flush=True)
                    # Baseline first, then disco, close together: machine noise hits both alike.
                    results[path][clients] = {target.name: measure(target, path, token, clients, args)
                                              for target in (baseline, disco)}
        print_report(results, weights, absent, args)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=500, help="measured requests per page, target and clients")
    parser.add_argument("--warmup", type=int, default=50, help="unmeasured requests before each measurement")
    parser.add_argument("--clients", type=int, default=10, help="concurrent keep-alive clients of the second round")
    parser.add_argument("--serve-baseline", nargs=2, metavar=("PORT", "BODIES_FILE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not (1 <= args.requests <= 100_000 and 0 <= args.warmup <= 10_000 and 2 <= args.clients <= 200):
        parser.error("keep --requests 1..100,000, --warmup 0..10,000, --clients 2..200")
    return args


def main() -> int:
    args = parse_args()
    if args.serve_baseline:
        serve_baseline(int(args.serve_baseline[0]), Path(args.serve_baseline[1]))
        return 0
    return run_measurement(run_bench, args, "disco-bench-dashboard-")


if __name__ == "__main__":
    sys.exit(main())
