"""Does a `git push` deploy drop or slow down requests? Zero downtime under steady keep-alive load.

The script starts its own `disco serve` (temp data dir, free loopback ports, an instance name
of its own), deploys v1 of a busybox httpd app (FROM scratch, the tests' app), then starts
--clients threads. Each has its own keep-alive httpx.Client, makes NO retries, and requests
the app through Caddy (127.0.0.1, Host: myapp.localhost) at --rate requests per second with
a little jitter. Then, after a quiet period, --deploys pushes run one after another: new
commits v2, v3, ... that change the served text. Deploy number --fail-at (default: the
middle one, 5 of 10) gets a health check
that never passes (disco.toml `health = "/missing"`, `health_timeout = 3`): Disco must refuse
it while the previous version keeps serving. A quiet period follows the last deploy.

Every request is recorded (start time, ok or error, latency, body). The report shows:
- total requests and errors (non-200 or exception; target 0), with the first error messages;
- p50/p99/max latency during the deploys against the quiet periods before and after, measured
  in the same run (the baseline), as a ratio;
- per deploy: push time, its outcome in the deployment record, when its version was first
  served, and how long old and new answered side by side (start-first rollout);
- the versions served in order, checking that the failed version was never served and that no
  request made after a deploy went live got an older version.
The figures are also written to bench/results/zero_downtime.json.

The exit status is 0 whatever was measured, 1 if something broke. The daemon, its Docker
objects and the temp dir are removed at the end, also on Ctrl-C.

Run by hand, from the repo root (never from the tests; about 2 minutes with the defaults):

    .venv/bin/python bench/zero_downtime.py [--clients 8] [--deploys 10] [--rate 30]
                                            [--fail-at N] [--quiet 5]
"""

from __future__ import annotations

import argparse
import random
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from disco_harness import (
    APP_HOST,
    HEALTHY_TOML,
    NEVER_HEALTHY_TOML,
    PUSH_TIMEOUT_SECONDS,
    Daemon,
    PushResult,
    body_of,
    commit_version,
    describe_machine,
    keep_signals_for_main_thread,
    ms,
    percentile,
    push,
    running_daemon,
    run_measurement,
    version_of,
    wait_for_body,
    write_results,
)

REQUEST_TIMEOUT_SECONDS = 10
# A client's pause varies by this share around 1/rate, so the clients do not fire in lockstep.
JITTER = 0.33
CLIENT_STOP_SECONDS = REQUEST_TIMEOUT_SECONDS + 5
SHOWN_ERRORS = 5


@dataclass(frozen=True)
class Request:
    client: int
    started: float  # time.monotonic()
    latency: float  # seconds
    ok: bool
    body: str
    error: str  # empty when ok


@dataclass(frozen=True)
class Deploy:
    version: int
    should_fail: bool
    result: PushResult
    record: dict  # the deployment's row, read after the push returned


# -- load --------------------------------------------------------------------------------------


class LoadClients:
    """`count` threads, each with its own keep-alive client, requesting at a steady rate."""

    def __init__(self, daemon: Daemon, count: int, rate: float, max_seconds: float) -> None:
        self.url = daemon.app_url()
        self.interval = 1 / rate
        # Bounded twice: by time, and by how many requests that time can hold at this rate.
        self.deadline = time.monotonic() + max_seconds
        self.max_requests = int(max_seconds * rate) + 1
        self.requests: list[list[Request]] = [[] for _ in range(count)]
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(n,), name=f"client-{n}", daemon=True)
                         for n in range(count)]

    def __enter__(self) -> LoadClients:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(CLIENT_STOP_SECONDS)

    def all_requests(self) -> list[Request]:
        return sorted((r for per_client in self.requests for r in per_client), key=lambda r: r.started)

    def _run(self, number: int) -> None:
        keep_signals_for_main_thread()
        recorded = self.requests[number]
        jitter = random.Random(number)
        # httpx makes no retries by default (transport retries=0); the pool keeps the connection.
        with httpx.Client(timeout=REQUEST_TIMEOUT_SECONDS, headers={"Host": APP_HOST}) as client:
            next_at = time.monotonic() + jitter.uniform(0, self.interval)
            while not self._stop.is_set() and len(recorded) < self.max_requests and time.monotonic() < self.deadline:
                self._stop.wait(max(0.0, next_at - time.monotonic()))
                if self._stop.is_set():
                    break
                recorded.append(self._one_request(client, number))
                # A steady rate: the next request is due one interval after this one was due,
                # not after it finished (but never a burst to catch up after a slow one).
                next_at = max(next_at + self.interval * jitter.uniform(1 - JITTER, 1 + JITTER), time.monotonic())

    def _one_request(self, client: httpx.Client, number: int) -> Request:
        started = time.monotonic()
        try:
            response = client.get(self.url)
            latency = time.monotonic() - started
            if response.status_code == 200:
                return Request(number, started, latency, True, response.text, "")
            return Request(number, started, latency, False, response.text,
                           f"HTTP {response.status_code}: {response.text[:100]!r}")
        except httpx.HTTPError as err:
            return Request(number, started, time.monotonic() - started, False, "", f"{type(err).__name__}: {err}")


