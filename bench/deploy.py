"""How long from `git push` to the new version serving through Caddy, and how much of it is Disco?

The script starts its own `disco serve` (temp data dir, free loopback ports, an instance name
of its own) and deploys v1 of the tests' busybox httpd app (FROM scratch), unmeasured. Then
it repeats, --repeat times, interleaved (which goes first alternates, so machine noise hits
both alike):

  disco     commit a new text, `git push`, and poll the app through Caddy every 20 ms until it
            answers the new text. Split into: receive (push start until the deployment's first
            `remote: deployment #N of ...` line arrives; the record is created just before), then
            the record's own step timings (build, start, health, switch, cleanup), then "after"
            (the rest until the push returned: ref update, SSH and git exit). Besides the push's
            return, "served" is push start -> first response with the new text, and "finished"
            is push start -> the record's finished_at set (its cleanup done; polled every 20 ms
            after the push returned). A cleanup that was still running when the push returned
            does not count in "after"; the next repetition starts only once it is finished.
  baseline  the same app rolled out by hand, as the floor a tool on Swarm cannot beat:
            `DOCKER_BUILDKIT=1 docker build` (Debian's CLI) and
            `docker service update --image ... --detach=false` of a plain swarm service the
            script created like Disco creates its own: own overlay network, endpoint mode dnsrr,
            start-first updates with a 1 s monitor, init, and the same HEALTHCHECK (a bind-mounted
            /bin/busybox running nc against the task's overlay address, every 1 s).

It prints both split tables with medians, the ratios disco/baseline, and
"Disco overhead beyond build + app start" = median disco served - (median baseline build +
median baseline update), against its target (under 1.5 s) with PASS or MISS; the same sum is
shown with the push's return instead of the first new response. The figures are also written
to bench/results/deploy.json. The exit status is 0 whatever was measured, 1 if something broke. The daemon, its Docker objects, the baseline service,
network and images, and the temp dir are removed at the end, also on Ctrl-C.

Run by hand, from the repo root (never from the tests; about 1-2 minutes with the defaults):

    .venv/bin/python bench/deploy.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from disco_harness import (
    APP_HOST,
    DOCKER,
    Daemon,
    body_of,
    commit_version,
    describe_machine,
    ignore_signals,
    keep_signals_for_main_thread,
    push,
    running_daemon,
    run_measurement,
    wait_for_body,
    write_app,
    write_results,
)
from runtime.docker_engine import PROBE_BINARY, PROBE_PATH, health_command

OVERHEAD_TARGET_SECONDS = 1.5
APP_PORT = 8000
POLL_SECONDS = 0.02
SERVED_TIMEOUT_SECONDS = 60
DOCKER_TIMEOUT_SECONDS = 300
DISCO_STEPS = ("build", "start", "health", "switch", "cleanup")


# -- measurements ------------------------------------------------------------------------------


@dataclass(frozen=True)
class DiscoRun:
    receive: float
    steps: dict[str, float]  # the deployment record's timings
    pushed: float  # push start -> push returned
    served: float  # push start -> first response with the new text
    finished: float  # push start -> the record's finished_at seen (cleanup done)
    cleanup_in_push: bool  # the record was finished when the push returned

    @property
    def after(self) -> float:
        inside = [s for s in DISCO_STEPS if s != "cleanup" or self.cleanup_in_push]
        return self.pushed - self.receive - sum(self.steps.get(s, 0.0) for s in inside)

    def column(self, name: str) -> float:
        if name in DISCO_STEPS:
            return self.steps.get(name, 0.0)
        return float(getattr(self, name))


@dataclass(frozen=True)
class BaselineRun:
    build: float
    update: float

    @property
    def total(self) -> float:
        return self.build + self.update

    def column(self, name: str) -> float:
        return float(getattr(self, name))


class NewBodyWatcher:
    """Polls the app through Caddy in the background; remembers when `body` first came back."""

    def __init__(self, daemon: Daemon, body: str) -> None:
        self.url, self.body = daemon.app_url(), body
        self.seen_at: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wait(self, timeout: float) -> float | None:
        self._thread.join(timeout)
        self._stop.set()
        self._thread.join(5)
        return self.seen_at

    def _run(self) -> None:
        keep_signals_for_main_thread()
        deadline = time.monotonic() + SERVED_TIMEOUT_SECONDS + 300  # a push may take that long
        with httpx.Client(timeout=5, headers={"Host": APP_HOST}) as client:
            while not self._stop.is_set() and time.monotonic() < deadline:
                try:
                    if client.get(self.url).text == self.body:
                        self.seen_at = time.monotonic()
                        return
                except httpx.HTTPError:
                    pass  # not what we measure here (bench/zero_downtime.py does)
                self._stop.wait(POLL_SECONDS)


def disco_deploy(daemon: Daemon, repo: Path, version: int) -> DiscoRun:
    commit_version(repo, version)
    watcher = NewBodyWatcher(daemon, body_of(version))
    watcher.start()
    result = push(daemon, repo)
    finished_at, cleanup_in_push = wait_until_finished(daemon)
    seen_at = watcher.wait(SERVED_TIMEOUT_SECONDS)
    record = daemon.deployments()[-1]
    if result.returncode != 0 or record["status"] != "live" or seen_at is None:
        raise RuntimeError(f"deploy of v{version} did not go live (exit {result.returncode}, "
                           f"{record['status']} {record['reason']}, new text seen: {seen_at is not None}):\n"
                           f"{result.tail()}")
    # The deployment's first output line is written right after its record is created.
    received_at = result.first_line_time(f"deployment #{record['number']} of ")
    if received_at is None:
        raise RuntimeError(f"no 'deployment #{record['number']} of' line in the push output:\n{result.tail()}")
    return DiscoRun(receive=received_at - result.started, steps=json.loads(record["timings"]),
                    pushed=result.seconds, served=seen_at - result.started,
                    finished=finished_at - result.started, cleanup_in_push=cleanup_in_push)


def wait_until_finished(daemon: Daemon) -> tuple[float, bool]:
    """When the newest deployment's record got its finished_at (monotonic), polled from the
    push's return; and whether it had it already then."""
    deadline = time.monotonic() + SERVED_TIMEOUT_SECONDS
    first = True
    while time.monotonic() < deadline:
        if daemon.deployments()[-1]["finished_at"]:
            return time.monotonic(), first
        first = False
        time.sleep(POLL_SECONDS)
    raise RuntimeError(f"the deployment was not finished {SERVED_TIMEOUT_SECONDS} s after its push returned")


# -- the baseline: a plain swarm service rolled by hand ---------------------------------------


class Baseline:
    """A swarm service like Disco's, updated with the docker CLI; everything carries our label."""

    def __init__(self, workdir: Path, prefix: str) -> None:
        self.context = workdir / "baseline"
        self.label = f"disco-bench={prefix}"
        self.service = f"{prefix}-baseline"
        self.network = f"{prefix}-baseline-net"
        self.repository = f"{prefix}-baseline"

    def docker(self, *args: str) -> float:
        """Run the Debian docker CLI with BuildKit; return its wall-clock seconds."""
        started = time.monotonic()
        result = subprocess.run([DOCKER, *args], capture_output=True, text=True, timeout=DOCKER_TIMEOUT_SECONDS,
                                env={**os.environ, "DOCKER_BUILDKIT": "1"}, stdin=subprocess.DEVNULL)
        elapsed = time.monotonic() - started
        if result.returncode != 0:
            raise RuntimeError(f"docker {shlex.join(args)} exited {result.returncode}:\n{result.stdout[-1500:]}"
                               f"{result.stderr[-1500:]}")
        return elapsed

    def build(self, version: int) -> float:
        write_app(self.context, version)
        # The flags Disco's build uses (runtime/docker_engine.py Engine.build).
        return self.docker("build", "--progress=plain", "-t", self.tag(version), "--label", self.label,
                           "-f", str(self.context / "Dockerfile"), str(self.context))

    def tag(self, version: int) -> str:
        return f"{self.repository}:{version}"

    def create(self, version: int) -> None:
        self.docker("network", "create", "--driver", "overlay", "--attachable", "--label", self.label, self.network)
        # Disco's TCP check when disco.toml names no path; CMD-SHELL runs it via the image's /bin/sh.
        check = shlex.join(health_command(APP_PORT, None)[1:])
        self.docker(
            "service", "create", "--detach=false", "--quiet", "--name", self.service, "--label", self.label,
            "--network", self.network, "--endpoint-mode", "dnsrr", "--replicas", "1", "--init",
            "--mount", f"type=bind,source={PROBE_BINARY},target={PROBE_PATH},readonly",
            "--health-cmd", check, "--health-interval", "1s", "--health-timeout", "6s",
            "--health-retries", "3", "--health-start-period", "60s",
            "--restart-condition", "on-failure", "--restart-delay", "1s", "--stop-grace-period", "10s",
            "--update-order", "start-first", "--update-parallelism", "1", "--update-delay", "0s",
            "--update-failure-action", "rollback", "--update-monitor", "1s", "--update-max-failure-ratio", "0",
            self.tag(version),
        )

    def update(self, version: int) -> float:
        seconds = self.docker("service", "update", "--detach=false", "--quiet", "--image", self.tag(version),
                              self.service)
        state = self.update_state()
        if state != "completed":
            raise RuntimeError(f"baseline update to v{version} ended {state!r}, not completed")
        return seconds

    def update_state(self) -> str:
        result = subprocess.run([DOCKER, "service", "inspect", "--format", "{{if .UpdateStatus}}"
                                 "{{.UpdateStatus.State}}{{end}}", self.service],
                                capture_output=True, text=True, timeout=60)
        return result.stdout.strip()

    def remove(self) -> None:
        """Service, then (once its containers are gone) network and images; errors are reported."""
        subprocess.run([DOCKER, "service", "rm", self.service], capture_output=True, timeout=60)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and self._containers_left():
            time.sleep(0.5)
        while time.monotonic() < deadline:  # the network stays busy a moment after its tasks
            result = subprocess.run([DOCKER, "network", "rm", self.network], capture_output=True, text=True, timeout=60)
            if result.returncode == 0 or "not found" in result.stderr:
                break
            time.sleep(0.5)
        images = subprocess.run([DOCKER, "image", "ls", "-q", "--filter", f"label={self.label}"],
                                capture_output=True, text=True, timeout=60).stdout.split()
        if images:
            subprocess.run([DOCKER, "image", "rm", "-f", *sorted(set(images))], capture_output=True, timeout=120)

    def _containers_left(self) -> bool:
        result = subprocess.run([DOCKER, "ps", "-aq", "--filter", f"label=com.docker.swarm.service.name={self.service}"],
                                capture_output=True, text=True, timeout=60)
        return bool(result.stdout.strip())