# -- the run -----------------------------------------------------------------------------------


def deploy_versions(repo: Path, daemon: Daemon, deploys: int, fail_at: int) -> list[Deploy]:
    """Push v2, v3, ... one after another; deploy number `fail_at` (1-based) never gets healthy."""
    done = []
    for index in range(1, deploys + 1):
        version = index + 1
        should_fail = index == fail_at
        commit_version(repo, version, NEVER_HEALTHY_TOML if should_fail else HEALTHY_TOML)
        records_before = len(daemon.deployments())
        result = push(daemon, repo)
        records = daemon.deployments()
        # A push that never reached the deploy step (SSH or git failed) leaves no record of its own.
        record = records[-1] if len(records) > records_before else {
            "status": "no record", "reason": f"push failed before deploying: {result.tail(1)}"}
        outcome = "live" if record["status"] == "live" else f"{record['status']}: {record['reason'][:80]}"
        print(f"  deploy {index:2}: v{version} push exit {result.returncode} in {result.seconds:.1f} s, {outcome}",
              flush=True)
        done.append(Deploy(version, should_fail, result, record))
    return done


def measure(args: argparse.Namespace, workdir: Path) -> None:
    print(f"zero-downtime bench: {args.clients} clients x {args.rate:g} req/s (keep-alive, no retries), "
          f"{args.deploys} deploys" + (f", deploy {args.fail_at} never healthy" if args.fail_at else "")
          + f", {args.quiet:g} s quiet before and after")
    print(f"machine: {describe_machine()}")
    with running_daemon(workdir) as daemon:
        print(f"daemon: instance {daemon.instance}, http port {daemon.http_port}", flush=True)
        repo = workdir / "app"
        commit_version(repo, 1)
        first = push(daemon, repo)
        if first.returncode != 0:
            raise RuntimeError(f"the first deploy failed:\n{first.tail()}\n{daemon.log_tail()}")
        wait_for_body(daemon, body_of(1))
        max_seconds = 2 * args.quiet + args.deploys * PUSH_TIMEOUT_SECONDS + 60
        with LoadClients(daemon, args.clients, args.rate, max_seconds) as load:
            time.sleep(args.quiet)
            deploys = deploy_versions(repo, daemon, args.deploys, args.fail_at)
            time.sleep(args.quiet)
        report(load.all_requests(), deploys)


# -- the report --------------------------------------------------------------------------------


def latency_figures(requests: list[Request]) -> dict[str, float | None]:
    latencies = [r.latency for r in requests if r.ok]
    return {"requests": len(requests), "p50_seconds": percentile(latencies, 0.5),
            "p99_seconds": percentile(latencies, 0.99), "max_seconds": max(latencies) if latencies else None}


def latency_row(name: str, requests: list[Request], baseline: list[Request] | None = None) -> str:
    latencies = [r.latency for r in requests if r.ok]
    p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
    row = (f"  {name:<16} {len(requests):>8} {ms(p50):>10} {ms(p99):>10} "
           f"{ms(max(latencies) if latencies else None):>10}")
    if baseline:
        base = [r.latency for r in baseline if r.ok]
        base50, base99 = percentile(base, 0.5), percentile(base, 0.99)
        if p50 and p99 and base50 and base99:
            row += f"   {p50 / base50:5.2f}x {p99 / base99:5.2f}x"
    return row


def pass_or_miss(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def report(requests: list[Request], deploys: list[Deploy]) -> None:
    first_push, last_push = deploys[0].result.started, deploys[-1].result.finished
    during = [r for r in requests if first_push <= r.started <= last_push]
    quiet = [r for r in requests if r.started < first_push or r.started > last_push]
    errors = [r for r in requests if not r.ok]
    load_started = requests[0].started if requests else first_push
    seconds = (requests[-1].started - load_started) if requests else 0.0

    print()
    print("deploys (times from each push's start):")
    print(f"  {'#':>2} {'version':>7} {'expected':>8} {'push':>7} {'exit':>4}  {'status':<8} {'new served':>10} "
          f"{'old+new':>8} {'requests':>8} {'errors':>6}  reason")
    live_versions = [1]
    for index, deploy in enumerate(deploys, 1):
        start, end = deploy.result.started, deploy.result.finished
        in_push = [r for r in requests if start <= r.started <= end]
        seen = [r.started for r in requests if r.ok and version_of(r.body) == deploy.version]
        previous = live_versions[-1]
        old_seen = [r.started for r in requests if r.ok and version_of(r.body) == previous and r.started >= start]
        first_new = f"{seen[0] - start:.2f} s" if seen else "never"
        overlap = (f"{max(0.0, max(old_seen) - seen[0]):.2f} s" if seen and old_seen else "-")
        if deploy.record["status"] == "live":
            live_versions.append(deploy.version)
        print(f"  {index:>2} {'v' + str(deploy.version):>7} {'fail' if deploy.should_fail else 'live':>8} "
              f"{deploy.result.seconds:>6.1f}s {deploy.result.returncode:>4}  {deploy.record['status']:<8} "
              f"{first_new:>10} {overlap:>8} {len(in_push):>8} {sum(not r.ok for r in in_push):>6}  "
              f"{deploy.record['reason'][:90]}")

    unexpected = [d.version for d in deploys if (d.record["status"] == "live") == d.should_fail]
    print(f"  outcomes as expected: {pass_or_miss(not unexpected)}"
          + (f" (not as expected: {', '.join(f'v{v}' for v in unexpected)})" if unexpected else ""))

    print()
    print(f"requests: {len(requests)} in {seconds:.1f} s ({len(requests) / max(seconds, 1e-9):.0f}/s), "
          f"errors: {len(errors)} (target 0) {pass_or_miss(not errors)}")
    for error in errors[:SHOWN_ERRORS]:
        print(f"  at +{error.started - load_started:.2f} s, client {error.client}, "
              f"after {error.latency * 1000:.0f} ms: {error.error}")
    if len(errors) > SHOWN_ERRORS:
        print(f"  ... and {len(errors) - SHOWN_ERRORS} more")

    print()
    print(f"latency of ok requests    {'requests':>8} {'p50':>10} {'p99':>10} {'max':>10}   p50 and p99 vs quiet")
    print(latency_row("quiet (baseline)", quiet))
    print(latency_row("during deploys", during, quiet))

    print()
    versions = report_versions(requests, deploys, live_versions)
    write_results("zero_downtime", {
        "requests": len(requests), "seconds": seconds, "errors": len(errors),
        "first_errors": [e.error for e in errors[:SHOWN_ERRORS]],
        "outcomes_as_expected": not unexpected,
        "deploys": [{"version": d.version, "expected": "fail" if d.should_fail else "live",
                     "push_seconds": d.result.seconds, "exit": d.result.returncode, "status": d.record["status"]}
                    for d in deploys],
        "latency_quiet": latency_figures(quiet), "latency_during_deploys": latency_figures(during),
        **versions,
    })


def report_versions(requests: list[Request], deploys: list[Deploy], live_versions: list[int]) -> dict[str, object]:
    """Print the versions served; return the checks as figures."""
    served = [version_of(r.body) for r in requests if r.ok]
    first_seen: dict[int, float] = {}
    for request in requests:
        version = version_of(request.body) if request.ok else None
        if version is not None:
            first_seen.setdefault(version, request.started)
    order = sorted(first_seen, key=first_seen.__getitem__)
    unexpected = sorted({r.body[:40] for r in requests if r.ok and version_of(r.body) is None})
    print("versions served, in order of first appearance: " + " ".join(f"v{v}" for v in order))
    print("  deploys that went live, in order:            " + " ".join(f"v{v}" for v in live_versions))
    print(f"  in the same order: {pass_or_miss(order == live_versions)}")

    failed = [d.version for d in deploys if d.record["status"] != "live"]
    failed_served = sum(v in failed for v in served)
    print(f"  failed version(s) {', '.join(f'v{v}' for v in failed) or 'none'}: "
          f"served {failed_served} times {pass_or_miss(failed_served == 0)}")

    # Once a push returned with its deploy live, every later request must get that version or newer.
    regressions = []
    for deploy in deploys:
        if deploy.record["status"] != "live":
            continue
        for request in requests:
            version = version_of(request.body) if request.ok else None
            if request.started > deploy.result.finished and version is not None and version < deploy.version:
                regressions.append((deploy.version, version, request.started - deploy.result.finished))
    print(f"  requests made after a deploy went live that got an older version: {len(regressions)} "
          f"{pass_or_miss(not regressions)}")
    for live, got, after in regressions[:SHOWN_ERRORS]:
        print(f"    v{got} served {after:.2f} s after v{live} went live")
    if unexpected:
        print(f"  unexpected bodies: {unexpected}")
    return {"served_in_order": order == live_versions, "failed_version_served": failed_served,
            "older_version_after_live": len(regressions), "unexpected_bodies": unexpected}


# -- entry -------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8, help="keep-alive client threads (default 8)")
    parser.add_argument("--deploys", type=int, default=10, help="deploys in a row (default 10)")
    parser.add_argument("--rate", type=float, default=30, help="requests per second per client (default 30)")
    parser.add_argument("--fail-at", type=int, default=None,
                        help="which deploy (1-based) never gets healthy; 0 for none (default: the middle one)")
    parser.add_argument("--quiet", type=float, default=5, help="seconds of load before and after the deploys")
    args = parser.parse_args(argv)
    if args.fail_at is None:
        args.fail_at = args.deploys // 2
    if not (1 <= args.clients <= 64 and 1 <= args.deploys <= 50 and 0.1 <= args.rate <= 200
            and 0 <= args.fail_at <= args.deploys and 1 <= args.quiet <= 120):
        parser.error("out of range: clients 1-64, deploys 1-50, rate 0.1-200, fail-at 0-deploys, quiet 1-120")
    return args


def main(argv: list[str] | None = None) -> int:
    return run_measurement(measure, parse_args(argv), "disco-bench-zd-")


if __name__ == "__main__":
    sys.exit(main())