@contextmanager
def baseline_service(workdir: Path, prefix: str, version: int) -> Iterator[Baseline]:
    baseline = Baseline(workdir, prefix)
    try:
        baseline.build(version)
        baseline.create(version)
        yield baseline
    finally:
        ignore_signals()
        baseline.remove()


def baseline_deploy(baseline: Baseline, version: int) -> BaselineRun:
    return BaselineRun(build=baseline.build(version), update=baseline.update(version))


# -- the run -----------------------------------------------------------------------------------


def measure(args: argparse.Namespace, workdir: Path) -> None:
    print(f"deploy bench: {args.repeat} interleaved repetitions of a Disco push deploy and a hand-made "
          "docker build + service update")
    print(f"machine: {describe_machine()}")
    with running_daemon(workdir) as daemon:
        print(f"daemon: instance {daemon.instance}, http port {daemon.http_port}", flush=True)
        repo = workdir / "app"
        commit_version(repo, 1)
        first = push(daemon, repo)
        if first.returncode != 0:
            raise RuntimeError(f"the first deploy failed:\n{first.tail()}\n{daemon.log_tail()}")
        wait_for_body(daemon, body_of(1))
        disco_runs: list[DiscoRun] = []
        baseline_runs: list[BaselineRun] = []
        with baseline_service(workdir, daemon.instance, 1) as baseline:
            for repetition in range(args.repeat):
                version = repetition + 2
                # Alternate who goes first, so a noisy moment does not always hit the same one.
                if repetition % 2 == 0:
                    disco_runs.append(disco_deploy(daemon, repo, version))
                    baseline_runs.append(baseline_deploy(baseline, version))
                else:
                    baseline_runs.append(baseline_deploy(baseline, version))
                    disco_runs.append(disco_deploy(daemon, repo, version))
                print(f"  repetition {repetition + 1}: disco served after {disco_runs[-1].served:.2f} s, "
                      f"baseline build + update {baseline_runs[-1].total:.2f} s", flush=True)
        report(disco_runs, baseline_runs)


# -- the report --------------------------------------------------------------------------------


def table(title: str, columns: list[str], runs: Sequence[DiscoRun | BaselineRun]) -> dict[str, float]:
    """Print one row per run and a median row; return the medians by column."""
    print(title)
    print("  " + f"{'run':<7}" + "".join(f"{c:>9}" for c in columns))
    for number, run in enumerate(runs, 1):
        print("  " + f"{number:<7}" + "".join(f"{run.column(c):>9.2f}" for c in columns))
    medians = {c: statistics.median(run.column(c) for run in runs) for c in columns}
    print("  " + f"{'median':<7}" + "".join(f"{medians[c]:>9.2f}" for c in columns))
    if len(runs) > 1:
        print("  " + f"{'stdev':<7}" + "".join(f"{statistics.stdev(run.column(c) for run in runs):>9.2f}"
                                                 for c in columns))
    return medians


def report(disco_runs: list[DiscoRun], baseline_runs: list[BaselineRun]) -> None:
    print()
    disco = table("Disco: git push -> new version served through Caddy (seconds)",
                  ["receive", *DISCO_STEPS, "after", "pushed", "served", "finished"], disco_runs)
    print("  (receive..after add up to 'pushed', the push's return, less a cleanup still running then;")
    print("  'served' is the first response with the new text; 'finished' is the record's cleanup done)")
    inside = sum(run.cleanup_in_push for run in disco_runs)
    print(f"  cleanup finished before the push returned in {inside} of {len(disco_runs)} run(s)")
    print()
    base = table("Baseline: docker build + docker service update --detach=false (seconds)",
                 ["build", "update", "total"], baseline_runs)
    print("  ('update' ends when swarm marks the update completed; Disco's health step also waits until the")
    print("  old tasks left swarm's DNS and Caddy looked again, so 'live' means only the new version answers)")
    print()
    app_start = disco["start"] + disco["health"]
    print("ratios disco / baseline (medians):")
    print(f"  build                          {disco['build'] / base['build']:5.2f}x  "
          f"({disco['build']:.2f} s vs {base['build']:.2f} s)")
    print(f"  start + health / update        {app_start / base['update']:5.2f}x  "
          f"({app_start:.2f} s vs {base['update']:.2f} s)")
    print(f"  served / build + update        {disco['served'] / base['total']:5.2f}x  "
          f"({disco['served']:.2f} s vs {base['total']:.2f} s)")
    print(f"  push returned / build + update {disco['pushed'] / base['total']:5.2f}x  "
          f"({disco['pushed']:.2f} s vs {base['total']:.2f} s)")
    print()
    overhead = disco["served"] - base["total"]
    verdict = "PASS" if overhead < OVERHEAD_TARGET_SECONDS else "MISS"
    print(f"Disco overhead beyond build + app start: {overhead:+.2f} s "
          f"(served {disco['served']:.2f} s - baseline build {base['build']:.2f} s - update {base['update']:.2f} s), "
          f"target under {OVERHEAD_TARGET_SECONDS} s: {verdict}")
    print(f"  the same up to the push's return: {disco['pushed'] - base['total']:+.2f} s")
    write_results("deploy", {
        "runs": len(disco_runs),
        "disco_median_seconds": disco, "baseline_median_seconds": base,
        "ratio_build": disco["build"] / base["build"],
        "ratio_start_health_to_update": app_start / base["update"],
        "ratio_served_to_build_update": disco["served"] / base["total"],
        "ratio_pushed_to_build_update": disco["pushed"] / base["total"],
        "overhead_served_seconds": overhead, "overhead_pushed_seconds": disco["pushed"] - base["total"],
        "overhead_verdict": verdict, "cleanup_in_push_runs": inside,
    })


# -- entry -------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="interleaved repetitions (default 5)")
    args = parser.parse_args(argv)
    if not 1 <= args.repeat <= 30:
        parser.error("--repeat must be from 1 to 30")
    return args


def main(argv: list[str] | None = None) -> int:
    return run_measurement(measure, parse_args(argv), "disco-bench-deploy-")


if __name__ == "__main__":
    sys.exit(main())
